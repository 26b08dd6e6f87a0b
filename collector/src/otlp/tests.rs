//! End-to-end tests of the OTLP receivers against a real store in a temp dir: bodies go in
//! over the HTTP router (and real sockets on 127.0.0.1), rows are read back from the store's
//! snapshot batches.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http_body_util::BodyExt;
use meshscope_schemas::Table;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::CompressionEncoding;
use tonic_types::StatusExt;
use tower::ServiceExt;

use super::*;
use meshscope_storage::{FsyncPolicy, Store, StoreConfig};

// ---- a thread-local allocation meter, for the gzip-bomb test --------------------------------

/// Wraps the system allocator; on a thread that turned metering on, tracks live bytes and
/// their peak. Other threads (and other tests) pay one thread-local read per allocation.
struct Meter;

thread_local! {
    static METERING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn meter_add(n: usize) {
    if METERING.with(|m| m.get()) {
        let live = LIVE.with(|l| {
            l.set(l.get() + n);
            l.get()
        });
        PEAK.with(|p| p.set(p.get().max(live)));
    }
}

fn meter_sub(n: usize) {
    if METERING.with(|m| m.get()) {
        LIVE.with(|l| l.set(l.get().saturating_sub(n)));
    }
}

unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        meter_add(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        meter_sub(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        meter_add(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        meter_sub(layout.size());
        meter_add(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static METER: Meter = Meter;

/// Runs `f` and returns its result and the peak of bytes it held allocated at once.
fn peak_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    METERING.with(|m| m.set(true));
    let r = f();
    METERING.with(|m| m.set(false));
    (r, PEAK.with(|p| p.get()))
}

// ---- fixtures -------------------------------------------------------------------------------

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn open_store(dir: &std::path::Path, max_buffer_bytes: usize) -> Store {
    let mut c = StoreConfig::local(dir);
    c.flush_interval = Duration::from_secs(3600);
    c.group_commit = Duration::ZERO;
    c.fsync = FsyncPolicy::Never;
    c.max_buffer_bytes = max_buffer_bytes;
    c.request_decoder = Some(request_decoder);
    Store::open(c).await.expect("open store")
}

/// A receiver's state with the store it writes to: the receiver holds only the writer handle,
/// the tests read back through the store.
#[derive(Clone)]
struct TestState {
    otlp: OtlpState,
    store: Store,
}

impl std::ops::Deref for TestState {
    type Target = OtlpState;
    fn deref(&self) -> &OtlpState {
        &self.otlp
    }
}

impl TestState {
    fn with_limits(self, limits: OtlpLimits) -> TestState {
        TestState {
            otlp: self.otlp.with_limits(limits),
            ..self
        }
    }

    fn with_enricher(self, f: impl Fn(&mut RequestRow) + Send + Sync + 'static) -> TestState {
        TestState {
            otlp: self.otlp.with_enricher(f),
            ..self
        }
    }
}

fn with_store(store: Store) -> TestState {
    TestState {
        otlp: OtlpState::new(store.clone()),
        store,
    }
}

async fn state(dir: &std::path::Path) -> TestState {
    with_store(open_store(dir, 1 << 30).await)
}

fn s(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// A client span as Envoy's OpenTelemetry tracer writes it for an outbound call.
fn envoy_span(i: u8, start: u64) -> Span {
    Span {
        trace_id: vec![i; 16],
        span_id: vec![i; 8],
        parent_span_id: vec![0xaa; 8],
        name: "reviews.default.svc.cluster.local:9080/*".into(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 2_500_000,
        attributes: vec![
            s("guid:x-request-id", &format!("req-{i}")),
            s("http.method", "GET"),
            s("http.status_code", "503"),
            s(
                "upstream_cluster",
                "outbound|9080|v1|reviews.default.svc.cluster.local",
            ),
            s("response_flags", "UO"),
            s("downstream_cluster", "-"),
            s("istio.canonical_service", "productpage"),
            s("x-custom", "kept"),
        ],
        events: vec![Event {
            time_unix_nano: start + 1_000,
            name: "upstream overflow".into(),
            ..Default::default()
        }],
        status: Some(Status {
            code: 2,
            message: "UO".into(),
        }),
        ..Default::default()
    }
}

fn trace_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "productpage.default"),
                    s("k8s.pod.name", "productpage-v1-abc"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "envoy".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn post(path: &str, content_type: &str, gzip: bool, body: Vec<u8>) -> Request<Body> {
    let mut b = Request::post(path).header(header::CONTENT_TYPE, content_type);
    if gzip {
        b = b.header(header::CONTENT_ENCODING, "gzip");
    }
    b.body(Body::from(body)).expect("request")
}

async fn call(state: &OtlpState, req: Request<Body>) -> (StatusCode, String, Vec<u8>) {
    let resp = http::router(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, ct, body.to_vec())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn stored(store: &Store, table: Table) -> Vec<RecordBatch> {
    let snap = store.snapshot(table, None, None);
    assert!(snap.files.is_empty(), "nothing is flushed in these tests");
    snap.batches
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

fn str_col<'a>(b: &'a RecordBatch, name: &str) -> &'a arrow::array::StringArray {
    b.column_by_name(name).expect(name).as_string::<i32>()
}

/// The keys and values of row `i` of a `Map<Utf8, Utf8>` column.
fn map_entries(b: &RecordBatch, name: &str, i: usize) -> Vec<(String, String)> {
    let m = b.column_by_name(name).expect(name).as_map();
    let entries = m.value(i);
    let k = entries.column(0).as_string::<i32>();
    let v = entries.column(1).as_string::<i32>();
    (0..entries.len())
        .map(|j| (k.value(j).to_string(), v.value(j).to_string()))
        .collect()
}

// ---- OTLP/HTTP --------------------------------------------------------------------------------

#[tokio::test]
async fn http_protobuf_spans_are_stored_with_fields_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path()).await;
    let t0 = now_ns();
    let body = trace_request(vec![envoy_span(1, t0), envoy_span(2, t0 + 10)]).encode_to_vec();
    let (status, ct, reply) = call(&st, post("/v1/traces", http::PROTOBUF, false, body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, http::PROTOBUF);
    let reply = ExportTraceServiceResponse::decode(reply.as_slice()).expect("reply");
    assert_eq!(reply.partial_success, None);

    let batches = stored(&st.store, Table::Spans);
    assert_eq!(rows(&batches), 2);
    let b = &batches[0];
    use meshscope_schemas::table::spans as c;
    let trace_ids = b
        .column_by_name(c::TRACE_ID)
        .expect("col")
        .as_fixed_size_binary();
    assert_eq!(trace_ids.value(0), &[1u8; 16]);
    assert_eq!(trace_ids.value(1), &[2u8; 16]);
    let parents = b
        .column_by_name(c::PARENT_SPAN_ID)
        .expect("col")
        .as_fixed_size_binary();
    assert_eq!(parents.value(0), &[0xaa; 8]);
    let starts = b
        .column_by_name(c::START_TIME)
        .expect("col")
        .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
    assert_eq!(starts.value(0), t0 as i64);
    let durations = b
        .column_by_name(c::DURATION_NS)
        .expect("col")
        .as_primitive::<Int64Type>();
    assert_eq!(durations.value(0), 2_500_000);
    assert_eq!(str_col(b, c::SERVICE_NAME).value(0), "productpage.default");
    assert_eq!(str_col(b, c::KIND).value(0), "client");
    assert_eq!(str_col(b, c::STATUS_CODE).value(0), "error");
    assert_eq!(str_col(b, c::STATUS_MESSAGE).value(0), "UO");
    assert_eq!(str_col(b, c::REQUEST_ID).value(1), "req-2");
    assert_eq!(str_col(b, c::HTTP_METHOD).value(0), "GET");
    let codes = b
        .column_by_name(c::HTTP_STATUS_CODE)
        .expect("col")
        .as_primitive::<Int32Type>();
    assert_eq!(codes.value(0), 503);
    assert_eq!(
        str_col(b, c::UPSTREAM_CLUSTER).value(0),
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(str_col(b, c::RESPONSE_FLAGS).value(0), "UO");
    assert!(str_col(b, c::DOWNSTREAM_CLUSTER).is_null(0), "`-` is null");
    assert_eq!(
        str_col(b, c::ISTIO_CANONICAL_SERVICE).value(0),
        "productpage"
    );
    assert_eq!(str_col(b, c::SCOPE_NAME).value(0), "envoy");
    assert_eq!(
        map_entries(b, c::ATTRIBUTES, 0),
        vec![("x-custom".to_string(), "kept".to_string())]
    );
    assert_eq!(
        map_entries(b, c::RESOURCE_ATTRIBUTES, 0),
        vec![("k8s.pod.name".to_string(), "productpage-v1-abc".to_string())]
    );
    let events = b.column_by_name(c::EVENTS).expect("col").as_list::<i32>();
    let e0 = events.value(0);
    let e0 = e0.as_struct();
    assert_eq!(e0.len(), 1);
    assert_eq!(
        e0.column_by_name("name")
            .expect("name")
            .as_string::<i32>()
            .value(0),
        "upstream overflow"
    );

    let stats = st.stats.snapshot();
    assert_eq!(
        (
            stats.spans_received,
            stats.spans_stored,
            stats.spans_rejected
        ),
        (2, 2, 0)
    );
}

/// OTLP/JSON as the spec's example and the JS/Python exporters write it: hex ids, enums as
/// integers, 64-bit integers as strings (and as numbers), an empty parent id.
#[tokio::test]
async fn http_json_spans_are_stored_with_fields_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path()).await;
    let t0 = now_ns();
    let json = format!(
        r#"{{"resourceSpans":[{{
            "resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"reviews"}}}},
                                      {{"key":"host.cpus","value":{{"intValue":"4"}}}}]}},
            "scopeSpans":[{{"scope":{{"name":"my.library","version":"1.0.0"}},
              "spans":[{{
                "traceId":"5B8EFFF798038103D269B633813FC60C",
                "spanId":"eee19b7ec3c1b174",
                "parentSpanId":"",
                "name":"GET /reviews/0",
                "kind":2,
                "startTimeUnixNano":"{t0}",
                "endTimeUnixNano":{t1},
                "attributes":[
                  {{"key":"http.response.status_code","value":{{"intValue":"200"}}}},
                  {{"key":"http.request.method","value":{{"stringValue":"GET"}}}},
                  {{"key":"tags","value":{{"arrayValue":{{"values":[{{"stringValue":"a"}},{{"intValue":2}}]}}}}}},
                  {{"key":"ratio","value":{{"doubleValue":0.5}}}},
                  {{"key":"cached","value":{{"boolValue":true}}}}
                ],
                "droppedAttributesCount":0,
                "events":[{{"timeUnixNano":"{t0}","name":"ev","attributes":[]}}],
                "links":[{{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708"}}],
                "status":{{"code":1}},
                "flags":257
              }}]
            }}]
        }}]}}"#,
        t1 = t0 + 1_000_000,
    );
    let (status, ct, reply) = call(
        &st,
        post(
            "/v1/traces",
            "application/json; charset=utf-8",
            false,
            json.into_bytes(),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(ct, http::JSON);
    assert_eq!(reply, b"{}");

    let batches = stored(&st.store, Table::Spans);
    assert_eq!(rows(&batches), 1);
    let b = &batches[0];
    use meshscope_schemas::table::spans as c;
    let tid = b
        .column_by_name(c::TRACE_ID)
        .expect("col")
        .as_fixed_size_binary();
    assert_eq!(
        meshscope_schemas::TraceId::from_bytes(tid.value(0)).map(|t| t.to_hex()),
        Ok("5b8efff798038103d269b633813fc60c".to_string())
    );
    assert!(b.column_by_name(c::PARENT_SPAN_ID).expect("col").is_null(0));
    assert_eq!(str_col(b, c::SERVICE_NAME).value(0), "reviews");
    assert_eq!(str_col(b, c::KIND).value(0), "server");
    assert_eq!(str_col(b, c::STATUS_CODE).value(0), "ok");
    assert_eq!(str_col(b, c::HTTP_METHOD).value(0), "GET");
    let codes = b
        .column_by_name(c::HTTP_STATUS_CODE)
        .expect("col")
        .as_primitive::<Int32Type>();
    assert_eq!(codes.value(0), 200);
    let durations = b
        .column_by_name(c::DURATION_NS)
        .expect("col")
        .as_primitive::<Int64Type>();
    assert_eq!(durations.value(0), 1_000_000);
    assert_eq!(
        map_entries(b, c::ATTRIBUTES, 0),
        vec![
            ("tags".to_string(), r#"["a",2]"#.to_string()),
            ("ratio".to_string(), "0.5".to_string()),
            ("cached".to_string(), "true".to_string()),
        ]
    );
    assert_eq!(
        map_entries(b, c::RESOURCE_ATTRIBUTES, 0),
        vec![("host.cpus".to_string(), "4".to_string())]
    );
    let links = b.column_by_name(c::LINKS).expect("col").as_list::<i32>();
    assert_eq!(links.value(0).len(), 1);
}

#[tokio::test]
async fn a_five_byte_trace_id_is_a_partial_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path()).await;
    let t0 = now_ns();
    let mut bad = envoy_span(2, t0);
    bad.trace_id = vec![1, 2, 3, 4, 5];
    let body = trace_request(vec![envoy_span(1, t0), bad, envoy_span(3, t0)]).encode_to_vec();
    let (status, _, reply) = call(&st, post("/v1/traces", http::PROTOBUF, false, body)).await;
    assert_eq!(status, StatusCode::OK);
    let ps = ExportTraceServiceResponse::decode(reply.as_slice())
        .expect("reply")
        .partial_success
        .expect("partial success");
    assert_eq!(ps.rejected_spans, 1);
    assert!(
        ps.error_message
            .contains("resource_spans[0].scope_spans[0].spans[1]")
            && ps
                .error_message
                .contains("trace id must be 16 bytes, got 5 bytes"),
        "{}",
        ps.error_message
    );
    assert_eq!(rows(&stored(&st.store, Table::Spans)), 2);

    // The same in OTLP/JSON: the reply is JSON too.
    let json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[
            {{"traceId":"0102030405","spanId":"0102030405060708","name":"bad","startTimeUnixNano":"{t0}","endTimeUnixNano":"{t0}"}},
            {{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"good","startTimeUnixNano":"{t0}","endTimeUnixNano":"{t0}"}}
        ]}}]}}]}}"#
    );
    let (status, ct, reply) = call(
        &st,
        post("/v1/traces", http::JSON, false, json.into_bytes()),
    )
    .await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, http::JSON));
    let reply: serde_json::Value = serde_json::from_slice(&reply).expect("json reply");
    assert_eq!(reply["partialSuccess"]["rejectedSpans"], 1);
    assert!(
        reply["partialSuccess"]["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("(name \"bad\")")),
        "{reply}"
    );
    assert_eq!(rows(&stored(&st.store, Table::Spans)), 3);
    let stats = st.stats.snapshot();
    assert_eq!(
        (
            stats.spans_received,
            stats.spans_stored,
            stats.spans_rejected
        ),
        (5, 3, 2)
    );
}

