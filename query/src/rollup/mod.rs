//! Rollups: what the service graph (and the Prometheus API) read instead of raw rows.
//!
//! - **Edge rollups** (`edges`): per time bucket (a minute by default), Istio's standard
//!   labels of a request (reporter, source and destination identity, protocol, response code,
//!   response flags) → request count, bytes, a duration sum, a mergeable duration sketch and
//!   Istio's default histogram buckets. Built from `requests` rows.
//! - **Breaker series** (`breaker`): the circuit-breaker and outlier stats of each proxy's
//!   upstream clusters, every sample kept, so increases across counter resets are exact.
//!
//! Feeding: the store's observer hands every batch that enters the buffer to a channel; one
//! thread folds them in. At start, the Parquet files that existed when the store opened are
//! read once (the observer sees everything after), so rollups survive restarts. `caught_up`
//! lets a reader wait until every batch acknowledged before its request is folded in.

pub mod breaker;
pub mod edges;
pub mod sketch;
pub mod spans;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use meshscope_schemas::Table;
use meshscope_storage::{BatchObserver, Charge, StoreReader};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tracing::{info, warn};

pub use breaker::BreakerSeries;
pub use edges::{EdgeAgg, EdgeKey, Label};
pub use sketch::LatencySketch;

/// How rollups are kept.
#[derive(Debug, Clone, Copy)]
pub struct RollupConfig {
    /// Width of one bucket; divides a minute (1 s … 60 s).
    pub resolution: Duration,
    /// Buckets older than this are dropped.
    pub retention: Duration,
}

