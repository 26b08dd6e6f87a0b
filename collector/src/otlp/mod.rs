//! OTLP receivers: traces (and Envoy access logs sent as OTLP logs) over OTLP/gRPC and
//! OTLP/HTTP, stored as `spans` and `requests` rows.
//!
//! - `traces` and `logs` turn decoded export requests into rows plus one message per rejected
//!   item (the OTLP partial-success contract); they do no I/O. `wire` does what `traces`
//!   does straight from protobuf bytes into an Arrow batch (the fast path of both
//!   transports), leaving anything unusual to prost and `traces`.
//! - `ingest` is the one path both transports share: convert, build the Arrow batch, append
//!   to the store, count.
//! - `http` is the OTLP/HTTP router (`/v1/traces`, `/v1/logs`; protobuf or JSON; gzip; a body
//!   limit measured after decompression); `grpc` holds the tonic services and both `serve_*`
//!   entry points the binary runs.
//!
//! Everything shares one `OtlpState`: the store, the limits, the counters, and the hooks the
//! access-log parser plugs into.

pub mod grpc;
pub mod http;
pub mod ingest;
pub mod json;
pub mod logs;
pub mod traces;
mod value;
pub mod wire;

#[cfg(test)]
mod tests;

/// The store's [`meshscope_storage::RequestDecoder`] for the trace exports this receiver logs
/// in the WAL as received (`StoreWriter::append_request`): the decoder that read them, so
/// replay gives the same rows. A store that OTLP traces are written to must be given it.
pub fn request_decoder(request: &[u8]) -> Result<arrow::array::RecordBatch, String> {
    match wire::spans_from_protobuf(request) {
        Ok(Ok(d)) => Ok(d.batch),
        Ok(Err(e)) => Err(format!("the OTLP trace export's rows: {e}")),
        // Only exports this decoder read are logged this way, so this is corruption.
        Err(_) => Err("the OTLP trace export does not decode".into()),
    }
}

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshscope_schemas::rows::RequestRow;
use serde::Serialize;

use meshscope_storage::{StoreError, StoreWriter};

pub use grpc::serve_grpc;
pub use http::serve_http;
pub use ingest::ExportOutcome;

/// Parses the text of an access-log line (the string body of an Envoy OTLP log record) into a
/// row; `None` when the text is not an access-log line. The binary passes the parser of
/// `envoy::access_log`.
pub type BodyParser = Arc<dyn Fn(&str) -> Option<RequestRow> + Send + Sync>;

/// Fills derived columns (reporter, source/destination identity, …) of a row built from an
/// OTLP log record before it is stored. The binary passes the access-log module's enrichment.
pub type RowEnricher = Arc<dyn Fn(&mut RequestRow) + Send + Sync>;

/// Limits of one export request, the same for both transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtlpLimits {
    /// Largest request accepted, in bytes, measured after decompression (HTTP: 413; gRPC:
    /// RESOURCE_EXHAUSTED). The compressed body is held to the same limit.
    pub max_body_bytes: usize,
    /// Connections, timeouts and HTTP/2 streams of both listeners; for gRPC the idle timeout
    /// is also the longest one call may take (an idle stream ends with DEADLINE_EXCEEDED).
    pub listener: meshscope_gate::serve::ListenerLimits,
}

impl Default for OtlpLimits {
    /// 16 MiB, the same as the API's `--max-body-mb` default.
    fn default() -> Self {
        OtlpLimits {
            max_body_bytes: 16 << 20,
            listener: Default::default(),
        }
    }
}

/// Counters of the OTLP receivers (both transports), for `/metrics` and `/api/v1/status`.
#[derive(Debug, Default)]
pub struct OtlpStats {
    /// Spans that arrived in export requests that decoded.
    pub spans_received: AtomicU64,
    /// Spans durably stored.
    pub spans_stored: AtomicU64,
    /// Spans rejected as invalid (bad ids, end before start): reported as partial success.
    pub spans_rejected: AtomicU64,
    /// Log records that arrived in export requests that decoded.
    pub log_records_received: AtomicU64,
    /// Log records stored as `requests` rows.
    pub log_records_stored: AtomicU64,
    /// Log records rejected (not an access-log record, no time): reported as partial success.
    pub log_records_rejected: AtomicU64,
    /// Export requests refused because storage pushed back (HTTP 429, gRPC UNAVAILABLE); the
    /// client retries them, so their items are neither stored nor rejected.
    pub requests_throttled: AtomicU64,
    /// Export requests refused as undecodable or too large (HTTP 400/413/415, gRPC errors).
    pub requests_invalid: AtomicU64,
}

