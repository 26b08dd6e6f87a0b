//! A Jaeger-compatible query API under `/jaeger`, so that Grafana's built-in Jaeger data
//! source pointed at `http://<host>:20001/jaeger` works unmodified: services, operations,
//! trace search, trace by id and service dependencies, answered in the JSON of Jaeger's
//! HTTP API (`{data, total, limit, offset, errors}`; spans with `traceID`, `spanID`,
//! `references`, µs `startTime`/`duration`, typed `tags`, `logs`, `processID`).
//!
//! A trace is never answered with zero spans: Grafana reads `data[0].spans[0]` unchecked, so an
//! unknown id is a 404 with Jaeger's error shape. The queries are `traces::TraceService`'s.
//! `grafana` mirrors the types Grafana's data source reads, for tests.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meshscope_schemas::TraceId;
use meshscope_schemas::rows::SpanRow;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::time::{self, Epoch, now_ns};
use crate::sql::{QueryEngine, SqlLimits};
use crate::traces::{
    Params, SpanSearch, TraceError, TraceService, is_error, parse_duration, parse_limit,
    parse_tags, parse_trace_id, span_attributes,
};

/// Services and operations are listed from the spans of this window.
const CATALOG_WINDOW_NS: i64 = 24 * 3_600 * 1_000_000_000;
/// Search window when neither `start` nor `lookback` is given (Jaeger UI's default).
const DEFAULT_LOOKBACK_NS: i64 = 3_600 * 1_000_000_000;
/// `/api/dependencies` lookback when not given (Jaeger's default).
const DEFAULT_DEPENDENCY_LOOKBACK_MS: i64 = 24 * 3_600 * 1_000;

/// Jaeger's response envelope.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    pub data: T,
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
    pub errors: Option<Vec<JaegerError>>,
}

#[derive(Debug, Serialize)]
pub struct JaegerError {
    pub code: u16,
    pub msg: String,
    #[serde(rename = "traceID", skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub value: Value,
}

