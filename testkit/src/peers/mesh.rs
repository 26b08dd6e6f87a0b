//! A two-sidecar Envoy mesh on loopback for the integration tests: a client sidecar (fortio)
//! with the Istio tutorial's circuit breaker in front of a server sidecar (httpbin) and its
//! app, a bounded concurrent load, and pushing a sidecar's access log to meshscope.

use std::time::Duration;

use super::Server;
use super::app::App;
use super::envoy::{Breaker, Inbound, Outbound, Pod, Sidecar, SidecarSpec};

/// The running mesh; every process stops when it is dropped.
pub struct Mesh {
    pub client: Sidecar,
    pub server: Sidecar,
    pub app: App,
}

/// Starts the app and both sidecars on 127.0.`base`.x (each test file uses its own `base`),
/// exporting spans to `otlp_grpc` when given.
pub fn start_mesh(dir: &std::path::Path, otlp_grpc: Option<String>, base: u8) -> Mesh {
    let client_ip = format!("127.0.{base}.2");
    let server_ip = format!("127.0.{base}.3");
    let app = App::start(&format!("{server_ip}:8000"), Duration::from_millis(30));
    let server = SidecarSpec {
        pod: Pod {
            ip: server_ip.clone(),
            name: "httpbin-7d9c5b8f6-x2k4p".into(),
            namespace: "default".into(),
            app: "httpbin".into(),
            version: "v1".into(),
        },
        admin_port: 15000,
        outbound: vec![],
        inbound: vec![Inbound {
            listen_port: 15006,
            service_port: 8000,
            app: format!("{server_ip}:8000"),
        }],
        otlp_grpc: otlp_grpc.clone(),
        istio_stats_tags: false,
    }
    .start(dir);
    let client = SidecarSpec {
        pod: Pod {
            ip: client_ip,
            name: "fortio-deploy-5d8f7c9b4-abcde".into(),
            namespace: "default".into(),
            app: "fortio".into(),
            version: "v1".into(),
        },
        admin_port: 15000,
        outbound: vec![Outbound {
            listen_port: 15001,
            service: "httpbin.default.svc.cluster.local".into(),
            port: 8000,
            upstream: format!("{server_ip}:15006"),
            breaker: Some(Breaker::ISTIO_TASK),
            ..Default::default()
        }],
        inbound: vec![],
        otlp_grpc,
        istio_stats_tags: true,
    }
    .start(dir);
    Mesh {
        client,
        server,
        app,
    }
}

/// `fortio load -c 3 -n <n>`: 3 concurrent clients, `n` requests in all, bounded in time.
pub fn load(mesh: &Mesh, n: usize) -> Vec<u16> {
    let url = format!("http://{}:15001/get", mesh.client.pod.ip);
    get_concurrently(
        &url,
        &[
            ("host", "httpbin:8000"),
            ("user-agent", "fortio.org/fortio-1.69.1"),
        ],
        n,
        3,
    )
}

/// `n` GETs of `url` from `c` clients at once (each `n / c` in turn, 10 s timeout each);
/// returns every status code, 0 for a request that got no answer.
pub fn get_concurrently(url: &str, headers: &[(&str, &str)], n: usize, c: usize) -> Vec<u16> {
    let codes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..c {
            let codes = &codes;
            s.spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                for _ in 0..n / c {
                    let mut req = agent.get(url);
                    for (k, v) in headers {
                        req = req.header(*k, *v);
                    }
                    let code = req.call().map(|r| r.status().as_u16()).unwrap_or(0);
                    codes.lock().unwrap().push(code);
                }
            });
        }
    });
    codes.into_inner().unwrap()
}

/// Calls `f` every 200 ms until it answers `Some`; panics after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pushes the sidecar's whole access log with its pod's identity; asserts a 200.
pub fn push_log(server: &Server, sc: &Sidecar) -> serde_json::Value {
    let body = std::fs::read_to_string(&sc.access_log).unwrap();
    push_text(server, sc, &body)
}

/// Pushes `lines` as the sidecar's access log; asserts a 200 and that every line was stored.
pub fn push_lines(server: &Server, sc: &Sidecar, lines: &[String]) {
    let v = push_text(server, sc, &lines.join("\n"));
    assert_eq!(v["stored"].as_u64(), Some(lines.len() as u64), "{v}");
}

fn push_text(server: &Server, sc: &Sidecar, body: &str) -> serde_json::Value {
    let p = &sc.pod;
    let path = format!(
        "/api/v1/ingest/accesslog?pod={}&namespace={}&app={}&version={}&ip={}",
        p.name, p.namespace, p.app, p.version, p.ip
    );
    let (status, v) = server.post_text(&path, body);
    assert_eq!(status, 200, "{v}");
    v
}
