//! Traces: one trace as a waterfall (tree, depth, offsets, self time, critical path, the
//! client/server span pairs of each mesh hop, errors and Envoy response flags), everything
//! known for one `x-request-id`, and trace search — by span fields, or by a graph edge's
//! access-log rows.
//!
//! Every query is a DataFusion `DataFrame` built from `col(..).eq(lit(..))` expressions, never
//! SQL text, so that `StoreTable` sees the time range and trace id and prunes files before
//! opening them (bloom filters on `trace_id` and `request_id` prune inside files). Each
//! request runs within `SqlLimits`: one time limit for the whole answer and a row limit per
//! query.
//!
//! Routes: `GET /api/v1/traces/{trace_id}`, `GET /api/v1/traces?…`,
//! `GET /api/v1/requests/{request_id}`. The Jaeger API (`jaeger.rs`) reuses [`TraceService`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampNanosecondType};
use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::physical_plan::metrics::MetricValue;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::{StreamExt, TryStreamExt};
use meshscope_schemas::envoy::{LOCAL_REPLY_FLAGS, response_flag_meaning};
use meshscope_schemas::rows::{Attrs, SpanEvent, SpanLink, SpanRow};
use meshscope_schemas::table::{requests as rq, spans as sp};
use meshscope_schemas::{SpanId, Table, TraceId};
use serde::Serialize;
use serde_json::{Value, json};

use crate::sql::{QueryEngine, SqlLimits, batches_to_json};

/// Traces fetched at most per search or per request id; more is refused with a 400.
pub const MAX_SEARCH_LIMIT: usize = 1000;
/// Search results when `limit` is not given.
pub const DEFAULT_SEARCH_LIMIT: usize = 20;
/// Traces shown for one request id (a request id reused by many traces is a client bug).
const MAX_TRACES_PER_REQUEST: usize = 10;
/// Search window when `from` is not given.
const DEFAULT_LOOKBACK_NS: i64 = 3_600 * NS_PER_S;
/// Lookups of many traces run this many at a time.
const LOOKUP_CONCURRENCY: usize = 8;
const NS_PER_S: i64 = 1_000_000_000;
/// Spans of a found trace are read this far around the search window.
const TRACE_SLACK_NS: i64 = 3_600 * NS_PER_S;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("parameter `{param}`: {message}")]
    BadParameter { param: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error(
        "the lookup ran longer than the time limit of {0:?} (--sql-timeout); narrow the time range or add filters"
    )]
    Timeout(Duration),
    #[error(
        "a query matched more than {0} rows, the row limit (--sql-max-rows); narrow the time range or add filters"
    )]
    TooManyRows(usize),
    #[error("query failed: {0}")]
    Execution(String),
}

impl TraceError {
    pub fn bad(param: &str, message: impl std::fmt::Display) -> TraceError {
        TraceError::BadParameter {
            param: param.to_string(),
            message: message.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            TraceError::BadParameter { .. } | TraceError::TooManyRows(_) => StatusCode::BAD_REQUEST,
            TraceError::Timeout(_) => StatusCode::BAD_REQUEST,
            TraceError::NotFound(_) => StatusCode::NOT_FOUND,
            TraceError::Execution(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TraceError::BadParameter { .. } => "bad_parameter",
            TraceError::NotFound(_) => "not_found",
            TraceError::Timeout(_) => "timeout",
            TraceError::TooManyRows(_) => "too_many_rows",
            TraceError::Execution(_) => "execution",
        }
    }
}

impl IntoResponse for TraceError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.to_string(), "error_type": self.kind()});
        if let TraceError::BadParameter { param, .. } = &self {
            body["parameter"] = json!(param);
        }
        (self.status(), Json(body)).into_response()
    }
}

fn exec(e: impl std::fmt::Display) -> TraceError {
    TraceError::Execution(e.to_string())
}

// ---------------------------------------------------------------------------------------
// Parameters

/// Query-string pairs in order (repeated keys kept, for Jaeger's `traceID=…&traceID=…`).
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>) -> Params {
        Params(
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last non-empty value of `key` (Grafana sends empty values for unset fields).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| k == key && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, v)| k == key && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }

    /// Refuses keys outside `known`, so that a typo is an error rather than a silent no-op.
    pub fn only(&self, known: &[&str]) -> Result<(), TraceError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(TraceError::bad(
                k,
                format!("unknown parameter; known are {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }
}

/// A trace id in a URL: exactly 32 hex digits (`strict`), or Jaeger's 16 to 32.
pub fn parse_trace_id(param: &str, s: &str, strict: bool) -> Result<TraceId, TraceError> {
    let s = s.trim();
    let ok_len = if strict {
        s.len() == 32
    } else {
        (16..=32).contains(&s.len())
    };
    if !ok_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TraceError::bad(
            param,
            format!(
                "{s:?} is not a trace id: expected {} hex digits",
                if strict { "32" } else { "16 to 32" }
            ),
        ));
    }
    let id = TraceId::from_hex(s).map_err(|e| TraceError::bad(param, e))?;
    if id.0 == [0; 16] {
        return Err(TraceError::bad(param, "the all-zero trace id is invalid"));
    }
    Ok(id)
}

/// A request id as Envoy writes it (usually a UUID): printable ASCII, at most 128 characters.
pub fn parse_request_id(param: &str, s: &str) -> Result<String, TraceError> {
    if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TraceError::bad(
            param,
            format!("{s:?} is not a request id: expected 1 to 128 printable ASCII characters"),
        ));
    }
    Ok(s.to_string())
}

/// `10ms`, `1.5s`, `250us`, `2m`, `1h30m` (Go's duration syntax, as Jaeger takes it) → ns.
pub fn parse_duration(param: &str, s: &str) -> Result<i64, TraceError> {
    let bad = || {
        TraceError::bad(
            param,
            format!(
                "{s:?} is not a duration; write a number and a unit, e.g. 10ms, 1.5s, 250us, 2m"
            ),
        )
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[u..];
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(total as i64)
}

/// RFC 3339 (`2026-11-26T01:02:03Z`) or unix milliseconds → unix ns.
pub fn parse_time(param: &str, s: &str) -> Result<i64, TraceError> {
    if let Ok(ms) = s.parse::<i64>() {
        return ms
            .checked_mul(1_000_000)
            .ok_or_else(|| TraceError::bad(param, format!("{s} is out of range")));
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| {
            TraceError::bad(
                param,
                format!(
                    "{s:?} is not a time; write RFC 3339 (2026-11-26T01:02:03Z) or unix milliseconds"
                ),
            )
        })
}

/// Tags as a JSON object (`{"http.status_code":"503"}`, what Jaeger's UI and Grafana send) or
/// `k=v` pairs separated by spaces (values may be double-quoted).
pub fn parse_tags(param: &str, s: &str) -> Result<Vec<(String, String)>, TraceError> {
    let s = s.trim();
    if s.starts_with('{') {
        let obj: serde_json::Map<String, Value> = serde_json::from_str(s)
            .map_err(|e| TraceError::bad(param, format!("not a JSON object of tags: {e}")))?;
        return obj
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(v) => Ok((k, v)),
                Value::Number(_) | Value::Bool(_) => Ok((k, v.to_string())),
                other => Err(TraceError::bad(
                    param,
                    format!(
                        "tag {k:?} has value {other}; values must be strings, numbers or booleans"
                    ),
                )),
            })
            .collect();
    }
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or_else(|| {
            TraceError::bad(
                param,
                format!("{rest:?} is not key=value; write k=v pairs or a JSON object"),
            )
        })?;
        let key = rest[..eq].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(TraceError::bad(param, format!("bad tag key {key:?}")));
        }
        rest = &rest[eq + 1..];
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let end = q
                .find('"')
                .ok_or_else(|| TraceError::bad(param, "unterminated quoted value"))?;
            value = q[..end].to_string();
            rest = &q[end + 1..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value = rest[..end].to_string();
            rest = &rest[end..];
        }
        out.push((key.to_string(), value));
        rest = rest.trim_start();
    }
    if out.is_empty() {
        return Err(TraceError::bad(param, "no tags given"));
    }
    Ok(out)
}

pub fn parse_limit(param: &str, s: Option<&str>) -> Result<usize, TraceError> {
    let Some(s) = s else {
        return Ok(DEFAULT_SEARCH_LIMIT);
    };
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_SEARCH_LIMIT).contains(&n) => Ok(n),
        _ => Err(TraceError::bad(
            param,
            format!("{s:?} is not a limit: expected 1 to {MAX_SEARCH_LIMIT}"),
        )),
    }
}