impl KeyValue {
    fn string(key: &str, v: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            ty: "string",
            value: Value::String(v.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    #[serde(rename = "refType")]
    pub ref_type: &'static str,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Log {
    pub timestamp: i64,
    pub fields: Vec<KeyValue>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    pub operation_name: String,
    pub references: Vec<Reference>,
    pub start_time: i64,
    pub duration: i64,
    pub tags: Vec<KeyValue>,
    pub logs: Vec<Log>,
    #[serde(rename = "processID")]
    pub process_id: String,
    pub warnings: Option<Vec<String>>,
    pub flags: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub service_name: String,
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub spans: Vec<Span>,
    pub processes: BTreeMap<String, Process>,
    pub warnings: Option<Vec<String>>,
}

fn micros(ns: i64) -> i64 {
    ns.div_euclid(1_000)
}

/// A span's tags as Jaeger shows OTLP spans: its attributes, then `span.kind`,
/// `otel.status_code`, `error`.
fn tags_of(s: &SpanRow) -> Vec<KeyValue> {
    let mut tags: Vec<KeyValue> = span_attributes(s)
        .into_iter()
        .map(|(k, v)| match (k.as_str(), v.parse::<i64>()) {
            ("http.status_code", Ok(n)) => KeyValue {
                key: k,
                ty: "int64",
                value: json!(n),
            },
            _ => KeyValue {
                key: k,
                ty: "string",
                value: Value::String(v),
            },
        })
        .collect();
    if !s.kind.is_empty() && s.kind != "unspecified" {
        tags.push(KeyValue::string("span.kind", &s.kind));
    }
    match s.status_code.as_str() {
        "error" => tags.push(KeyValue::string("otel.status_code", "ERROR")),
        "ok" => tags.push(KeyValue::string("otel.status_code", "OK")),
        _ => {}
    }
    if let Some(m) = &s.status_message {
        tags.push(KeyValue::string("otel.status_description", m));
    }
    if let Some(scope) = &s.scope_name {
        tags.push(KeyValue::string("otel.scope.name", scope));
    }
    if let Some(ts) = &s.trace_state {
        tags.push(KeyValue::string("w3c.tracestate", ts));
    }
    if is_error(s) {
        tags.push(KeyValue {
            key: "error".into(),
            ty: "bool",
            value: Value::Bool(true),
        });
    }
    tags
}

/// A Jaeger process: the service and its resource attributes.
type ProcessKey = (String, Vec<(String, String)>);

/// One trace in Jaeger's JSON; `None` for no spans.
pub fn jaeger_trace(trace_id: TraceId, spans: &[SpanRow]) -> Option<Trace> {
    if spans.is_empty() {
        return None;
    }
    let mut order: Vec<&SpanRow> = spans.iter().collect();
    order.sort_by_key(|s| (s.start_time_unix_nano, s.span_id));
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id).collect();
    // One process per (service, resource attributes), numbered in first-seen order.
    let mut processes: BTreeMap<String, Process> = BTreeMap::new();
    let mut process_ids: Vec<(ProcessKey, String)> = Vec::new();
    let hex = trace_id.to_hex();
    let mut out = Vec::with_capacity(order.len());
    for s in order {
        let key = (s.service_name.clone(), s.resource_attributes.clone());
        let pid = match process_ids.iter().find(|(k, _)| *k == key) {
            Some((_, id)) => id.clone(),
            None => {
                let id = format!("p{}", process_ids.len() + 1);
                processes.insert(
                    id.clone(),
                    Process {
                        service_name: s.service_name.clone(),
                        tags: s
                            .resource_attributes
                            .iter()
                            .map(|(k, v)| KeyValue::string(k, v))
                            .collect(),
                    },
                );
                process_ids.push((key, id.clone()));
                id
            }
        };
        let mut references = Vec::new();
        let mut warnings = Vec::new();
        if let Some(p) = s.parent_span_id {
            references.push(Reference {
                ref_type: "CHILD_OF",
                trace_id: hex.clone(),
                span_id: p.to_hex(),
            });
            if !ids.contains(&p) {
                warnings.push(format!("parent span {p} is not stored"));
            }
        }
        for l in &s.links {
            references.push(Reference {
                ref_type: "FOLLOWS_FROM",
                trace_id: l.trace_id.to_hex(),
                span_id: l.span_id.to_hex(),
            });
        }
        out.push(Span {
            trace_id: hex.clone(),
            span_id: s.span_id.to_hex(),
            operation_name: s.name.clone(),
            references,
            start_time: micros(s.start_time_unix_nano),
            duration: micros(s.duration_ns.max(0)),
            tags: tags_of(s),
            logs: s
                .events
                .iter()
                .map(|e| Log {
                    timestamp: micros(e.time_unix_nano),
                    fields: std::iter::once(KeyValue::string("event", &e.name))
                        .chain(e.attributes.iter().map(|(k, v)| KeyValue::string(k, v)))
                        .collect(),
                })
                .collect(),
            process_id: pid,
            warnings: (!warnings.is_empty()).then_some(warnings),
            // Every stored span was sampled.
            flags: 1,
        });
    }
    Some(Trace {
        trace_id: hex,
        spans: out,
        processes,
        warnings: None,
    })
}

fn ok<T: Serialize>(data: T, total: usize) -> Response {
    Json(Envelope {
        data,
        total,
        limit: 0,
        offset: 0,
        errors: None,
    })
    .into_response()
}

fn error(status: StatusCode, msg: String, trace_id: Option<String>) -> Response {
    (
        status,
        Json(Envelope::<Option<()>> {
            data: None,
            total: 0,
            limit: 0,
            offset: 0,
            errors: Some(vec![JaegerError {
                code: status.as_u16(),
                msg,
                trace_id,
            }]),
        }),
    )
        .into_response()
}

fn jaeger_error(e: TraceError) -> Response {
    error(e.status(), e.to_string(), None)
}

/// The `/jaeger/api/...` routes.
pub fn routes(engine: QueryEngine, limits: SqlLimits) -> Router {
    router(TraceService::new(engine, limits))
}

pub fn router(svc: TraceService) -> Router {
    Router::new()
        .route("/jaeger/api/services", get(services))
        .route(
            "/jaeger/api/services/{service}/operations",
            get(service_operations),
        )
        .route("/jaeger/api/operations", get(operations))
        .route("/jaeger/api/traces", get(find_traces))
        .route("/jaeger/api/traces/{trace_id}", get(get_trace))
        .route("/jaeger/api/dependencies", get(dependencies))
        .with_state(svc)
}

async fn services(State(svc): State<TraceService>) -> Response {
    let to = now_ns();
    match svc.timed(svc.services(to - CATALOG_WINDOW_NS, to)).await {
        Ok(s) => {
            let n = s.len();
            ok(s, n)
        }
        Err(e) => jaeger_error(e),
    }
}

async fn service_operations(
    State(svc): State<TraceService>,
    Path(service): Path<String>,
) -> Response {
    let to = now_ns();
    match svc
        .timed(svc.operations(&service, None, to - CATALOG_WINDOW_NS, to))
        .await
    {
        Ok(ops) => {
            let mut names: Vec<String> = ops.into_iter().map(|(n, _)| n).collect();
            names.dedup();
            let n = names.len();
            ok(names, n)
        }
        Err(e) => jaeger_error(e),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    name: String,
    span_kind: String,
}

async fn operations(State(svc): State<TraceService>, RawQuery(q): RawQuery) -> Response {
    let p = Params::parse(q.as_deref());
    let Some(service) = p.get("service") else {
        return error(
            StatusCode::BAD_REQUEST,
            "parameter `service` is required".into(),
            None,
        );
    };
    let to = now_ns();
    match svc
        .timed(svc.operations(service, p.get("spanKind"), to - CATALOG_WINDOW_NS, to))
        .await
    {
        Ok(ops) => {
            let ops: Vec<Operation> = ops
                .into_iter()
                .map(|(name, span_kind)| Operation { name, span_kind })
                .collect();
            let n = ops.len();
            ok(ops, n)
        }
        Err(e) => jaeger_error(e),
    }
}

/// µs since the epoch, as Jaeger's `start`/`end` parameters are.
fn micros_param(name: &str, s: &str) -> Result<i64, TraceError> {
    time::parse_time(s, Epoch::Micros).map_err(|e| TraceError::bad(name, e))
}

/// Jaeger's lookback: `1h`, `2d`, … (`custom` means start/end are given).
fn lookback(s: &str) -> Result<Option<i64>, TraceError> {
    if s == "custom" {
        return Ok(None);
    }
    if let Some(d) = s.strip_suffix('d')
        && let Ok(d) = d.parse::<i64>()
    {
        return Ok(Some(d.saturating_mul(24 * 3_600 * 1_000_000_000)));
    }
    parse_duration("lookback", s).map(Some)
}

async fn find(svc: &TraceService, p: &Params) -> Result<Vec<Trace>, TraceError> {
    let ids: Vec<TraceId> = p
        .all("traceID")
        .map(|t| parse_trace_id("traceID", t, false))
        .collect::<Result<_, _>>()?;
    if !ids.is_empty() {
        let found = svc.traces(&ids, None).await?;
        return Ok(found
            .iter()
            .filter_map(|(id, s)| jaeger_trace(*id, s))
            .collect());
    }
    let to = match p.get("end") {
        Some(e) => micros_param("end", e)?,
        None => now_ns(),
    };
    let from = match p.get("start") {
        Some(s) => micros_param("start", s)?,
        None => {
            let back = p
                .get("lookback")
                .map(lookback)
                .transpose()?
                .flatten()
                .unwrap_or(DEFAULT_LOOKBACK_NS);
            to.saturating_sub(back)
        }
    };
    if from > to {
        return Err(TraceError::bad("start", "must not be after `end`"));
    }
    let tags = p
        .get("tags")
        .map(|t| parse_tags("tags", t))
        .transpose()?
        .unwrap_or_default();
    let service = p.get("service").map(str::to_string);
    if service.is_none() && tags.is_empty() {
        return Err(TraceError::bad(
            "service",
            "required unless `tags` (e.g. {\"guid:x-request-id\":\"…\"}) or `traceID` is given",
        ));
    }
    let q = SpanSearch {
        from_ns: from,
        to_ns: to,
        service,
        // Jaeger UI sends "all" for every operation.
        operation: p
            .get("operation")
            .filter(|o| *o != "all")
            .map(str::to_string),
        span_kind: p.get("spanKind").map(str::to_string),
        tags,
        min_duration_ns: p
            .get("minDuration")
            .map(|d| parse_duration("minDuration", d))
            .transpose()?,
        max_duration_ns: p
            .get("maxDuration")
            .map(|d| parse_duration("maxDuration", d))
            .transpose()?,
        error: None,
        limit: parse_limit("limit", p.get("limit"))?,
    };
    let ids = svc.search(&q).await?;
    let found = svc.traces(&ids, Some((from, to))).await?;
    Ok(found
        .iter()
        .filter_map(|(id, s)| jaeger_trace(*id, s))
        .collect())
}

async fn find_traces(State(svc): State<TraceService>, RawQuery(q): RawQuery) -> Response {
    let p = Params::parse(q.as_deref());
    match svc.timed(find(&svc, &p)).await {
        Ok(t) => {
            let n = t.len();
            ok(t, n)
        }
        Err(e) => jaeger_error(e),
    }
}

async fn get_trace(State(svc): State<TraceService>, Path(id): Path<String>) -> Response {
    let tid = match parse_trace_id("traceID", &id, false) {
        Ok(t) => t,
        Err(e) => return jaeger_error(e),
    };
    match svc.timed(svc.trace_spans(&tid)).await {
        Ok(spans) => match jaeger_trace(tid, &spans) {
            Some(t) => ok(vec![t], 1),
            None => error(
                StatusCode::NOT_FOUND,
                "trace not found".into(),
                Some(tid.to_hex()),
            ),
        },
        Err(e) => jaeger_error(e),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Dependency {
    parent: String,
    child: String,
    call_count: u64,
}

async fn dependencies(State(svc): State<TraceService>, RawQuery(q): RawQuery) -> Response {
    let p = Params::parse(q.as_deref());
    let ms = |name: &str| -> Result<Option<i64>, TraceError> {
        p.get(name)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    TraceError::bad(name, format!("{v:?} is not a number of milliseconds"))
                })
            })
            .transpose()
    };
    let r = async {
        let end_ms = ms("endTs")?.unwrap_or(now_ns() / 1_000_000);
        let back_ms = ms("lookback")?.unwrap_or(DEFAULT_DEPENDENCY_LOOKBACK_MS);
        if back_ms < 0 {
            return Err(TraceError::bad("lookback", "must not be negative"));
        }
        let to = end_ms.saturating_mul(1_000_000);
        let from = end_ms.saturating_sub(back_ms).saturating_mul(1_000_000);
        svc.dependencies(from, to).await
    };
    match svc.timed(r).await {
        Ok(deps) => {
            let deps: Vec<Dependency> = deps
                .into_iter()
                .map(|(parent, child, call_count)| Dependency {
                    parent,
                    child,
                    call_count,
                })
                .collect();
            let n = deps.len();
            ok(deps, n)
        }
        Err(e) => jaeger_error(e),
    }
}

