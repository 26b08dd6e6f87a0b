//! The real OpenTelemetry Python SDK exporting to meshscope over OTLP/gRPC and OTLP/HTTP
//! (protobuf), and OTLP/JSON posted directly: every field stored intact.

use meshscope_tests::Server;
use serde_json::{Value, json};

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn otel_python_sdk_spans_are_stored_with_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("serve", &dir.path().join("d"), &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/otel/export.py");
    let out = std::process::Command::new(python())
        .args([
            script,
            "--grpc",
            server.otlp_grpc.as_deref().unwrap(),
            "--http",
            &format!("http://{}", server.otlp_http.as_deref().unwrap()),
        ])
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "the OpenTelemetry SDK exporter failed (tests/run.sh installs opentelemetry-sdk and opentelemetry-exporter-otlp): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Value = serde_json::from_slice(&out.stdout).unwrap();
    // the SDK's own exporters report success (one export per span: SimpleSpanProcessor)
    assert_eq!(
        sent["results"],
        json!({"grpc": ["SUCCESS", "SUCCESS"], "http": ["SUCCESS", "SUCCESS"]}),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for transport in ["grpc", "http"] {
        let spans = sent[transport].as_array().unwrap();
        let root = &spans[0];
        let child = &spans[1];
        let rows = server.sql(&format!(
            "SELECT encode(span_id, 'hex') AS span_id, encode(parent_span_id, 'hex') AS parent, service_name, name, kind, \
             status_code, status_message, request_id, http_method, http_status_code, upstream_cluster, response_flags, \
             peer_address, scope_name, attributes, resource_attributes, events, links, duration_ns > 0 AS timed \
             FROM spans WHERE trace_id = X'{}' ORDER BY start_time",
            root["trace_id"].as_str().unwrap()
        ));
        assert_eq!(rows.len(), 2, "{transport}: {rows:?}");
        let r = &rows[0];
        assert_eq!(r["span_id"], root["span_id"]);
        assert_eq!(r["parent"], Value::Null);
        assert_eq!(r["service_name"], format!("reviews-{transport}"));
        assert_eq!(
            (r["name"].as_str(), r["kind"].as_str()),
            (Some("GET /reviews"), Some("server"))
        );
        assert_eq!(
            (r["status_code"].as_str(), r["status_message"].as_str()),
            (Some("error"), Some("upstream overflow"))
        );
        assert_eq!(r["request_id"], format!("rid-{transport}"));
        assert_eq!(
            (r["http_method"].as_str(), r["http_status_code"].as_i64()),
            (Some("GET"), Some(503))
        );
        assert_eq!(
            r["upstream_cluster"],
            "outbound|9080|v2|ratings.default.svc.cluster.local"
        );
        assert_eq!(r["response_flags"], "UO");
        assert_eq!(r["scope_name"], "meshscope-test");
        assert_eq!(
            r["attributes"],
            json!({"custom.int": "42", "custom.bool": "true", "custom.list": "[\"a\",\"b\"]"})
        );
        assert_eq!(r["resource_attributes"]["k8s.namespace.name"], "default");
        assert_eq!(r["events"][0]["name"], "retry");
        assert_eq!(r["events"][0]["attributes"], json!({"attempt": "1"}));
        assert_eq!(r["timed"], true);
        let c = &rows[1];
        assert_eq!(c["span_id"], child["span_id"]);
        assert_eq!(c["parent"], child["parent_span_id"]);
        assert_eq!(
            (c["kind"].as_str(), c["peer_address"].as_str()),
            (Some("client"), Some("127.0.10.7"))
        );
        assert_eq!(c["links"][0]["span_id"], root["span_id"]);
        assert_eq!(c["links"][0]["attributes"], json!({"why": "test"}));
    }

    // OTLP/JSON posted directly, with one span whose trace id is 5 bytes: partial success.
    // (Times of this hour: the ingest window refuses rows older than the retention.)
    let start = meshscope_tests::hour_start_ns(0).to_string();
    let end = (meshscope_tests::hour_start_ns(0) + 5_000_000).to_string();
    let body = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "details"}}]},
        "scopeSpans": [{"spans": [
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "GET /details", "kind": 2,
             "startTimeUnixNano": start, "endTimeUnixNano": end,
             "attributes": [{"key": "guid:x-request-id", "value": {"stringValue": "rid-json"}}]},
            {"traceId": "0102030405", "spanId": "eee19b7ec3c1b175", "name": "bad", "kind": 2,
             "startTimeUnixNano": start, "endTimeUnixNano": end}]}]}]});
    let resp = ureq::post(&format!(
        "http://{}/v1/traces",
        server.otlp_http.as_deref().unwrap()
    ))
    .header("content-type", "application/json")
    .send(body.to_string())
    .unwrap();
    let v: Value = serde_json::from_str(&resp.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(v["partialSuccess"]["rejectedSpans"], 1, "{v}");
    assert!(
        v["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("trace id"),
        "{v}"
    );
    let rows = server.sql("SELECT service_name, name, kind, request_id, duration_ns FROM spans WHERE trace_id = X'5b8efff798038103d269b633813fc60c'");
    assert_eq!(
        rows,
        vec![
            json!({"service_name": "details", "name": "GET /details", "kind": "server", "request_id": "rid-json", "duration_ns": 5000000})
        ]
    );
}
