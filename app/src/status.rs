//! What every role serves besides its own API: `/api/v1/status`, meshscope's own `/metrics`
//! and `/healthz`, and the router that puts the query API, the ingest API and the UI
//! together for a role. `router` is a plain function, so tests drive it with `oneshot`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meshscope_collector::envoy::push::EnvoyIngest;
use meshscope_collector::envoy::scrape::Sources;
use meshscope_collector::otlp::OtlpStats;
use meshscope_collector::reply::store_error;
use meshscope_query::api::QueryApi;
use meshscope_storage::StoreReader;
use serde_json::json;

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
    /// What status and metrics read of the store.
    pub store: StoreReader,
    /// The query API (query roles).
    pub queries: Option<QueryApi>,
    /// Envoy push receivers and row ingest (collector roles).
    pub ingest: Option<Arc<EnvoyIngest>>,
    pub otlp: Option<Arc<OtlpStats>>,
    pub sources: Sources,
    /// `meshscope demo`: the simulator's phase, shown as `demo` in `/api/v1/status`.
    pub demo_status: Option<StatusHook>,
    /// Requests the API port's guard refused.
    pub refused: Arc<meshscope_gate::GuardStats>,
    /// Connections of each listener (`api`, `otlp_http`, `otlp_grpc`).
    pub listeners: Vec<(&'static str, Arc<meshscope_gate::serve::ListenerStats>)>,
}

/// A section of `/api/v1/status` computed on each request.
pub type StatusHook = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut r = Router::new()
        .route("/api/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }));
    if state.role != Role::Collector {
        r = r.merge(crate::ui::routes());
    }
    let queries = state.queries.clone();
    let ingest = state.ingest.clone();
    let mut r = r.with_state(Arc::new(state));
    if let Some(q) = queries {
        r = r.merge(meshscope_query::api::routes(q));
    }
    if let Some(i) = ingest {
        r = r.merge(meshscope_collector::http::routes(i));
    }
    r.layer(DefaultBodyLimit::max(max_body_bytes))
}

async fn status(State(s): State<Arc<AppState>>) -> Response {
    if let Err(e) = s.store.refresh().await {
        return store_error(&e);
    }
    let sources = s.sources.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "role": s.role.as_str(),
        "storage": s.store.status(),
        "sources": sources,
        "otlp": s.otlp.as_ref().map(|o| o.snapshot()),
        "rollups": s.queries.as_ref().map(|q| q.graph.rollups.status()),
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
    {
        use std::sync::atomic::Ordering::Relaxed;
        metric(
            "meshscope_api_refused_total",
            "counter",
            "API requests refused at the door: unauthorized (no or a wrong token), forbidden (a token of the other scope, or a browser-shaped cross-site request).",
            vec![
                (
                    "{reason=\"unauthorized\"}".into(),
                    s.refused.unauthorized.load(Relaxed) as f64,
                ),
                (
                    "{reason=\"forbidden\"}".into(),
                    s.refused.forbidden.load(Relaxed) as f64,
                ),
            ],
        );
    }
    {
        use std::sync::atomic::Ordering::Relaxed;
        let per = |f: &dyn Fn(&meshscope_gate::serve::ListenerStats) -> f64| {
            s.listeners
                .iter()
                .map(|(n, l)| (format!("{{listener=\"{n}\"}}"), f(l)))
                .collect::<Vec<_>>()
        };
        metric(
            "meshscope_connections_open",
            "gauge",
            "Open connections per listener (--max-connections).",
            per(&|l| l.open.load(Relaxed) as f64),
        );
        metric(
            "meshscope_connections_refused_total",
            "counter",
            "Connections closed at once: --max-connections were open.",
            per(&|l| l.refused.load(Relaxed) as f64),
        );
        metric(
            "meshscope_connections_idle_closed_total",
            "counter",
            "Connections closed after --idle-timeout without a request.",
            per(&|l| l.idle_closed.load(Relaxed) as f64),
        );
        metric(
            "meshscope_accept_errors_total",
            "counter",
            "accept() failures (EMFILE and the like), each followed by a back-off.",
            per(&|l| l.accept_errors.load(Relaxed) as f64),
        );
    }
    if let Some(q) = &s.queries {
        use std::sync::atomic::Ordering::Relaxed;
        metric(
            "meshscope_queries_running",
            "gauge",
            "Queries running now (--max-concurrent-queries).",
            one(q.admission.running() as f64),
        );
        metric(
            "meshscope_queries_refused_total",
            "counter",
            "Queries answered 429: too many running and waiting.",
            one(q.admission.refused.load(Relaxed) as f64),
        );
    }
    if let Some(i) = &s.ingest {
        metric(
            "meshscope_identity_refused_total",
            "counter",
            "Pushed identities not learned: they would rename an address an Envoy admin scrape or log path named, or grow the address book past its bound.",
            one(i
                .identity_refused
                .load(std::sync::atomic::Ordering::Relaxed) as f64),
        );
    }
    if s.ingest.is_some() {
        meshscope_collector::envoy::tail::write_metrics(&s.sources, &mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
