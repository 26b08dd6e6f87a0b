//! Push receivers on the API port, for log shippers (a Fluent Bit HTTP output) and scripts:
//! - `POST /api/v1/ingest/accesslog?pod=&namespace=&workload=&app=&version=&ip=`: Envoy
//!   access-log lines (Istio text format, Istio JSON, or CRI/Docker-wrapped), one per line;
//! - `POST /api/v1/ingest/stats?…same…`: Envoy `/stats` text or Prometheus text.
//!
//! The query parameters name the proxy that wrote the lines. The answer says how many rows
//! were stored (durably) and lists every rejected line with its number and reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use meshscope_schemas::Table;
use meshscope_schemas::rows::{requests_batch, stat_samples_batch};
use serde::{Deserialize, Serialize};

use super::access_log::{
    AccessLogFormat, AddressBook, ContainerLineJoiner, ProxyIdentity, parse_container_lines,
};
use super::stats::parse_stats;
use meshscope_storage::{StoreError, StoreWriter};

use crate::reply::{error, ingest_response, store_error};

/// Counters of one receiver, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReceiverCounters {
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub rejected: AtomicU64,
}

impl ReceiverCounters {
    pub fn add(&self, received: usize, stored: usize, rejected: usize) {
        self.received.fetch_add(received as u64, Ordering::Relaxed);
        self.stored.fetch_add(stored as u64, Ordering::Relaxed);
        self.rejected.fetch_add(rejected as u64, Ordering::Relaxed);
    }
}

/// Shared by the Envoy receivers: the store, the access-log format, and the address book
/// (IP → workload) learned from proxies.
pub struct EnvoyIngest {
    pub store: StoreWriter,
    pub format: AccessLogFormat,
    pub book: RwLock<AddressBook>,
    pub accesslog: ReceiverCounters,
    /// Lines read from `--access-log` files (see `tail`).
    pub accesslog_files: ReceiverCounters,
    pub stats: ReceiverCounters,
    /// Push identities not learned (see `AddressBook::learn`).
    pub identity_refused: AtomicU64,
}

impl EnvoyIngest {
    pub fn new(store: impl Into<StoreWriter>, format: AccessLogFormat) -> Arc<EnvoyIngest> {
        let store = store.into();
        Arc::new(EnvoyIngest {
            store,
            format,
            book: RwLock::new(AddressBook::new()),
            accesslog: ReceiverCounters::default(),
            accesslog_files: ReceiverCounters::default(),
            stats: ReceiverCounters::default(),
            identity_refused: AtomicU64::new(0),
        })
    }

    /// Remembers a proxy's address so lines from its peers can name it, as a source the
    /// operator configured says (an admin scrape, a kubelet log path).
    pub fn learn(&self, proxy: &ProxyIdentity) {
        self.learn_from(proxy, true);
    }

    /// [`EnvoyIngest::learn`] for a self-declared identity (a push's parameters): it may
    /// not rename an address a trusted source named, nor grow the book past its bound.
    pub fn learn_pushed(&self, proxy: &ProxyIdentity) {
        self.learn_from(proxy, false);
    }

    fn learn_from(&self, proxy: &ProxyIdentity, trusted: bool) {
        if let Some(ip) = &proxy.ip {
            let learned = self.book.write().unwrap_or_else(|e| e.into_inner()).learn(
                ip.clone(),
                proxy.clone(),
                trusted,
            );
            if let Err(why) = learned
                && self.identity_refused.fetch_add(1, Ordering::Relaxed) == 0
            {
                tracing::warn!(%why, "a pushed identity was not learned (further ones are counted in /metrics)");
            }
        }
    }
}

/// The identity parameters of a push.
#[derive(Debug, Default, Deserialize)]
pub struct ProxyParams {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub app: Option<String>,
    pub version: Option<String>,
    pub ip: Option<String>,
}

impl ProxyParams {
    fn identity(self) -> ProxyIdentity {
        let mut p = ProxyIdentity {
            pod: self.pod,
            namespace: self.namespace,
            workload: self.workload,
            app: self.app,
            version: self.version,
            ip: self.ip,
        };
        if p.workload.is_none() {
            p.workload = p.workload_name().map(str::to_string);
        }
        p
    }
}

#[derive(Debug, Serialize)]
struct Rejected {
    line: usize,
    reason: String,
}

pub fn routes(state: Arc<EnvoyIngest>) -> Router {
    Router::new()
        .route("/api/v1/ingest/accesslog", post(push_accesslog))
        .route("/api/v1/ingest/stats", post(push_stats))
        .with_state(state)
}

fn body_text(body: &Bytes) -> Result<String, String> {
    String::from_utf8(body.to_vec())
        .map_err(|e| format!("body is not UTF-8 (byte {})", e.utf8_error().valid_up_to()))
}

async fn push_accesslog(
    State(s): State<Arc<EnvoyIngest>>,
    Query(p): Query<ProxyParams>,
    body: Bytes,
) -> Response {
    let text = match body_text(&body) {
        Ok(t) => t,
        Err(msg) => return error(StatusCode::BAD_REQUEST, "bad_data", msg),
    };
    let proxy = p.identity();
    s.learn_pushed(&proxy);
    let st = s.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        let book = st.book.read().unwrap_or_else(|e| e.into_inner());
        let mut joiner = ContainerLineJoiner::default();
        let out = parse_container_lines(&st.format, &text, &mut joiner, &proxy, &book, "push");
        let batch = if out.rows.is_empty() {
            None
        } else {
            Some(requests_batch(&out.rows))
        };
        (batch, out.rejected, out.rows.len())
    })
    .await;
    let Ok((batch, rejected, n)) = parsed else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "parser task failed",
        );
    };
    let (stored, refused) = match batch {
        Some(Ok(b)) => match s.store.append(Table::Requests, b).await {
            Ok(r) => (r.rows, r.refused),
            Err(e) => return store_error(&e),
        },
        Some(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        None => (0, None),
    };
    let refused_rows = refused.as_ref().map_or(0, |r| r.rows);
    debug_assert_eq!(stored + refused_rows, n);
    s.accesslog.add(
        stored + refused_rows + rejected.len(),
        stored,
        refused_rows + rejected.len(),
    );
    let rejected: Vec<Rejected> = rejected
        .into_iter()
        .map(|r| Rejected {
            line: r.line,
            reason: r.reason,
        })
        .collect();
    crate::reply::ingest_response_refused(stored, &rejected, refused.as_ref())
}

async fn push_stats(
    State(s): State<Arc<EnvoyIngest>>,
    Query(p): Query<ProxyParams>,
    body: Bytes,
) -> Response {
    let text = match body_text(&body) {
        Ok(t) => t,
        Err(msg) => return error(StatusCode::BAD_REQUEST, "bad_data", msg),
    };
    let proxy = p.identity();
    s.learn_pushed(&proxy);
    match store_stats(&s, &text, &proxy).await {
        Ok((stored, rejected)) => ingest_response(stored, &rejected),
        Err(e) => store_error(&e),
    }
}

/// Parses a stats body from `proxy` and stores it; returns (stored, rejected lines).
pub async fn store_stats(
    s: &EnvoyIngest,
    text: &str,
    proxy: &ProxyIdentity,
) -> Result<(usize, Vec<super::stats::RejectedStat>), StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let out = parse_stats(text, proxy, now);
    let stored = if out.rows.is_empty() {
        0
    } else {
        s.store
            .append(Table::StatSamples, stat_samples_batch(&out.rows)?)
            .await?
            .rows
    };
    s.stats
        .add(stored + out.rejected.len(), stored, out.rejected.len());
    Ok((stored, out.rejected))
}
