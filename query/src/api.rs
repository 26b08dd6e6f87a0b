//! The HTTP API on the API port (default 127.0.0.1:20001): status, read-only SQL, generic
//! row ingest, and the UI (`crate::ui`). `router` is a plain function so tests drive it with `oneshot`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meshscope_collector::Store;
use meshscope_collector::envoy::push::EnvoyIngest;
use meshscope_collector::envoy::scrape::Sources;
use meshscope_collector::otlp::OtlpStats;
use meshscope_schemas::Table;
use serde::Deserialize;
use serde_json::json;

use crate::ingest::decode_json_rows;
use crate::sql::{QueryEngine, SqlError, SqlLimits};

/// Which parts of the API a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    AllInOne,
    Collector,
    Query,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::AllInOne => "all-in-one",
            Role::Collector => "collector",
            Role::Query => "query",
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub role: Role,
    pub store: Store,
    pub engine: Option<QueryEngine>,
    pub sql_limits: SqlLimits,
    /// Envoy push receivers (collector roles).
    pub ingest: Option<Arc<EnvoyIngest>>,
    pub otlp: Option<Arc<OtlpStats>>,
    pub sources: Sources,
    /// The service graph (query roles).
    pub graph: Option<crate::graph::api::GraphState>,
    /// `meshscope demo`: the simulator's phase, shown as `demo` in `/api/v1/status`.
    pub demo_status: Option<StatusHook>,
}

/// A section of `/api/v1/status` computed on each request.
pub type StatusHook = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut r = Router::new()
        .route("/api/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }));
    if state.role != Role::Collector {
        r = r.merge(crate::ui::routes()).route("/api/v1/sql", post(sql));
    }
    if state.role != Role::Query {
        r = r.route("/api/v1/ingest/rows/{table}", post(ingest_rows));
    }
    let push = state.ingest.clone();
    let traces = state.engine.clone().map(|e| (e, state.sql_limits));
    let graph = state.graph.clone();
    let prom = match (&state.graph, &state.engine) {
        (Some(g), Some(e)) => Some(crate::prom::PromState {
            rollups: g.rollups.clone(),
            engine: e.clone(),
            timeout: state.sql_limits.timeout,
        }),
        _ => None,
    };
    let mut r = r.with_state(Arc::new(state));
    if let Some((engine, limits)) = traces {
        r = r
            .merge(crate::traces::routes(engine.clone(), limits))
            .merge(crate::jaeger::routes(engine, limits));
    }
    if let Some(g) = graph {
        r = r.merge(crate::graph::api::routes(g));
    }
    if let Some(p) = prom {
        r = r.merge(crate::prom::routes(p));
    }
    if let Some(ingest) = push {
        r = r.merge(meshscope_collector::envoy::push::routes(ingest));
    }
    r.layer(DefaultBodyLimit::max(max_body_bytes))
}

pub use meshscope_collector::envoy::push::{
    error as error_response, ingest_response, store_error as store_error_response,
};

async fn status(State(s): State<Arc<AppState>>) -> Response {
    if let Err(e) = s.store.refresh().await {
        return store_error_response(&e);
    }
    let sources = s.sources.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "role": s.role.as_str(),
        "storage": s.store.status(),
        "sources": sources,
        "otlp": s.otlp.as_ref().map(|o| o.snapshot()),
        "rollups": s.graph.as_ref().map(|g| g.rollups.status()),
        "demo": s.demo_status.as_ref().map(|f| f()),
    }))
    .into_response()
}

