//! A real Envoy mesh on loopback: a client sidecar (fortio) with the tutorial's circuit
//! breaker in front of a server sidecar (httpbin) and its app, under a bounded concurrent load.

use std::time::Duration;

use meshscope_tests::app::App;
use meshscope_tests::envoy::{Breaker, Inbound, Outbound, Pod, Sidecar, SidecarSpec};

pub struct Mesh {
    pub client: Sidecar,
    pub server: Sidecar,
    pub app: App,
}

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
            breaker: Some(Breaker {
                max_connections: 1,
                max_pending_requests: 1,
                max_requests: 1,
            }),
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
    let per = n / 3;
    let codes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            let (url, codes) = (&url, &codes);
            s.spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                for _ in 0..per {
                    let code = agent
                        .get(url)
                        .header("host", "httpbin:8000")
                        .header("user-agent", "fortio.org/fortio-1.69.1")
                        .call()
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    codes.lock().unwrap().push(code);
                }
            });
        }
    });
    codes.into_inner().unwrap()
}

#[test]
fn envoy_circuit_breaker_harness_behaves_like_the_istio_tutorial() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = start_mesh(dir.path(), None, 11);
    let codes = load(&mesh, 99);
    let ok = codes.iter().filter(|c| **c == 200).count();
    let overflow = codes.iter().filter(|c| **c == 503).count();
    assert_eq!(ok + overflow, 99, "{codes:?}");
    assert!(
        overflow > 0 && ok > 0,
        "expected some 503 UO and some 200: {ok} ok, {overflow} 503"
    );
    std::thread::sleep(Duration::from_millis(800)); // access logs flush every 200 ms
    let lines = mesh.client.access_log_lines();
    assert_eq!(lines.len(), 99, "one client-side line per request");
    let uo = lines.iter().filter(|l| l.contains(" 503 UO ")).count();
    let counter = mesh
        .client
        .stat(
            "cluster.outbound|8000||httpbin.default.svc.cluster.local.upstream_rq_pending_overflow",
        )
        .unwrap();
    assert_eq!(
        uo as u64, counter,
        "UO lines = Envoy's upstream_rq_pending_overflow"
    );
    assert_eq!(uo, overflow);
    let server_lines = mesh.server.access_log_lines();
    assert_eq!(
        server_lines.len(),
        ok,
        "the server sidecar saw only the requests that got through"
    );
    assert!(server_lines.iter().all(|l| l.contains("inbound|8000||")));
}
