//! OTLP/HTTP: `POST /v1/traces` and `POST /v1/logs`.
//!
//! - `Content-Type: application/x-protobuf` (binary protobuf) or `application/json` (OTLP/JSON:
//!   hex ids, integer enums, 64-bit integers as strings or numbers; see `json` for the
//!   leniencies); anything else is 415.
//! - `Content-Encoding: gzip` (or identity). The limit (`OtlpLimits::max_body_bytes`) holds for
//!   the body as sent and again for the decompressed bytes, which are produced by a streaming
//!   decoder that stops at the limit, so a gzip bomb costs at most the limit in memory → 413.
//! - Undecodable bodies → 400 with the decoder's message. Partially invalid data → 200 with
//!   `partial_success` (rejected count and reasons). Storage back-pressure → 429 with
//!   `Retry-After`.
//! - Replies use the request's content type; error bodies are a `google.rpc.Status`, as the
//!   OTLP spec says.

use std::future::Future;
use std::io::Read;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{OtlpError, OtlpState, OtlpStats, ingest};
use meshscope_storage::StoreError;

pub const PROTOBUF: &str = "application/x-protobuf";
pub const JSON: &str = "application/json";

/// Bodies larger than this are decompressed and decoded on a blocking thread.
const BLOCKING_THRESHOLD: usize = 256 << 10;

/// The two encodings of OTLP/HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn from_headers(headers: &HeaderMap) -> Result<Encoding, OtlpError> {
        let raw = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let essence = raw
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            PROTOBUF | "application/protobuf" => Ok(Encoding::Protobuf),
            JSON => Ok(Encoding::Json),
            _ => Err(OtlpError::UnsupportedContentType(raw)),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Protobuf => "protobuf",
            Encoding::Json => "OTLP/JSON",
        }
    }
}

/// The OTLP/HTTP router; serve it with `serve_http` or nest it into another router.
pub fn router(state: OtlpState) -> Router {
    // Every path needs an ingest token (when tokens are configured); pages of other sites
    // are refused. The content type is checked by the handlers (415).
    let guard = meshscope_gate::Guard::new(state.auth.clone(), |_| meshscope_gate::Route {
        access: meshscope_gate::Access::Need(meshscope_gate::Scope::Ingest),
        bodies: meshscope_gate::Bodies::Any,
        style: meshscope_gate::ErrorStyle::Meshscope,
    });
    let r = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        // The limit is ours, applied after decompression; axum's default 2 MB must not interfere.
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    guard.apply(r)
}

/// Serves OTLP/HTTP (HTTP/1.1 and h2c) on `listener` until `shutdown` completes.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    state: OtlpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), OtlpError> {
    let (limits, stats) = (state.limits.listener, state.http_conns.clone());
    meshscope_gate::serve::serve(listener, router(state), limits, stats, shutdown)
        .await
        .map_err(OtlpError::HttpServer)
}

async fn traces(State(state): State<OtlpState>, headers: HeaderMap, body: Body) -> Response {
    let enc = match Encoding::from_headers(&headers) {
        Ok(e) => e,
        Err(e) => return error_response(&state, None, &e),
    };
    // Protobuf goes straight into Arrow where it can (`ingest::decode_traces_protobuf`).
    let decode = |enc: Encoding, bytes: Bytes| match enc {
        Encoding::Protobuf => {
            ingest::decode_traces_protobuf(bytes).map_err(|e| OtlpError::Decode {
                what: "traces",
                encoding: enc.name(),
                reason: e.to_string(),
            })
        }
        Encoding::Json => decode::<ExportTraceServiceRequest>(enc, "traces", &bytes)
            .map(ingest::DecodedTraces::Request),
    };
    let req = match read_request(&state, enc, &headers, body, decode).await {
        Ok(r) => r,
        Err(e) => return error_response(&state, Some(enc), &e),
    };
    match ingest::store_traces(&state, req).await {
        Ok(outcome) => {
            let resp = outcome.trace_response();
            reply(enc, &resp, resp.partial_success.is_some())
        }
        Err(e) => error_response(&state, Some(enc), &e),
    }
}

async fn logs(State(state): State<OtlpState>, headers: HeaderMap, body: Body) -> Response {
    let enc = match Encoding::from_headers(&headers) {
        Ok(e) => e,
        Err(e) => return error_response(&state, None, &e),
    };
    let decode = |enc, bytes: Bytes| decode::<ExportLogsServiceRequest>(enc, "logs", &bytes);
    let req = match read_request(&state, enc, &headers, body, decode).await {
        Ok(r) => r,
        Err(e) => return error_response(&state, Some(enc), &e),
    };
    match ingest::export_logs(&state, req).await {
        Ok(outcome) => {
            let resp = outcome.logs_response();
            reply(enc, &resp, resp.partial_success.is_some())
        }
        Err(e) => error_response(&state, Some(enc), &e),
    }
}

