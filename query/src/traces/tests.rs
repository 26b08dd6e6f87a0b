//! The trace APIs against a real `Store` in a temporary directory, driven with `oneshot`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use meshscope_schemas::rows::{RequestRow, SpanEvent, SpanRow, requests_batch, spans_batch};
use meshscope_storage::{Store, StoreConfig};
use serde_json::Value;
use tower::ServiceExt;

use super::*;

pub(crate) const MS: i64 = 1_000_000;

/// A few minutes ago, so that default search windows (the last hour) cover it.
pub(crate) fn base_ns() -> i64 {
    now_ns() - 5 * 60 * NS_PER_S
}

pub(crate) fn tid(n: u8) -> TraceId {
    TraceId([n; 16])
}

pub(crate) fn sid(n: u64) -> SpanId {
    SpanId(n.to_be_bytes())
}

/// A span of trace `trace`, `start_ms`/`dur_ms` from `base`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn span(
    trace: u8,
    id: u64,
    parent: Option<u64>,
    service: &str,
    name: &str,
    kind: &str,
    base: i64,
    (start_ms, dur_ms): (i64, i64),
) -> SpanRow {
    SpanRow {
        trace_id: tid(trace),
        span_id: sid(id),
        parent_span_id: parent.map(sid),
        start_time_unix_nano: base + start_ms * MS,
        duration_ns: dur_ms * MS,
        service_name: service.into(),
        name: name.into(),
        kind: kind.into(),
        status_code: "unset".into(),
        http_status_code: Some(200),
        ..Default::default()
    }
}

pub(crate) async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::local(dir.path())).await.unwrap();
    (dir, store)
}

pub(crate) async fn put_spans(store: &Store, rows: &[SpanRow]) {
    store
        .append(Table::Spans, spans_batch(rows).unwrap())
        .await
        .unwrap();
}

pub(crate) async fn put_requests(store: &Store, rows: &[RequestRow]) {
    store
        .append(Table::Requests, requests_batch(rows).unwrap())
        .await
        .unwrap();
}

pub(crate) fn service(store: &Store) -> TraceService {
    TraceService::new(
        QueryEngine::new(store.clone()).unwrap(),
        SqlLimits::default(),
    )
}

pub(crate) async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    (status, v)
}

/// The hand-built trace (ms from its start):
///
/// ```text
/// A server  productpage  [0, 100]
/// ├ B internal productpage [10, 40]
/// │ └ E internal productpage [15, 35]
/// ├ C client  productpage  [20, 90]   outbound to reviews
/// │ └ D server reviews     [30, 60]   the inbound half of the same hop
/// └ F client  productpage  [92, 95]   503 UO: the circuit breaker answered, no server span
/// ```
///
/// By hand: self time A = 100 − |B ∪ C ∪ F| = 100 − (80 + 3) = 17, B = 30 − 20 = 10,
/// C = 70 − 30 = 40, D = 30, E = 20, F = 3. Critical path, walking back from A's end at 100:
/// F ends last (95) → A [95,100]; F [92,95]; then C (ends 90) → A [90,92]; inside C, D →
/// C [60,90], D [30,60], C [20,30]; nothing in A ends before 20 → A [0,20]. So A 27, C 40,
/// D 30, F 3, B and E 0; 100 in all.
pub(crate) fn hand_built(base: i64) -> Vec<SpanRow> {
    let pp = "productpage.default";
    let mut c = span(
        1,
        3,
        Some(1),
        pp,
        "reviews:9080/*",
        "client",
        base,
        (20, 70),
    );
    c.upstream_cluster = Some("outbound|9080||reviews.default.svc.cluster.local".into());
    c.request_id = Some("rid-1".into());
    let mut d = span(
        1,
        4,
        Some(3),
        "reviews.default",
        "reviews:9080/*",
        "server",
        base,
        (30, 30),
    );
    d.upstream_cluster = Some("inbound|9080||".into());
    d.request_id = Some("rid-1".into());
    d.attributes = vec![("zone".into(), "z1".into())];
    d.events = vec![SpanEvent {
        time_unix_nano: base + 31 * MS,
        name: "retry".into(),
        attributes: vec![("n".into(), "1".into())],
    }];
    let mut f = span(1, 6, Some(1), pp, "reviews:9080/*", "client", base, (92, 3));
    f.upstream_cluster = Some("outbound|9080||reviews.default.svc.cluster.local".into());
    f.http_status_code = Some(503);
    f.response_flags = Some("UO".into());
    f.request_id = Some("rid-1".into());
    let mut a = span(
        1,
        1,
        None,
        pp,
        "productpage:9080/*",
        "server",
        base,
        (0, 100),
    );
    a.request_id = Some("rid-1".into());
    // Stored out of order on purpose.
    vec![
        d,
        f,
        span(1, 5, Some(2), pp, "render", "internal", base, (15, 20)),
        a,
        c,
        span(1, 2, Some(1), pp, "load", "internal", base, (10, 30)),
    ]
}

