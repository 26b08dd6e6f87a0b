//! Tokens and browser checks on a real process: a non-loopback listener without a token
//! refuses to start; with tokens every listener asks for one (the real OpenTelemetry SDK
//! exports with and without it), Grafana's Prometheus and Jaeger datasources get in with
//! Basic and Bearer auth, a read token cannot ingest, and pages of other sites are refused
//! even with a token in hand. A loopback server without tokens answers loopback names only
//! (DNS rebinding).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use meshscope_tests::{Server, meshscope_bin, read};
use serde_json::{Value, json};

const OPERATOR: &str = "operator-0123456789abcdef";
const GRAFANA: &str = "grafana-read-0123456789abcdef";

fn basic(user: &str, pass: &str) -> String {
    // RFC 7617 by hand: the test must not share the server's decoder
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{pass}").into_bytes();
    let mut out = String::new();
    for c in raw.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

/// `0.0.0.0:port` → `127.0.0.1:port`: traffic stays on loopback.
fn loopback(addr: &str) -> String {
    addr.replace("0.0.0.0:", "127.0.0.1:")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn call(req: ureq::RequestBuilder<ureq::typestate::WithoutBody>) -> (u16, Value) {
    read(req.call().expect("request"))
}

#[test]
fn a_reachable_listener_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(meshscope_bin())
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("d"))
        .args(["--api-addr", "0.0.0.0:0", "--otlp-grpc-addr", "127.0.0.1:0"])
        .args(["--otlp-http-addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn meshscope");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "meshscope kept running on 0.0.0.0 without a token"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(
        err.contains("--api-addr 0.0.0.0:0")
            && err.contains("--auth-token-file")
            && err.contains("--insecure-no-auth"),
        "{err}"
    );
    // the explicit override starts, warns, and answers any Host (no rebinding check off loopback)
    let server = Server::start(
        "serve",
        &dir.path().join("d"),
        &["--api-addr", "0.0.0.0:0", "--insecure-no-auth"],
    );
    let url = format!("http://{}/api/v1/status", loopback(&server.addr));
    let (status, v) = read(
        agent()
            .get(&url)
            .header("host", "meshscope.observability:20001")
            .call()
            .unwrap(),
    );
    assert_eq!(status, 200, "{v}");
    assert!(
        server.stderr().contains("serving without authentication"),
        "{}",
        server.stderr()
    );
}

#[test]
fn tokens_guard_every_listener_and_grafana_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("tokens");
    let reads = dir.path().join("read-tokens");
    std::fs::write(&all, format!("# operators\n{OPERATOR}\n")).unwrap();
    std::fs::write(&reads, format!("{GRAFANA}\n")).unwrap();
    let mut server = Server::start(
        "serve",
        &dir.path().join("d"),
        &[
            "--api-addr",
            "0.0.0.0:0",
            "--otlp-grpc-addr",
            "0.0.0.0:0",
            "--otlp-http-addr",
            "0.0.0.0:0",
            "--auth-token-file",
            all.to_str().unwrap(),
            "--read-token-file",
            reads.to_str().unwrap(),
            "--flush-interval",
            "200ms",
        ],
    );
    server.addr = loopback(&server.addr);
    let grpc = loopback(server.otlp_grpc.as_deref().unwrap());
    let http = loopback(server.otlp_http.as_deref().unwrap());
    let url = |p: &str| format!("http://{}{p}", server.addr);

    // open paths
    for p in ["/healthz", "/metrics", "/", "/ui/app.js"] {
        assert_eq!(call(agent().get(&url(p))).0, 200, "{p}");
    }
    // reads: none, a wrong one, the read token, the operator token
    let resp = agent().get(&url("/api/v1/status")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"meshscope\"")
    );
    let (s, v) = call(
        agent()
            .get(&url("/api/v1/status"))
            .header("authorization", "Bearer operator-0123456789abcdeX"),
    );
    assert_eq!(
        (s, v["error_type"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    for t in [GRAFANA, OPERATOR] {
        let (s, v) = call(
            agent()
                .get(&url("/api/v1/status"))
                .header("authorization", &format!("Bearer {t}")),
        );
        assert_eq!(s, 200, "{v}");
    }

    // ingest: the read token may not, the operator token may
    let line = json!({"start_time": meshscope_tests::hour_start_ns(0), "response_code": 200,
                      "bytes_received": 0, "bytes_sent": 1, "duration_ms": 1, "request_id": "rid-auth-1"})
    .to_string();
    let push = "/api/v1/ingest/rows/requests";
    server.token = Some(GRAFANA.into());
    let (s, v) = server.post_text(push, &line);
    assert_eq!(
        (s, v["error_type"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    server.token = None;
    assert_eq!(server.post_text(push, &line).0, 401);
    server.token = Some(OPERATOR.into());
    let (s, v) = server.post_text(push, &line);
    assert_eq!((s, v["stored"].as_u64()), (200, Some(1)), "{v}");

    // the real OpenTelemetry SDK over OTLP/gRPC and OTLP/HTTP: refused without, stored with
    let export = |token: Option<&str>| -> Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/otel/export.py");
        let mut cmd = std::process::Command::new(
            std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()),
        );
        cmd.args([script, "--grpc", &grpc, "--http", &format!("http://{http}")]);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let out = cmd.output().expect("python3 must be installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let refused = export(None);
    assert_eq!(
        refused["results"],
        json!({"grpc": ["FAILURE", "FAILURE"], "http": ["FAILURE", "FAILURE"]})
    );
    let stored = export(Some(OPERATOR));
    assert_eq!(
        stored["results"],
        json!({"grpc": ["SUCCESS", "SUCCESS"], "http": ["SUCCESS", "SUCCESS"]})
    );
    let count = |trace: &Value| {
        server.sql(&format!(
            "SELECT count(*) AS n FROM spans WHERE trace_id = X'{}'",
            trace.as_str().unwrap()
        ))[0]["n"]
            .as_i64()
    };
    for transport in ["grpc", "http"] {
        assert_eq!(
            count(&refused[transport][0]["trace_id"]),
            Some(0),
            "{transport}"
        );
        assert_eq!(
            count(&stored[transport][0]["trace_id"]),
            Some(2),
            "{transport}"
        );
    }

    // Grafana's Prometheus datasource: a form POST with Basic auth (token as the password)
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (start, end) = ((now - 600).to_string(), now.to_string());
    let form = [
        ("query", "sum(rate(istio_requests_total[1m]))"),
        ("start", start.as_str()),
        ("end", end.as_str()),
        ("step", "60"),
    ];
    let prom = url("/prometheus/api/v1/query_range");
    let grafana = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| {
        r.header("user-agent", "Grafana/12.0.0")
            .header("accept", "application/json, text/plain, */*")
    };
    let (s, v) = read(
        grafana(agent().post(&prom))
            .header("authorization", &basic("grafana", GRAFANA))
            .send_form(form)
            .unwrap(),
    );
    assert_eq!((s, v["status"].as_str()), (200, Some("success")), "{v}");
    let (s, v) = read(grafana(agent().post(&prom)).send_form(form).unwrap());
    assert_eq!(
        (s, v["status"].as_str(), v["errorType"].as_str()),
        (401, Some("error"), Some("unauthorized")),
        "{v}"
    );
    let (s, _) = read(
        grafana(agent().post(&prom))
            .header("authorization", &basic("grafana", "not-the-password-123"))
            .send_form(form)
            .unwrap(),
    );
    assert_eq!(s, 401);
    // Grafana's Jaeger datasource: GETs with a Bearer header
    let (s, v) = call(
        agent()
            .get(&url("/jaeger/api/services"))
            .header("authorization", &format!("Bearer {GRAFANA}")),
    );
    assert_eq!(s, 200, "{v}");
    assert!(
        v["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|n| n == "reviews-grpc")),
        "{v}"
    );
    let (s, v) = call(agent().get(&url("/jaeger/api/services")));
    assert_eq!(
        (s, v["errors"][0]["code"].as_u64()),
        (401, Some(401)),
        "{v}"
    );

    // pages of other sites: refused with the token in hand
    let sql = url("/api/v1/sql");
    let auth = format!("Bearer {OPERATOR}");
    let body = json!({"sql": "SELECT 1 AS one"});
    let post = || agent().post(&sql).header("authorization", &auth);
    let (s, v) = read(
        post()
            .header("origin", "http://evil.example")
            .send_json(&body)
            .unwrap(),
    );
    assert_eq!(
        (s, v["error_type"].as_str()),
        (403, Some("cross_origin")),
        "{v}"
    );
    let (s, v) = read(
        post()
            .header("sec-fetch-site", "cross-site")
            .send_json(&body)
            .unwrap(),
    );
    assert_eq!(
        (s, v["error_type"].as_str()),
        (403, Some("cross_site")),
        "{v}"
    );
    let (s, v) = read(
        post()
            .content_type("text/plain")
            .send(body.to_string())
            .unwrap(),
    );
    assert_eq!(
        (s, v["error_type"].as_str()),
        (403, Some("content_type")),
        "{v}"
    );
    let same = format!("http://{}", server.addr);
    let (s, v) = read(post().header("origin", &same).send_json(&body).unwrap());
    assert_eq!((s, v), (200, json!([{"one": 1}])));

    let (_, metrics) = call(agent().get(&url("/metrics")));
    let metrics = metrics.as_str().unwrap_or("").to_string();
    let counted = |reason: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "meshscope_api_refused_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    // 401s on the API port: status ×2, push, Prometheus ×2, Jaeger; 403s: push, three pages
    assert_eq!(counted("unauthorized"), Some(6.0), "{metrics}");
    assert_eq!(counted("forbidden"), Some(4.0), "{metrics}");
    assert!(
        !server.stderr().contains(OPERATOR),
        "a token reached the log"
    );
}

/// A loopback server without tokens: a page on a foreign name that resolves to 127.0.0.1
/// (DNS rebinding) gets 403; `localhost` and 127.0.0.1 get in.
#[test]
fn loopback_without_tokens_answers_loopback_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("serve", &dir.path().join("d"), &[]);
    let get = |host: &str| -> String {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/v1/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let port = server.addr.rsplit(':').next().unwrap();
    assert!(get(&format!("localhost:{port}")).starts_with("HTTP/1.1 200"));
    assert!(get(&server.addr).starts_with("HTTP/1.1 200"));
    let rebound = get(&format!("rebound.evil.example:{port}"));
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(rebound.contains("not a loopback name"), "{rebound}");
}