#[tokio::test]
async fn undecodable_bodies_are_400_with_a_status_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path()).await;
    let body = trace_request(vec![envoy_span(1, now_ns())]).encode_to_vec();
    let truncated = body[..body.len() - 7].to_vec();
    let (status, ct, reply) = call(&st, post("/v1/traces", http::PROTOBUF, false, truncated)).await;
    assert_eq!(
        (status, ct.as_str()),
        (StatusCode::BAD_REQUEST, http::PROTOBUF)
    );
    let err = tonic_types::pb::Status::decode(reply.as_slice()).expect("google.rpc.Status");
    assert_eq!(err.code, tonic::Code::InvalidArgument as i32);
    assert!(
        err.message
            .contains("cannot decode the traces body as protobuf"),
        "{}",
        err.message
    );

    let (status, ct, reply) = call(
        &st,
        post(
            "/v1/traces",
            http::JSON,
            false,
            b"{\"resourceSpans\": [".to_vec(),
        ),
    )
    .await;
    assert_eq!((status, ct.as_str()), (StatusCode::BAD_REQUEST, http::JSON));
    let err: serde_json::Value = serde_json::from_slice(&reply).expect("json");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("OTLP/JSON")),
        "{err}"
    );

    // A trace id that is not hex fails the whole JSON body.
    let (status, _, _) = call(
        &st,
        post(
            "/v1/traces",
            http::JSON,
            false,
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#.to_vec(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _, _) = call(
        &st,
        post("/v1/traces", http::PROTOBUF, true, b"not gzip".to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&st, post("/v1/traces", "text/plain", false, vec![])).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(rows(&stored(&st.store, Table::Spans)), 0);
    assert_eq!(st.stats.snapshot().requests_invalid, 5);
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path()).await;
    let body = gzip(&trace_request(vec![envoy_span(1, now_ns())]).encode_to_vec());
    let (status, _, _) = call(&st, post("/v1/traces", http::PROTOBUF, true, body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows(&stored(&st.store, Table::Spans)), 1);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path()).await.with_limits(OtlpLimits {
        max_body_bytes: 64 << 10,
        ..Default::default()
    });
    let spans = (0..2000)
        .map(|i| envoy_span((i % 250 + 1) as u8, now_ns()))
        .collect();
    let body = trace_request(spans).encode_to_vec();
    assert!(body.len() > 64 << 10);
    // With and without a Content-Length header.
    let mut with_len = post("/v1/traces", http::PROTOBUF, false, body.clone());
    with_len
        .headers_mut()
        .insert(header::CONTENT_LENGTH, body.len().into());
    let (status, _, reply) = call(&st, with_len).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let err = tonic_types::pb::Status::decode(reply.as_slice()).expect("status");
    assert!(err.message.contains("65536 bytes"), "{}", err.message);
    let (status, _, _) = call(&st, post("/v1/traces", http::PROTOBUF, false, body.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Compressed it fits the limit; decompressed it does not.
    let small = gzip(&body);
    assert!(small.len() < 64 << 10, "{}", small.len());
    let (status, _, reply) = call(&st, post("/v1/traces", http::PROTOBUF, true, small)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let err = tonic_types::pb::Status::decode(reply.as_slice()).expect("status");
    assert!(
        err.message.contains("after decompression"),
        "{}",
        err.message
    );
    assert_eq!(rows(&stored(&st.store, Table::Spans)), 0);
}

/// 1 GiB of zeros in ~1 MiB of gzip (1024 members of 1 MiB each, which HTTP gzip allows).
fn gzip_bomb() -> Vec<u8> {
    let member = gzip(&vec![0u8; 1 << 20]);
    let mut bomb = Vec::with_capacity(member.len() * 1024);
    for _ in 0..1024 {
        bomb.extend_from_slice(&member);
    }
    bomb
}

#[tokio::test]
async fn a_gzip_bomb_is_413_without_allocating_past_the_limit() {
    let limit = 4 << 20;
    let bomb = gzip_bomb();
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());

    // The decoder alone, metered: its peak is the output limit plus fixed-size buffers.
    let (result, peak) = peak_allocation(|| http::gunzip_capped(&bomb, limit));
    assert!(matches!(
        result,
        Err(OtlpError::TooLarge {
            decompressed: true,
            ..
        })
    ));
    eprintln!("gzip bomb: peak {peak} bytes allocated for a limit of {limit}");
    assert!(
        peak <= limit + (256 << 10),
        "peak {peak} bytes for a limit of {limit}"
    );

    // One single-member stream, too (64 MiB of zeros).
    let single = gzip(&vec![0u8; 64 << 20]);
    let (result, peak) = peak_allocation(|| http::gunzip_capped(&single, limit));
    assert!(matches!(result, Err(OtlpError::TooLarge { .. })));
    eprintln!("gzip bomb: peak {peak} bytes allocated for a limit of {limit}");
    assert!(
        peak <= limit + (256 << 10),
        "peak {peak} bytes for a limit of {limit}"
    );

    // Through the router.
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path()).await.with_limits(OtlpLimits {
        max_body_bytes: limit,
        ..Default::default()
    });
    let (status, _, reply) = call(&st, post("/v1/traces", http::PROTOBUF, true, bomb)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let err = tonic_types::pb::Status::decode(reply.as_slice()).expect("status");
    assert_eq!(err.code, tonic::Code::ResourceExhausted as i32);
}

#[tokio::test]
async fn storage_back_pressure_is_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Any buffered byte is over the limit: the first append passes, the next is refused.
    let st = with_store(open_store(dir.path(), 0).await);
    let body = trace_request(vec![envoy_span(1, now_ns())]).encode_to_vec();
    let (status, _, _) = call(&st, post("/v1/traces", http::PROTOBUF, false, body.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let resp = http::router(st.otlp.clone())
        .oneshot(post("/v1/traces", http::PROTOBUF, false, body))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        resp.headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(st.stats.snapshot().requests_throttled, 1);
    assert_eq!(rows(&stored(&st.store, Table::Spans)), 1);
}

fn envoy_log_request(start: u64) -> ExportLogsServiceRequest {
    let i = |k: &str, v: i64| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(v)),
        }),
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    s("log_name", "otel_envoy_accesslog"),
                    s(
                        "node_name",
                        "sidecar~10.0.0.5~productpage-v1-abc.default~default.svc.cluster.local",
                    ),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord {
                        time_unix_nano: start,
                        trace_id: vec![5; 16],
                        body: Some(AnyValue {
                            value: Some(Value::StringValue(
                                "[..] \"GET /reviews/0\" 503 UO".into(),
                            )),
                        }),
                        attributes: vec![
                            s("method", "GET"),
                            s("path", "/reviews/0"),
                            i("response_code", 503),
                            s("response_flags", "UO"),
                            s("x-request-id", "req-1"),
                            s(
                                "upstream_cluster",
                                "outbound|9080|v1|reviews.default.svc.cluster.local",
                            ),
                            i("duration", 2),
                        ],
                        ..Default::default()
                    },
                    LogRecord {
                        time_unix_nano: start,
                        body: Some(AnyValue {
                            value: Some(Value::StringValue("not an access log".into())),
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn http_logs_become_request_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path())
        .await
        .with_enricher(|r| r.reporter = Some("source".into()));
    let t0 = now_ns();
    let body = serde_json::to_vec(&envoy_log_request(t0)).expect("json");
    let (status, ct, reply) = call(&st, post("/v1/logs", http::JSON, false, body)).await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, http::JSON));
    let reply: ExportLogsServiceResponse = serde_json::from_slice(&reply).expect("reply");
    let ps = reply.partial_success.expect("partial");
    assert_eq!(ps.rejected_log_records, 1);
    assert!(
        ps.error_message.contains("log_records[1]"),
        "{}",
        ps.error_message
    );

    let batches = stored(&st.store, Table::Requests);
    assert_eq!(rows(&batches), 1);
    let b = &batches[0];
    use meshscope_schemas::table::requests as c;
    let codes = b
        .column_by_name(c::RESPONSE_CODE)
        .expect("col")
        .as_primitive::<Int32Type>();
    assert_eq!(codes.value(0), 503);
    assert_eq!(str_col(b, c::REQUEST_ID).value(0), "req-1");
    assert_eq!(str_col(b, c::RESPONSE_FLAGS).value(0), "UO");
    assert_eq!(str_col(b, c::LOG_SOURCE).value(0), "otlp");
    assert_eq!(str_col(b, c::REPORTER).value(0), "source");
    assert!(
        str_col(b, c::PROXY)
            .value(0)
            .starts_with("sidecar~10.0.0.5~")
    );
    let tid = b
        .column_by_name(c::TRACE_ID)
        .expect("col")
        .as_fixed_size_binary();
    assert_eq!(tid.value(0), &[5u8; 16]);
    let stats = st.stats.snapshot();
    assert_eq!(
        (
            stats.log_records_received,
            stats.log_records_stored,
            stats.log_records_rejected
        ),
        (2, 1, 1)
    );
}