#[test]
fn waterfall_model_of_the_hand_built_trace() {
    let base = 1_000 * NS_PER_S;
    let v = trace_view(tid(1), &hand_built(base));
    let id = |n: u64| sid(n).to_hex();
    let order: Vec<&str> = v.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        v.spans
            .iter()
            .map(|s| s.span_id.clone())
            .collect::<Vec<_>>(),
        [1, 2, 5, 3, 4, 6].map(id),
        "{order:?}"
    );
    let field = |f: fn(&SpanView) -> i64| v.spans.iter().map(f).collect::<Vec<_>>();
    assert_eq!(
        v.spans.iter().map(|s| s.depth).collect::<Vec<_>>(),
        [0, 1, 2, 1, 2, 1]
    );
    assert_eq!(field(|s| s.offset_ns / MS), [0, 10, 15, 20, 30, 92]);
    assert_eq!(field(|s| s.self_ns / MS), [17, 10, 20, 40, 30, 3]);
    assert_eq!(field(|s| s.critical_path_ns / MS), [27, 0, 0, 40, 30, 3]);
    let path: Vec<(String, i64, i64)> = v
        .critical_path
        .iter()
        .map(|c| {
            (
                c.span_id.clone(),
                c.start_offset_ns / MS,
                c.end_offset_ns / MS,
            )
        })
        .collect();
    assert_eq!(
        path,
        vec![
            (id(1), 0, 20),
            (id(3), 20, 30),
            (id(4), 30, 60),
            (id(3), 60, 90),
            (id(1), 90, 92),
            (id(6), 92, 95),
            (id(1), 95, 100),
        ]
    );
    assert_eq!(v.duration_ns, 100 * MS);
    assert_eq!(v.span_count, 6);
    assert_eq!(v.error_count, 1);
    assert_eq!(v.root_span_ids, vec![id(1)]);
    assert_eq!(v.request_ids, vec!["rid-1".to_string()]);
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    // The hop C → D is a client/server pair across sidecars; F was answered by the client's
    // sidecar (UO).
    let c = &v.spans[3];
    assert_eq!(c.pair_span_id, Some(id(4)));
    assert_eq!(v.spans[4].pair_span_id, Some(id(3)));
    assert_eq!(v.spans[5].pair_span_id, None);
    assert_eq!(v.hops.len(), 2);
    let h = &v.hops[0];
    assert_eq!(
        (
            h.client_span_id.as_str(),
            h.server_span_id.as_deref(),
            h.destination_service.as_deref(),
            h.outside_server_ns,
            h.answered_by_client_sidecar
        ),
        (
            id(3).as_str(),
            Some(id(4).as_str()),
            Some("reviews.default"),
            Some(40 * MS),
            false
        )
    );
    let h = &v.hops[1];
    assert_eq!(h.server_span_id, None);
    assert_eq!(
        h.destination_service.as_deref(),
        Some("reviews.default.svc.cluster.local")
    );
    assert!(h.answered_by_client_sidecar && h.error);
    let f = &v.spans[5];
    assert!(f.error);
    assert_eq!(
        f.response_flag_meanings,
        vec![FlagMeaning {
            flag: "UO".into(),
            meaning: response_flag_meaning("UO")
        }]
    );
    // Every attribute, the dedicated columns under their original keys.
    let d = &v.spans[4];
    assert_eq!(d.attributes.get("zone").map(String::as_str), Some("z1"));
    assert_eq!(
        d.attributes.get("guid:x-request-id").map(String::as_str),
        Some("rid-1")
    );
    assert_eq!(
        d.attributes.get("upstream_cluster").map(String::as_str),
        Some("inbound|9080||")
    );
    assert_eq!(
        d.attributes.get("http.status_code").map(String::as_str),
        Some("200")
    );
    assert_eq!(d.events[0].offset_ns, 31 * MS);
}

