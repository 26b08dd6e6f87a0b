//! Traces from a real Envoy mesh: a client sidecar (fortio, with the tutorial's circuit
//! breaker) in front of a server sidecar (httpbin) and its app, both exporting spans with
//! Envoy's OpenTelemetry tracer to meshscope's OTLP/gRPC port and both access logs pushed.
//! A trace Envoy exported is then found by its trace id and by the x-request-id of an
//! access-log line, with both sidecars' lines, and the Jaeger API answers it in the shapes
//! Grafana reads. Expected values come from Envoy's own files and counters and from SQL over
//! the raw rows.

use std::time::Duration;

use meshscope_query::jaeger::grafana::{self, JaegerResponse, TraceResponse};
use meshscope_tests::Server;
use meshscope_tests::envoy::Sidecar;
use meshscope_tests::mesh::{load, poll, push_log, start_mesh};
use serde_json::{Value, json};

/// Loopback addresses 127.0.13.x (envoy_mesh.rs uses .11 and .12).
const BASE: u8 = 13;

/// The x-request-id of an Istio-format access-log line (the 5th quoted field).
fn request_id(line: &str) -> String {
    line.split('"')
        .nth(9)
        .expect("x-request-id field")
        .to_string()
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

#[test]
fn envoy_traces_are_found_by_trace_id_and_request_id_and_served_to_grafana() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("serve", &dir.path().join("data"), &[]);
    let mesh = start_mesh(dir.path(), server.otlp_grpc.clone(), BASE);
    let codes = load(&mesh, 30);
    assert_eq!(codes.len(), 30);
    let ok = codes.iter().filter(|c| **c == 200).count();
    assert!(ok > 0, "{codes:?}");

    let client_lines = poll("the client's access log", Duration::from_secs(10), || {
        let l = mesh.client.access_log_lines();
        (l.len() == 30).then_some(l)
    });
    let server_lines = poll("the server's access log", Duration::from_secs(10), || {
        let l = mesh.server.access_log_lines();
        (l.len() == ok).then_some(l)
    });
    assert_eq!(push_log(&server, &mesh.client)["stored"], 30);
    assert_eq!(push_log(&server, &mesh.server)["stored"], ok);
    let sent = |sc: &Sidecar| sc.stat("tracing.opentelemetry.spans_sent").unwrap_or(0);
    poll("Envoy to flush its spans", Duration::from_secs(20), || {
        let n = sent(&mesh.client) + sent(&mesh.server);
        let stored = server.sql("SELECT count(*) AS n FROM spans")[0]["n"].as_u64()?;
        (n >= 30 + ok as u64 && stored == n).then_some(())
    });

    // A request that went through both sidecars: its id from the server sidecar's log line.
    let rid = request_id(&server_lines[0]);
    let client_line = client_lines
        .iter()
        .find(|l| request_id(l) == rid)
        .expect("the client sidecar logged the same request");
    assert!(client_line.contains(" 200 "), "{client_line}");
    let expected_trace = server.sql(&format!(
        "SELECT DISTINCT encode(trace_id, 'hex') AS t FROM spans WHERE request_id = '{rid}'"
    ));
    assert_eq!(expected_trace.len(), 1, "{expected_trace:?}");
    let trace_id = expected_trace[0]["t"].as_str().unwrap().to_string();
    let raw = server.sql(&format!(
        "SELECT encode(span_id, 'hex') AS span_id, encode(parent_span_id, 'hex') AS parent, kind, service_name, duration_ns \
         FROM spans WHERE trace_id = X'{trace_id}' ORDER BY start_time"
    ));
    assert_eq!(
        raw.len(),
        2,
        "an outbound CLIENT and an inbound SERVER span: {raw:?}"
    );
    let (client_span, server_span) = (&raw[0], &raw[1]);
    assert_eq!(
        (client_span["kind"].as_str(), server_span["kind"].as_str()),
        (Some("client"), Some("server"))
    );
    assert_eq!(server_span["parent"], client_span["span_id"]);

    // By request id: the trace and both sidecars' access-log lines, in time order.
    let (st, v) = server.get_json(&format!("/api/v1/requests/{rid}"));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["trace_ids"], json!([trace_id]));
    let log = v["access_log"].as_array().unwrap();
    assert_eq!(
        log.iter()
            .map(|r| (r["proxy"].clone(), r["reporter"].clone()))
            .collect::<Vec<_>>(),
        vec![
            (json!("fortio-deploy-5d8f7c9b4-abcde"), json!("source")),
            (json!("httpbin-7d9c5b8f6-x2k4p"), json!("destination")),
        ]
    );
    assert!(log.iter().all(|r| r["request_id"] == rid.as_str()));
    let t = &v["traces"][0];
    assert_eq!(t["trace_id"], trace_id.as_str());

    // By trace id: the waterfall, the hop's client/server pair across the two sidecars.
    let (st, w) = server.get_json(&format!("/api/v1/traces/{trace_id}"));
    assert_eq!(st, 200, "{w}");
    assert_eq!(&w, t, "the same model both ways");
    assert_eq!(w["span_count"], 2);
    assert_eq!(w["services"], json!(["fortio.default", "httpbin.default"]));
    let spans = w["spans"].as_array().unwrap();
    assert_eq!(spans[0]["span_id"], client_span["span_id"]);
    assert_eq!(spans[0]["depth"], 0);
    assert_eq!(spans[1]["depth"], 1);
    assert_eq!(spans[0]["pair_span_id"], server_span["span_id"]);
    assert_eq!(spans[1]["pair_span_id"], client_span["span_id"]);
    assert_eq!(spans[1]["attributes"]["guid:x-request-id"], rid.as_str());
    assert_eq!(spans[0]["duration_ns"], client_span["duration_ns"]);
    let hop = &w["hops"][0];
    assert_eq!(hop["source_service"], "fortio.default");
    assert_eq!(hop["destination_service"], "httpbin.default");
    assert_eq!(
        hop["outside_server_ns"].as_i64(),
        Some(
            client_span["duration_ns"].as_i64().unwrap()
                - server_span["duration_ns"].as_i64().unwrap()
        )
    );
    let critical: i64 = w["critical_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["end_offset_ns"].as_i64().unwrap() - s["start_offset_ns"].as_i64().unwrap())
        .sum();
    assert_eq!(Some(critical), spans[0]["duration_ns"].as_i64());

    // A request the circuit breaker refused: one client span, answered by the client sidecar.
    if let Some(uo) = client_lines.iter().find(|l| l.contains(" 503 UO ")) {
        let (st, v) = server.get_json(&format!("/api/v1/requests/{}", request_id(uo)));
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["access_log"].as_array().unwrap().len(), 1);
        let t = &v["traces"][0];
        assert_eq!(t["span_count"], 1);
        assert_eq!(t["spans"][0]["response_flags"], "UO");
        assert_eq!(t["hops"][0]["answered_by_client_sidecar"], true);
        assert_eq!(t["error_count"], 1);
    }

    // The edge fortio → httpbin links to sample traces: 5xx ones are exactly the UO lines.
    let uo_lines = client_lines
        .iter()
        .filter(|l| l.contains(" 503 UO "))
        .count();
    eprintln!("{ok} requests reached httpbin, {uo_lines} were refused with 503 UO");
    let (st, e) = server
        .get_json("/api/v1/traces?source=fortio-deploy&destination=httpbin&status=5xx&limit=100");
    assert_eq!(st, 200, "{e}");
    let traces = e["traces"].as_array().unwrap();
    assert_eq!(traces.len(), uo_lines, "{e}");
    assert!(traces.iter().all(|t| t["response_flags"] == json!(["UO"])));
    let (_, e) =
        server.get_json("/api/v1/traces?source=fortio&destination=httpbin&status=2xx&limit=100");
    assert_eq!(e["traces"].as_array().unwrap().len(), ok, "{e}");

    // Jaeger, as Grafana's data source reads it.
    let (st, v) = server.get_json(&format!("/jaeger/api/traces/{trace_id}"));
    assert_eq!(st, 200, "{v}");
    let r: JaegerResponse<Vec<TraceResponse>> = typed(v);
    let jt = &r.data[0];
    assert_eq!(jt.trace_id, trace_id);
    assert_eq!(jt.spans.len(), 2);
    let js = jt
        .spans
        .iter()
        .find(|s| s.span_id == server_span["span_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(js.parent(), client_span["span_id"].as_str());
    assert_eq!(jt.processes[&js.process_id].service_name, "httpbin.default");
    assert_eq!(
        js.tag("guid:x-request-id"),
        Some(&Value::from(rid.as_str()))
    );
    assert_eq!(
        js.duration,
        server_span["duration_ns"].as_u64().unwrap() / 1_000
    );

    let (_, v) = server.get_json("/jaeger/api/services");
    let services: JaegerResponse<Vec<String>> = typed(v);
    assert_eq!(services.data, ["fortio.default", "httpbin.default"]);
    let (_, v) = server.get_json("/jaeger/api/services/httpbin.default/operations");
    let ops: JaegerResponse<Vec<String>> = typed(v);
    assert_eq!(ops.data.len(), 1, "{:?}", ops.data);

    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let window = format!(
        "start={}&end={now_us}&lookback=custom",
        now_us - 3_600_000_000
    );
    let (st, v) = server.get_json(&format!(
        "/jaeger/api/traces?service=httpbin.default&limit=100&{window}"
    ));
    assert_eq!(st, 200, "{v}");
    let r: JaegerResponse<Vec<TraceResponse>> = typed(v);
    assert_eq!(
        r.data.len(),
        ok,
        "one trace per request that reached httpbin"
    );
    assert!(r.data.iter().all(|t| t.spans.len() == 2));
    let tags = format!("%7B%22guid%3Ax-request-id%22%3A%22{rid}%22%7D");
    let (st, v) = server.get_json(&format!("/jaeger/api/traces?tags={tags}&{window}"));
    assert_eq!(st, 200, "{v}");
    let r: JaegerResponse<Vec<TraceResponse>> = typed(v);
    assert_eq!(r.data.len(), 1);
    assert_eq!(r.data[0].trace_id, trace_id);

    let (st, v) = server.get_json(&format!(
        "/jaeger/api/dependencies?endTs={}&lookback=3600000",
        now_us / 1_000 + 60_000
    ));
    assert_eq!(st, 200, "{v}");
    let deps: JaegerResponse<Vec<grafana::Dependency>> = typed(v);
    assert_eq!(deps.data.len(), 1);
    assert_eq!(
        (
            deps.data[0].parent.as_str(),
            deps.data[0].child.as_str(),
            deps.data[0].call_count
        ),
        ("fortio.default", "httpbin.default", ok as u64),
        "one parent/child pair per request that reached httpbin"
    );

    let (st, v) = server.get_json(&format!("/jaeger/api/traces/{}", "0".repeat(31) + "1"));
    assert_eq!(st, 404);
    let r: JaegerResponse<Option<Vec<TraceResponse>>> = typed(v);
    assert!(r.data.is_none() && r.errors.is_some());
}
