//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` and
//! `opentelemetry.proto.collector.logs.v1.LogsService/Export`.
//!
//! - gzip-compressed messages are accepted, and replies are gzip-compressed for clients that
//!   ask for it.
//! - Messages larger than `OtlpLimits::max_body_bytes` (before or after decompression) fail
//!   with RESOURCE_EXHAUSTED. tonic answers OUT_OF_RANGE when the frame's declared length is
//!   over the limit; a response layer turns that into RESOURCE_EXHAUSTED, the code the OTLP
//!   exporters and grpc-go use for "message too large" (and which they do not retry).
//! - Invalid spans or records: OK with `partial_success`.
//! - Storage back-pressure: UNAVAILABLE (retryable in OTLP) with a `google.rpc.RetryInfo`
//!   detail giving the delay, which OTLP exporters honour.

use std::future::Future;
use std::sync::Arc;

use axum::http::{self, HeaderValue};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{OtlpError, OtlpState, OtlpStats, ingest};
use crate::storage::StoreError;

/// The `TraceService` implementation.
#[derive(Debug, Clone)]
pub struct TraceReceiver {
    state: OtlpState,
}

/// The `LogsService` implementation.
#[derive(Debug, Clone)]
pub struct LogsReceiver {
    state: OtlpState,
}

#[tonic::async_trait]
impl TraceService for TraceReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let outcome = ingest::export_traces(&self.state, request.into_inner())
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(outcome.trace_response()))
    }
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

/// The trace service with gzip and the size limit configured.
pub fn trace_service(state: OtlpState) -> TraceServiceServer<TraceReceiver> {
    let limit = state.limits.max_body_bytes;
    TraceServiceServer::new(TraceReceiver { state })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit)
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
    Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            move |resp: http::Response<tonic::body::Body>| refused_message(&stats, resp),
        ))
        .add_service(trace_service(state.clone()))
        .add_service(logs_service(state))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
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