/// A plain copy of `OtlpStats` at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OtlpStatsSnapshot {
    pub spans_received: u64,
    pub spans_stored: u64,
    pub spans_rejected: u64,
    pub log_records_received: u64,
    pub log_records_stored: u64,
    pub log_records_rejected: u64,
    pub requests_throttled: u64,
    pub requests_invalid: u64,
}

impl OtlpStats {
    pub fn snapshot(&self) -> OtlpStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OtlpStatsSnapshot {
            spans_received: get(&self.spans_received),
            spans_stored: get(&self.spans_stored),
            spans_rejected: get(&self.spans_rejected),
            log_records_received: get(&self.log_records_received),
            log_records_stored: get(&self.log_records_stored),
            log_records_rejected: get(&self.log_records_rejected),
            requests_throttled: get(&self.requests_throttled),
            requests_invalid: get(&self.requests_invalid),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What both OTLP servers share; cheap to clone.
#[derive(Clone)]
pub struct OtlpState {
    pub store: StoreWriter,
    pub limits: OtlpLimits,
    pub stats: Arc<OtlpStats>,
    /// Parses string log bodies (Envoy's formatted access-log line); without it, records that
    /// carry only a string body are rejected.
    pub body_parser: Option<BodyParser>,
    /// Runs on every `requests` row built from an OTLP log record.
    pub enricher: Option<RowEnricher>,
    /// Tokens both OTLP listeners ask for (the ingest scope); open by default.
    pub auth: meshscope_gate::Auth,
    /// Connections of the OTLP/HTTP and OTLP/gRPC listeners.
    pub http_conns: Arc<meshscope_gate::serve::ListenerStats>,
    pub grpc_conns: Arc<meshscope_gate::serve::ListenerStats>,
}

impl fmt::Debug for OtlpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpState")
            .field("store", &self.store)
            .field("limits", &self.limits)
            .field("stats", &self.stats.snapshot())
            .field("body_parser", &self.body_parser.is_some())
            .field("enricher", &self.enricher.is_some())
            .field("auth", &self.auth)
            .finish()
    }
}

impl OtlpState {
    pub fn new(store: impl Into<StoreWriter>) -> OtlpState {
        let store = store.into();
        OtlpState {
            store,
            limits: OtlpLimits::default(),
            stats: Arc::new(OtlpStats::default()),
            body_parser: None,
            enricher: None,
            auth: Default::default(),
            http_conns: Default::default(),
            grpc_conns: Default::default(),
        }
    }

    /// Ask every OTLP request for an ingest token.
    pub fn with_auth(mut self, auth: meshscope_gate::Auth) -> OtlpState {
        self.auth = auth;
        self
    }

    pub fn with_limits(mut self, limits: OtlpLimits) -> OtlpState {
        self.limits = limits;
        self
    }

    pub fn with_body_parser(
        mut self,
        parser: impl Fn(&str) -> Option<RequestRow> + Send + Sync + 'static,
    ) -> OtlpState {
        self.body_parser = Some(Arc::new(parser));
        self
    }

    pub fn with_enricher(
        mut self,
        enricher: impl Fn(&mut RequestRow) + Send + Sync + 'static,
    ) -> OtlpState {
        self.enricher = Some(Arc::new(enricher));
        self
    }
}

/// Errors of the OTLP receivers. Each names what was wrong with which input.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("request body is larger than the limit of {limit} bytes{}", if *.decompressed { " after decompression" } else { "" })]
    TooLarge { limit: usize, decompressed: bool },
    #[error(
        "unsupported Content-Type {0:?}: OTLP/HTTP takes application/x-protobuf or application/json"
    )]
    UnsupportedContentType(String),
    #[error("unsupported Content-Encoding {0:?}: gzip and identity are accepted")]
    UnsupportedContentEncoding(String),
    #[error("gzip body cannot be decompressed: {0}")]
    Gzip(std::io::Error),
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error("cannot decode the {what} body as {encoding}: {reason}")]
    Decode {
        what: &'static str,
        encoding: &'static str,
        reason: String,
    },
    #[error("building the {table} batch failed: {source}")]
    Batch {
        table: &'static str,
        source: arrow::error::ArrowError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("OTLP/gRPC server failed: {0}")]
    GrpcServer(#[from] tonic::transport::Error),
    #[error("OTLP/HTTP server failed: {0}")]
    HttpServer(std::io::Error),
}