/// The shapes Grafana's Jaeger data source reads (`public/app/plugins/datasource/jaeger/
/// types.ts`), for tests: deserialising an answer into these proves that Grafana finds every
/// field it needs and that nothing unexpected is there.
pub mod grafana {
    use std::collections::HashMap;

    use serde::Deserialize;
    use serde_json::Value;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct JaegerResponse<T> {
        pub data: T,
        pub total: i64,
        pub limit: i64,
        pub offset: i64,
        #[serde(default)]
        pub errors: Option<Vec<Value>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TraceResponse {
        pub processes: HashMap<String, TraceResource>,
        #[serde(rename = "traceID")]
        pub trace_id: String,
        #[serde(default)]
        pub warnings: Option<Vec<String>>,
        pub spans: Vec<Span>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Span {
        #[serde(rename = "spanID")]
        pub span_id: String,
        #[serde(rename = "traceID")]
        pub trace_id: String,
        #[serde(rename = "processID")]
        pub process_id: String,
        pub operation_name: String,
        /// µs
        pub start_time: u64,
        /// µs
        pub duration: u64,
        pub logs: Vec<TraceLog>,
        #[serde(default)]
        pub tags: Option<Vec<TraceKeyValuePair>>,
        #[serde(default)]
        pub references: Option<Vec<TraceSpanReference>>,
        #[serde(default)]
        pub warnings: Option<Vec<String>>,
        #[serde(default)]
        pub stack_traces: Option<Vec<String>>,
        pub flags: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TraceKeyValuePair {
        pub key: String,
        #[serde(rename = "type", default)]
        pub ty: Option<String>,
        pub value: Value,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TraceLog {
        pub timestamp: u64,
        pub fields: Vec<TraceKeyValuePair>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct TraceResource {
        pub service_name: String,
        pub tags: Vec<TraceKeyValuePair>,
    }

    #[derive(Debug, Deserialize, PartialEq, Eq)]
    pub enum RefType {
        #[serde(rename = "CHILD_OF")]
        ChildOf,
        #[serde(rename = "FOLLOWS_FROM")]
        FollowsFrom,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct TraceSpanReference {
        pub ref_type: RefType,
        #[serde(rename = "spanID")]
        pub span_id: String,
        #[serde(rename = "traceID")]
        pub trace_id: String,
    }

    /// `dependencyGraphTransform.ts` reads these.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Dependency {
        pub parent: String,
        pub child: String,
        pub call_count: u64,
    }

    /// `/api/operations` (Jaeger UI and newer Grafana).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Operation {
        pub name: String,
        pub span_kind: String,
    }

    /// One entry of `errors` in a failed answer (Jaeger's `structuredError`).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StructuredError {
        pub code: u16,
        pub msg: String,
        #[serde(rename = "traceID", default)]
        pub trace_id: Option<String>,
    }

    impl Span {
        pub fn tag(&self, key: &str) -> Option<&Value> {
            self.tags
                .as_ref()?
                .iter()
                .find(|t| t.key == key)
                .map(|t| &t.value)
        }

        /// What Grafana shows as the parent (`references.find(CHILD_OF).spanID`).
        pub fn parent(&self) -> Option<&str> {
            self.references
                .as_ref()?
                .iter()
                .find(|r| r.ref_type == RefType::ChildOf)
                .map(|r| r.span_id.as_str())
        }
    }
}

#[cfg(test)]
mod tests;