#[test]
fn missing_parents_duplicates_and_cycles_become_warnings_not_errors() {
    let base = 0;
    let rows = vec![
        span(2, 1, Some(99), "a", "orphan", "server", base, (5, 10)),
        span(2, 2, Some(3), "a", "x", "internal", base, (0, 1)),
        span(2, 3, Some(2), "a", "y", "internal", base, (0, 1)),
        span(2, 4, None, "a", "root", "server", base, (0, 20)),
        span(2, 4, None, "a", "root copy", "server", base, (0, 20)),
    ];
    let v = trace_view(tid(2), &rows);
    assert_eq!(v.span_count, 4, "every span once");
    assert_eq!(v.spans[0].name, "root");
    assert!(v.root_span_ids.contains(&sid(1).to_hex()));
    assert_eq!(v.warnings.len(), 3, "{:?}", v.warnings);
    assert!(v.warnings.iter().any(|w| w.contains("not stored")));
    assert!(v.warnings.iter().any(|w| w.contains("cycle")));
    assert!(v.warnings.iter().any(|w| w.contains("more than once")));
    // Critical path of the first root covers it exactly.
    let total: i64 = v
        .critical_path
        .iter()
        .map(|c| c.end_offset_ns - c.start_offset_ns)
        .sum();
    assert_eq!(total, 20 * MS);
}