/// `serve_http` on a real socket: HTTP/1.1 from a plain TCP client.
#[tokio::test]
async fn serve_http_answers_on_a_socket_and_shuts_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_http(listener, st.otlp.clone(), async {
        let _ = stopped.await;
    }));
    let body = trace_request(vec![envoy_span(1, now_ns())]).encode_to_vec();
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        http::PROTOBUF,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    conn.write_all(&body).await.expect("write");
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).await.expect("read");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert_eq!(rows(&stored(&st.store, Table::Spans)), 1);
    let _ = stop.send(());
    server.await.expect("join").expect("serve_http");
}

// ---- OTLP/gRPC --------------------------------------------------------------------------------

struct GrpcServer {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), OtlpError>>,
}

impl GrpcServer {
    async fn start(st: OtlpState) -> GrpcServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_grpc(listener, st, async {
            let _ = stopped.await;
        }));
        GrpcServer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.expect("join").expect("serve_grpc");
    }
}

#[tokio::test]
async fn grpc_export_stores_spans_and_reports_partial_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path()).await;
    let server = GrpcServer::start(st.otlp.clone()).await;
    let mut client = TraceServiceClient::connect(server.url())
        .await
        .expect("connect")
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let t0 = now_ns();
    let mut backwards = envoy_span(2, t0);
    backwards.end_time_unix_nano = t0 - 1;
    let reply = client
        .export(trace_request(vec![envoy_span(1, t0), backwards]))
        .await
        .expect("export")
        .into_inner();
    let ps = reply.partial_success.expect("partial success");
    assert_eq!(ps.rejected_spans, 1);
    assert!(ps.error_message.contains("spans[1]") && ps.error_message.contains("before"));
    let batches = stored(&st.store, Table::Spans);
    assert_eq!(rows(&batches), 1);
    assert_eq!(
        str_col(&batches[0], meshscope_schemas::table::spans::REQUEST_ID).value(0),
        "req-1"
    );

    let mut logs = LogsServiceClient::connect(server.url())
        .await
        .expect("connect");
    let reply = logs
        .export(envoy_log_request(t0))
        .await
        .expect("export")
        .into_inner();
    assert_eq!(
        reply.partial_success.map(|p| p.rejected_log_records),
        Some(1)
    );
    assert_eq!(rows(&stored(&st.store, Table::Requests)), 1);
    server.stop().await;
}