impl Default for RollupConfig {
    fn default() -> Self {
        RollupConfig {
            resolution: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// The rollup state behind the lock.
#[derive(Default)]
pub struct RollupState {
    /// bucket start (unix seconds) → label set → aggregate, with pre-merged coarse buckets.
    pub edges: edges::Tiered,
    /// The same rollups from client/server span pairs (used where no access log covers a pair).
    pub span_edges: edges::Tiered,
    /// The label sets `edges` and `span_edges` refer to by number.
    pub keys: edges::KeyTable,
    pub spans: spans::SpanPairer,
    /// Per bucket: span counts and durations by service, name, kind and status (Tempo's
    /// span metrics).
    pub span_metrics: BTreeMap<i64, HashMap<spans::SpanMetricKey, EdgeAgg>>,
    pub breaker: breaker::BreakerStore,
    pub interner: edges::Interner,
}

struct Shared {
    cfg: RollupConfig,
    state: RwLock<RollupState>,
    sent: AtomicU64,
    done: AtomicU64,
    loaded: AtomicBool,
    rows: AtomicU64,
}

/// Handle to the rollups; cheap to clone.
#[derive(Clone)]
pub struct Rollups {
    shared: Arc<Shared>,
    tx: mpsc::Sender<(Table, RecordBatch, Charge)>,
}

impl Rollups {
    /// Starts the folding thread. Pass `observer()` in the store's config before opening it,
    /// then call `load_existing` with the opened store.
    pub fn start(cfg: RollupConfig) -> Rollups {
        let shared = Arc::new(Shared {
            cfg,
            state: RwLock::new(RollupState::default()),
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            rows: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel::<(Table, RecordBatch, Charge)>();
        let worker = shared.clone();
        let _ = std::thread::Builder::new()
            .name("meshscope-rollup".into())
            .spawn(move || {
                let mut last_prune = Instant::now();
                loop {
                    match rx.recv_timeout(Duration::from_secs(1)) {
                        Ok((table, batch, charge)) => {
                            worker.fold(table, &batch);
                            // the batch no longer counts against the buffer limit
                            drop((batch, charge));
                            worker.done.fetch_add(1, Ordering::Release);
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => worker.settle_spans(false),
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    if last_prune.elapsed() > Duration::from_secs(30) {
                        worker.prune(now_secs());
                        last_prune = Instant::now();
                    }
                }
            });
        Rollups { shared, tx }
    }

    pub fn config(&self) -> RollupConfig {
        self.shared.cfg
    }

    /// The store observer that feeds these rollups.
    pub fn observer(&self) -> BatchObserver {
        let tx = std::sync::Mutex::new(self.tx.clone());
        let shared = self.shared.clone();
        Arc::new(move |table: Table, batch: &RecordBatch, charge: Charge| {
            shared.sent.fetch_add(1, Ordering::AcqRel);
            let tx = tx.lock().unwrap_or_else(|e| e.into_inner());
            if tx.send((table, batch.clone(), charge)).is_err() {
                // The folding thread is gone (shutdown): count it as done so readers don't wait.
                shared.done.fetch_add(1, Ordering::Release);
            }
        })
    }

    /// Folds in the Parquet files that existed when `store` opened (within the retention).
    pub async fn load_existing(&self, store: &StoreReader) {
        let started = Instant::now();
        let oldest = now_secs() - self.shared.cfg.retention.as_secs() as i64;
        let mut files = 0usize;
        for table in [Table::Requests, Table::StatSamples, Table::Spans] {
            for m in store.manifests_at_open(table) {
                if m.hour + 3600 <= oldest {
                    continue;
                }
                for f in &m.files {
                    match read_parquet(store, &f.path, columns_read(table)).await {
                        Ok(batches) => {
                            for b in batches {
                                self.shared.fold(table, &b);
                            }
                            files += 1;
                        }
                        Err(e) => {
                            warn!(file = %f.path, error = %e, "rollups: could not read a file; its rows are missing from the graph")
                        }
                    }
                }
            }
        }
        self.shared.settle_spans(true);
        self.shared.loaded.store(true, Ordering::Release);
        info!(
            files,
            rows = self.shared.rows.load(Ordering::Relaxed),
            ms = started.elapsed().as_millis() as u64,
            "rollups loaded from stored files"
        );
    }

    /// Folds a batch in directly (tests, benchmarks).
    pub fn fold(&self, table: Table, batch: &RecordBatch) {
        self.shared.fold(table, batch);
    }

    /// Waits (up to `timeout`) until every batch handed over before this call is folded in.
    pub async fn caught_up(&self, timeout: Duration) -> bool {
        let target = self.shared.sent.load(Ordering::Acquire);
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.done.load(Ordering::Acquire) >= target
                && self.shared.loaded.load(Ordering::Acquire)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, RollupState> {
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows folded in so far, buckets held, and whether the start-up load finished.
    pub fn status(&self) -> serde_json::Value {
        let st = self.read();
        serde_json::json!({
            "rows": self.shared.rows.load(Ordering::Relaxed),
            "buckets": st.edges.len(),
            "edge_label_sets": st.edges.label_sets(),
            "distinct_label_sets": st.keys.len(),
            "breaker_series": st.breaker.len(),
            "span_edge_label_sets": st.span_edges.label_sets(),
            "spans_waiting_for_their_pair": st.spans.pending(),
            "resolution_seconds": self.shared.cfg.resolution.as_secs(),
            "loaded": self.shared.loaded.load(Ordering::Relaxed),
            "pending_batches": self.shared.sent.load(Ordering::Relaxed).saturating_sub(self.shared.done.load(Ordering::Relaxed)),
        })
    }

    /// Settles every span still waiting for its other half (tests, benchmarks).
    pub fn settle_spans(&self) {
        self.shared.settle_spans(true);
    }

    /// Marks the start-up load done without loading (tests that feed rows by hand).
    pub fn mark_loaded(&self) {
        self.shared.loaded.store(true, Ordering::Release);
    }
}

impl Shared {
    fn fold(&self, table: Table, batch: &RecordBatch) {
        let res = self.cfg.resolution.as_secs().max(1) as i64;
        let oldest = now_secs() - self.cfg.retention.as_secs() as i64;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        let n = match table {
            Table::Requests => edges::fold_requests(st, batch, res, oldest),
            Table::StatSamples => st.breaker.fold(batch, oldest),
            Table::Spans => spans::fold_spans(st, batch, res, oldest),
        };
        self.rows.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn settle_spans(&self, all: bool) {
        let res = self.cfg.resolution.as_secs().max(1) as i64;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        spans::settle(&mut st, res, Instant::now(), all);
    }

    fn prune(&self, now: i64) {
        let oldest = now - self.cfg.retention.as_secs() as i64;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.edges.prune(oldest);
        st.span_edges.prune(oldest);
        // Forget label sets no bucket holds any more once they are most of the table.
        let mut live = vec![false; st.keys.len()];
        st.edges.mark_live(&mut live);
        st.span_edges.mark_live(&mut live);
        let n_live = live.iter().filter(|l| **l).count();
        if st.keys.len() > 2 * n_live + 1024 {
            let remap = st.keys.retain(&live);
            st.edges.remap(&remap);
            st.span_edges.remap(&remap);
        }
        let keep = st.span_metrics.split_off(&oldest);
        st.span_metrics = keep;
        st.breaker.prune(oldest);
    }
}

/// The columns the rollups fold from each table (a start-up load reads only these).
fn columns_read(table: Table) -> &'static [&'static str] {
    use meshscope_schemas::table::{requests as rq, spans as sp, stat_samples as ss};
    match table {
        Table::Requests => &[
            rq::START_TIME,
            rq::RESPONSE_CODE,
            rq::DURATION_MS,
            rq::BYTES_RECEIVED,
            rq::BYTES_SENT,
            rq::REPORTER,
            rq::SOURCE_WORKLOAD,
            rq::SOURCE_NAMESPACE,
            rq::SOURCE_APP,
            rq::SOURCE_VERSION,
            rq::SOURCE_SERVICE,
            rq::DESTINATION_WORKLOAD,
            rq::DESTINATION_NAMESPACE,
            rq::DESTINATION_APP,
            rq::DESTINATION_VERSION,
            rq::DESTINATION_SERVICE,
            rq::DESTINATION_SERVICE_NAME,
            rq::REQUEST_PROTOCOL,
            rq::RESPONSE_FLAGS,
        ],
        Table::StatSamples => &[
            ss::TIME,
            ss::PROXY,
            ss::PROXY_NAMESPACE,
            ss::PROXY_WORKLOAD,
            ss::METRIC,
            ss::CLUSTER_NAME,
            ss::VALUE,
        ],
        Table::Spans => &[
            sp::TRACE_ID,
            sp::SPAN_ID,
            sp::PARENT_SPAN_ID,
            sp::START_TIME,
            sp::DURATION_NS,
            sp::SERVICE_NAME,
            sp::NAME,
            sp::KIND,
            sp::STATUS_CODE,
            sp::HTTP_STATUS_CODE,
            sp::HTTP_PROTOCOL,
            sp::UPSTREAM_CLUSTER,
            sp::RESPONSE_FLAGS,
            sp::ISTIO_CANONICAL_SERVICE,
            sp::ISTIO_NAMESPACE,
        ],
    }
}

async fn read_parquet(
    store: &StoreReader,
    path: &str,
    columns: &[&str],
) -> Result<Vec<RecordBatch>, String> {
    let bytes = meshscope_storage::read_object(&store.object_store(), path)
        .await
        .map_err(|e| e.to_string())?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
    let mask =
        parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(65536)
        .build()
        .map_err(|e| e.to_string())?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The API clock ([`crate::api::time::now_ns`]) in whole seconds.
pub fn now_secs() -> i64 {
    crate::api::time::now_ns().div_euclid(1_000_000_000)
}
