//! A real Envoy mesh on loopback: a client sidecar (fortio) with the tutorial's circuit
//! breaker in front of a server sidecar (httpbin) and its app, under a bounded concurrent load.

use std::time::Duration;

use meshscope_tests::envoy::Sidecar;
use meshscope_tests::mesh::{load, poll, push_log, start_mesh};

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

/// The whole collector against real Envoys: access-log lines pushed, spans from Envoy's
/// OpenTelemetry tracer over OTLP/gRPC, stats scraped from both admin endpoints; every number
/// checked against Envoy's own files and counters.
#[test]
fn collector_stores_a_real_envoy_mesh_exactly() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let base = 12;
    let admins = format!("http://127.0.{base}.2:15000,http://127.0.{base}.3:15000");
    let server = meshscope_tests::Server::start(
        "serve",
        &dir.path().join("data"),
        &["--envoy-admin", &admins, "--scrape-interval", "300ms"],
    );
    let mesh = start_mesh(dir.path(), server.otlp_grpc.clone(), base);
    let codes = load(&mesh, 60);
    let ok = codes.iter().filter(|c| **c == 200).count();
    assert_eq!(codes.len(), 60);

    // Access logs: wait for Envoy to write every line, then push each sidecar's file.
    let client_lines = poll("the client's access log", Duration::from_secs(10), || {
        let l = mesh.client.access_log_lines();
        (l.len() == 60).then_some(l)
    });
    let server_lines = poll("the server's access log", Duration::from_secs(10), || {
        let l = mesh.server.access_log_lines();
        (l.len() == ok).then_some(l)
    });
    let v = push_log(&server, &mesh.client);
    assert_eq!(
        (v["stored"].as_u64(), v["rejected"].as_array().map(Vec::len)),
        (Some(60), Some(0)),
        "{v}"
    );
    let v = push_log(&server, &mesh.server);
    assert_eq!(v["stored"].as_u64(), Some(ok as u64), "{v}");

    // 10k garbage lines mixed into the real ones (replayed as another proxy): every valid line
    // stored, every bad one reported by its line number.
    {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut body = Vec::new();
        let mut garbage_at = Vec::new();
        let mut real = client_lines.iter();
        let mut next_real = real.next();
        while next_real.is_some() || garbage_at.len() < 10_000 {
            let garbage_turn = garbage_at.len() < 10_000
                && (next_real.is_none() || rng.random_ratio(10_000, 10_060));
            if garbage_turn {
                let len = rng.random_range(1..200);
                let line: String = match rng.random_range(0..4) {
                    0 => (0..len).map(|_| rng.random_range(' '..='~')).collect(),
                    1 => (0..len)
                        .map(|_| rng.random_range('\u{a0}'..='\u{2fff}'))
                        .collect(),
                    2 => format!("{{\"response_code\": \"x{len}\""),
                    _ => format!(
                        "[2026-11-26T01:02:03.456Z] \"GET /x HTTP/1.1\" abc{len} - via_upstream"
                    ),
                };
                body.push(line);
                garbage_at.push(body.len() as u64);
            } else if let Some(l) = next_real {
                body.push(l.clone());
                next_real = real.next();
            }
        }
        let path = format!(
            "/api/v1/ingest/accesslog?pod=replay-proxy&namespace=default&ip=127.0.{base}.99"
        );
        let (status, v) = server.post_text(&path, &body.join("\n"));
        assert_eq!(status, 200);
        assert_eq!(v["stored"].as_u64(), Some(60));
        let rejected: Vec<u64> = v["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["line"].as_u64().unwrap())
            .collect();
        assert_eq!(
            rejected, garbage_at,
            "each garbage line reported by number, and only those"
        );
        let n = server.sql("SELECT count(*) AS n FROM requests WHERE proxy = 'replay-proxy'");
        assert_eq!(n[0]["n"].as_u64(), Some(60));
        let (_, metrics) = server.get_json("/metrics");
        let metrics = metrics.as_str().unwrap_or_default().to_string();
        assert!(
            metrics
                .contains("meshscope_receiver_rejected_total{receiver=\"accesslog_push\"} 10000"),
            "{metrics}"
        );
        // WAL commit latency: a count of commits and the time they took
        let sample = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert!(
            sample("meshscope_wal_commit_seconds_count").is_some_and(|n| n >= 2.0),
            "{metrics}"
        );
        assert!(
            sample("meshscope_wal_commit_seconds_sum").is_some_and(|s| s > 0.0),
            "{metrics}"
        );
        assert!(
            sample("meshscope_flush_seconds_count").is_some(),
            "{metrics}"
        );
    }

    // every line exactly once, per proxy
    let per_proxy = server.sql(
        "SELECT proxy, reporter, count(*) AS n, count(DISTINCT request_id) AS ids FROM requests \
         WHERE proxy <> 'replay-proxy' GROUP BY 1, 2 ORDER BY 1",
    );
    assert_eq!(
        per_proxy,
        vec![
            json!({"proxy": "fortio-deploy-5d8f7c9b4-abcde", "reporter": "source", "n": 60, "ids": 60}),
            json!({"proxy": "httpbin-7d9c5b8f6-x2k4p", "reporter": "destination", "n": ok, "ids": ok}),
        ]
    );
    // a sample of fields, against the raw line Envoy wrote
    let uo_line = client_lines
        .iter()
        .find(|l| l.contains(" 503 UO "))
        .expect("a UO line");
    let rid = uo_line.split('"').nth(9).unwrap().to_string();
    let row = server.sql(&format!(
        "SELECT method, path, protocol, response_code, response_flags, response_code_details, bytes_sent, upstream_cluster, \
         destination_service, destination_service_name, destination_namespace, destination_port, source_workload, source_app, \
         user_agent, authority, route_name FROM requests WHERE request_id = '{rid}' AND proxy <> 'replay-proxy'"
    ));
    assert_eq!(
        row,
        vec![
            json!({"method": "GET", "path": "/get", "protocol": "HTTP/1.1", "response_code": 503, "response_flags": "UO",
            "response_code_details": "upstream_reset_before_response_started{overflow}", "bytes_sent": 81,
            "upstream_cluster": "outbound|8000||httpbin.default.svc.cluster.local",
            "destination_service": "httpbin.default.svc.cluster.local", "destination_service_name": "httpbin",
            "destination_namespace": "default", "destination_port": 8000, "source_workload": "fortio-deploy",
            "source_app": "fortio", "user_agent": "fortio.org/fortio-1.69.1", "authority": "httpbin:8000", "route_name": "default"})
        ]
    );
    // the server side knows its caller from the address book (the client's IP)
    let callers = server.sql("SELECT DISTINCT source_workload, destination_workload FROM requests WHERE reporter = 'destination'");
    assert_eq!(
        callers,
        vec![json!({"source_workload": "fortio-deploy", "destination_workload": "httpbin"})]
    );
    assert_eq!(server_lines.len(), ok);

    // Circuit breaker: UO lines = Envoy's admin counter = the scraped stat.
    let overflow = mesh
        .client
        .stat(
            "cluster.outbound|8000||httpbin.default.svc.cluster.local.upstream_rq_pending_overflow",
        )
        .unwrap();
    let uo = server.sql("SELECT count(*) AS n FROM requests WHERE response_flags = 'UO' AND proxy <> 'replay-proxy'")[0]["n"]
        .as_u64()
        .unwrap();
    assert_eq!(uo, overflow);
    assert_eq!(
        uo as usize,
        client_lines
            .iter()
            .filter(|l| l.contains(" 503 UO "))
            .count()
    );
    let scraped = poll("a scrape after the load", Duration::from_secs(15), || {
        let r = server.sql(
            "SELECT max(value) AS v FROM stat_samples WHERE metric = 'envoy_cluster_upstream_rq_pending_overflow' \
             AND cluster_name = 'outbound|8000||httpbin.default.svc.cluster.local' AND proxy = 'fortio-deploy-5d8f7c9b4-abcde'",
        );
        r[0]["v"].as_f64().filter(|v| *v as u64 == overflow)
    });
    assert_eq!(scraped as u64, overflow);
    // the server sidecar uses Envoy's default tags; its inbound cluster keeps its name too
    let inbound = server.sql(
        "SELECT max(value) AS v FROM stat_samples WHERE metric = 'envoy_cluster_upstream_rq_completed' AND cluster_name = 'inbound|8000||' AND proxy = 'httpbin-7d9c5b8f6-x2k4p'",
    );
    assert_eq!(
        inbound[0]["v"].as_f64().map(|v| v as usize),
        Some(ok),
        "{inbound:?}"
    );

    // Spans: every span Envoy exported is stored, with its request id.
    let sent = |sc: &Sidecar| sc.stat("tracing.opentelemetry.spans_sent").unwrap_or(0);
    let total_sent = poll("Envoy to flush its spans", Duration::from_secs(15), || {
        let n = sent(&mesh.client) + sent(&mesh.server);
        let stored = server.sql("SELECT count(*) AS n FROM spans")[0]["n"]
            .as_u64()
            .unwrap();
        (n > 0 && stored == n && n >= 60 + ok as u64).then_some(n)
    });
    let spans = server.sql("SELECT count(*) AS n, count(request_id) AS with_id, count(DISTINCT request_id) AS ids FROM spans");
    assert_eq!(spans[0]["n"].as_u64(), Some(total_sent));
    let kinds = server.sql(
        "SELECT kind, count(*) AS n, count(request_id) AS with_id FROM spans GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        spans[0]["with_id"].as_u64(),
        Some(total_sent),
        "every span carries guid:x-request-id: {kinds:?}"
    );
    assert_eq!(
        kinds,
        vec![
            json!({"kind": "client", "n": 60, "with_id": 60}),
            json!({"kind": "server", "n": ok, "with_id": ok})
        ]
    );
    assert_eq!(
        spans[0]["ids"].as_u64(),
        Some(60),
        "one trace per request the client sent"
    );
    let joined = server.sql(
        "SELECT count(DISTINCT s.request_id) AS n FROM spans s JOIN requests r ON s.request_id = r.request_id WHERE r.reporter = 'source'",
    );
    assert_eq!(
        joined[0]["n"].as_u64(),
        Some(60),
        "every access-log line finds its trace by x-request-id"
    );
}