fn parse_bool(param: &str, s: &str) -> Result<bool, TraceError> {
    match s {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(TraceError::bad(
            param,
            format!("{s:?} is not true or false"),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Span attributes with a dedicated column

/// Span attribute keys (as Envoy and the OTel conventions write them) that the collector moves
/// into a dedicated `spans` column. Used to show every attribute again, and to turn a tag
/// search into a filter on the column (which is what the bloom filters and statistics cover).
pub const DEDICATED_ATTRIBUTES: &[(&str, &str)] = &[
    ("guid:x-request-id", sp::REQUEST_ID),
    ("http.method", sp::HTTP_METHOD),
    ("http.status_code", sp::HTTP_STATUS_CODE),
    ("http.url", sp::HTTP_URL),
    ("http.protocol", sp::HTTP_PROTOCOL),
    ("user_agent", sp::USER_AGENT),
    ("upstream_cluster", sp::UPSTREAM_CLUSTER),
    ("upstream_address", sp::UPSTREAM_ADDRESS),
    ("response_flags", sp::RESPONSE_FLAGS),
    ("peer.address", sp::PEER_ADDRESS),
    ("downstream_cluster", sp::DOWNSTREAM_CLUSTER),
    ("node_id", sp::NODE_ID),
    ("component", sp::COMPONENT),
    ("istio.canonical_service", sp::ISTIO_CANONICAL_SERVICE),
    ("istio.canonical_revision", sp::ISTIO_CANONICAL_REVISION),
    ("istio.namespace", sp::ISTIO_NAMESPACE),
    ("istio.mesh_id", sp::ISTIO_MESH_ID),
];

/// Aliases a search may use for a dedicated column.
fn dedicated_column(key: &str) -> Option<&'static str> {
    let key = match key {
        "request_id" | "x-request-id" => "guid:x-request-id",
        "http.request.method" => "http.method",
        "http.response.status_code" => "http.status_code",
        "url.full" => "http.url",
        "user_agent.original" => "user_agent",
        "upstream_cluster.name" => "upstream_cluster",
        k => k,
    };
    DEDICATED_ATTRIBUTES
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, c)| *c)
}

/// Every attribute of a span: the dedicated columns under their original keys, then the
/// `attributes` map.
pub fn span_attributes(s: &SpanRow) -> Vec<(String, String)> {
    let dedicated: [Option<String>; 17] = [
        s.request_id.clone(),
        s.http_method.clone(),
        s.http_status_code.map(|c| c.to_string()),
        s.http_url.clone(),
        s.http_protocol.clone(),
        s.user_agent.clone(),
        s.upstream_cluster.clone(),
        s.upstream_address.clone(),
        s.response_flags.clone(),
        s.peer_address.clone(),
        s.downstream_cluster.clone(),
        s.node_id.clone(),
        s.component.clone(),
        s.istio_canonical_service.clone(),
        s.istio_canonical_revision.clone(),
        s.istio_namespace.clone(),
        s.istio_mesh_id.clone(),
    ];
    let mut out: Vec<(String, String)> = DEDICATED_ATTRIBUTES
        .iter()
        .zip(dedicated)
        .filter_map(|((k, _), v)| v.map(|v| (k.to_string(), v)))
        .collect();
    out.extend(s.attributes.iter().cloned());
    out
}

/// A span is an error when OTLP says so or the HTTP status is 5xx.
pub fn is_error(s: &SpanRow) -> bool {
    s.status_code == "error" || s.http_status_code.is_some_and(|c| c >= 500)
}

// ---------------------------------------------------------------------------------------
// Queries

fn lit_ts(ns: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(
        Some(ns),
        Some("UTC".into()),
    ))
}

fn lit_trace_id(id: &TraceId) -> Expr {
    lit(ScalarValue::FixedSizeBinary(16, Some(id.0.to_vec())))
}

fn time_range(column: &str, from_ns: i64, to_ns: i64) -> Expr {
    col(column)
        .gt_eq(lit_ts(from_ns))
        .and(col(column).lt_eq(lit_ts(to_ns)))
}

/// Cumulative scan figures of the queries this service ran (for tests and the benchmark).
#[derive(Debug, Default)]
pub struct ScanCounters {
    pub queries: AtomicU64,
    pub bytes_scanned: AtomicU64,
    pub row_groups_pruned_by_bloom_filter: AtomicU64,
    pub row_groups_matched_by_bloom_filter: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanFigures {
    pub queries: u64,
    pub bytes_scanned: u64,
    pub row_groups_pruned_by_bloom_filter: u64,
    pub row_groups_matched_by_bloom_filter: u64,
}

/// What a span search asks for.
#[derive(Debug, Clone, Default)]
pub struct SpanSearch {
    pub from_ns: i64,
    pub to_ns: i64,
    pub service: Option<String>,
    pub operation: Option<String>,
    pub span_kind: Option<String>,
    pub tags: Vec<(String, String)>,
    pub min_duration_ns: Option<i64>,
    pub max_duration_ns: Option<i64>,
    pub error: Option<bool>,
    pub limit: usize,
}

/// What an edge search asks for: access-log rows of one graph edge.
#[derive(Debug, Clone, Default)]
pub struct EdgeSearch {
    pub from_ns: i64,
    pub to_ns: i64,
    /// A workload, app or canonical service of the caller.
    pub source: Option<String>,
    /// A service (short name or host), workload or app of the callee.
    pub destination: Option<String>,
    /// Inclusive response-code range.
    pub status: Option<(i32, i32)>,
    pub min_duration_ns: Option<i64>,
    pub max_duration_ns: Option<i64>,
    pub limit: usize,
}

/// One access-log row that an edge search found, and the trace it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeSample {
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub start_time: String,
    pub response_code: i32,
    pub response_flags: Option<String>,
    pub duration_ms: i64,
    pub reporter: Option<String>,
    pub proxy: Option<String>,
}

/// What the access log holds for one request id.
#[derive(Debug, Default)]
pub struct RequestRows {
    /// `requests` rows as JSON objects, in time order.
    pub rows: Vec<Value>,
    /// Trace ids the rows carry.
    pub trace_ids: Vec<TraceId>,
    /// First and last start time (unix ns).
    pub times: Option<(i64, i64)>,
}

fn widen(span: Option<(i64, i64)>, t: i64) -> (i64, i64) {
    span.map_or((t, t), |(a, b)| (a.min(t), b.max(t)))
}

/// The queries behind the trace APIs (native and Jaeger).
#[derive(Clone)]
pub struct TraceService {
    engine: QueryEngine,
    limits: SqlLimits,
    counters: Arc<ScanCounters>,
}

impl TraceService {
    pub fn new(engine: QueryEngine, limits: SqlLimits) -> TraceService {
        TraceService {
            engine,
            limits,
            counters: Arc::default(),
        }
    }

    pub fn engine(&self) -> &QueryEngine {
        &self.engine
    }

    pub fn scan_figures(&self) -> ScanFigures {
        let c = &self.counters;
        ScanFigures {
            queries: c.queries.load(Ordering::Relaxed),
            bytes_scanned: c.bytes_scanned.load(Ordering::Relaxed),
            row_groups_pruned_by_bloom_filter: c
                .row_groups_pruned_by_bloom_filter
                .load(Ordering::Relaxed),
            row_groups_matched_by_bloom_filter: c
                .row_groups_matched_by_bloom_filter
                .load(Ordering::Relaxed),
        }
    }