#[test]
fn parameters_are_parsed_or_refused_by_name() {
    assert_eq!(parse_duration("d", "10ms").unwrap(), 10 * MS);
    assert_eq!(parse_duration("d", "1.5s").unwrap(), 1_500 * MS);
    assert_eq!(parse_duration("d", "250us").unwrap(), 250_000);
    assert_eq!(parse_duration("d", "1m30s").unwrap(), 90 * NS_PER_S);
    for bad in ["10", "ms", "1.5x", "", "-3s"] {
        let e = parse_duration("min_duration", bad).unwrap_err();
        assert!(e.to_string().starts_with("parameter `min_duration`"), "{e}");
    }
    let mut tags = parse_tags("tags", r#"{"a":"b","http.status_code":503,"error":true}"#).unwrap();
    tags.sort();
    assert_eq!(
        tags,
        vec![
            ("a".to_string(), "b".to_string()),
            ("error".into(), "true".into()),
            ("http.status_code".into(), "503".into()),
        ]
    );
    assert_eq!(
        parse_tags("tags", r#"a=b  c="d e""#).unwrap(),
        vec![
            ("a".to_string(), "b".to_string()),
            ("c".into(), "d e".into())
        ]
    );
    assert!(parse_tags("tags", "nonsense").is_err());
    assert!(parse_tags("tags", r#"{"a":[1]}"#).is_err());
    assert!(parse_trace_id("trace_id", "0123456789abcdef", true).is_err());
    assert!(parse_trace_id("traceID", "0123456789abcdef", false).is_ok());
    assert!(parse_trace_id("trace_id", &"0".repeat(32), true).is_err());
    assert!(parse_trace_id("trace_id", &"g".repeat(32), true).is_err());
    assert_eq!(parse_status("5xx").unwrap(), (500, 599));
    assert_eq!(parse_status("503").unwrap(), (503, 503));
    assert!(parse_status("6xx").is_err());
    assert!(parse_time("from", "2026-11-26T01:02:03Z").is_ok());
    assert_eq!(parse_time("from", "1000").unwrap(), 1_000 * MS);
    assert!(parse_time("from", "yesterday").is_err());
}

#[tokio::test]
async fn trace_by_id_answers_the_waterfall_404_and_400() {
    let (_d, store) = store().await;
    let base = base_ns();
    put_spans(&store, &hand_built(base)).await;
    let app = router(service(&store));
    let (st, v) = get(&app, &format!("/api/v1/traces/{}", tid(1).to_hex())).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["span_count"], 6);
    assert_eq!(v["duration_ns"], 100 * MS);
    assert_eq!(v["spans"][3]["critical_path_ns"], 40 * MS);
    assert_eq!(v["spans"][5]["response_flags"], "UO");
    assert_eq!(
        v["spans"][4]["attributes"]["guid:x-request-id"], "rid-1",
        "{}",
        v["spans"][4]
    );
    assert_eq!(v["spans"][4]["events"][0]["attributes"]["n"], "1");

    let (st, v) = get(&app, &format!("/api/v1/traces/{}", tid(9).to_hex())).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], format!("trace {} not found", tid(9).to_hex()));
    for bad in [
        "xyz",
        "0123456789abcdef",
        "0123456789abcdef0123456789abcdeg",
    ] {
        let (st, v) = get(&app, &format!("/api/v1/traces/{bad}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(v["parameter"], "trace_id");
        assert_eq!(v["error_type"], "bad_parameter");
    }
}

/// Two access-log rows, one per sidecar, with the request id (stored out of time order).
pub(crate) fn log_rows(base: i64, rid: &str) -> Vec<RequestRow> {
    let row = |reporter: &str, proxy: &str, at_ms: i64| RequestRow {
        start_time_unix_nano: base + at_ms * MS,
        method: Some("GET".into()),
        path: Some("/reviews/0".into()),
        response_code: 200,
        duration_ms: 70,
        request_id: Some(rid.into()),
        reporter: Some(reporter.into()),
        proxy: Some(proxy.into()),
        source_workload: Some("productpage-v1".into()),
        source_app: Some("productpage".into()),
        destination_service_name: Some("reviews".into()),
        destination_service: Some("reviews.default.svc.cluster.local".into()),
        ..Default::default()
    };
    vec![
        row("destination", "reviews-v1-abc", 30),
        row("source", "productpage-v1-xyz", 20),
    ]
}

#[tokio::test]
async fn request_id_gives_trace_and_access_log_lines_in_time_order() {
    let (_d, store) = store().await;
    let base = base_ns();
    put_spans(&store, &hand_built(base)).await;
    put_requests(&store, &log_rows(base, "rid-1")).await;
    // Another request id whose only trace link is the access log's trace_id column.
    let mut other = log_rows(base, "rid-2");
    other[0].trace_id = Some(tid(1));
    put_requests(&store, &other[..1]).await;
    store.flush().await.unwrap();
    let app = router(service(&store));

    let (st, v) = get(&app, "/api/v1/requests/rid-1").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["trace_ids"], serde_json::json!([tid(1).to_hex()]));
    assert_eq!(v["traces"][0]["span_count"], 6);
    let log = v["access_log"].as_array().unwrap();
    assert_eq!(
        log.iter().map(|r| r["proxy"].clone()).collect::<Vec<_>>(),
        vec!["productpage-v1-xyz", "reviews-v1-abc"],
        "both sidecars, in time order"
    );
    let (st, v) = get(&app, "/api/v1/requests/rid-2").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["trace_ids"], serde_json::json!([tid(1).to_hex()]));
    assert_eq!(v["access_log"][0]["trace_id"], tid(1).to_hex());

    let (st, v) = get(&app, "/api/v1/requests/nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("\"nope\""), "{v}");
    let (st, v) = get(&app, "/api/v1/requests/a%20b").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["parameter"], "request_id");
}

/// Five traces for search tests: services, durations, tags and errors differ.
async fn search_fixture(store: &Store, base: i64) {
    let mut rows = Vec::new();
    for t in 1..=5u8 {
        let svc = if t <= 3 {
            "productpage.default"
        } else {
            "ratings.default"
        };
        let mut s = span(
            t,
            u64::from(t) * 10,
            None,
            svc,
            if t == 2 {
                "details:9080/*"
            } else {
                "reviews:9080/*"
            },
            "client",
            base,
            (i64::from(t), i64::from(t) * 10),
        );
        s.request_id = Some(format!("rid-{t}"));
        s.attributes = vec![("zone".into(), format!("z{}", t % 2))];
        if t == 3 {
            s.http_status_code = Some(503);
            s.response_flags = Some("UO".into());
        }
        let child = span(
            t,
            u64::from(t) * 10 + 1,
            Some(u64::from(t) * 10),
            "reviews.default",
            "reviews:9080/*",
            "server",
            base,
            (i64::from(t) + 1, 1),
        );
        rows.push(s);
        rows.push(child);
    }
    put_spans(store, &rows).await;
}

