//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` and
//! `opentelemetry.proto.collector.logs.v1.LogsService/Export`.
//!
//! - Trace exports are read by `ingest::decode_traces_protobuf` (straight into Arrow) through
//!   a codec of our own, [`TraceServer`]; logs use the generated prost server.
//! - gzip-compressed messages are accepted, and replies are gzip-compressed for clients that
//!   ask for it.
//! - Messages larger than `OtlpLimits::max_body_bytes` (before or after decompression) fail
//!   with RESOURCE_EXHAUSTED. tonic answers OUT_OF_RANGE when the frame's declared length is
//!   over the limit; a response layer turns that into RESOURCE_EXHAUSTED, the code the OTLP
//!   exporters and grpc-go use for "message too large" (and which they do not retry).
//! - Invalid spans or records: OK with `partial_success`.
//! - Storage back-pressure: UNAVAILABLE (retryable in OTLP) with a `google.rpc.RetryInfo`
//!   detail giving the delay, which OTLP exporters honour.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{self, HeaderValue};
use bytes::Buf;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::ingest::DecodedTraces;
use super::{OtlpError, OtlpState, OtlpStats, ingest};
use meshscope_storage::StoreError;

/// The `LogsService` implementation.
#[derive(Debug, Clone)]
pub struct LogsReceiver {
    state: OtlpState,
}

#[tonic::async_trait]
impl LogsService for LogsReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let outcome = ingest::export_logs(&self.state, request.into_inner())
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(outcome.logs_response()))
    }
}

/// How an ingest error reaches a gRPC client.
fn status(e: &OtlpError) -> Status {
    if !matches!(e, OtlpError::Store(StoreError::Overloaded(..))) {
        tracing::warn!(error = %e, "OTLP/gRPC export failed");
    }
    match e {
        OtlpError::Store(StoreError::Overloaded(_, retry)) => Status::with_error_details(
            Code::Unavailable,
            e.to_string(),
            ErrorDetails::with_retry_info(Some(*retry)),
        ),
        OtlpError::Store(StoreError::Closed) => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// `TraceService/Export`: what tonic's generated `TraceServiceServer` does (gzip both ways,
/// the size limit, UNIMPLEMENTED for other methods), with a codec that decodes through
/// `ingest::decode_traces_protobuf` instead of into prost structs.
#[derive(Debug, Clone)]
pub struct TraceServer {
    state: OtlpState,
}

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl NamedService for TraceServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> tower::Service<http::Request<B>> for TraceServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != TRACE_EXPORT {
            return Box::pin(async {
                let mut resp = http::Response::new(tonic::body::Body::default());
                let headers = resp.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(resp)
            });
        }
        let state = self.state.clone();
        Box::pin(async move {
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let limit = state.limits.max_body_bytes;
            let mut grpc = tonic::server::Grpc::new(TracesCodec(state.clone()))
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(ExportTraces(state), req).await)
        })
    }
}

struct ExportTraces(OtlpState);

impl UnaryService<DecodedTraces> for ExportTraces {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<ExportTraceServiceResponse>, Status>;

    fn call(&mut self, request: Request<DecodedTraces>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let outcome = ingest::store_traces(&state, request.into_inner())
                .await
                .map_err(|e| status(&e))?;
            Ok(Response::new(outcome.trace_response()))
        })
    }
}

/// Export requests in through `ingest::decode_traces_protobuf`, responses out with prost.
/// A request storage would refuse (`StoreWriter::admit`) is answered UNAVAILABLE without decoding.
#[derive(Debug, Clone)]
struct TracesCodec(OtlpState);

impl Codec for TracesCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = DecodedTraces;
    type Encoder = TracesCodec;
    type Decoder = TracesCodec;

    fn encoder(&mut self) -> TracesCodec {
        self.clone()
    }

    fn decoder(&mut self) -> TracesCodec {
        self.clone()
    }
}

impl Encoder for TracesCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: ExportTraceServiceResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response failed: {e}")))
    }
}