/// Reads, decompresses and decodes (with `decode`) one export request, holding every stage to
/// the limit.
async fn read_request<T: Send + 'static>(
    state: &OtlpState,
    enc: Encoding,
    headers: &HeaderMap,
    body: Body,
    decode: fn(Encoding, Bytes) -> Result<T, OtlpError>,
) -> Result<T, OtlpError> {
    let limit = state.limits.max_body_bytes;
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .as_deref()
    {
        None | Some("" | "identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => return Err(OtlpError::UnsupportedContentEncoding(other.to_string())),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(OtlpError::TooLarge {
            limit,
            decompressed: false,
        });
    }
    let raw = read_body(body, limit, declared).await?;
    // The body is read (a client still sending would see a reset, not the 429), but a
    // request storage would refuse is not decoded.
    ingest::admit(state)?;
    let large = raw.len() > BLOCKING_THRESHOLD;
    let work = move || -> Result<T, OtlpError> {
        if gzip {
            let plain = gunzip_capped(&raw, limit)?;
            decode(enc, Bytes::from(plain))
        } else {
            decode(enc, raw)
        }
    };
    // Inflating and decoding a large body takes milliseconds: keep it off the async workers.
    if gzip || large {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| OtlpError::Internal(format!("the decoding task failed: {e}")))?
    } else {
        work()
    }
}

/// Collects the body, failing as soon as it passes `limit` bytes. With a declared length
/// (at most `limit`, checked by the caller) the buffer is allocated once at that size.
async fn read_body(body: Body, limit: usize, declared: Option<u64>) -> Result<Bytes, OtlpError> {
    let fail = |e: axum::BoxError| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            OtlpError::TooLarge {
                limit,
                decompressed: false,
            }
        } else {
            OtlpError::Body(e.to_string())
        }
    };
    let mut body = Limited::new(body, limit);
    let mut out: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(fail)?.into_data() {
            // A single frame holding the whole body is passed on without a copy.
            if out.is_empty() && data.len() as u64 == declared.unwrap_or(u64::MAX) {
                return Ok(data);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

/// Decompresses gzip (all members, as RFC 1952 allows) into at most `limit` bytes: the output
/// buffer never grows past `limit`, and decoding stops at the first byte beyond it.
pub fn gunzip_capped(compressed: &[u8], limit: usize) -> Result<Vec<u8>, OtlpError> {
    let too_large = OtlpError::TooLarge {
        limit,
        decompressed: true,
    };
    let mut decoder = MultiGzDecoder::new(compressed);
    let mut out: Vec<u8> = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(OtlpError::Gzip(e)),
        };
        if n > limit - out.len() {
            return Err(too_large);
        }
        if out.capacity() - out.len() < n {
            // Grow geometrically, but never past the limit.
            let target = out
                .capacity()
                .saturating_mul(2)
                .max(out.len() + n)
                .min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

fn decode<T: Message + Default + DeserializeOwned>(
    enc: Encoding,
    what: &'static str,
    bytes: &[u8],
) -> Result<T, OtlpError> {
    let reason = match enc {
        Encoding::Protobuf => match T::decode(bytes) {
            Ok(m) => return Ok(m),
            Err(e) => e.to_string(),
        },
        Encoding::Json => match super::json::decode(bytes) {
            Ok(m) => return Ok(m),
            Err(e) => e.to_string(),
        },
    };
    Err(OtlpError::Decode {
        what,
        encoding: enc.name(),
        reason,
    })
}

/// A 200 reply in the request's encoding. A full success is the empty message (`{}` in JSON).
fn reply<M: Message + Serialize>(enc: Encoding, msg: &M, has_partial: bool) -> Response {
    let body = match enc {
        Encoding::Protobuf => msg.encode_to_vec(),
        Encoding::Json if !has_partial => b"{}".to_vec(),
        Encoding::Json => match serde_json::to_vec(msg) {
            Ok(b) => b,
            Err(e) => {
                return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
            }
        },
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, enc.content_type())],
        body,
    )
        .into_response()
}

/// Status code, gRPC code (for the `google.rpc.Status` body) and Retry-After of an error.
fn classify(e: &OtlpError) -> (StatusCode, tonic::Code, Option<u64>) {
    use tonic::Code;
    match e {
        OtlpError::TooLarge { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted, None)
        }
        OtlpError::UnsupportedContentType(_) | OtlpError::UnsupportedContentEncoding(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            None,
        ),
        OtlpError::Gzip(_) | OtlpError::Decode { .. } | OtlpError::Body(_) => {
            (StatusCode::BAD_REQUEST, Code::InvalidArgument, None)
        }
        OtlpError::Store(StoreError::Overloaded(_, retry)) => (
            StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable,
            Some(retry.as_secs_f64().ceil().max(1.0) as u64),
        ),
        OtlpError::Store(StoreError::Closed) => {
            (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, Some(1))
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, None),
    }
}

fn error_response(state: &OtlpState, enc: Option<Encoding>, e: &OtlpError) -> Response {
    let (status, code, retry_after) = classify(e);
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), error = %e, "OTLP/HTTP export failed");
    } else {
        tracing::debug!(status = status.as_u16(), error = %e, "OTLP/HTTP export refused");
    }
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        OtlpStats::add(&state.stats.requests_invalid, 1);
    }
    let message = e.to_string();
    let enc = enc.unwrap_or(Encoding::Json);
    let body = match enc {
        Encoding::Protobuf => tonic_types::pb::Status {
            code: code as i32,
            message,
            details: vec![],
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": code as i32, "message": message })
            .to_string()
            .into_bytes(),
    };
    let mut resp = (status, [(header::CONTENT_TYPE, enc.content_type())], body).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