fn ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["traces"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn hexes(ts: &[u8]) -> Vec<String> {
    ts.iter().map(|t| tid(*t).to_hex()).collect()
}

#[tokio::test]
async fn search_filters_by_service_operation_tags_durations_and_errors() {
    let (_d, store) = store().await;
    let base = base_ns();
    search_fixture(&store, base).await;
    let app = router(service(&store));
    let q = |s: &str| format!("/api/v1/traces?{s}");
    let cases: &[(&str, &[u8])] = &[
        ("", &[1, 2, 3, 4, 5]),
        ("service=productpage.default", &[1, 2, 3]),
        ("service=reviews.default", &[1, 2, 3, 4, 5]),
        ("service=productpage.default&operation=details:9080/*", &[2]),
        ("min_duration=25ms", &[3, 4, 5]),
        ("min_duration=25ms&max_duration=0.04s", &[3, 4]),
        ("error=true", &[3]),
        ("error=false&service=productpage.default", &[1, 2]),
        ("tags=response_flags=UO", &[3]),
        ("tags=%7B%22guid%3Ax-request-id%22%3A%22rid-4%22%7D", &[4]),
        ("tags=zone=z0", &[2, 4]),
        ("tags=zone=z0%20http.status_code=200", &[2, 4]),
        ("tags=http.status_code=503", &[3]),
    ];
    for (query, want) in cases {
        let (st, v) = get(&app, &q(query)).await;
        assert_eq!(st, StatusCode::OK, "{query}: {v}");
        assert_eq!(ids(&v), hexes(want), "{query}");
    }
    // The limit keeps the most recent traces.
    let (_, v) = get(&app, &q("limit=2")).await;
    assert_eq!(ids(&v), hexes(&[4, 5]));
    let (_, v) = get(&app, &q("service=productpage.default")).await;
    let t3 = v["traces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["trace_id"] == tid(3).to_hex())
        .unwrap();
    assert_eq!(t3["span_count"], 2);
    assert_eq!(t3["error_count"], 1);
    assert_eq!(t3["response_flags"], serde_json::json!(["UO"]));
    assert_eq!(t3["root_service"], "productpage.default");
    // An empty window finds nothing.
    let (_, v) = get(&app, &q("from=1000&to=2000")).await;
    assert_eq!(ids(&v), Vec::<String>::new());
}

#[tokio::test]
async fn search_parameters_are_validated_by_name() {
    let (_d, store) = store().await;
    let app = router(service(&store));
    let cases = [
        ("min_duration=10", "min_duration"),
        ("max_duration=fast", "max_duration"),
        ("tags=oops", "tags"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("error=maybe", "error"),
        ("servce=x", "servce"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("status=9xx", "status"),
        ("source=a&service=b", "service"),
        ("tags=http.status_code=abc", "tags"),
    ];
    for (query, param) in cases {
        let (st, v) = get(&app, &format!("/api/v1/traces?{query}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["parameter"], param, "{query}: {v}");
    }
}

#[tokio::test]
async fn edge_search_links_access_log_rows_to_their_traces() {
    let (_d, store) = store().await;
    let base = base_ns();
    search_fixture(&store, base).await;
    // Access-log rows of the edge productpage → reviews for rid-1 (200) and rid-3 (503), and
    // a row of another edge.
    let mut rows = log_rows(base, "rid-1");
    let mut failed = log_rows(base, "rid-3");
    for r in &mut failed {
        r.response_code = 503;
        r.response_flags = Some("UO".into());
        r.duration_ms = 2;
    }
    rows.extend(failed);
    let mut other = log_rows(base, "rid-5").remove(0);
    other.source_workload = Some("reviews-v2".into());
    other.source_app = Some("reviews".into());
    other.destination_service_name = Some("ratings".into());
    other.destination_service = Some("ratings.default.svc.cluster.local".into());
    rows.push(other);
    put_requests(&store, &rows).await;
    let app = router(service(&store));
    let q = |s: &str| format!("/api/v1/traces?{s}");
    let cases: &[(&str, &[u8])] = &[
        ("source=productpage&destination=reviews", &[1, 3]),
        ("source=productpage-v1&destination=reviews&status=5xx", &[3]),
        (
            "destination=reviews.default.svc.cluster.local&status=200",
            &[1],
        ),
        ("destination=reviews&min_duration=50ms", &[1]),
        ("source=reviews", &[5]),
        ("destination=ratings&status=5xx", &[]),
    ];
    for (query, want) in cases {
        let (st, v) = get(&app, &q(query)).await;
        assert_eq!(st, StatusCode::OK, "{query}: {v}");
        assert_eq!(ids(&v), hexes(want), "{query}: {v}");
        for s in v["samples"].as_array().unwrap() {
            assert!(s["trace_id"].is_string(), "{s}");
        }
    }
}

#[tokio::test]
async fn lookups_by_trace_id_and_request_id_are_pruned() {
    let (_d, store) = store().await;
    let base = base_ns();
    // Two Parquet files with disjoint trace-id ranges, each with its own request ids.
    let mut low = hand_built(base);
    let mut high = hand_built(base);
    for s in &mut low {
        s.trace_id = TraceId([0x11; 16]);
    }
    // Request ids on both sides of "rid-high", so that min/max statistics cannot prune.
    low[1].request_id = Some("rid-0".into());
    low[2].request_id = Some("rid-zzz".into());
    for s in &mut high {
        s.trace_id = TraceId([0xee; 16]);
        s.request_id = Some("rid-high".into());
    }
    put_spans(&store, &low).await;
    store.flush().await.unwrap();
    put_spans(&store, &high).await;
    store.flush().await.unwrap();
    let svc = service(&store);
    let before = store.status();
    let spans = svc.trace_spans(&TraceId([0xee; 16])).await.unwrap();
    assert_eq!(spans.len(), 6);
    let after = store.status();
    assert_eq!(after.files_considered - before.files_considered, 2);
    assert_eq!(
        after.files_scanned - before.files_scanned,
        1,
        "the manifest's trace-id range leaves the other file out"
    );

    let before = svc.scan_figures();
    let (ids, _) = svc.request_trace_ids("rid-high").await.unwrap();
    assert_eq!(ids, vec![TraceId([0xee; 16])]);
    let after = svc.scan_figures();
    assert_eq!(
        after.row_groups_pruned_by_bloom_filter - before.row_groups_pruned_by_bloom_filter,
        1,
        "the bloom filter on request_id skips the file without it: {after:?}"
    );
    assert_eq!(
        after.row_groups_matched_by_bloom_filter - before.row_groups_matched_by_bloom_filter,
        1
    );
}

#[tokio::test]
async fn limits_answer_a_clear_error() {
    let (_d, store) = store().await;
    let base = base_ns();
    put_spans(&store, &hand_built(base)).await;
    let svc = TraceService::new(
        QueryEngine::new(store.clone()).unwrap(),
        SqlLimits {
            timeout: Duration::from_secs(10),
            max_rows: 3,
            ..SqlLimits::default()
        },
    );
    let app = router(svc);
    let (st, v) = get(&app, &format!("/api/v1/traces/{}", tid(1).to_hex())).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error_type"], "too_many_rows");
    assert!(v["error"].as_str().unwrap().contains("--sql-max-rows"));
    // A 1 ns limit: whether or not the timer fires first, the answer comes too late.
    store.flush().await.unwrap();
    let svc = TraceService::new(
        QueryEngine::new(store.clone()).unwrap(),
        SqlLimits {
            timeout: Duration::from_nanos(1),
            max_rows: 1000,
            ..SqlLimits::default()
        },
    );
    let (st, v) = get(&router(svc), &format!("/api/v1/traces/{}", tid(1).to_hex())).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error_type"], "timeout");
}
