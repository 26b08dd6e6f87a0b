//! The Jaeger API read back through the types Grafana's Jaeger data source uses.

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::grafana::{self, JaegerResponse, TraceResponse};
use super::*;
use crate::traces::tests::{
    MS, base_ns, get, hand_built, log_rows, put_requests, put_spans, service, sid, span, store, tid,
};

fn typed<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

fn only_trace(v: Value) -> TraceResponse {
    let r: JaegerResponse<Vec<TraceResponse>> = typed(v);
    assert_eq!(r.errors, None);
    assert_eq!(r.data.len(), 1);
    r.data.into_iter().next().unwrap()
}

#[tokio::test]
async fn trace_by_id_has_the_shape_grafana_reads() {
    let (_d, store) = store().await;
    let base = base_ns();
    let mut spans = hand_built(base);
    spans[3].resource_attributes = vec![("telemetry.sdk.name".into(), "envoy".into())];
    put_spans(&store, &spans).await;
    let app = router(service(&store));
    let (st, v) = get(&app, &format!("/jaeger/api/traces/{}", tid(1).to_hex())).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let t = only_trace(v);
    assert_eq!(t.trace_id, tid(1).to_hex());
    assert_eq!(t.spans.len(), 6);
    // Sorted by start; times in µs.
    assert_eq!(t.spans[0].span_id, sid(1).to_hex());
    assert_eq!(t.spans[0].start_time as i64, base / 1_000);
    assert_eq!(t.spans[0].duration, 100_000);
    assert_eq!(t.spans[0].parent(), None);
    let d = t
        .spans
        .iter()
        .find(|s| s.span_id == sid(4).to_hex())
        .unwrap();
    assert_eq!(d.parent(), Some(sid(3).to_hex().as_str()));
    assert_eq!(d.tag("guid:x-request-id"), Some(&Value::from("rid-1")));
    assert_eq!(d.tag("http.status_code"), Some(&Value::from(200)));
    assert_eq!(d.tag("span.kind"), Some(&Value::from("server")));
    assert_eq!(d.tag("zone"), Some(&Value::from("z1")));
    assert_eq!(d.logs.len(), 1);
    assert_eq!(d.logs[0].timestamp as i64, (base + 31 * MS) / 1_000);
    assert_eq!(d.logs[0].fields[0].value, Value::from("retry"));
    let f = t
        .spans
        .iter()
        .find(|s| s.span_id == sid(6).to_hex())
        .unwrap();
    assert_eq!(f.tag("error"), Some(&Value::Bool(true)));
    assert_eq!(f.tag("response_flags"), Some(&Value::from("UO")));
    // Processes: every processID resolves; one process per service and resource.
    for s in &t.spans {
        let p = &t.processes[&s.process_id];
        assert!(!p.service_name.is_empty());
    }
    let mut names: Vec<&str> = t
        .processes
        .values()
        .map(|p| p.service_name.as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "productpage.default",
            "productpage.default",
            "reviews.default"
        ]
    );
}

#[tokio::test]
async fn an_unknown_or_malformed_trace_id_is_never_an_empty_trace() {
    let (_d, store) = store().await;
    let app = router(service(&store));
    let (st, v) = get(&app, &format!("/jaeger/api/traces/{}", tid(7).to_hex())).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let r: JaegerResponse<Option<Vec<TraceResponse>>> = typed(v);
    assert!(r.data.is_none());
    let errs: Vec<grafana::StructuredError> = typed(Value::Array(r.errors.expect("errors")));
    assert_eq!(errs[0].code, 404);
    assert_eq!(errs[0].msg, "trace not found");
    assert_eq!(errs[0].trace_id.as_deref(), Some(tid(7).to_hex().as_str()));
    let (st, v) = get(&app, "/jaeger/api/traces/not-hex").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        v["errors"][0]["msg"].as_str().unwrap().contains("traceID"),
        "{v}"
    );
    // Jaeger's 64-bit ids are left-padded.
    let (st, _) = get(&app, "/jaeger/api/traces/a3ce929d0e0e4736").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // A search over an empty store answers no traces, not an empty one.
    let (st, v) = get(&app, "/jaeger/api/traces?service=x").await;
    assert_eq!(st, StatusCode::OK);
    let r: JaegerResponse<Vec<TraceResponse>> = typed(v);
    assert!(r.data.is_empty());
}

