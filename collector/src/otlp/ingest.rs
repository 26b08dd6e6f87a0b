//! The path both transports share once a request is decoded: convert to rows, build one Arrow
//! batch, append it to the store (which returns once the rows are durable), and count.

use bytes::Bytes;
use meshscope_schemas::Table;
use meshscope_schemas::rows::{requests_batch, spans_batch};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use prost::Message;

use super::wire::{DecodedSpans, spans_from_protobuf};
use super::{OtlpError, OtlpState, OtlpStats, logs, traces};
use meshscope_storage::StoreError;

/// How many rejection messages a partial-success `error_message` quotes.
const QUOTED_REJECTIONS: usize = 5;

/// What one export stored and what it rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOutcome {
    /// Items durably stored.
    pub stored: usize,
    /// One message per rejected item, naming it and what was wrong.
    pub rejected: Vec<String>,
    /// Valid items storage refused (outside the ingest window), with its reason.
    pub refused: Option<meshscope_storage::window::Refused>,
}

impl ExportOutcome {
    /// The partial-success `error_message`: the count and the first few reasons; empty when
    /// nothing was rejected.
    pub fn error_message(&self, items: &str) -> String {
        let count = self.rejected_count();
        if count == 0 {
            return String::new();
        }
        let total = self.stored + count;
        let mut reasons: Vec<String> = self.refused.iter().map(|r| r.reason.clone()).collect();
        reasons.extend(self.rejected.iter().take(QUOTED_REJECTIONS).cloned());
        let mut msg = format!(
            "{count} of {total} {items} rejected: {}",
            reasons.join("; ")
        );
        if self.rejected.len() > QUOTED_REJECTIONS {
            msg.push_str(&format!(
                "; and {} more",
                self.rejected.len() - QUOTED_REJECTIONS
            ));
        }
        msg
    }

    /// Items rejected by the decoder plus those storage refused.
    pub fn rejected_count(&self) -> usize {
        self.rejected.len() + self.refused.as_ref().map_or(0, |r| r.rows)
    }

    /// The trace export reply: `partial_success` only when spans were rejected.
    pub fn trace_response(&self) -> ExportTraceServiceResponse {
        ExportTraceServiceResponse {
            partial_success: (self.rejected_count() > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: self.rejected_count() as i64,
                error_message: self.error_message("spans"),
            }),
        }
    }

    /// The logs export reply: `partial_success` only when records were rejected.
    pub fn logs_response(&self) -> ExportLogsServiceResponse {
        ExportLogsServiceResponse {
            partial_success: (self.rejected_count() > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: self.rejected_count() as i64,
                error_message: self.error_message("log records"),
            }),
        }
    }
}

/// Stores the valid spans of a trace export.
pub async fn export_traces(
    state: &OtlpState,
    req: ExportTraceServiceRequest,
) -> Result<ExportOutcome, OtlpError> {
    let (rows, rejected) = traces::spans_from_request(req);
    if let Some(first) = rejected.first() {
        tracing::debug!(rejected = rejected.len(), first = %first, "OTLP spans rejected");
    }
    let s = &state.stats;
    OtlpStats::add(&s.spans_received, rows.len() + rejected.len());
    OtlpStats::add(&s.spans_rejected, rejected.len());
    let mut refused = None;
    if !rows.is_empty() {
        let batch = spans_batch(&rows).map_err(|source| OtlpError::Batch {
            table: Table::Spans.name(),
            source,
        })?;
        refused = append(state, Table::Spans, batch).await?;
    }
    let stored = rows.len() - refused.as_ref().map_or(0, |r| r.rows);
    OtlpStats::add(&s.spans_stored, stored);
    OtlpStats::add(&s.spans_rejected, rows.len() - stored);
    Ok(ExportOutcome {
        stored,
        rejected,
        refused,
    })
}

/// A decoded trace export, ready to store.
pub enum DecodedTraces {
    /// Read straight into Arrow from protobuf (`wire`), with the request (decompressed), which
    /// the WAL logs instead of the rows.
    Batch(DecodedSpans, Bytes),
    /// Decoded into prost structs (OTLP/JSON, or protobuf `wire` left to prost).
    Request(ExportTraceServiceRequest),
}