    /// Runs `f` within the time limit. An answer (not an error) that came after the limit is a
    /// timeout too: the timer ticks in milliseconds, so a fast query could otherwise outrun a
    /// tiny limit.
    pub async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, TraceError>>,
    ) -> Result<T, TraceError> {
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.limits.timeout, f).await {
            Ok(Ok(_)) if started.elapsed() > self.limits.timeout => {
                Err(TraceError::Timeout(self.limits.timeout))
            }
            Ok(r) => r,
            Err(_) => Err(TraceError::Timeout(self.limits.timeout)),
        }
    }

    async fn table(&self, t: Table) -> Result<DataFrame, TraceError> {
        self.engine.context().table(t.name()).await.map_err(exec)
    }

    /// Executes a DataFrame within the row limit.
    async fn collect(&self, df: DataFrame) -> Result<Vec<RecordBatch>, TraceError> {
        let plan = df.create_physical_plan().await.map_err(exec)?;
        let mut stream =
            execute_stream(plan.clone(), self.engine.context().task_ctx()).map_err(exec)?;
        let mut out = Vec::new();
        let mut rows = 0usize;
        while let Some(b) = stream.next().await {
            let b = b.map_err(exec)?;
            rows += b.num_rows();
            if rows > self.limits.max_rows {
                return Err(TraceError::TooManyRows(self.limits.max_rows));
            }
            out.push(b);
        }
        self.count_scan(plan.as_ref());
        Ok(out)
    }

    fn count_scan(&self, plan: &dyn ExecutionPlan) {
        let c = &self.counters;
        let mut stack = vec![plan];
        while let Some(p) = stack.pop() {
            if let Some(m) = p.metrics() {
                for metric in m.iter() {
                    match metric.value() {
                        MetricValue::Count { name, count } if name == "bytes_scanned" => {
                            c.bytes_scanned
                                .fetch_add(count.value() as u64, Ordering::Relaxed);
                        }
                        MetricValue::PruningMetrics {
                            name,
                            pruning_metrics,
                        } if name == "row_groups_pruned_bloom_filter" => {
                            c.row_groups_pruned_by_bloom_filter
                                .fetch_add(pruning_metrics.pruned() as u64, Ordering::Relaxed);
                            c.row_groups_matched_by_bloom_filter
                                .fetch_add(pruning_metrics.matched() as u64, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }
            stack.extend(p.children().into_iter().map(|c| c.as_ref()));
        }
        c.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// Every stored span of one trace (unordered). Pruned by the trace id: the hour
    /// manifests' trace-id ranges, then the bloom filters and (in compacted, sorted files)
    /// the page index.
    pub async fn trace_spans(&self, id: &TraceId) -> Result<Vec<SpanRow>, TraceError> {
        self.trace_spans_within(id, None).await
    }

    /// Like `trace_spans`, only reading the hours that overlap `window` (unix ns) when given.
    pub async fn trace_spans_within(
        &self,
        id: &TraceId,
        window: Option<(i64, i64)>,
    ) -> Result<Vec<SpanRow>, TraceError> {
        let mut f = col(sp::TRACE_ID).eq(lit_trace_id(id));
        if let Some((from, to)) = window {
            f = f.and(time_range(sp::START_TIME, from, to));
        }
        let df = self.table(Table::Spans).await?.filter(f).map_err(exec)?;
        spans_from_batches(&self.collect(df).await?)
    }

    /// Traces by id, in the order given; ids with no stored span are left out. A search
    /// passes its window widened by `TRACE_SLACK_NS`, so that it reads a few hours rather
    /// than every hour of the retention for each trace found; whole traces open by id.
    pub async fn traces(
        &self,
        ids: &[TraceId],
        window: Option<(i64, i64)>,
    ) -> Result<Vec<(TraceId, Vec<SpanRow>)>, TraceError> {
        let window = window.map(|(f, t)| {
            (
                f.saturating_sub(TRACE_SLACK_NS),
                t.saturating_add(TRACE_SLACK_NS),
            )
        });
        let found: Vec<(TraceId, Vec<SpanRow>)> = futures::stream::iter(ids.iter().copied())
            .map(|id| async move {
                Ok::<_, TraceError>((id, self.trace_spans_within(&id, window).await?))
            })
            .buffered(LOOKUP_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().filter(|(_, s)| !s.is_empty()).collect())
    }

    /// The filter of a span search (without the limit).
    fn span_filter(&self, q: &SpanSearch) -> Result<Expr, TraceError> {
        let mut f = time_range(sp::START_TIME, q.from_ns, q.to_ns);
        if let Some(s) = &q.service {
            f = f.and(col(sp::SERVICE_NAME).eq(lit(s.clone())));
        }
        if let Some(o) = &q.operation {
            f = f.and(col(sp::NAME).eq(lit(o.clone())));
        }
        if let Some(k) = &q.span_kind {
            f = f.and(col(sp::KIND).eq(lit(k.to_ascii_lowercase())));
        }
        if let Some(d) = q.min_duration_ns {
            f = f.and(col(sp::DURATION_NS).gt_eq(lit(d)));
        }
        if let Some(d) = q.max_duration_ns {
            f = f.and(col(sp::DURATION_NS).lt_eq(lit(d)));
        }
        if let Some(e) = q.error {
            f = f.and(error_filter(e));
        }
        for (k, v) in &q.tags {
            f = f.and(tag_filter(k, v)?);
        }
        Ok(f)
    }

    /// Ids of the traces with a span matching `q`, most recent first.
    pub async fn search(&self, q: &SpanSearch) -> Result<Vec<TraceId>, TraceError> {
        let df = self
            .table(Table::Spans)
            .await?
            .filter(self.span_filter(q)?)
            .and_then(|d| {
                d.aggregate(
                    vec![col(sp::TRACE_ID)],
                    vec![max(col(sp::START_TIME)).alias("last")],
                )
            })
            .and_then(|d| d.sort(vec![col("last").sort(false, false)]))
            .and_then(|d| d.limit(0, Some(q.limit)))
            .map_err(exec)?;
        let batches = self.collect(df).await?;
        let mut ids = Vec::new();
        for b in &batches {
            ids.extend(trace_ids(b, sp::TRACE_ID)?.into_iter().flatten());
        }
        Ok(ids)
    }

    /// Access-log rows of one request id, in time order, as JSON objects; the trace ids
    /// they name; and the time span they cover (unix ns).
    pub async fn request_rows(&self, request_id: &str) -> Result<RequestRows, TraceError> {
        let df = self
            .table(Table::Requests)
            .await?
            .filter(col(rq::REQUEST_ID).eq(lit(request_id.to_string())))
            .and_then(|d| d.sort(vec![col(rq::START_TIME).sort(true, false)]))
            .map_err(exec)?;
        let batches = self.collect(df).await?;
        let mut out = RequestRows::default();
        for b in &batches {
            out.trace_ids
                .extend(trace_ids(b, rq::TRACE_ID)?.into_iter().flatten());
            for t in timestamps(b, rq::START_TIME)?.into_iter().flatten() {
                out.times = Some(widen(out.times, t));
            }
        }
        let json = batches_to_json(&batches).map_err(exec)?;
        out.rows = serde_json::from_slice(&json).map_err(exec)?;
        Ok(out)
    }

    /// Trace ids of the spans that carry this request id (`guid:x-request-id`), and the time
    /// span of those spans (unix ns).
    pub async fn request_trace_ids(
        &self,
        request_id: &str,
    ) -> Result<(Vec<TraceId>, Option<(i64, i64)>), TraceError> {
        let df = self
            .table(Table::Spans)
            .await?
            .filter(col(sp::REQUEST_ID).eq(lit(request_id.to_string())))
            .and_then(|d| d.select_columns(&[sp::TRACE_ID, sp::START_TIME]))
            .map_err(exec)?;
        let mut ids = Vec::new();
        let mut times = None;
        for b in &self.collect(df).await? {
            for id in trace_ids(b, sp::TRACE_ID)?.into_iter().flatten() {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            for t in timestamps(b, sp::START_TIME)?.into_iter().flatten() {
                times = Some(widen(times, t));
            }
        }
        Ok((ids, times))
    }

    /// Access-log rows of one graph edge, most recent first, each with its trace id: from
    /// the row itself, or from the spans that carry its request id.
    pub async fn edge_samples(&self, q: &EdgeSearch) -> Result<Vec<EdgeSample>, TraceError> {
        let mut f = time_range(rq::START_TIME, q.from_ns, q.to_ns).and(
            col(rq::REQUEST_ID)
                .is_not_null()
                .or(col(rq::TRACE_ID).is_not_null()),
        );
        if let Some(s) = &q.source {
            let s = lit(s.clone());
            f = f.and(
                col(rq::SOURCE_WORKLOAD)
                    .eq(s.clone())
                    .or(col(rq::SOURCE_APP).eq(s.clone()))
                    .or(col(rq::SOURCE_SERVICE).eq(s)),
            );
        }
        if let Some(d) = &q.destination {
            let d = lit(d.clone());
            f = f.and(
                col(rq::DESTINATION_SERVICE_NAME)
                    .eq(d.clone())
                    .or(col(rq::DESTINATION_SERVICE).eq(d.clone()))
                    .or(col(rq::DESTINATION_WORKLOAD).eq(d.clone()))
                    .or(col(rq::DESTINATION_APP).eq(d)),
            );
        }
        if let Some((lo, hi)) = q.status {
            f = f.and(
                col(rq::RESPONSE_CODE)
                    .gt_eq(lit(lo))
                    .and(col(rq::RESPONSE_CODE).lt_eq(lit(hi))),
            );
        }
        // The access log has milliseconds: a request of 9.6 ms is logged as 9 or 10.
        if let Some(d) = q.min_duration_ns {
            f = f.and(col(rq::DURATION_MS).gt_eq(lit(d / 1_000_000)));
        }
        if let Some(d) = q.max_duration_ns {
            f = f.and(col(rq::DURATION_MS).lt_eq(lit((d + 999_999) / 1_000_000)));
        }
        // Both sidecars log a hop; ask for more rows than traces wanted.
        let fetch = (q.limit * 4).min(self.limits.max_rows);
        let df = self
            .table(Table::Requests)
            .await?
            .filter(f)
            .and_then(|d| {
                d.select_columns(&[
                    rq::REQUEST_ID,
                    rq::TRACE_ID,
                    rq::START_TIME,
                    rq::RESPONSE_CODE,
                    rq::RESPONSE_FLAGS,
                    rq::DURATION_MS,
                    rq::REPORTER,
                    rq::PROXY,
                ])
            })
            .and_then(|d| d.sort(vec![col(rq::START_TIME).sort(false, false)]))
            .and_then(|d| d.limit(0, Some(fetch)))
            .map_err(exec)?;
        let mut samples = Vec::new();
        for b in &self.collect(df).await? {
            let rid = strings(b, rq::REQUEST_ID)?;
            let tid = trace_ids(b, rq::TRACE_ID)?;
            let start = timestamps(b, rq::START_TIME)?;
            let code = ints32(b, rq::RESPONSE_CODE)?;
            let flags = strings(b, rq::RESPONSE_FLAGS)?;
            let dur = ints64(b, rq::DURATION_MS)?;
            let rep = strings(b, rq::REPORTER)?;
            let proxy = strings(b, rq::PROXY)?;
            for i in 0..b.num_rows() {
                samples.push(EdgeSample {
                    request_id: rid[i].clone(),
                    trace_id: tid[i].map(|t| t.to_hex()),
                    start_time: rfc3339(start[i].unwrap_or(0)),
                    response_code: code[i].unwrap_or(0),
                    response_flags: flags[i].clone(),
                    duration_ms: dur[i].unwrap_or(0),
                    reporter: rep[i].clone(),
                    proxy: proxy[i].clone(),
                });
            }
        }
        // Request ids without a trace id: look them up in `spans` (bloom filter on
        // request_id), within the window widened by the longest plausible request.
        let missing: BTreeSet<String> = samples
            .iter()
            .filter(|s| s.trace_id.is_none())
            .filter_map(|s| s.request_id.clone())
            .collect();
        if !missing.is_empty() {
            let slack = 10 * 60 * NS_PER_S;
            let df = self
                .table(Table::Spans)
                .await?
                .filter(
                    time_range(
                        sp::START_TIME,
                        q.from_ns.saturating_sub(slack),
                        q.to_ns.saturating_add(slack),
                    )
                    .and(
                        col(sp::REQUEST_ID).in_list(missing.into_iter().map(lit).collect(), false),
                    ),
                )
                .and_then(|d| d.select_columns(&[sp::REQUEST_ID, sp::TRACE_ID]))
                .and_then(|d| d.distinct())
                .map_err(exec)?;
            let mut by_request: HashMap<String, TraceId> = HashMap::new();
            for b in &self.collect(df).await? {
                let rid = strings(b, sp::REQUEST_ID)?;
                let tid = trace_ids(b, sp::TRACE_ID)?;
                for (r, t) in rid.into_iter().zip(tid) {
                    if let (Some(r), Some(t)) = (r, t) {
                        by_request.entry(r).or_insert(t);
                    }
                }
            }
            for s in &mut samples {
                if s.trace_id.is_none() {
                    s.trace_id = s
                        .request_id
                        .as_ref()
                        .and_then(|r| by_request.get(r))
                        .map(|t| t.to_hex());
                }
            }
        }
        Ok(samples)
    }

    /// Distinct service names with spans in the window.
    pub async fn services(&self, from_ns: i64, to_ns: i64) -> Result<Vec<String>, TraceError> {
        let df = self
            .table(Table::Spans)
            .await?
            .filter(time_range(sp::START_TIME, from_ns, to_ns))
            .and_then(|d| d.select_columns(&[sp::SERVICE_NAME]))
            .and_then(|d| d.distinct())
            .map_err(exec)?;
        let mut out = BTreeSet::new();
        for b in &self.collect(df).await? {
            out.extend(strings(b, sp::SERVICE_NAME)?.into_iter().flatten());
        }
        Ok(out.into_iter().collect())
    }

    /// Distinct (span name, kind) of one service in the window.
    pub async fn operations(
        &self,
        service: &str,
        span_kind: Option<&str>,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<(String, String)>, TraceError> {
        let mut f = time_range(sp::START_TIME, from_ns, to_ns)
            .and(col(sp::SERVICE_NAME).eq(lit(service.to_string())));
        if let Some(k) = span_kind {
            f = f.and(col(sp::KIND).eq(lit(k.to_ascii_lowercase())));
        }
        let df = self
            .table(Table::Spans)
            .await?
            .filter(f)
            .and_then(|d| d.select_columns(&[sp::NAME, sp::KIND]))
            .and_then(|d| d.distinct())
            .map_err(exec)?;
        let mut out = BTreeSet::new();
        for b in &self.collect(df).await? {
            let names = strings(b, sp::NAME)?;
            let kinds = strings(b, sp::KIND)?;
            for (n, k) in names.into_iter().zip(kinds) {
                out.insert((n.unwrap_or_default(), k.unwrap_or_default()));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Calls between services in the window: (parent service, child service, spans), from
    /// every span whose parent span is in another service (an Envoy hop is a CLIENT span in
    /// the caller's sidecar and a SERVER span in the callee's).
    pub async fn dependencies(
        &self,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<(String, String, u64)>, TraceError> {
        let spans = self
            .table(Table::Spans)
            .await?
            .filter(time_range(sp::START_TIME, from_ns, to_ns))
            .and_then(|d| {
                d.select_columns(&[
                    sp::TRACE_ID,
                    sp::SPAN_ID,
                    sp::PARENT_SPAN_ID,
                    sp::SERVICE_NAME,
                ])
            })
            .map_err(exec)?;
        let child = spans
            .clone()
            .filter(col(sp::PARENT_SPAN_ID).is_not_null())
            .and_then(|d| d.alias("c"))
            .map_err(exec)?;
        let parent = spans.alias("p").map_err(exec)?;
        let df = child
            .join_on(
                parent,
                datafusion::logical_expr::JoinType::Inner,
                [
                    col("c.trace_id").eq(col("p.trace_id")),
                    col("c.parent_span_id").eq(col("p.span_id")),
                ],
            )
            .and_then(|d| d.filter(col("c.service_name").not_eq(col("p.service_name"))))
            .and_then(|d| {
                d.aggregate(
                    vec![
                        col("p.service_name").alias("parent"),
                        col("c.service_name").alias("child"),
                    ],
                    vec![datafusion::functions_aggregate::expr_fn::count(lit(1)).alias("calls")],
                )
            })
            .and_then(|d| {
                d.sort(vec![
                    col("parent").sort(true, false),
                    col("child").sort(true, false),
                ])
            })
            .map_err(exec)?;
        let mut out = Vec::new();
        for b in &self.collect(df).await? {
            let p = strings(b, "parent")?;
            let c = strings(b, "child")?;
            let n = ints64(b, "calls")?;
            for i in 0..b.num_rows() {
                out.push((
                    p[i].clone().unwrap_or_default(),
                    c[i].clone().unwrap_or_default(),
                    n[i].unwrap_or(0) as u64,
                ));
            }
        }
        Ok(out)
    }
}

/// Spans that are errors (`is_error`), or that are not.
fn error_filter(error: bool) -> Expr {
    if error {
        col(sp::STATUS_CODE)
            .eq(lit("error"))
            .or(col(sp::HTTP_STATUS_CODE).gt_eq(lit(500i32)))
    } else {
        col(sp::STATUS_CODE).not_eq(lit("error")).and(
            col(sp::HTTP_STATUS_CODE)
                .is_null()
                .or(col(sp::HTTP_STATUS_CODE).lt(lit(500i32))),
        )
    }
}

/// A tag search term as a filter: a dedicated column when the key has one, else the
/// `attributes` or `resource_attributes` map.
fn tag_filter(key: &str, value: &str) -> Result<Expr, TraceError> {
    match key {
        "error" => return Ok(error_filter(parse_bool("tags", value)?)),
        "span.kind" => return Ok(col(sp::KIND).eq(lit(value.to_ascii_lowercase()))),
        "otel.status_code" => {
            return Ok(col(sp::STATUS_CODE).eq(lit(value.to_ascii_lowercase())));
        }
        "service.name" => return Ok(col(sp::SERVICE_NAME).eq(lit(value.to_string()))),
        _ => {}
    }
    match dedicated_column(key) {
        Some(c) if c == sp::HTTP_STATUS_CODE => {
            let code: i32 = value.parse().map_err(|_| {
                TraceError::bad(
                    "tags",
                    format!("{key}={value:?}: the status code must be a number"),
                )
            })?;
            Ok(col(c).eq(lit(code)))
        }
        Some(c) => Ok(col(c).eq(lit(value.to_string()))),
        None => Ok(get_field(col(sp::ATTRIBUTES), key.to_string())
            .eq(lit(value.to_string()))
            .or(
                get_field(col(sp::RESOURCE_ATTRIBUTES), key.to_string()).eq(lit(value.to_string()))
            )),
    }
}

// ---------------------------------------------------------------------------------------
// Arrow → rows

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, TraceError> {
    b.column_by_name(name)
        .ok_or_else(|| exec(format!("column {name} missing from the result")))
}

/// A column as `want`, casting views and dictionaries the Parquet reader may produce.
fn as_type(b: &RecordBatch, name: &str, want: &DataType) -> Result<ArrayRef, TraceError> {
    let a = column(b, name)?;
    if a.data_type() == want {
        Ok(a.clone())
    } else {
        cast(a, want).map_err(exec)
    }
}

fn strings(b: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, TraceError> {
    let a = as_type(b, name, &DataType::Utf8)?;
    Ok(a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

fn ints64(b: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>, TraceError> {
    let a = as_type(b, name, &DataType::Int64)?;
    Ok(a.as_primitive::<Int64Type>().iter().collect())
}

fn ints32(b: &RecordBatch, name: &str) -> Result<Vec<Option<i32>>, TraceError> {
    let a = as_type(b, name, &DataType::Int32)?;
    Ok(a.as_primitive::<Int32Type>().iter().collect())
}

fn timestamps(b: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>, TraceError> {
    let a = column(b, name)?;
    let a = match a.data_type() {
        DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, _) => a.clone(),
        _ => cast(a, &meshscope_schemas::table::timestamp_type()).map_err(exec)?,
    };
    Ok(a.as_primitive::<TimestampNanosecondType>().iter().collect())
}

fn fixed<const N: usize>(b: &RecordBatch, name: &str) -> Result<Vec<Option<[u8; N]>>, TraceError> {
    let a = column(b, name)?;
    let a = a.as_fixed_size_binary_opt().ok_or_else(|| {
        exec(format!(
            "column {name} is {}, expected fixed-size binary",
            a.data_type()
        ))
    })?;
    Ok(a.iter()
        .map(|v| v.and_then(|v| <[u8; N]>::try_from(v).ok()))
        .collect())
}

fn trace_ids(b: &RecordBatch, name: &str) -> Result<Vec<Option<TraceId>>, TraceError> {
    Ok(fixed::<16>(b, name)?
        .into_iter()
        .map(|v| v.map(TraceId))
        .collect())
}

fn map_at(a: &ArrayRef, i: usize) -> Attrs {
    let Some(m) = a.as_map_opt() else {
        return Vec::new();
    };
    if m.is_null(i) {
        return Vec::new();
    }
    let entries = m.value(i);
    let (Some(k), Some(v)) = (
        cast(entries.column(0), &DataType::Utf8).ok(),
        cast(entries.column(1), &DataType::Utf8).ok(),
    ) else {
        return Vec::new();
    };
    let (k, v) = (k.as_string::<i32>().clone(), v.as_string::<i32>().clone());
    (0..k.len())
        .map(|j| {
            (
                k.value(j).to_string(),
                if v.is_null(j) {
                    String::new()
                } else {
                    v.value(j).to_string()
                },
            )
        })
        .collect()
}

fn events_at(a: &ArrayRef, i: usize) -> Vec<SpanEvent> {
    let Some(l) = a.as_list_opt::<i32>() else {
        return Vec::new();
    };
    if l.is_null(i) {
        return Vec::new();
    }
    let s = l.value(i);
    let s = s.as_struct();
    let times = s.column(0).as_primitive_opt::<TimestampNanosecondType>();
    let names = cast(s.column(1), &DataType::Utf8).ok();
    let attrs = s.column(2);
    (0..s.len())
        .map(|j| SpanEvent {
            time_unix_nano: times.map_or(0, |t| t.value(j)),
            name: names
                .as_ref()
                .map(|n| n.as_string::<i32>().value(j).to_string())
                .unwrap_or_default(),
            attributes: map_at(attrs, j),
        })
        .collect()
}

fn links_at(a: &ArrayRef, i: usize) -> Vec<SpanLink> {
    let Some(l) = a.as_list_opt::<i32>() else {
        return Vec::new();
    };
    if l.is_null(i) {
        return Vec::new();
    }
    let s = l.value(i);
    let s = s.as_struct();
    let (Some(t), Some(sid)) = (
        s.column(0).as_fixed_size_binary_opt(),
        s.column(1).as_fixed_size_binary_opt(),
    ) else {
        return Vec::new();
    };
    let states = cast(s.column(2), &DataType::Utf8).ok();
    (0..s.len())
        .map(|j| SpanLink {
            trace_id: TraceId(t.value(j).try_into().unwrap_or_default()),
            span_id: SpanId(sid.value(j).try_into().unwrap_or_default()),
            trace_state: states.as_ref().and_then(|st| {
                let st = st.as_string::<i32>();
                (!st.is_null(j)).then(|| st.value(j).to_string())
            }),
            attributes: map_at(s.column(3), j),
        })
        .collect()
}

/// Whole `spans` rows back into `SpanRow`s.
pub fn spans_from_batches(batches: &[RecordBatch]) -> Result<Vec<SpanRow>, TraceError> {
    let mut out = Vec::new();
    for b in batches {
        let n = b.num_rows();
        let tid = trace_ids(b, sp::TRACE_ID)?;
        let sid = fixed::<8>(b, sp::SPAN_ID)?;
        let pid = fixed::<8>(b, sp::PARENT_SPAN_ID)?;
        let start = timestamps(b, sp::START_TIME)?;
        let dur = ints64(b, sp::DURATION_NS)?;
        let st = |c| strings(b, c);
        let (trace_state, service, name, kind, status, status_msg) = (
            st(sp::TRACE_STATE)?,
            st(sp::SERVICE_NAME)?,
            st(sp::NAME)?,
            st(sp::KIND)?,
            st(sp::STATUS_CODE)?,
            st(sp::STATUS_MESSAGE)?,
        );
        let (request_id, method, url, proto, ua) = (
            st(sp::REQUEST_ID)?,
            st(sp::HTTP_METHOD)?,
            st(sp::HTTP_URL)?,
            st(sp::HTTP_PROTOCOL)?,
            st(sp::USER_AGENT)?,
        );
        let code = ints32(b, sp::HTTP_STATUS_CODE)?;
        let (ucluster, uaddr, flags, peer, dcluster, node, component) = (
            st(sp::UPSTREAM_CLUSTER)?,
            st(sp::UPSTREAM_ADDRESS)?,
            st(sp::RESPONSE_FLAGS)?,
            st(sp::PEER_ADDRESS)?,
            st(sp::DOWNSTREAM_CLUSTER)?,
            st(sp::NODE_ID)?,
            st(sp::COMPONENT)?,
        );
        let (csvc, crev, ns, mesh, scope) = (
            st(sp::ISTIO_CANONICAL_SERVICE)?,
            st(sp::ISTIO_CANONICAL_REVISION)?,
            st(sp::ISTIO_NAMESPACE)?,
            st(sp::ISTIO_MESH_ID)?,
            st(sp::SCOPE_NAME)?,
        );
        let attrs = column(b, sp::ATTRIBUTES)?;
        let rattrs = column(b, sp::RESOURCE_ATTRIBUTES)?;
        let events = column(b, sp::EVENTS)?;
        let links = column(b, sp::LINKS)?;
        for i in 0..n {
            let (Some(trace_id), Some(span_id)) = (tid[i], sid[i]) else {
                continue;
            };
            out.push(SpanRow {
                trace_id,
                span_id: SpanId(span_id),
                parent_span_id: pid[i].map(SpanId),
                trace_state: trace_state[i].clone(),
                start_time_unix_nano: start[i].unwrap_or(0),
                duration_ns: dur[i].unwrap_or(0),
                service_name: service[i].clone().unwrap_or_default(),
                name: name[i].clone().unwrap_or_default(),
                kind: kind[i].clone().unwrap_or_default(),
                status_code: status[i].clone().unwrap_or_default(),
                status_message: status_msg[i].clone(),
                request_id: request_id[i].clone(),
                http_method: method[i].clone(),
                http_status_code: code[i],
                http_url: url[i].clone(),
                http_protocol: proto[i].clone(),
                user_agent: ua[i].clone(),
                upstream_cluster: ucluster[i].clone(),
                upstream_address: uaddr[i].clone(),
                response_flags: flags[i].clone(),
                peer_address: peer[i].clone(),
                downstream_cluster: dcluster[i].clone(),
                node_id: node[i].clone(),
                component: component[i].clone(),
                istio_canonical_service: csvc[i].clone(),
                istio_canonical_revision: crev[i].clone(),
                istio_namespace: ns[i].clone(),
                istio_mesh_id: mesh[i].clone(),
                scope_name: scope[i].clone(),
                attributes: map_at(attrs, i),
                resource_attributes: map_at(rattrs, i),
                events: events_at(events, i),
                links: links_at(links, i),
            });
        }
    }
    Ok(out)
}

pub fn rfc3339(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

pub fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------
// The waterfall

/// One stretch of the critical path: `span_id` was the work the trace waited on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CriticalSegment {
    pub span_id: String,
    pub start_offset_ns: i64,
    pub end_offset_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagMeaning {
    pub flag: String,
    pub meaning: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub time: String,
    pub offset_ns: i64,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkView {
    pub trace_id: String,
    pub span_id: String,
    pub trace_state: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// One span in waterfall order.
#[derive(Debug, Clone, Serialize)]
pub struct SpanView {
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub children: Vec<String>,
    pub depth: usize,
    /// From the trace's first span start.
    pub offset_ns: i64,
    pub start_time: String,
    pub duration_ns: i64,
    /// Duration not covered by any child span.
    pub self_ns: i64,
    /// Time this span contributes to the critical path.
    pub critical_path_ns: i64,
    pub service_name: String,
    pub name: String,
    pub kind: String,
    pub status_code: String,
    pub status_message: Option<String>,
    pub error: bool,
    pub http_method: Option<String>,
    pub http_status_code: Option<i32>,
    pub http_url: Option<String>,
    pub upstream_cluster: Option<String>,
    pub response_flags: Option<String>,
    pub response_flag_meanings: Vec<FlagMeaning>,
    pub request_id: Option<String>,
    pub node_id: Option<String>,
    /// The other half of this span's mesh hop: the inbound sidecar's SERVER span for an
    /// outbound CLIENT span, and the reverse.
    pub pair_span_id: Option<String>,
    /// Every span attribute, including those stored in dedicated columns.
    pub attributes: BTreeMap<String, String>,
    pub resource_attributes: BTreeMap<String, String>,
    pub events: Vec<EventView>,
    pub links: Vec<LinkView>,
}

/// One mesh hop: the caller's outbound CLIENT span and, when the request reached the callee's
/// sidecar, its inbound SERVER span.
#[derive(Debug, Clone, Serialize)]
pub struct HopView {
    pub client_span_id: String,
    pub server_span_id: Option<String>,
    pub source_service: String,
    pub destination_service: Option<String>,
    pub upstream_cluster: Option<String>,
    pub http_status_code: Option<i32>,
    pub response_flags: Option<String>,
    pub client_duration_ns: i64,
    pub server_duration_ns: Option<i64>,
    /// Client minus server duration: the network and both sidecars.
    pub outside_server_ns: Option<i64>,
    /// The caller's sidecar answered itself (e.g. `UO` from a circuit breaker): no server span.
    pub answered_by_client_sidecar: bool,
    pub error: bool,
}

/// A whole trace, as a waterfall.
#[derive(Debug, Clone, Serialize)]
pub struct TraceView {
    pub trace_id: String,
    pub start_time: String,
    pub start_unix_nano: i64,
    pub duration_ns: i64,
    pub span_count: usize,
    pub error_count: usize,
    pub services: Vec<String>,
    pub request_ids: Vec<String>,
    pub root_span_ids: Vec<String>,
    /// From the first root's start to its end, in time order.
    pub critical_path: Vec<CriticalSegment>,
    pub hops: Vec<HopView>,
    pub warnings: Vec<String>,
    /// Depth-first, children in start order.
    pub spans: Vec<SpanView>,
}

fn attr_map(a: &[(String, String)]) -> BTreeMap<String, String> {
    a.iter().cloned().collect()
}

fn flag_meanings(flags: Option<&str>) -> Vec<FlagMeaning> {
    flags
        .into_iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty() && *f != "-")
        .map(|f| FlagMeaning {
            flag: f.to_string(),
            meaning: response_flag_meaning(f),
        })
        .collect()
}

/// The tree of a trace's spans: depth-first order, depths, children.
pub struct Tree {
    /// Span indexes in waterfall order.
    pub order: Vec<usize>,
    pub depth: Vec<usize>,
    pub children: Vec<Vec<usize>>,
    pub parent: Vec<Option<usize>>,
    pub roots: Vec<usize>,
    pub warnings: Vec<String>,
}

impl Tree {
    /// Spans whose parent is not stored become roots (with a warning); duplicates of a span
    /// id are ignored after the first.
    pub fn build(spans: &[SpanRow]) -> Tree {
        let n = spans.len();
        let mut warnings = Vec::new();
        let mut index: HashMap<SpanId, usize> = HashMap::with_capacity(n);
        let mut dup = vec![false; n];
        for (i, s) in spans.iter().enumerate() {
            if index.insert(s.span_id, i).is_some() {
                dup[i] = true;
            }
        }
        // keep the first occurrence
        for (i, s) in spans.iter().enumerate().rev() {
            if !dup[i] {
                index.insert(s.span_id, i);
            }
        }
        let mut seen_dup = HashSet::new();
        for (i, s) in spans.iter().enumerate() {
            if index.get(&s.span_id) != Some(&i) && seen_dup.insert(s.span_id) {
                warnings.push(format!(
                    "span {} is stored more than once; the first copy is shown",
                    s.span_id
                ));
            }
        }
        let mut parent = vec![None; n];
        let mut children = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            if index.get(&s.span_id) != Some(&i) {
                continue;
            }
            match s.parent_span_id.and_then(|p| index.get(&p).copied()) {
                Some(p) if p != i => {
                    parent[i] = Some(p);
                    children[p].push(i);
                }
                _ => {
                    if let Some(p) = s.parent_span_id {
                        warnings.push(format!(
                            "span {} has parent {p}, which is not stored; shown as a root",
                            s.span_id
                        ));
                    }
                    roots.push(i);
                }
            }
        }
        let by_start = |a: &usize, b: &usize| {
            (spans[*a].start_time_unix_nano, spans[*a].span_id)
                .cmp(&(spans[*b].start_time_unix_nano, spans[*b].span_id))
        };
        for c in &mut children {
            c.sort_by(by_start);
        }
        roots.sort_by(by_start);
        let mut order = Vec::with_capacity(n);
        let mut depth = vec![0usize; n];
        let mut visited = vec![false; n];
        fn walk(
            root: usize,
            children: &[Vec<usize>],
            order: &mut Vec<usize>,
            depth: &mut [usize],
            visited: &mut [bool],
        ) {
            let mut stack = vec![(root, 0usize)];
            while let Some((i, d)) = stack.pop() {
                if visited[i] {
                    continue;
                }
                visited[i] = true;
                depth[i] = d;
                order.push(i);
                for &c in children[i].iter().rev() {
                    stack.push((c, d + 1));
                }
            }
        }
        for &r in &roots {
            walk(r, &children, &mut order, &mut depth, &mut visited);
        }
        // Spans on a parent cycle are unreachable from any root: show them as roots.
        for i in 0..n {
            if !visited[i] && index.get(&spans[i].span_id) == Some(&i) {
                warnings.push(format!(
                    "span {} is part of a parent cycle; shown as a root",
                    spans[i].span_id
                ));
                if let Some(p) = parent[i].take() {
                    children[p].retain(|&c| c != i);
                }
                roots.push(i);
                walk(i, &children, &mut order, &mut depth, &mut visited);
            }
        }
        Tree {
            order,
            depth,
            children,
            parent,
            roots,
            warnings,
        }
    }
}

/// Total length of the union of intervals.
fn covered(mut iv: Vec<(i64, i64)>) -> i64 {
    iv.retain(|(a, b)| b > a);
    iv.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(i64, i64)> = None;
    for (a, b) in iv {
        match &mut cur {
            Some((_, ce)) if a <= *ce => *ce = (*ce).max(b),
            _ => {
                if let Some((s, e)) = cur {
                    total += e - s;
                }
                cur = Some((a, b));
            }
        }
    }
    if let Some((s, e)) = cur {
        total += e - s;
    }
    total
}

/// The critical path under `root`: walking back from the root's end, the work the trace was
/// waiting on is the child that finished last before that point; inside it the same rule
/// applies; once it starts, the parent is waited on again until the next earlier-finishing
/// child. Children are clipped to their parent's interval. Segments come out in time order.
pub fn critical_path(spans: &[SpanRow], tree: &Tree, root: usize) -> Vec<(usize, i64, i64)> {
    let n = spans.len();
    let end = |i: usize| spans[i].start_time_unix_nano + spans[i].duration_ns.max(0);
    // Clipped intervals, parents before children (tree order).
    let mut clip: Vec<(i64, i64)> = (0..n)
        .map(|i| (spans[i].start_time_unix_nano, end(i)))
        .collect();
    for &i in &tree.order {
        if let Some(p) = tree.parent[i] {
            let (ps, pe) = clip[p];
            let (s, e) = clip[i];
            let s = s.clamp(ps, pe);
            clip[i] = (s, e.clamp(s, pe));
        }
    }
    // Children by clipped end, latest first; a cursor per frame only moves forward because
    // the point we walk back from only moves earlier.
    let sorted: Vec<Vec<usize>> = tree
        .children
        .iter()
        .map(|c| {
            let mut c: Vec<usize> = c
                .iter()
                .copied()
                .filter(|&j| clip[j].1 > clip[j].0)
                .collect();
            c.sort_by_key(|&j| std::cmp::Reverse((clip[j].1, clip[j].0)));
            c
        })
        .collect();
    let mut segments = Vec::new();
    // (span, point we walk back from, cursor into sorted children)
    let mut frames = vec![(root, clip[root].1, 0usize)];
    while let Some((s, t, cursor)) = frames.last_mut() {
        let s = *s;
        let kids = &sorted[s];
        while *cursor < kids.len() && clip[kids[*cursor]].1 > *t {
            *cursor += 1;
        }
        if *cursor < kids.len() {
            let c = kids[*cursor];
            *cursor += 1;
            let (cs, ce) = clip[c];
            if ce < *t {
                segments.push((s, ce, *t));
            }
            *t = cs;
            frames.push((c, ce, 0));
        } else {
            let (ss, _) = clip[s];
            if ss < *t {
                segments.push((s, ss, *t));
            }
            frames.pop();
        }
    }
    segments.reverse();
    segments
}

/// Builds the waterfall of one trace from its spans (any order).
pub fn trace_view(trace_id: TraceId, spans: &[SpanRow]) -> TraceView {
    let tree = Tree::build(spans);
    let start = spans
        .iter()
        .map(|s| s.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.start_time_unix_nano + s.duration_ns.max(0))
        .max()
        .unwrap_or(start);
    let end_of = |i: usize| spans[i].start_time_unix_nano + spans[i].duration_ns.max(0);
    let self_ns: Vec<i64> = (0..spans.len())
        .map(|i| {
            let (s, e) = (spans[i].start_time_unix_nano, end_of(i));
            let kids = tree.children[i]
                .iter()
                .map(|&c| {
                    (
                        spans[c].start_time_unix_nano.clamp(s, e),
                        end_of(c).clamp(s, e),
                    )
                })
                .collect();
            (e - s) - covered(kids)
        })
        .collect();
    let mut critical_ns = vec![0i64; spans.len()];
    let mut critical = Vec::new();
    if let Some(&root) = tree.roots.first() {
        for (i, a, b) in critical_path(spans, &tree, root) {
            critical_ns[i] += b - a;
            critical.push(CriticalSegment {
                span_id: spans[i].span_id.to_hex(),
                start_offset_ns: a - start,
                end_offset_ns: b - start,
            });
        }
    }
    // Envoy hops: a SERVER span whose parent is a CLIENT span.
    let mut pair: Vec<Option<usize>> = vec![None; spans.len()];
    for &i in &tree.order {
        if spans[i].kind == "server"
            && let Some(p) = tree.parent[i]
            && spans[p].kind == "client"
            && pair[p].is_none()
        {
            pair[p] = Some(i);
            pair[i] = Some(p);
        }
    }
    let mut hops = Vec::new();
    for &i in &tree.order {
        let c = &spans[i];
        if c.kind != "client" {
            continue;
        }
        let server = pair[i].map(|j| &spans[j]);
        let flags = flag_meanings(c.response_flags.as_deref());
        let destination = server.map(|s| s.service_name.clone()).or_else(|| {
            c.upstream_cluster
                .as_deref()
                .and_then(meshscope_schemas::envoy::IstioCluster::parse)
                .and_then(|cl| cl.host)
        });
        hops.push(HopView {
            client_span_id: c.span_id.to_hex(),
            server_span_id: server.map(|s| s.span_id.to_hex()),
            source_service: c.service_name.clone(),
            destination_service: destination,
            upstream_cluster: c.upstream_cluster.clone(),
            http_status_code: c.http_status_code,
            response_flags: c.response_flags.clone(),
            client_duration_ns: c.duration_ns,
            server_duration_ns: server.map(|s| s.duration_ns),
            outside_server_ns: server.map(|s| c.duration_ns - s.duration_ns),
            answered_by_client_sidecar: server.is_none()
                && flags
                    .iter()
                    .any(|f| LOCAL_REPLY_FLAGS.contains(&f.flag.as_str())),
            error: is_error(c) || server.is_some_and(is_error),
        });
    }
    let views: Vec<SpanView> = tree
        .order
        .iter()
        .map(|&i| {
            let s = &spans[i];
            SpanView {
                span_id: s.span_id.to_hex(),
                parent_span_id: s.parent_span_id.map(|p| p.to_hex()),
                children: tree.children[i]
                    .iter()
                    .map(|&c| spans[c].span_id.to_hex())
                    .collect(),
                depth: tree.depth[i],
                offset_ns: s.start_time_unix_nano - start,
                start_time: rfc3339(s.start_time_unix_nano),
                duration_ns: s.duration_ns,
                self_ns: self_ns[i],
                critical_path_ns: critical_ns[i],
                service_name: s.service_name.clone(),
                name: s.name.clone(),
                kind: s.kind.clone(),
                status_code: s.status_code.clone(),
                status_message: s.status_message.clone(),
                error: is_error(s),
                http_method: s.http_method.clone(),
                http_status_code: s.http_status_code,
                http_url: s.http_url.clone(),
                upstream_cluster: s.upstream_cluster.clone(),
                response_flags: s.response_flags.clone(),
                response_flag_meanings: flag_meanings(s.response_flags.as_deref()),
                request_id: s.request_id.clone(),
                node_id: s.node_id.clone(),
                pair_span_id: pair[i].map(|j| spans[j].span_id.to_hex()),
                attributes: attr_map(&span_attributes(s)),
                resource_attributes: {
                    let mut m = attr_map(&s.resource_attributes);
                    m.insert("service.name".into(), s.service_name.clone());
                    m
                },
                events: s
                    .events
                    .iter()
                    .map(|e| EventView {
                        time: rfc3339(e.time_unix_nano),
                        offset_ns: e.time_unix_nano - start,
                        name: e.name.clone(),
                        attributes: attr_map(&e.attributes),
                    })
                    .collect(),
                links: s
                    .links
                    .iter()
                    .map(|l| LinkView {
                        trace_id: l.trace_id.to_hex(),
                        span_id: l.span_id.to_hex(),
                        trace_state: l.trace_state.clone(),
                        attributes: attr_map(&l.attributes),
                    })
                    .collect(),
            }
        })
        .collect();
    let services: BTreeSet<String> = spans.iter().map(|s| s.service_name.clone()).collect();
    let request_ids: BTreeSet<String> = spans.iter().filter_map(|s| s.request_id.clone()).collect();
    TraceView {
        trace_id: trace_id.to_hex(),
        start_time: rfc3339(start),
        start_unix_nano: start,
        duration_ns: end - start,
        span_count: views.len(),
        error_count: views.iter().filter(|v| v.error).count(),
        services: services.into_iter().collect(),
        request_ids: request_ids.into_iter().collect(),
        root_span_ids: tree
            .roots
            .iter()
            .map(|&r| spans[r].span_id.to_hex())
            .collect(),
        critical_path: critical,
        hops,
        warnings: tree.warnings,
        spans: views,
    }
}

/// A search result line: one trace in brief.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub start_time: String,
    pub start_unix_nano: i64,
    pub duration_ns: i64,
    pub span_count: usize,
    pub error_count: usize,
    pub root_service: Option<String>,
    pub root_name: Option<String>,
    pub services: Vec<String>,
    pub request_ids: Vec<String>,
    pub response_flags: Vec<String>,
}

impl From<&TraceView> for TraceSummary {
    fn from(v: &TraceView) -> TraceSummary {
        let root = v.spans.first();
        let flags: BTreeSet<String> = v
            .spans
            .iter()
            .flat_map(|s| s.response_flag_meanings.iter().map(|f| f.flag.clone()))
            .collect();
        TraceSummary {
            trace_id: v.trace_id.clone(),
            start_time: v.start_time.clone(),
            start_unix_nano: v.start_unix_nano,
            duration_ns: v.duration_ns,
            span_count: v.span_count,
            error_count: v.error_count,
            root_service: root.map(|r| r.service_name.clone()),
            root_name: root.map(|r| r.name.clone()),
            services: v.services.clone(),
            request_ids: v.request_ids.clone(),
            response_flags: flags.into_iter().collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// `/api/v1/traces/{trace_id}`, `/api/v1/traces`, `/api/v1/requests/{request_id}`.
pub fn routes(engine: QueryEngine, limits: SqlLimits) -> Router {
    router(TraceService::new(engine, limits))
}

pub fn router(svc: TraceService) -> Router {
    Router::new()
        .route("/api/v1/traces", get(search_handler))
        .route("/api/v1/traces/{trace_id}", get(trace_handler))
        .route("/api/v1/requests/{request_id}", get(request_handler))
        .with_state(svc)
}

async fn trace_handler(State(svc): State<TraceService>, Path(id): Path<String>) -> Response {
    let r = async {
        let id = parse_trace_id("trace_id", &id, true)?;
        let spans = svc.timed(svc.trace_spans(&id)).await?;
        if spans.is_empty() {
            return Err(TraceError::NotFound(format!("trace {id} not found")));
        }
        Ok(trace_view(id, &spans))
    }
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Everything known for one `x-request-id`.
#[derive(Debug, Serialize)]
pub struct RequestView {
    pub request_id: String,
    pub trace_ids: Vec<String>,
    pub traces: Vec<TraceView>,
    /// `requests` rows with this request id, from every proxy, in time order.
    pub access_log: Vec<Value>,
}

pub async fn request_view(svc: &TraceService, request_id: &str) -> Result<RequestView, TraceError> {
    let (rows, (from_spans, span_times)) = tokio::try_join!(
        svc.request_rows(request_id),
        svc.request_trace_ids(request_id)
    )?;
    let mut ids: Vec<TraceId> = Vec::new();
    for id in from_spans.into_iter().chain(rows.trace_ids) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() && rows.rows.is_empty() {
        return Err(TraceError::NotFound(format!(
            "no span and no access-log line has request id {request_id:?}"
        )));
    }
    ids.truncate(MAX_TRACES_PER_REQUEST);
    // The traces are read in the hours around the request, not in every hour stored.
    let window = match (rows.times, span_times) {
        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
        (a, b) => a.or(b),
    };
    let traces = svc.traces(&ids, window).await?;
    Ok(RequestView {
        request_id: request_id.to_string(),
        trace_ids: ids.iter().map(|t| t.to_hex()).collect(),
        traces: traces.iter().map(|(id, s)| trace_view(*id, s)).collect(),
        access_log: rows.rows,
    })
}

async fn request_handler(State(svc): State<TraceService>, Path(rid): Path<String>) -> Response {
    let r = async {
        let rid = parse_request_id("request_id", &rid)?;
        svc.timed(request_view(&svc, &rid)).await
    }
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

const SEARCH_PARAMS: &[&str] = &[
    "service",
    "operation",
    "tags",
    "min_duration",
    "max_duration",
    "from",
    "to",
    "limit",
    "error",
    "source",
    "destination",
    "status",
];

/// `5xx`, `2xx`, … or one code → an inclusive range.
fn parse_status(s: &str) -> Result<(i32, i32), TraceError> {
    let bad = || {
        TraceError::bad(
            "status",
            format!("{s:?} is not a status: write 5xx, 4xx, 2xx, … or a code such as 503"),
        )
    };
    let lower = s.to_ascii_lowercase();
    if let Some(d) = lower.strip_suffix("xx") {
        let d: i32 = d.parse().map_err(|_| bad())?;
        return if (1..=5).contains(&d) {
            Ok((d * 100, d * 100 + 99))
        } else {
            Err(bad())
        };
    }
    match s.parse::<i32>() {
        Ok(c) if (0..=599).contains(&c) => Ok((c, c)),
        _ => Err(bad()),
    }
}

/// The time window of a search: `from`/`to`, defaulting to the last hour.
fn window(p: &Params) -> Result<(i64, i64), TraceError> {
    let to = match p.get("to") {
        Some(s) => parse_time("to", s)?,
        None => now_ns(),
    };
    let from = match p.get("from") {
        Some(s) => parse_time("from", s)?,
        None => to.saturating_sub(DEFAULT_LOOKBACK_NS),
    };
    if from > to {
        return Err(TraceError::bad("from", "must not be after `to`"));
    }
    Ok((from, to))
}

fn opt_duration(p: &Params, name: &str) -> Result<Option<i64>, TraceError> {
    p.get(name).map(|s| parse_duration(name, s)).transpose()
}

async fn search(svc: &TraceService, p: &Params) -> Result<Value, TraceError> {
    p.only(SEARCH_PARAMS)?;
    let (from_ns, to_ns) = window(p)?;
    let limit = parse_limit("limit", p.get("limit"))?;
    let min_duration_ns = opt_duration(p, "min_duration")?;
    let max_duration_ns = opt_duration(p, "max_duration")?;
    let edge = ["source", "destination", "status"]
        .iter()
        .any(|k| p.get(k).is_some());
    if edge {
        if let Some(k) = ["service", "operation", "tags", "error"]
            .into_iter()
            .find(|k| p.get(k).is_some())
        {
            return Err(TraceError::bad(
                k,
                "an edge search (source, destination, status) filters access-log rows and cannot be combined with span filters",
            ));
        }
        let q = EdgeSearch {
            from_ns,
            to_ns,
            source: p.get("source").map(str::to_string),
            destination: p.get("destination").map(str::to_string),
            status: p.get("status").map(parse_status).transpose()?,
            min_duration_ns,
            max_duration_ns,
            limit,
        };
        let samples = svc.edge_samples(&q).await?;
        let mut ids: Vec<TraceId> = Vec::new();
        for s in &samples {
            if let Some(t) = s
                .trace_id
                .as_deref()
                .and_then(|t| TraceId::from_hex(t).ok())
                && !ids.contains(&t)
                && ids.len() < limit
            {
                ids.push(t);
            }
        }
        let traces = svc.traces(&ids, Some((from_ns, to_ns))).await?;
        let summaries: Vec<TraceSummary> = traces
            .iter()
            .map(|(id, s)| TraceSummary::from(&trace_view(*id, s)))
            .collect();
        let samples: Vec<&EdgeSample> = samples
            .iter()
            .filter(|s| {
                s.trace_id
                    .as_deref()
                    .is_some_and(|t| ids.iter().any(|i| i.to_hex() == t))
            })
            .collect();
        return Ok(json!({
            "from": rfc3339(from_ns), "to": rfc3339(to_ns), "limit": limit,
            "traces": summaries, "samples": samples,
        }));
    }
    let tags = p
        .get("tags")
        .map(|t| parse_tags("tags", t))
        .transpose()?
        .unwrap_or_default();
    let q = SpanSearch {
        from_ns,
        to_ns,
        service: p.get("service").map(str::to_string),
        operation: p.get("operation").map(str::to_string),
        span_kind: None,
        tags,
        min_duration_ns,
        max_duration_ns,
        error: p.get("error").map(|e| parse_bool("error", e)).transpose()?,
        limit,
    };
    let ids = svc.search(&q).await?;
    let traces = svc.traces(&ids, Some((from_ns, to_ns))).await?;
    let summaries: Vec<TraceSummary> = traces
        .iter()
        .map(|(id, s)| TraceSummary::from(&trace_view(*id, s)))
        .collect();
    Ok(json!({
        "from": rfc3339(from_ns), "to": rfc3339(to_ns), "limit": limit, "traces": summaries,
    }))
}

async fn search_handler(State(svc): State<TraceService>, RawQuery(q): RawQuery) -> Response {
    let p = Params::parse(q.as_deref());
    match svc.timed(search(&svc, &p)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