#[tokio::test]
async fn search_services_operations_and_dependencies() {
    let (_d, store) = store().await;
    let base = base_ns();
    put_spans(&store, &hand_built(base)).await;
    let mut t2 = span(
        2,
        20,
        None,
        "ratings.default",
        "ratings:9080/*",
        "server",
        base,
        (1, 5),
    );
    t2.request_id = Some("rid-2".into());
    put_spans(&store, &[t2]).await;
    put_requests(&store, &log_rows(base, "rid-1")).await;
    let app = router(service(&store));

    let (st, v) = get(&app, "/jaeger/api/services").await;
    assert_eq!(st, StatusCode::OK);
    let r: JaegerResponse<Vec<String>> = typed(v);
    assert_eq!(
        r.data,
        ["productpage.default", "ratings.default", "reviews.default"]
    );
    let (_, v) = get(&app, "/jaeger/api/services/productpage.default/operations").await;
    let r: JaegerResponse<Vec<String>> = typed(v);
    assert_eq!(
        r.data,
        ["load", "productpage:9080/*", "render", "reviews:9080/*"]
    );
    let (_, v) = get(
        &app,
        "/jaeger/api/operations?service=productpage.default&spanKind=client",
    )
    .await;
    let r: JaegerResponse<Vec<grafana::Operation>> = typed(v);
    assert_eq!(r.data.len(), 1);
    assert_eq!(
        (r.data[0].name.as_str(), r.data[0].span_kind.as_str()),
        ("reviews:9080/*", "client")
    );

    // What Grafana sends: start/end in µs, lookback=custom, tags as JSON.
    let (start, end) = ((base - 60_000 * MS) / 1_000, (base + 60_000 * MS) / 1_000);
    let search = |extra: &str| {
        format!("/jaeger/api/traces?start={start}&end={end}&lookback=custom&limit=20&{extra}")
    };
    let (st, v) = get(&app, &search("service=reviews.default")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let r: JaegerResponse<Vec<TraceResponse>> = typed(v);
    assert_eq!(r.data.len(), 1);
    assert_eq!(r.total, 1);
    assert_eq!(
        r.data[0].spans.len(),
        6,
        "whole traces, not only matching spans"
    );
    let (_, v) = get(
        &app,
        &search("service=productpage.default&operation=all&minDuration=99ms&maxDuration=1s"),
    )
    .await;
    let r: JaegerResponse<Vec<TraceResponse>> = typed(v);
    assert_eq!(r.data.len(), 1);
    let (_, v) = get(
        &app,
        &search("service=productpage.default&minDuration=101ms"),
    )
    .await;
    let r: JaegerResponse<Vec<TraceResponse>> = typed(v);
    assert!(r.data.is_empty());
    // No service: a request-id tag search.
    let (st, v) = get(
        &app,
        &search("tags=%7B%22guid%3Ax-request-id%22%3A%22rid-2%22%7D"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let r: JaegerResponse<Vec<TraceResponse>> = typed(v);
    assert_eq!(r.data.len(), 1);
    assert_eq!(r.data[0].trace_id, tid(2).to_hex());
    // traceID=…&traceID=…
    let (_, v) = get(
        &app,
        &format!(
            "/jaeger/api/traces?traceID={}&traceID={}&traceID={}",
            tid(1).to_hex(),
            tid(2).to_hex(),
            tid(3).to_hex()
        ),
    )
    .await;
    let r: JaegerResponse<Vec<TraceResponse>> = typed(v);
    assert_eq!(r.data.len(), 2);
    // Errors name the parameter, in Jaeger's shape.
    for (q, param) in [
        ("", "service"),
        ("service=x&minDuration=5", "minDuration"),
        ("service=x&limit=abc", "limit"),
        ("service=x&start=yesterday", "start"),
        ("service=x&tags=%7Bbad", "tags"),
    ] {
        let (st, v) = get(&app, &format!("/jaeger/api/traces?{q}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {v}");
        let errs: Vec<grafana::StructuredError> = typed(v["errors"].clone());
        assert!(errs[0].msg.contains(&format!("`{param}`")), "{q}: {errs:?}");
    }

    // Dependencies: productpage's client spans → reviews' server span.
    let end_ms = (base + 60_000 * MS) / MS;
    let (st, v) = get(
        &app,
        &format!("/jaeger/api/dependencies?endTs={end_ms}&lookback=3600000"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let r: JaegerResponse<Vec<grafana::Dependency>> = typed(v);
    assert_eq!(r.data.len(), 1, "{:?}", r.data);
    assert_eq!(
        (
            r.data[0].parent.as_str(),
            r.data[0].child.as_str(),
            r.data[0].call_count
        ),
        ("productpage.default", "reviews.default", 1)
    );
    let (st, _) = get(&app, "/jaeger/api/dependencies?endTs=soon").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}