#[tokio::test]
async fn grpc_oversized_messages_are_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = state(dir.path()).await.with_limits(OtlpLimits {
        max_body_bytes: 64 << 10,
        ..Default::default()
    });
    let server = GrpcServer::start(st.otlp.clone()).await;
    let big = trace_request(
        (0..2000)
            .map(|i| envoy_span((i % 250 + 1) as u8, now_ns()))
            .collect(),
    );
    assert!(big.encoded_len() > 64 << 10);
    // Declared length over the limit (tonic's OUT_OF_RANGE, reported as RESOURCE_EXHAUSTED)…
    let mut plain = TraceServiceClient::connect(server.url())
        .await
        .expect("connect");
    let err = plain.export(big.clone()).await.expect_err("too large");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // …and compressed under the limit but over it once inflated.
    let mut gz = TraceServiceClient::connect(server.url())
        .await
        .expect("connect")
        .send_compressed(CompressionEncoding::Gzip);
    let err = gz.export(big).await.expect_err("too large");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert_eq!(rows(&stored(&st.store, Table::Spans)), 0);
    assert_eq!(st.stats.snapshot().requests_invalid, 2);
    server.stop().await;
}

#[tokio::test]
async fn grpc_back_pressure_is_unavailable_with_retry_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = with_store(open_store(dir.path(), 0).await);
    let server = GrpcServer::start(st.otlp.clone()).await;
    let mut client = TraceServiceClient::connect(server.url())
        .await
        .expect("connect");
    let req = trace_request(vec![envoy_span(1, now_ns())]);
    client.export(req.clone()).await.expect("first export fits");
    let err = client.export(req).await.expect_err("overloaded");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    let retry = err.get_details_retry_info().expect("RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
    assert_eq!(st.stats.snapshot().requests_throttled, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_logged_trace_export_replays_into_the_same_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Spans in two hours and one invalid span (end before start), which is not stored.
    let hour = 3_600_000_000_000u64;
    let t0 = now_ns() / hour * hour - hour;
    let mut bad = envoy_span(9, t0 + 50);
    bad.end_time_unix_nano = t0;
    let spans = vec![
        envoy_span(1, t0 + 10),
        bad,
        envoy_span(2, t0 + hour - 1),
        envoy_span(3, t0 + hour + 7),
    ];
    let body = Bytes::from(trace_request(spans).encode_to_vec());
    let before = {
        let st = state(dir.path()).await;
        let decoded = ingest::decode_traces_protobuf(body.clone()).expect("decodes");
        assert!(matches!(decoded, ingest::DecodedTraces::Batch(..)));
        let outcome = ingest::store_traces(&st, decoded).await.expect("stored");
        assert_eq!((outcome.stored, outcome.rejected.len()), (3, 1));
        let before = stored(&st.store, Table::Spans);
        // Halt as a crash would: the rows are only in the WAL, as the request.
        st.store.halt().await;
        before
    };
    let wal_dir = dir.path().join("wal");
    let wal_bytes: usize = meshscope_storage::wal::list_segments(&wal_dir)
        .expect("segments")
        .iter()
        .map(|&s| {
            std::fs::metadata(meshscope_storage::wal::segment_path(&wal_dir, s))
                .map_or(0, |m| m.len()) as usize
        })
        .sum();
    let record = meshscope_storage::wal::encode_request_record(&body);
    assert_eq!(wal_bytes, record.len(), "one record: the request");
    let store = open_store(dir.path(), 1 << 30).await;
    let after = stored(&store, Table::Spans);
    assert_eq!(rows(&after), 3);
    let all = |b: &[RecordBatch]| {
        arrow::compute::concat_batches(&Table::Spans.schema(), b).expect("concat")
    };
    assert_eq!(all(&after), all(&before));
    // Replay splits the rows by hour again.
    assert_eq!(after.len(), 2);
    assert_eq!(
        rows(
            &store
                .snapshot(Table::Spans, Some((t0 + hour) as i64), None)
                .batches
        ),
        1
    );
}

/// The decoder the store replays logged exports with: a body this receiver never read (a
/// torn or overwritten record) is an error, so replay treats it as corruption.
#[test]
fn the_wal_decoder_refuses_what_is_not_a_trace_export() {
    let e = request_decoder(&0u32.to_le_bytes()).unwrap_err();
    assert!(e.contains("does not decode"), "{e}");
}
