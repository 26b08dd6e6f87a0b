//! `meshscope demo` as users run it: the simulator's traffic goes through the real ingest
//! paths (access-log push, stats push, OTLP/HTTP) and the service graph, SQL and traces over
//! each phase's window agree with the simulator's own counts (`GET /api/v1/demo`).

use std::time::{Duration, Instant};

use meshscope_tests::Server;
use serde_json::Value;

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .expect("time in range")
        .to_rfc3339()
}

/// The latest run of phase `name` from `/api/v1/demo`.
fn run_of<'a>(demo: &'a Value, name: &str) -> &'a Value {
    let p = demo["phases"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no phase {name} in {demo}"));
    &p["last"]
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Edges of the graph over a run's window whose target is `target` and source a workload.
fn edges_into(server: &Server, run: &Value, target: &str) -> Vec<Value> {
    let (status, g) = server.get_json(&format!(
        "/api/v1/graph?from={}&to={}",
        run["from"], run["to"]
    ));
    assert_eq!(status, 200, "{g}");
    g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == target && e["source"].as_str().unwrap().starts_with("workload:"))
        .cloned()
        .collect()
}

#[test]
fn demo_phases_show_in_the_graph_sql_and_traces() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        "demo",
        &dir.path().join("d"),
        &["--speed", "20", "--seed", "1", "--rollup-resolution", "1s"],
    );
    // One cycle is 9 phases of 3 s; wait until the outlier-ejection phase (the last) is done.
    let deadline = Instant::now() + Duration::from_secs(120);
    let demo = loop {
        let (status, d) = server.get_json("/api/v1/demo");
        assert_eq!(status, 200, "{d}");
        if run_of(&d, "outlier-ejection")["complete"] == true {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not finish a cycle in 120 s: {d}\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(demo["seed"], 1);
    assert_eq!(demo["phase_seconds"], 3);
    assert_eq!(u(&demo["pushes"]["failed"]), 0, "{}", demo["pushes"]);
    // give the last pushes time to be folded into rollups
    std::thread::sleep(Duration::from_secs(1));

    // a canary phase: the bookinfo topology, both ends named (the first phase has begun
    // again by now, so its latest run is incomplete)
    let first = run_of(&demo, "canary-50-50");
    let (_, g) = server.get_json(&format!(
        "/api/v1/graph?from={}&to={}",
        first["from"], first["to"]
    ));
    let ids: Vec<&str> = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for want in [
        "workload:istio-system/istio-ingressgateway->service:default/productpage",
        "service:default/productpage->workload:default/productpage-v1",
        "workload:default/productpage-v1->service:default/details",
        "service:default/details->workload:default/details-v1",
        "workload:default/productpage-v1->service:default/reviews",
        "service:default/reviews->workload:default/reviews-v1",
        "service:default/reviews->workload:default/reviews-v2",
        "workload:default/reviews-v2->service:default/ratings",
        "service:default/ratings->workload:default/ratings-v1",
    ] {
        assert!(ids.contains(&want), "{want} missing from {ids:?}");
    }
    let pp = edges_into(&server, first, "service:default/productpage");
    assert_eq!(
        u(&pp[0]["requests"]),
        u(&first["page_views"]),
        "page views of the phase"
    );

    // fault injection: ratings aborts 50% with 503 FI
    let abort = run_of(&demo, "ratings-abort");
    let edges = edges_into(&server, abort, "service:default/ratings");
    assert!(!edges.is_empty(), "no edges into ratings over {abort}");
    let requests: u64 = edges.iter().map(|e| u(&e["requests"])).sum();
    let errors: u64 = edges.iter().map(|e| u(&e["errors"])).sum();
    let fi: u64 = edges
        .iter()
        .map(|e| u(&e["response_flags"]["FI"]["count"]))
        .sum();
    let rate = errors as f64 / requests as f64;
    assert!(
        (0.4..=0.6).contains(&rate),
        "ratings error rate {rate} ({errors}/{requests}) over {abort}"
    );
    assert!(fi > 0 && fi == errors, "FI {fi}, errors {errors}");
    // a page view at the very end of the phase calls ratings a few ms into the next second
    let want_fi = u(&abort["fault_aborts"]);
    assert!(
        fi.abs_diff(want_fi) <= 2,
        "graph FI {fi}, simulator {want_fi}"
    );

    // circuit breaking: the overflow counter equals the UO requests, and the UO lines stored
    let breaker = run_of(&demo, "circuit-breaker");
    let overflows = u(&breaker["overflows"]);
    assert!(overflows > 10, "{breaker}");
    let edges = edges_into(&server, breaker, "service:default/details");
    let fortio = edges
        .iter()
        .find(|e| e["source"] == "workload:default/fortio-deploy")
        .unwrap_or_else(|| panic!("no fortio edge: {edges:?}"));
    let cb = &fortio["circuit_breaker"];
    assert_eq!(cb["overflow"].as_f64(), Some(overflows as f64), "{cb}");
    assert_eq!(cb["pending_overflow"].as_f64(), Some(overflows as f64));
    assert_eq!(cb["open"], true, "{cb}");
    assert_eq!(cb["tripped"], true);
    let (from, to) = (
        breaker["from"].as_i64().unwrap(),
        breaker["to"].as_i64().unwrap(),
    );
    let stored = server.sql(&format!(
        "SELECT count(*) AS n FROM requests WHERE response_flags = 'UO' \
         AND start_time >= '{}' AND start_time < '{}'",
        rfc3339(from),
        rfc3339(to)
    ));
    let stored_uo = u(&stored[0]["n"]);
    assert_eq!(u(&cb["uo_responses"]), stored_uo, "{cb}");
    assert_eq!(stored_uo, overflows);

    // outlier detection: ejections enforced and UH while ejected
    let outlier = run_of(&demo, "outlier-ejection");
    let edges = edges_into(&server, outlier, "service:default/details");
    let ejections: f64 = edges
        .iter()
        .map(|e| e["circuit_breaker"]["ejections"].as_f64().unwrap_or(0.0))
        .sum();
    let uh: u64 = edges
        .iter()
        .map(|e| u(&e["circuit_breaker"]["uh_responses"]))
        .sum();
    assert!(u(&outlier["ejections"]) > 0, "{outlier}");
    assert_eq!(ejections, u(&outlier["ejections"]) as f64, "{edges:?}");
    assert!(uh > 0, "{edges:?}");

    // traces: both sidecars' spans for a request id from an access-log row
    let rows = server.sql(&format!(
        "SELECT request_id FROM requests WHERE reporter = 'destination' \
         AND destination_workload = 'ratings-v1' AND start_time >= '{}' ORDER BY start_time LIMIT 1",
        rfc3339(from - 12)
    ));
    let rid = rows[0]["request_id"]
        .as_str()
        .expect("a request id")
        .to_string();
    let spans = server.sql(&format!(
        "SELECT kind, service_name, upstream_cluster, component FROM spans WHERE request_id = '{rid}'"
    ));
    let has = |kind: &str, service: &str| {
        spans
            .iter()
            .any(|s| s["kind"] == kind && s["service_name"] == service)
    };
    for service in ["productpage.default", "reviews.default", "ratings.default"] {
        assert!(
            has("server", service),
            "no server span of {service}: {spans:?}"
        );
    }
    for service in [
        "istio-ingressgateway.istio-system",
        "productpage.default",
        "reviews.default",
    ] {
        assert!(
            has("client", service),
            "no client span of {service}: {spans:?}"
        );
    }
    assert!(spans.iter().all(|s| s["component"] == "proxy"), "{spans:?}");

    // the phase is in the status too
    let (_, st) = server.get_json("/api/v1/status");
    assert!(st["demo"]["phase"]["name"].is_string(), "{st}");
    assert_eq!(server.terminate().code(), Some(0));
}