/// Decodes a protobuf trace export, straight into Arrow where `wire` can, else with prost.
/// The error is prost's, so callers word it as they always have.
pub fn decode_traces_protobuf(body: Bytes) -> Result<DecodedTraces, prost::DecodeError> {
    match spans_from_protobuf(&body) {
        Ok(Ok(decoded)) => Ok(DecodedTraces::Batch(decoded, body)),
        // The builder refusing its own columns would be a bug in `wire`; prost's path is
        // the one to trust then.
        Ok(Err(_)) | Err(_) => ExportTraceServiceRequest::decode(body).map(DecodedTraces::Request),
    }
}

/// Stores the valid spans of a decoded trace export.
pub async fn store_traces(
    state: &OtlpState,
    decoded: DecodedTraces,
) -> Result<ExportOutcome, OtlpError> {
    let (d, request) = match decoded {
        DecodedTraces::Request(req) => return export_traces(state, req).await,
        DecodedTraces::Batch(d, request) => (d, request),
    };
    if let Some(first) = d.rejected.first() {
        tracing::debug!(rejected = d.rejected.len(), first = %first, "OTLP spans rejected");
    }
    let s = &state.stats;
    OtlpStats::add(&s.spans_received, d.rows + d.rejected.len());
    OtlpStats::add(&s.spans_rejected, d.rejected.len());
    let mut refused = None;
    if d.rows > 0 {
        refused = throttled(state, state.store.append_request(d.batch, request).await)?.refused;
    }
    let stored = d.rows - refused.as_ref().map_or(0, |r| r.rows);
    OtlpStats::add(&s.spans_stored, stored);
    OtlpStats::add(&s.spans_rejected, d.rows - stored);
    Ok(ExportOutcome {
        stored,
        rejected: d.rejected,
        refused,
    })
}

/// Stores the access-log records of a logs export as `requests` rows.
pub async fn export_logs(
    state: &OtlpState,
    req: ExportLogsServiceRequest,
) -> Result<ExportOutcome, OtlpError> {
    let no_parser = |_: &str| None;
    let parser: &(dyn Fn(&str) -> Option<_> + Send + Sync) = match &state.body_parser {
        Some(p) => p.as_ref(),
        None => &no_parser,
    };
    let (mut rows, rejected) = logs::requests_from_request(req, parser);
    if let Some(first) = rejected.first() {
        tracing::debug!(rejected = rejected.len(), first = %first, "OTLP log records rejected");
    }
    if let Some(enrich) = &state.enricher {
        rows.iter_mut().for_each(|r| enrich(r));
    }
    let s = &state.stats;
    OtlpStats::add(&s.log_records_received, rows.len() + rejected.len());
    OtlpStats::add(&s.log_records_rejected, rejected.len());
    let mut refused = None;
    if !rows.is_empty() {
        let batch = requests_batch(&rows).map_err(|source| OtlpError::Batch {
            table: Table::Requests.name(),
            source,
        })?;
        refused = append(state, Table::Requests, batch).await?;
    }
    let stored = rows.len() - refused.as_ref().map_or(0, |r| r.rows);
    OtlpStats::add(&s.log_records_stored, stored);
    OtlpStats::add(&s.log_records_rejected, rows.len() - stored);
    Ok(ExportOutcome {
        stored,
        rejected,
        refused,
    })
}

/// Refuses a request before it is decoded while storage is over its buffer limit
/// (`StoreWriter::admit`), counted as throttled like a refused append.
pub fn admit(state: &OtlpState) -> Result<(), OtlpError> {
    throttled(state, state.store.admit())
}

/// Appends; the rows the ingest window refused, if any.
async fn append(
    state: &OtlpState,
    table: Table,
    batch: arrow::array::RecordBatch,
) -> Result<Option<meshscope_storage::window::Refused>, OtlpError> {
    Ok(throttled(state, state.store.append(table, batch).await)?.refused)
}

/// A storage outcome (append or admission), an overload counted as throttled.
fn throttled<T>(state: &OtlpState, r: Result<T, StoreError>) -> Result<T, OtlpError> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => {
            if matches!(e, StoreError::Overloaded(..)) {
                OtlpStats::add(&state.stats.requests_throttled, 1);
            }
            Err(e.into())
        }
    }
}