impl Decoder for TracesCodec {
    type Item = DecodedTraces;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DecodedTraces>, Status> {
        if let Err(e) = ingest::admit(&self.0) {
            return Err(status(&e));
        }
        // The message is one contiguous buffer: taking it copies nothing.
        let body = src.copy_to_bytes(src.remaining());
        ingest::decode_traces_protobuf(body)
            .map(Some)
            // Worded as tonic's prost codec words it (`refused_message` counts it).
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// The trace service with gzip and the size limit configured.
pub fn trace_service(state: OtlpState) -> TraceServer {
    TraceServer { state }
}

/// The logs service with gzip and the size limit configured.
pub fn logs_service(state: OtlpState) -> LogsServiceServer<LogsReceiver> {
    let limit = state.limits.max_body_bytes;
    LogsServiceServer::new(LogsReceiver { state })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit)
}

/// Serves OTLP/gRPC on `listener` until `shutdown` completes.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    state: OtlpState,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), OtlpError> {
    let stats = state.stats.clone();
    let auth = state.auth.clone();
    let check = move |req: tonic::Request<()>| -> Result<tonic::Request<()>, Status> {
        let headers = req.metadata().clone().into_headers();
        match auth.check(&headers, meshscope_gate::Scope::Ingest) {
            Ok(()) => Ok(req),
            Err(d @ meshscope_gate::Denied::WrongScope(_)) => {
                Err(Status::permission_denied(d.message()))
            }
            Err(d) => Err(Status::unauthenticated(d.message())),
        }
    };
    let limits = state.limits.listener;
    let incoming = bounded_incoming(listener, limits, state.grpc_conns.clone());
    Server::builder()
        // an idle stream (headers, then nothing) ends after the idle timeout
        .timeout(limits.idle_timeout)
        .max_concurrent_streams(Some(limits.max_h2_streams))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .http2_max_header_list_size(Some(64 << 10))
        .layer(tower::util::MapResponseLayer::new(
            move |resp: http::Response<tonic::body::Body>| refused_message(&stats, resp),
        ))
        .add_service(InterceptedService::new(
            trace_service(state.clone()),
            check.clone(),
        ))
        .add_service(InterceptedService::new(logs_service(state), check))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Connections of `listener`: `accept` errors back off instead of spinning (tonic's own
/// loop retries at once), and beyond `max_connections` open ones a new connection is closed.
fn bounded_incoming(
    listener: tokio::net::TcpListener,
    limits: meshscope_gate::serve::ListenerLimits,
    stats: Arc<meshscope_gate::serve::ListenerStats>,
) -> impl futures::Stream<Item = Result<Held, std::io::Error>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let backoff = meshscope_gate::serve::Backoff::default();
    futures::stream::unfold((listener, backoff), move |(listener, mut backoff)| {
        let (slots, stats) = (slots.clone(), stats.clone());
        async move {
            loop {
                let io = meshscope_gate::serve::accept(&listener, &mut backoff, &stats).await;
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    stats
                        .refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                let _ = io.set_nodelay(true);
                stats
                    .open
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let held = Held {
                    io,
                    _slot: slot,
                    stats: stats.clone(),
                };
                return Some((Ok(held), (listener, backoff)));
            }
        }
    })
}

/// A connection holding its place among `max_connections` until it closes.
pub struct Held {
    io: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
    stats: Arc<meshscope_gate::serve::ListenerStats>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stats
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl tonic::transport::server::Connected for Held {
    type ConnectInfo = <tokio::net::TcpStream as tonic::transport::server::Connected>::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl tokio::io::AsyncRead for Held {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Held {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Looks at trailers-only error replies (how tonic answers a request it could not decode):
/// counts them as invalid requests, and reports "declared length over the limit" as
/// RESOURCE_EXHAUSTED like the decompression limit, instead of tonic's OUT_OF_RANGE.
fn refused_message(
    stats: &Arc<OtlpStats>,
    mut resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let Some(code) = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
    else {
        return resp;
    };
    let decode_failure = code == Code::Internal
        && resp
            .headers()
            .get("grpc-message")
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
            .is_some_and(|m| m.contains("decod") || m.contains("decompress"));
    match code {
        Code::OutOfRange => {
            resp.headers_mut().insert(
                "grpc-status",
                HeaderValue::from(Code::ResourceExhausted as i32),
            );
            OtlpStats::add(&stats.requests_invalid, 1);
        }
        Code::ResourceExhausted | Code::InvalidArgument | Code::Unimplemented => {
            OtlpStats::add(&stats.requests_invalid, 1);
        }
        Code::Internal if decode_failure => OtlpStats::add(&stats.requests_invalid, 1),
        _ => {}
    }
    resp
}