/// meshscope's own metrics in Prometheus text format.
async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    use std::fmt::Write;
    let st = s.store.status();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "meshscope_appended_rows_total",
        "counter",
        "Rows durably appended.",
        one(st.appended_rows as f64),
    );
    metric(
        "meshscope_wal_commits_total",
        "counter",
        "WAL group commits.",
        one(st.wal_commits as f64),
    );
    metric(
        "meshscope_wal_commit_seconds",
        "summary",
        "Time spent writing and fsyncing WAL group commits (the ack latency floor).",
        vec![
            ("_sum".into(), st.wal_commit_seconds),
            ("_count".into(), st.wal_commits as f64),
        ],
    );
    metric(
        "meshscope_flush_seconds",
        "summary",
        "Time spent flushing the buffer to Parquet.",
        vec![
            ("_sum".into(), st.flush_seconds),
            ("_count".into(), st.flushes as f64),
        ],
    );
    metric(
        "meshscope_flushes_total",
        "counter",
        "Buffer flushes to Parquet.",
        one(st.flushes as f64),
    );
    metric(
        "meshscope_files_written_total",
        "counter",
        "Parquet files written.",
        one(st.files_written as f64),
    );
    metric(
        "meshscope_compactions_total",
        "counter",
        "Hour compactions.",
        one(st.compactions as f64),
    );
    metric(
        "meshscope_rejected_overload_total",
        "counter",
        "Appends refused by back-pressure.",
        one(st.rejected_overload as f64),
    );
    metric(
        "meshscope_buffer_bytes",
        "gauge",
        "Bytes in the in-memory Arrow buffer.",
        one(st.buffered_bytes as f64),
    );
    metric(
        "meshscope_wal_segments",
        "gauge",
        "WAL segments on disk.",
        one(st.wal_segments as f64),
    );
    metric(
        "meshscope_quarantined_files",
        "gauge",
        "Parquet files quarantined.",
        one(st.quarantined.len() as f64),
    );
    metric(
        "meshscope_table_rows_on_disk",
        "gauge",
        "Rows in Parquet per table.",
        st.tables
            .iter()
            .map(|t| (format!("{{table=\"{}\"}}", t.table), t.rows_on_disk as f64))
            .collect(),
    );
    let mut recv = Vec::new();
    if let Some(i) = &s.ingest {
        for (name, c) in [
            ("accesslog_push", &i.accesslog),
            ("accesslog_files", &i.accesslog_files),
            ("stats", &i.stats),
        ] {
            use std::sync::atomic::Ordering::Relaxed;
            recv.push((
                name,
                c.received.load(Relaxed),
                c.stored.load(Relaxed),
                c.rejected.load(Relaxed),
            ));
        }
    }
    if let Some(o) = &s.otlp {
        let o = o.snapshot();
        recv.push((
            "otlp_traces",
            o.spans_received,
            o.spans_stored,
            o.spans_rejected,
        ));
        recv.push((
            "otlp_logs",
            o.log_records_received,
            o.log_records_stored,
            o.log_records_rejected,
        ));
    }
    for (suffix, idx) in [("received", 1), ("stored", 2), ("rejected", 3)] {
        metric(
            &format!("meshscope_receiver_{suffix}_total"),
            "counter",
            &format!("Items {suffix} per receiver."),
            recv.iter()
                .map(|r| {
                    (
                        format!("{{receiver=\"{}\"}}", r.0),
                        [0, r.1, r.2, r.3][idx] as f64,
                    )
                })
                .collect(),
        );
    }
    if s.ingest.is_some() {
        meshscope_collector::envoy::tail::write_metrics(&s.sources, &mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[derive(Deserialize)]
struct SqlRequest {
    sql: String,
}

async fn sql(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body must be {{\"sql\": \"...\"}}: {e}"),
            );
        }
    };
    let Some(engine) = &s.engine else {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "this process does not serve queries",
        );
    };
    match engine.query_json(&req.sql, s.sql_limits).await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            let (status, kind) = match &e {
                SqlError::NotReadOnly(_) => (StatusCode::FORBIDDEN, "read_only"),
                SqlError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_query"),
                SqlError::Timeout(_) => (StatusCode::BAD_REQUEST, "timeout"),
                SqlError::TooManyRows(_) => (StatusCode::BAD_REQUEST, "too_many_rows"),
                SqlError::Execution(_) => (StatusCode::INTERNAL_SERVER_ERROR, "execution"),
            };
            error_response(status, kind, e)
        }
    }
}

async fn ingest_rows(
    State(s): State<Arc<AppState>>,
    Path(table): Path<String>,
    body: Bytes,
) -> Response {
    let table = match Table::from_name(&table) {
        Ok(t) => t,
        Err(e) => return error_response(StatusCode::NOT_FOUND, "not_found", e),
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error_response(StatusCode::BAD_REQUEST, "bad_data", "body is not UTF-8");
    };
    let Ok((batch, rejected)) =
        tokio::task::spawn_blocking(move || decode_json_rows(table, &text)).await
    else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "decoder task failed",
        );
    };
    let stored = match batch {
        Some(b) => match s.store.append(table, b).await {
            Ok(r) => r.rows,
            Err(e) => return store_error_response(&e),
        },
        None => 0,
    };
    ingest_response(stored, &rejected)
}
