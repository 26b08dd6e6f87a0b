//! `meshscope bench otlp`: an OTLP trace load generator, to measure a receiver (meshscope or
//! any other collector) from outside its process.
//!
//! It builds bookinfo spans as Istio's sidecars report them (the same mesh as `bench
//! storage`: 16-byte trace ids, `guid:x-request-id`, `upstream_cluster`, `istio.*` tags, …),
//! groups each batch by reporting proxy into `ResourceSpans` as Envoy's OpenTelemetry tracer
//! does, and encodes every export request once, before the clock starts. Then `concurrency`
//! tasks, each with its own connection, send those bodies over OTLP/gRPC or OTLP/HTTP
//! (protobuf) until `spans` spans are acknowledged or `max_time` has passed, and it prints
//! the spans acknowledged per second with request latencies.
//!
//! A span counts once its export request is answered OK; spans the receiver rejects through
//! partial success are counted apart. Back-pressure (HTTP 429/503, gRPC UNAVAILABLE) is
//! retried after a short pause, as OTLP exporters do. At most `distinct` spans are encoded
//! (bounded client memory); past that, the same requests are sent again.
//!
//! The client's own CPU is not the figure: `bench/otlp_vs_rotel.sh` runs this in its own
//! process and reads the receiver's CPU time from /proc.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use axum::http;
use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use meshscope_schemas::rows::SpanRow;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use meshscope_query::api::time::now_ns;
use meshscope_testkit::spans::bookinfo_spans;

use crate::percentile;

/// Where to send: `grpc://host:port` or `http://host:port` (OTLP/HTTP, `/v1/traces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Grpc(String),
    Http(String),
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        if let Some(rest) = s.strip_prefix("grpc://") {
            Ok(Target::Grpc(format!("http://{rest}")))
        } else if s.starts_with("http://") {
            Ok(Target::Http(format!(
                "{}/v1/traces",
                s.trim_end_matches('/').trim_end_matches("/v1/traces")
            )))
        } else {
            Err(format!(
                "{s:?}: expected grpc://host:port or http://host:port"
            ))
        }
    }
}

/// What `bench otlp` is asked to do.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: Target,
    pub spans: usize,
    pub batch: usize,
    pub concurrency: usize,
    pub max_time: Duration,
    pub distinct: usize,
}

/// Shared progress of the sending tasks.
#[derive(Default)]
struct Progress {
    /// Next request to send (index into the bodies, modulo their number).
    next: AtomicUsize,
    /// Spans claimed by a task so far; stops the tasks at `spans`.
    claimed: AtomicUsize,
    acked: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
}

/// Runs the load and prints its figures; the last line is `RESULT key=value …` for scripts.
pub async fn run(spec: LoadSpec) -> anyhow::Result<()> {
    ensure!(
        spec.spans > 0 && spec.batch > 0 && spec.concurrency > 0,
        "--spans, --batch and --concurrency must be at least 1"
    );
    let t = Instant::now();
    let bodies = encode_requests(spec.spans.min(spec.distinct.max(spec.batch)), spec.batch);
    let bytes: usize = bodies.iter().map(|(b, _)| b.len()).sum();
    let encoded_spans: usize = bodies.iter().map(|(_, n)| n).sum();
    println!(
        "encoded {} export requests ({encoded_spans} spans, {:.0} bytes/span protobuf) in {:.1} s (not timed)",
        bodies.len(),
        bytes as f64 / encoded_spans as f64,
        t.elapsed().as_secs_f64()
    );
    let bodies = Arc::new(bodies);
    let progress = Arc::new(Progress::default());
    let deadline = Instant::now() + spec.max_time;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..spec.concurrency {
        let (bodies, progress, spec) = (bodies.clone(), progress.clone(), spec.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = Sender::connect(&spec.target).await?;
            let mut latencies = Vec::new();
            loop {
                let i = progress.next.fetch_add(1, Ordering::Relaxed);
                let (body, n) = &bodies[i % bodies.len()];
                if progress.claimed.fetch_add(*n, Ordering::Relaxed) >= spec.spans
                    || Instant::now() >= deadline
                {
                    return anyhow::Ok(latencies);
                }
                let t = Instant::now();
                let rejected = loop {
                    match sender.send(body.clone()).await? {
                        Reply::Ok { rejected } => break rejected,
                        Reply::Retry => {
                            progress.retries.fetch_add(1, Ordering::Relaxed);
                            if Instant::now() >= deadline {
                                return Ok(latencies);
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                latencies.push(t.elapsed());
                let stored = (*n as u64).saturating_sub(rejected);
                progress.acked.fetch_add(stored, Ordering::Relaxed);
                progress.rejected.fetch_add(rejected, Ordering::Relaxed);
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("a sending task panicked")??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let acked = progress.acked.load(Ordering::Relaxed);
    let rejected = progress.rejected.load(Ordering::Relaxed);
    let retries = progress.retries.load(Ordering::Relaxed);
    let ms = |q| percentile(&latencies, q).as_secs_f64() * 1e3;
    println!(
        "{}: {acked} spans acked in {} requests in {elapsed:.2} s: {:.0} spans/s; latency p50 {:.1} ms, p99 {:.1} ms; \
         {rejected} spans rejected, {retries} retries after back-pressure",
        match &spec.target {
            Target::Grpc(u) => format!("OTLP/gRPC {u}"),
            Target::Http(u) => format!("OTLP/HTTP {u}"),
        },
        latencies.len(),
        acked as f64 / elapsed,
        ms(0.5),
        ms(0.99)
    );
    if acked == 0 {
        bail!("no span was acknowledged");
    }
    println!(
        "RESULT spans_acked={acked} spans_rejected={rejected} requests={} seconds={elapsed:.3} retries={retries}",
        latencies.len()
    );
    Ok(())
}

/// Encodes `spans` bookinfo spans as export requests of `batch` spans; each body with its
/// span count.
fn encode_requests(spans: usize, batch: usize) -> Vec<(Bytes, usize)> {
    let rows = bookinfo_spans(spans, now_ns());
    rows.chunks(batch)
        .map(|chunk| {
            (
                Bytes::from(export_request(chunk).encode_to_vec()),
                chunk.len(),
            )
        })
        .collect()
}

/// One export request: a `ResourceSpans` per reporting proxy, in order of first appearance.
fn export_request(rows: &[SpanRow]) -> ExportTraceServiceRequest {
    let mut resource_spans: Vec<ResourceSpans> = Vec::new();
    let mut services: Vec<&str> = Vec::new();
    for r in rows {
        let i = match services.iter().position(|s| *s == r.service_name) {
            Some(i) => i,
            None => {
                services.push(&r.service_name);
                resource_spans.push(ResourceSpans {
                    resource: Some(Resource {
                        attributes: std::iter::once(kv("service.name", &r.service_name))
                            .chain(r.resource_attributes.iter().map(|(k, v)| kv(k, v)))
                            .collect(),
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "envoy".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                resource_spans.len() - 1
            }
        };
        resource_spans[i].scope_spans[0].spans.push(span(r));
    }
    ExportTraceServiceRequest { resource_spans }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// A span with the tags Envoy's tracer writes (values as strings, `-` for none).
fn span(r: &SpanRow) -> Span {
    let tag = |key: &str, v: &Option<String>| kv(key, v.as_deref().unwrap_or("-"));
    let mut attributes = vec![
        tag("guid:x-request-id", &r.request_id),
        tag("http.method", &r.http_method),
        kv(
            "http.status_code",
            &r.http_status_code.unwrap_or(0).to_string(),
        ),
        tag("http.url", &r.http_url),
        tag("http.protocol", &r.http_protocol),
        tag("user_agent", &r.user_agent),
        tag("upstream_cluster", &r.upstream_cluster),
        tag("upstream_cluster.name", &r.upstream_cluster),
        tag("response_flags", &r.response_flags),
        tag("peer.address", &r.peer_address),
        tag("downstream_cluster", &r.downstream_cluster),
        tag("node_id", &r.node_id),
        tag("component", &r.component),
        tag("istio.canonical_service", &r.istio_canonical_service),
        tag("istio.canonical_revision", &r.istio_canonical_revision),
        tag("istio.namespace", &r.istio_namespace),
        tag("istio.mesh_id", &r.istio_mesh_id),
    ];
    if let Some(a) = &r.upstream_address {
        attributes.push(kv("upstream_address", a));
    }
    attributes.extend(r.attributes.iter().map(|(k, v)| kv(k, v)));
    Span {
        trace_id: r.trace_id.0.to_vec(),
        span_id: r.span_id.0.to_vec(),
        parent_span_id: r.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        name: r.name.clone(),
        kind: match r.kind.as_str() {
            "client" => SpanKind::Client,
            "server" => SpanKind::Server,
            _ => SpanKind::Internal,
        } as i32,
        start_time_unix_nano: r.start_time_unix_nano as u64,
        end_time_unix_nano: (r.start_time_unix_nano + r.duration_ns) as u64,
        attributes,
        status: Some(Status {
            code: if r.status_code == "error" {
                StatusCode::Error
            } else {
                StatusCode::Unset
            } as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

/// What an export request got back.
enum Reply {
    Ok {
        rejected: u64,
    },
    /// Back-pressure: send again later.
    Retry,
}

/// One connection to the receiver.
enum Sender {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http {
        client: Box<HttpClient>,
        uri: hyper::Uri,
    },
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

impl Sender {
    async fn connect(target: &Target) -> anyhow::Result<Sender> {
        Ok(match target {
            Target::Grpc(url) => {
                let channel = tonic::transport::Endpoint::from_shared(url.clone())?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
                Sender::Grpc(tonic::client::Grpc::new(channel).max_decoding_message_size(16 << 20))
            }
            Target::Http(url) => Sender::Http {
                client: Box::new(
                    hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .pool_max_idle_per_host(1)
                    .build_http(),
                ),
                uri: url.parse().with_context(|| format!("bad URL {url}"))?,
            },
        })
    }

    async fn send(&mut self, body: Bytes) -> anyhow::Result<Reply> {
        match self {
            Sender::Grpc(grpc) => {
                grpc.ready().await.context("gRPC connection")?;
                let path = http::uri::PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                );
                match grpc
                    .unary(tonic::Request::new(body), path, EncodedCodec)
                    .await
                {
                    Ok(resp) => Ok(Reply::Ok {
                        rejected: rejected_spans(&resp.into_inner()),
                    }),
                    Err(s) if matches!(s.code(), tonic::Code::Unavailable) => Ok(Reply::Retry),
                    Err(s) => bail!("gRPC export failed: {s}"),
                }
            }
            Sender::Http { client, uri } => {
                let req = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(body))?;
                let resp = client.request(req).await.context("OTLP/HTTP request")?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                if status == http::StatusCode::TOO_MANY_REQUESTS
                    || status == http::StatusCode::SERVICE_UNAVAILABLE
                {
                    return Ok(Reply::Retry);
                }
                if !status.is_success() {
                    bail!(
                        "OTLP/HTTP export answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                // An empty 200 is a full success too.
                let resp = ExportTraceServiceResponse::decode(body).unwrap_or_default();
                Ok(Reply::Ok {
                    rejected: rejected_spans(&resp),
                })
            }
        }
    }
}

fn rejected_spans(resp: &ExportTraceServiceResponse) -> u64 {
    resp.partial_success
        .as_ref()
        .map_or(0, |p| p.rejected_spans.max(0) as u64)
}

/// A gRPC codec that sends an already encoded request and decodes the export response.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedCodec
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("bad export response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_group_spans_by_proxy_and_keep_every_span() {
        let rows = bookinfo_spans(300, now_ns());
        let req = export_request(&rows);
        let spans: usize = req
            .resource_spans
            .iter()
            .map(|r| r.scope_spans[0].spans.len())
            .sum();
        assert_eq!(spans, 300);
        let (back, rejected) = meshscope_collector::otlp::traces::spans_from_request(req);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(back.len(), 300);
        let services: std::collections::HashSet<_> =
            back.iter().map(|r| r.service_name.clone()).collect();
        let expected: std::collections::HashSet<_> =
            rows.iter().map(|r| r.service_name.clone()).collect();
        assert_eq!(services, expected);
        assert!(back.iter().all(|r| r.request_id.is_some()
            && r.istio_canonical_service.is_some()
            && r.http_status_code.is_some()));
    }

    #[test]
    fn targets() {
        assert_eq!(
            "grpc://127.0.0.1:4317".parse(),
            Ok(Target::Grpc("http://127.0.0.1:4317".into()))
        );
        assert_eq!(
            "http://127.0.0.1:4318/".parse(),
            Ok(Target::Http("http://127.0.0.1:4318/v1/traces".into()))
        );
        assert!("tcp://x".parse::<Target>().is_err());
    }
}
