//! The storage engine: one writer, many readers.
//!
//! Write path: `Store::append` checks a batch against its table's schema, splits it by hour,
//! and hands it to the WAL writer thread, which group-commits (one write + one fsync for every
//! append that arrived meanwhile), puts the rows into the in-memory Arrow buffer, and only
//! then acknowledges. A flush rotates the WAL, writes each (table, hour) of the closed
//! segments as one Parquet file (temporary name, then rename), records it in the hour
//! manifest, and deletes the WAL segments it covered. Compaction merges an hour's small files
//! into one sorted file (a flush keeps arrival order: see `segment::encode_segment`);
//! retention drops whole hours.
//!
//! Read path: `Store::snapshot` hands out the buffered batches and manifest files of a table
//! for an hour range; the query crate wraps that in a DataFusion `TableProvider`. A read-only
//! store (the separate `query` process) follows the writer by tailing the WAL segments and
//! re-reading manifests whose version changed.

pub mod manifest;
pub mod segment;
pub mod wal;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use bytes::Bytes;
use meshscope_schemas::{SchemaError, Table, check_batch};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::errors::ParquetError;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use manifest::{FileEntry, HourManifest, HoursIndex, hour_dir, hours_path, manifest_path};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("storage is overloaded ({0}); retry after {1:?}")]
    Overloaded(String, Duration),
    #[error("this store is read-only (a query process follows the collector's writes)")]
    ReadOnly,
    #[error("the store is shutting down")]
    Closed,
    #[error("WAL directory {0} is locked by another meshscope process")]
    Locked(String),
    #[error("invalid storage location {0:?}: {1}")]
    Location(String, String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("Arrow error: {0}")]
    Arrow(#[from] ArrowError),
    #[error("Parquet error: {0}")]
    Parquet(#[from] ParquetError),
    #[error("object store error: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("manifest error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("internal storage error: {0}")]
    Internal(String),
}

/// When the WAL is fsynced before an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync every group commit: acknowledged rows survive power loss.
    Always,
    /// write(2) only: acknowledged rows survive a process crash, not power loss.
    Never,
}

/// Sees every batch the moment it becomes visible in the buffer: appended, replayed from the
/// WAL at start, or (follower) read from the writer's WAL. Never batches already in Parquet
/// when the store opened — `Store::manifests_at_open` lists those. Called under the buffer
/// lock, so it must be cheap (hand the batch to a channel).
pub type BatchObserver = Arc<dyn Fn(Table, &RecordBatch) + Send + Sync>;

#[derive(Clone)]
pub struct StoreConfig {
    /// Where Parquet segments and manifests live: a local directory or an object-store URL
    /// (`s3://bucket/prefix`, `file:///abs/path`, `memory:///`).
    pub location: String,
    /// Local directory of the write-ahead log.
    pub wal_dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// How long the WAL writer waits to gather more appends into one commit (≤ 100 ms).
    pub group_commit: Duration,
    /// Flush the buffer to Parquet when its oldest row is this old…
    pub flush_interval: Duration,
    /// …or when it holds this many rows…
    pub flush_rows: usize,
    /// …or this many bytes.
    pub flush_bytes: usize,
    /// Appends are refused (back-pressure) while the buffer holds more than this.
    pub max_buffer_bytes: usize,
    /// Whole hours older than this are deleted.
    pub retention: Duration,
    /// Compact an hour once it has this many files.
    pub compaction_min_files: usize,
    /// How often compaction and retention run.
    pub maintenance_interval: Duration,
    /// A read-only follower (the `query` process): never writes, tails the WAL.
    pub read_only: bool,
    /// Told about every batch that enters the buffer (the query service's rollups).
    pub observer: Option<BatchObserver>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("location", &self.location)
            .field("wal_dir", &self.wal_dir)
            .field("fsync", &self.fsync)
            .field("read_only", &self.read_only)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl StoreConfig {
    pub fn local(data_dir: impl Into<PathBuf>) -> StoreConfig {
        let data_dir = data_dir.into();
        StoreConfig {
            location: data_dir.to_string_lossy().into_owned(),
            wal_dir: data_dir.join("wal"),
            fsync: FsyncPolicy::Always,
            group_commit: Duration::from_millis(5),
            flush_interval: Duration::from_secs(60),
            flush_rows: 500_000,
            flush_bytes: 64 << 20,
            max_buffer_bytes: 256 << 20,
            retention: Duration::from_secs(7 * 24 * 3600),
            compaction_min_files: 8,
            maintenance_interval: Duration::from_secs(300),
            read_only: false,
            observer: None,
        }
    }
}

/// What one append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    pub rows: usize,
    /// The WAL segment that holds the rows.
    pub segment: u64,
}

/// A table's data as a query sees it at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub batches: Vec<RecordBatch>,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub path: String,
    pub moved_to: Option<String>,
    pub reason: String,
    pub at_unix: u64,
}

#[derive(Debug, Default)]
pub struct StoreStats {
    pub appended_rows: AtomicU64,
    pub wal_commits: AtomicU64,
    /// Time spent writing and fsyncing WAL group commits, nanoseconds.
    pub wal_commit_nanos: AtomicU64,
    pub wal_bytes: AtomicU64,
    /// Time spent in flushes (buffer → Parquet + manifests), nanoseconds.
    pub flush_nanos: AtomicU64,
    pub flushes: AtomicU64,
    pub files_written: AtomicU64,
    pub compactions: AtomicU64,
    pub hours_expired: AtomicU64,
    pub scans: AtomicU64,
    pub files_considered: AtomicU64,
    pub files_scanned: AtomicU64,
    pub rejected_overload: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub table: &'static str,
    pub buffered_rows: usize,
    pub files: usize,
    pub rows_on_disk: u64,
    pub bytes_on_disk: u64,
    pub hours: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    pub location: String,
    pub wal_dir: String,
    pub read_only: bool,
    pub fsync: FsyncPolicy,
    pub buffered_bytes: usize,
    pub wal_segments: usize,
    pub tables: Vec<TableStatus>,
    pub quarantined: Vec<Quarantined>,
    pub appended_rows: u64,
    pub wal_commits: u64,
    pub wal_commit_seconds: f64,
    pub flushes: u64,
    pub flush_seconds: f64,
    pub files_written: u64,
    pub compactions: u64,
    pub hours_expired: u64,
    pub scans: u64,
    pub files_considered: u64,
    pub files_scanned: u64,
    pub rejected_overload: u64,
}

/// Buffered records of one WAL segment.
#[derive(Default)]
struct SegBuf {
    records: Vec<(Table, i64, RecordBatch)>,
    bytes: usize,
    /// Follower: bytes of the segment file already read.
    read_offset: u64,
    first_at: Option<Instant>,
}

#[derive(Default)]
struct State {
    segments: BTreeMap<u64, SegBuf>,
    manifests: BTreeMap<(Table, i64), HourManifest>,
    /// Per table: hour → manifest version, as last read or written.
    versions: BTreeMap<Table, BTreeMap<i64, u64>>,
    buffered_bytes: usize,
    /// Files that failed to open; never handed to a query again.
    excluded: HashSet<String>,
}

impl State {
    fn flushed_through(&self, table: Table, hour: i64) -> u64 {
        self.manifests
            .get(&(table, hour))
            .map_or(0, |m| m.flushed_through_segment)
    }

    fn insert(&mut self, seq: u64, records: Vec<(Table, i64, RecordBatch)>) {
        let seg = self.segments.entry(seq).or_default();
        for (t, h, b) in records {
            let size = b.get_array_memory_size();
            seg.bytes += size;
            self.buffered_bytes += size;
            seg.first_at.get_or_insert_with(Instant::now);
            seg.records.push((t, h, b));
        }
    }

    fn remove_segments_through(&mut self, seq: u64) {
        let keep = self.segments.split_off(&(seq + 1));
        for (_, s) in std::mem::replace(&mut self.segments, keep) {
            self.buffered_bytes -= s.bytes;
        }
    }

    fn buffered_rows(&self, table: Table) -> usize {
        self.segments
            .iter()
            .flat_map(|(seq, s)| s.records.iter().map(move |r| (*seq, r)))
            .filter(|(seq, (t, h, _))| *t == table && *seq > self.flushed_through(*t, *h))
            .map(|(_, (_, _, b))| b.num_rows())
            .sum()
    }
}

enum WalMsg {
    Append {
        records: Vec<(Table, i64, RecordBatch, Vec<u8>)>,
        /// Source positions logged in the first record; known once it is written.
        positions: wal::Positions,
        ack: oneshot::Sender<Result<u64, String>>,
    },
    Rotate {
        reply: oneshot::Sender<Result<u64, String>>,
    },
}

struct Inner {
    cfg: StoreConfig,
    objects: Arc<dyn ObjectStore>,
    /// `file://` or `s3://bucket`: what DataFusion registers the object store under.
    object_url: String,
    root: Path,
    state: RwLock<State>,
    writer: Mutex<Option<mpsc::Sender<WalMsg>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held by flushes, quarantine and manifest updates (briefly). Compaction and retention
    /// take `compact_lock` first and this one only to update a manifest, so a compaction
    /// that reads and rewrites a big hour does not hold up flushes (and so appends).
    flush_lock: tokio::sync::Mutex<()>,
    compact_lock: tokio::sync::Mutex<()>,
    stats: StoreStats,
    quarantine: Mutex<Vec<Quarantined>>,
    verified: Mutex<HashSet<String>>,
    pending_deletes: Mutex<Vec<(Instant, Path)>>,
    last_refresh: Mutex<Option<Instant>>,
    lock_file: Mutex<Option<File>>,
    /// The manifests as they were when the store opened, before any replay or flush.
    manifests_at_open: Mutex<Vec<HourManifest>>,
    /// Source key → position, as last logged in the WAL (see [`Store::append_at`]).
    positions: Mutex<BTreeMap<String, String>>,
}

impl Inner {
    fn observe(&self, records: &[(Table, i64, RecordBatch)]) {
        if let Some(obs) = &self.cfg.observer {
            for (t, _, b) in records {
                obs(*t, b);
            }
        }
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.inner.cfg.location)
            .finish()
    }
}

/// How [`compaction_inputs`] picks the files of one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compaction {
    /// Every file, if there are two or more (`Store::compact(true)`).
    Whole,
    /// A past hour (ended at least a flush interval ago): every file, if there are two or
    /// more or its only file is a flush's unsorted one. Each past hour ends as one sorted file.
    Closed,
    /// The current hour: the lowest level that has `min_files` files is merged into one file
    /// a level up. A row is then rewritten about log_min(files) times in the hour, not at
    /// every pass as when the whole hour was merged each time.
    Tiered { min_files: usize },
}

/// The files of one hour of `table` that compaction merges now; empty: leave the hour be.
pub fn compaction_inputs(table: Table, files: &[FileEntry], rule: Compaction) -> Vec<FileEntry> {
    match rule {
        Compaction::Whole if files.len() >= 2 => files.to_vec(),
        Compaction::Closed
            if files.len() >= 2 || files.iter().any(|f| !segment::is_sorted(table, f.level)) =>
        {
            files.to_vec()
        }
        Compaction::Tiered { min_files } => {
            let mut levels: BTreeMap<u32, Vec<&FileEntry>> = BTreeMap::new();
            for f in files {
                levels.entry(f.level).or_default().push(f);
            }
            levels
                .into_values()
                .find(|tier| tier.len() >= min_files.max(2))
                .map(|tier| tier.into_iter().cloned().collect())
                .unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// Old files stay this long after compaction replaced them, for queries already running.
const DELETE_GRACE: Duration = Duration::from_secs(60);
const FOLLOWER_REFRESH: Duration = Duration::from_millis(250);

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Resolves a location (local path or URL) into an object store, its URL and the root path.
pub fn open_location(location: &str) -> Result<(Arc<dyn ObjectStore>, String, Path), StoreError> {
    let bad = |e: String| StoreError::Location(location.to_string(), e);
    let url = if location.contains("://") {
        url::Url::parse(location).map_err(|e| bad(e.to_string()))?
    } else {
        std::fs::create_dir_all(location).map_err(|e| bad(e.to_string()))?;
        let abs = std::fs::canonicalize(location).map_err(|e| bad(e.to_string()))?;
        url::Url::from_directory_path(&abs).map_err(|_| bad("not an absolute path".into()))?
    };
    if url.scheme() == "file"
        && let Ok(p) = url.to_file_path()
    {
        std::fs::create_dir_all(&p).map_err(|e| bad(e.to_string()))?;
    }
    // Credentials and endpoints for s3:// come from the usual AWS_* environment variables.
    let opts: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let (store, root) = object_store::parse_url_opts(&url, opts).map_err(|e| bad(e.to_string()))?;
    let object_url = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    Ok((Arc::from(store), object_url, root))
}

impl Store {
    /// Opens the store: loads manifests, replays the WAL (truncating a torn tail), and — unless
    /// read-only — starts the WAL writer and the background flush/maintenance task.
    pub async fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        let (objects, object_url, root) = open_location(&cfg.location)?;
        std::fs::create_dir_all(&cfg.wal_dir)?;
        let lock_file = if cfg.read_only {
            None
        } else {
            let f = File::create(cfg.wal_dir.join("LOCK"))?;
            match f.try_lock() {
                Ok(()) => Some(f),
                Err(_) => return Err(StoreError::Locked(cfg.wal_dir.display().to_string())),
            }
        };
        let inner = Arc::new(Inner {
            cfg,
            objects,
            object_url,
            root,
            state: RwLock::new(State::default()),
            writer: Mutex::new(None),
            writer_thread: Mutex::new(None),
            flush_lock: tokio::sync::Mutex::new(()),
            compact_lock: tokio::sync::Mutex::new(()),
            stats: StoreStats::default(),
            quarantine: Mutex::new(Vec::new()),
            verified: Mutex::new(HashSet::new()),
            pending_deletes: Mutex::new(Vec::new()),
            last_refresh: Mutex::new(None),
            lock_file: Mutex::new(lock_file),
            manifests_at_open: Mutex::new(Vec::new()),
            positions: Mutex::new(BTreeMap::new()),
        });
        let store = Store { inner };
        store.load_manifests().await?;
        *store
            .inner
            .manifests_at_open
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            store.state_read().manifests.values().cloned().collect();
        if store.inner.cfg.read_only {
            store.tail_wal(true)?;
            return Ok(store);
        }
        let (next, flushed_segments) = store.replay_wal()?;
        let mut seg = wal::SegmentWriter::create(&store.inner.cfg.wal_dir, next)?;
        // The replayed positions go first into the new segment, so the segments replay
        // found already flushed can go.
        write_positions_snapshot(&store.inner, &mut seg)?;
        for path in flushed_segments {
            let _ = std::fs::remove_file(&path);
        }
        let (tx, rx) = mpsc::channel(1024);
        let inner = store.inner.clone();
        let handle = std::thread::Builder::new()
            .name("meshscope-wal".into())
            .spawn(move || writer_thread(inner, rx, seg))?;
        *store.inner.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        *store
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(handle);
        let bg = store.clone();
        tokio::spawn(async move { bg.background().await });
        let maintenance = store.clone();
        tokio::spawn(async move { maintenance.maintenance().await });
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.objects.clone()
    }

    /// The URL (scheme and authority) DataFusion must register `object_store()` under.
    pub fn object_store_url(&self) -> &str {
        &self.inner.object_url
    }

    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    fn state_read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn state_write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a batch; returns once the rows are durable in the WAL and visible to queries.
    pub async fn append(
        &self,
        table: Table,
        batch: RecordBatch,
    ) -> Result<AppendReceipt, StoreError> {
        self.append_logged(table, batch, None, Vec::new()).await
    }

    /// Appends a batch read from a source together with where that source stands after it
    /// (`positions`: source key → position, opaque to the store), in one WAL record: after a
    /// crash either both are replayed or neither, so the source can resume exactly after
    /// what was stored. [`Store::positions`] gives them back after a restart.
    pub async fn append_at(
        &self,
        table: Table,
        batch: RecordBatch,
        positions: wal::Positions,
    ) -> Result<AppendReceipt, StoreError> {
        self.append_logged(table, batch, None, positions).await
    }

    /// The positions logged with [`Store::append_at`] (replayed from the WAL at open), by
    /// source key.
    pub fn positions(&self) -> BTreeMap<String, String> {
        self.inner
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets a source's position (a file no longer followed). Only the memory is changed:
    /// the next segment's snapshot leaves it out.
    pub fn forget_position(&self, key: &str) {
        self.inner
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Appends the `spans` rows `otlp::wire::spans_from_protobuf` decoded from `request` (an
    /// OTLP/protobuf trace export, decompressed), logging the request itself in the WAL
    /// instead of the rows: replay decodes it again.
    pub async fn append_otlp_traces(
        &self,
        batch: RecordBatch,
        request: Bytes,
    ) -> Result<AppendReceipt, StoreError> {
        self.append_logged(Table::Spans, batch, Some(request), Vec::new())
            .await
    }

    async fn append_logged(
        &self,
        table: Table,
        batch: RecordBatch,
        request: Option<Bytes>,
        positions: wal::Positions,
    ) -> Result<AppendReceipt, StoreError> {
        check_batch(table, &batch)?;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(AppendReceipt {
                rows: 0,
                segment: 0,
            });
        }
        let tx = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(if self.inner.cfg.read_only {
                StoreError::ReadOnly
            } else {
                StoreError::Closed
            })?;
        self.admit()?;
        let mut records = Vec::new();
        let mut request = request.map(|r| wal::encode_otlp_traces_record(&r));
        for (hour, part) in segment::split_by_hour(table, &batch)? {
            // The request's record carries every hour's rows; the other parts log nothing.
            // The first part's record carries the positions.
            let bytes = match &mut request {
                Some(r) => std::mem::take(r),
                None if records.is_empty() => wal::encode_record(table, hour, &part, &positions)?,
                None => wal::encode_record(table, hour, &part, &[])?,
            };
            records.push((table, hour, part, bytes));
        }
        let (ack, done) = oneshot::channel();
        let msg = WalMsg::Append {
            records,
            positions,
            ack,
        };
        match tokio::time::timeout(Duration::from_secs(5), tx.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StoreError::Closed),
            Err(_) => {
                self.inner
                    .stats
                    .rejected_overload
                    .fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Overloaded(
                    "the WAL writer queue is full".into(),
                    Duration::from_secs(1),
                ));
            }
        }
        let segment = done
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Internal)?;
        self.inner
            .stats
            .appended_rows
            .fetch_add(rows as u64, Ordering::Relaxed);
        Ok(AppendReceipt { rows, segment })
    }

    /// Fails with `Overloaded` while the buffer is over its limit, as `append` would.
    /// Receivers ask before decoding a request, so a request that would be refused costs no
    /// decoding.
    pub fn admit(&self) -> Result<(), StoreError> {
        let buffered = self.state_read().buffered_bytes;
        if buffered > self.inner.cfg.max_buffer_bytes {
            self.inner
                .stats
                .rejected_overload
                .fetch_add(1, Ordering::Relaxed);
            self.kick_flush();
            return Err(StoreError::Overloaded(
                format!(
                    "{buffered} bytes buffered, limit {}",
                    self.inner.cfg.max_buffer_bytes
                ),
                Duration::from_secs(1),
            ));
        }
        Ok(())
    }

    /// The buffered batches and Parquet files of `table` whose hour overlaps
    /// `[from_ns, to_ns]` (inclusive; `None` = unbounded). Files are pruned by their manifest
    /// time range; files that failed to open are left out.
    pub fn snapshot(&self, table: Table, from_ns: Option<i64>, to_ns: Option<i64>) -> Snapshot {
        let lo_hour = from_ns.map(manifest::hour_of);
        let hi_hour = to_ns.map(manifest::hour_of);
        let in_range =
            |h: i64| lo_hour.is_none_or(|lo| h >= lo) && hi_hour.is_none_or(|hi| h <= hi);
        let st = self.state_read();
        let mut snap = Snapshot::default();
        for (seq, seg) in &st.segments {
            for (t, h, b) in &seg.records {
                if *t == table && in_range(*h) && *seq > st.flushed_through(*t, *h) {
                    snap.batches.push(b.clone());
                }
            }
        }
        for ((t, h), m) in st.manifests.range((table, i64::MIN)..=(table, i64::MAX)) {
            debug_assert_eq!(*t, table);
            if !in_range(*h) {
                continue;
            }
            for f in &m.files {
                let overlaps = from_ns.is_none_or(|lo| f.max_time >= lo)
                    && to_ns.is_none_or(|hi| f.min_time <= hi);
                if overlaps && !st.excluded.contains(&f.path) {
                    snap.files.push(f.clone());
                }
            }
        }
        snap
    }

    /// Counts a scan for `/api/v1/status` and the pruning tests.
    pub fn record_scan(&self, considered: usize, scanned: usize) {
        let s = &self.inner.stats;
        s.scans.fetch_add(1, Ordering::Relaxed);
        s.files_considered
            .fetch_add(considered as u64, Ordering::Relaxed);
        s.files_scanned.fetch_add(scanned as u64, Ordering::Relaxed);
    }

    /// A follower re-reads what the writer appended to the WAL (every call: it is a local,
    /// incremental read) and the changed manifests (when a WAL segment vanished, i.e. a flush
    /// happened, or at most every 250 ms); a writer has nothing to do.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        if !self.inner.cfg.read_only {
            return Ok(());
        }
        // WAL first, then manifests: a segment deleted before we read it was flushed into a
        // manifest we are about to read, and a duplicate is filtered by flushed_through.
        let flushed = self.tail_wal(false)?;
        let due = {
            let mut last = self
                .inner
                .last_refresh
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let due = flushed || last.is_none_or(|t| t.elapsed() >= FOLLOWER_REFRESH);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            self.load_manifests().await?;
        }
        Ok(())
    }

    /// Checks that each file's Parquet footer opens (once per process); a file that does not
    /// is quarantined and left out. Returns the files that are fine.
    #[allow(deprecated)] // ParquetObjectReader: still the simplest footer check over object_store
    pub async fn verify_files(&self, table: Table, files: Vec<FileEntry>) -> Vec<FileEntry> {
        let mut ok = Vec::with_capacity(files.len());
        for f in files {
            if self
                .inner
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&f.path)
            {
                ok.push(f);
                continue;
            }
            let reader = parquet::arrow::async_reader::ParquetObjectReader::new(
                self.inner.objects.clone(),
                Path::from(f.path.as_str()),
            )
            .with_file_size(f.bytes);
            match parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader).await {
                Ok(_) => {
                    self.inner
                        .verified
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(f.path.clone());
                    ok.push(f);
                }
                Err(e) => self.quarantine(table, &f, e.to_string()).await,
            }
        }
        ok
    }

    async fn quarantine(&self, table: Table, f: &FileEntry, reason: String) {
        warn!(path = %f.path, %reason, "Parquet file fails to open; quarantining it");
        self.state_write().excluded.insert(f.path.clone());
        let mut moved_to = None;
        if !self.inner.cfg.read_only {
            let _g = self.inner.flush_lock.lock().await;
            let name = f.path.rsplit('/').next().unwrap_or("file.parquet");
            let dest = manifest::join(
                &self.inner.root,
                &format!("_quarantine/{}/{}", table.name(), name),
            );
            let from = Path::from(f.path.as_str());
            if self.inner.objects.rename(&from, &dest).await.is_ok() {
                moved_to = Some(dest.to_string());
            }
            let hour = self
                .state_read()
                .manifests
                .iter()
                .find(|(_, m)| m.files.iter().any(|x| x.path == f.path))
                .map(|(k, _)| k.1);
            if let Some(hour) = hour {
                let mut m = self
                    .state_read()
                    .manifests
                    .get(&(table, hour))
                    .cloned()
                    .unwrap_or_default();
                m.files.retain(|x| x.path != f.path);
                if let Err(e) = self.write_manifest(table, m).await {
                    warn!(error = %e, "could not rewrite the manifest after quarantine");
                }
            }
        }
        let at_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.inner
            .quarantine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Quarantined {
                path: f.path.clone(),
                moved_to,
                reason,
                at_unix,
            });
    }

    pub fn status(&self) -> StoreStatus {
        let st = self.state_read();
        let tables = Table::ALL
            .into_iter()
            .map(|t| {
                let ms: Vec<&HourManifest> = st
                    .manifests
                    .range((t, i64::MIN)..=(t, i64::MAX))
                    .map(|(_, m)| m)
                    .collect();
                TableStatus {
                    table: t.name(),
                    buffered_rows: st.buffered_rows(t),
                    files: ms.iter().map(|m| m.files.len()).sum(),
                    rows_on_disk: ms.iter().map(|m| m.rows()).sum(),
                    bytes_on_disk: ms
                        .iter()
                        .flat_map(|m| m.files.iter())
                        .map(|f| f.bytes)
                        .sum(),
                    hours: ms.len(),
                }
            })
            .collect();
        let s = &self.inner.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStatus {
            location: self.inner.cfg.location.clone(),
            wal_dir: self.inner.cfg.wal_dir.display().to_string(),
            read_only: self.inner.cfg.read_only,
            fsync: self.inner.cfg.fsync,
            buffered_bytes: st.buffered_bytes,
            wal_segments: st.segments.len(),
            tables,
            quarantined: self
                .inner
                .quarantine
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            appended_rows: l(&s.appended_rows),
            wal_commits: l(&s.wal_commits),
            wal_commit_seconds: l(&s.wal_commit_nanos) as f64 / 1e9,
            flushes: l(&s.flushes),
            flush_seconds: l(&s.flush_nanos) as f64 / 1e9,
            files_written: l(&s.files_written),
            compactions: l(&s.compactions),
            hours_expired: l(&s.hours_expired),
            scans: l(&s.scans),
            files_considered: l(&s.files_considered),
            files_scanned: l(&s.files_scanned),
            rejected_overload: l(&s.rejected_overload),
        }
    }

    /// The hour manifests of `table` as they were when the store opened: the data the
    /// observer was not shown (it sees everything after).
    pub fn manifests_at_open(&self, table: Table) -> Vec<HourManifest> {
        self.inner
            .manifests_at_open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|m| m.table == table.name())
            .cloned()
            .collect()
    }

    /// The hour manifests of a table (for tests and tools).
    pub fn manifests(&self, table: Table) -> Vec<HourManifest> {
        self.state_read()
            .manifests
            .range((table, i64::MIN)..=(table, i64::MAX))
            .map(|(_, m)| m.clone())
            .collect()
    }

    // ---- WAL replay and following ----

    /// Replays every WAL segment into the buffer and its positions into `positions`,
    /// truncating torn tails. Returns the number of the next segment to write, and the
    /// segments whose rows are all flushed (to delete once their positions are written
    /// again).
    fn replay_wal(&self) -> Result<(u64, Vec<PathBuf>), StoreError> {
        let dir = self.inner.cfg.wal_dir.clone();
        let segs = wal::list_segments(&dir)?;
        let mut replayed = 0usize;
        let mut flushed = Vec::new();
        for &seq in &segs {
            let path = wal::segment_path(&dir, seq);
            let read = wal::read_segment(&path, 0)?;
            if let Some(why) = &read.torn {
                warn!(segment = %path.display(), %why, kept_bytes = read.good_len, "WAL tail is torn or corrupt; truncating it, every record before it is kept");
                wal::truncate_segment(&path, read.good_len)?;
            }
            self.inner
                .positions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(read.positions);
            let mut st = self.state_write();
            let recs: Vec<_> = read
                .records
                .into_iter()
                .filter(|r| seq > st.flushed_through(r.table, r.hour))
                .map(|r| (r.table, r.hour, r.batch))
                .collect();
            replayed += recs.iter().map(|r| r.2.num_rows()).sum::<usize>();
            if recs.is_empty() {
                flushed.push(path);
            } else {
                self.inner.observe(&recs);
                st.insert(seq, recs);
            }
        }
        if replayed > 0 {
            info!(
                rows = replayed,
                segments = segs.len(),
                "replayed the write-ahead log"
            );
        }
        Ok((segs.last().map_or(1, |s| s + 1), flushed))
    }

    /// Follower: reads what the writer appended since last time; forgets deleted segments.
    /// Returns whether any segment vanished (the writer flushed).
    /// `initial`: the first read at open, where records already flushed to the files listed in
    /// `manifests_at_open` are not shown to the observer.
    fn tail_wal(&self, initial: bool) -> Result<bool, StoreError> {
        let dir = self.inner.cfg.wal_dir.clone();
        let segs = match wal::list_segments(&dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(e.into()),
        };
        let present: BTreeSet<u64> = segs.iter().copied().collect();
        let flushed;
        {
            let mut st = self.state_write();
            let gone: Vec<u64> = st
                .segments
                .keys()
                .filter(|s| !present.contains(s))
                .copied()
                .collect();
            flushed = !gone.is_empty();
            for g in gone {
                if let Some(s) = st.segments.remove(&g) {
                    st.buffered_bytes -= s.bytes;
                }
            }
        }
        for seq in segs {
            let offset = self
                .state_read()
                .segments
                .get(&seq)
                .map_or(0, |s| s.read_offset);
            let read = match wal::read_segment(&wal::segment_path(&dir, seq), offset) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let mut st = self.state_write();
            let recs: Vec<_> = read
                .records
                .into_iter()
                .map(|r| (r.table, r.hour, r.batch))
                .collect();
            if initial {
                let fresh: Vec<_> = recs
                    .iter()
                    .filter(|(t, h, _)| seq > st.flushed_through(*t, *h))
                    .cloned()
                    .collect();
                self.inner.observe(&fresh);
            } else {
                self.inner.observe(&recs);
            }
            st.insert(seq, recs);
            if let Some(s) = st.segments.get_mut(&seq) {
                s.read_offset = read.good_len;
            }
        }
        Ok(flushed)
    }

    // ---- manifests ----

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, StoreError> {
        match self.inner.objects.get(path).await {
            Ok(r) => Ok(Some(serde_json::from_slice(&r.bytes().await?)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Loads every table's hours index and the manifests whose version changed.
    async fn load_manifests(&self) -> Result<(), StoreError> {
        for table in Table::ALL {
            let index: HoursIndex = self
                .get_json(&hours_path(&self.inner.root, table))
                .await?
                .unwrap_or_default();
            let known = self
                .state_read()
                .versions
                .get(&table)
                .cloned()
                .unwrap_or_default();
            for (&hour, &version) in &index.hours {
                if known.get(&hour) == Some(&version) {
                    continue;
                }
                if let Some(m) = self
                    .get_json::<HourManifest>(&manifest_path(&self.inner.root, table, hour))
                    .await?
                {
                    self.state_write().manifests.insert((table, hour), m);
                }
            }
            let mut st = self.state_write();
            for hour in known.keys().filter(|h| !index.hours.contains_key(h)) {
                st.manifests.remove(&(table, *hour));
            }
            st.versions.insert(table, index.hours);
        }
        Ok(())
    }

    /// Writes an hour's manifest (or removes it when it has no files), then bumps its
    /// version in the hours index, then updates memory.
    async fn write_manifest(&self, table: Table, m: HourManifest) -> Result<(), StoreError> {
        let hour = m.hour;
        let mpath = manifest_path(&self.inner.root, table, hour);
        let mut versions = self
            .state_read()
            .versions
            .get(&table)
            .cloned()
            .unwrap_or_default();
        if m.files.is_empty() {
            versions.remove(&hour);
        } else {
            self.inner
                .objects
                .put(&mpath, PutPayload::from(serde_json::to_vec_pretty(&m)?))
                .await?;
            *versions.entry(hour).or_insert(0) += 1;
        }
        let index = HoursIndex {
            hours: versions.clone(),
        };
        self.inner
            .objects
            .put(
                &hours_path(&self.inner.root, table),
                PutPayload::from(serde_json::to_vec(&index)?),
            )
            .await?;
        if m.files.is_empty() {
            let _ = self.inner.objects.delete(&mpath).await;
        }
        let mut st = self.state_write();
        st.versions.insert(table, versions);
        if m.files.is_empty() {
            st.manifests.remove(&(table, hour));
        } else {
            st.manifests.insert((table, hour), m);
        }
        Ok(())
    }

    // ---- flush ----

    fn kick_flush(&self) {
        let s = self.clone();
        tokio::spawn(async move {
            if let Err(e) = s.flush().await {
                warn!(error = %e, "flush failed; the rows stay in the WAL and the next flush retries");
            }
        });
    }

    async fn rotate(&self) -> Result<u64, StoreError> {
        let tx = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(WalMsg::Rotate { reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Internal)
    }

    /// Writes everything buffered to Parquet. Returns the number of rows flushed.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        if self.inner.cfg.read_only {
            return Err(StoreError::ReadOnly);
        }
        let _g = self.inner.flush_lock.lock().await;
        if self
            .state_read()
            .segments
            .values()
            .all(|s| s.records.is_empty())
        {
            return Ok(0);
        }
        let flush_started = Instant::now();
        let closed = self.rotate().await?;
        let groups: BTreeMap<(Table, i64), Vec<RecordBatch>> = {
            let st = self.state_read();
            let mut g: BTreeMap<(Table, i64), Vec<RecordBatch>> = BTreeMap::new();
            for (seq, seg) in st.segments.range(..=closed) {
                for (t, h, b) in &seg.records {
                    if *seq > st.flushed_through(*t, *h) {
                        g.entry((*t, *h)).or_default().push(b.clone());
                    }
                }
            }
            g
        };
        let mut rows = 0;
        for ((table, hour), batches) in groups {
            let (entry, n) = self.write_segment(table, hour, batches, 0).await?;
            let mut m = self
                .state_read()
                .manifests
                .get(&(table, hour))
                .cloned()
                .unwrap_or_else(|| HourManifest {
                    table: table.name().to_string(),
                    hour,
                    ..Default::default()
                });
            m.files.push(entry);
            m.flushed_through_segment = closed;
            self.write_manifest(table, m).await?;
            rows += n;
        }
        self.state_write().remove_segments_through(closed);
        for seq in wal::list_segments(&self.inner.cfg.wal_dir)? {
            if seq <= closed {
                std::fs::remove_file(wal::segment_path(&self.inner.cfg.wal_dir, seq))?;
            }
        }
        self.inner.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .stats
            .flush_nanos
            .fetch_add(flush_started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        debug!(
            rows,
            through_segment = closed,
            "flushed the buffer to Parquet"
        );
        Ok(rows)
    }

    /// Encodes batches as one Parquet file (sorted if `level` > 0) of `(table, hour)`, written under a
    /// temporary name and renamed into place.
    async fn write_segment(
        &self,
        table: Table,
        hour: i64,
        batches: Vec<RecordBatch>,
        level: u32,
    ) -> Result<(FileEntry, usize), StoreError> {
        let (batches, bytes) = tokio::task::spawn_blocking(move || {
            let bytes = segment::encode_segment(table, &batches, level)?;
            Ok::<_, StoreError>((batches, bytes))
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))??;
        let dir = hour_dir(&self.inner.root, table, hour);
        let id = format!("{:020}-{:08x}", now_ns(), rand_u32());
        let final_path = Path::from(format!("{}/{}.parquet", dir.as_ref(), id));
        let tmp_path = Path::from(format!("{}/.{}.parquet.tmp", dir.as_ref(), id));
        let size = bytes.len() as u64;
        self.inner
            .objects
            .put(&tmp_path, PutPayload::from(bytes))
            .await?;
        self.inner.objects.rename(&tmp_path, &final_path).await?;
        self.inner
            .stats
            .files_written
            .fetch_add(1, Ordering::Relaxed);
        let entry = segment::file_entry(table, &batches, final_path.to_string(), size, level);
        let n = entry.rows as usize;
        Ok((entry, n))
    }

    // ---- compaction and retention ----

    /// Merges files of each hour as [`compaction_inputs`] picks them (with `force`: every
    /// hour of two or more files into one). Returns how many merges were done.
    pub async fn compact(&self, force: bool) -> Result<usize, StoreError> {
        if self.inner.cfg.read_only {
            return Err(StoreError::ReadOnly);
        }
        let _c = self.inner.compact_lock.lock().await;
        let closed_before =
            (now_ns() / 1_000_000_000) - 3600 - self.inner.cfg.flush_interval.as_secs() as i64;
        let candidates: Vec<(Table, i64, Vec<FileEntry>)> = self
            .state_read()
            .manifests
            .values()
            .filter_map(|m| {
                let table = Table::from_name(&m.table).ok()?;
                let rule = if force {
                    Compaction::Whole
                } else if m.hour <= closed_before {
                    Compaction::Closed
                } else {
                    Compaction::Tiered {
                        min_files: self.inner.cfg.compaction_min_files.max(2),
                    }
                };
                let inputs = compaction_inputs(table, &m.files, rule);
                (!inputs.is_empty()).then_some((table, m.hour, inputs))
            })
            .collect();
        let mut done = 0;
        for (table, hour, files) in candidates {
            let mut batches = Vec::new();
            let mut inputs = Vec::new();
            for f in &files {
                let path = Path::from(f.path.as_str());
                let read = async {
                    segment::decode_parquet(self.inner.objects.get(&path).await?.bytes().await?)
                };
                match read.await {
                    Ok(b) => {
                        batches.extend(b);
                        inputs.push(f.clone());
                    }
                    Err(e) => {
                        warn!(path = %f.path, error = %e, "skipping a file compaction cannot read");
                    }
                }
            }
            // A file that could not be read stays as it is, and the others are merged if two
            // or more remain. A lone file is rewritten only when it was picked alone (the
            // unsorted file of a past hour).
            if inputs.is_empty() || (inputs.len() < files.len() && inputs.len() < 2) {
                continue;
            }
            let level = inputs.iter().map(|f| f.level).max().unwrap_or(0) + 1;
            let (entry, _) = self.write_segment(table, hour, batches, level).await?;
            {
                let _g = self.inner.flush_lock.lock().await;
                // Flushes may have added files meanwhile; only the inputs are replaced.
                let Some(mut updated) = self.state_read().manifests.get(&(table, hour)).cloned()
                else {
                    continue;
                };
                updated
                    .files
                    .retain(|f| !inputs.iter().any(|i| i.path == f.path));
                updated.files.push(entry);
                self.write_manifest(table, updated).await?;
            }
            let at = Instant::now();
            self.inner
                .pending_deletes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(inputs.iter().map(|f| (at, Path::from(f.path.as_str()))));
            self.inner.stats.compactions.fetch_add(1, Ordering::Relaxed);
            done += 1;
        }
        Ok(done)
    }

    /// Deletes every hour partition that ended before `now - retention`. Returns the number of
    /// hours removed.
    pub async fn apply_retention(&self, now_unix_ns: i64) -> Result<usize, StoreError> {
        if self.inner.cfg.read_only {
            return Err(StoreError::ReadOnly);
        }
        let _c = self.inner.compact_lock.lock().await;
        let _g = self.inner.flush_lock.lock().await;
        let cutoff_s =
            (now_unix_ns - self.inner.cfg.retention.as_nanos() as i64).div_euclid(1_000_000_000);
        let expired: Vec<HourManifest> = self
            .state_read()
            .manifests
            .values()
            .filter(|m| m.hour + 3600 <= cutoff_s)
            .cloned()
            .collect();
        for m in &expired {
            let table = Table::from_name(&m.table)?;
            for f in &m.files {
                match self
                    .inner
                    .objects
                    .delete(&Path::from(f.path.as_str()))
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.write_manifest(
                table,
                HourManifest {
                    files: vec![],
                    ..m.clone()
                },
            )
            .await?;
            info!(
                table = table.name(),
                hour = m.hour,
                files = m.files.len(),
                "retention removed an hour partition"
            );
            self.inner
                .stats
                .hours_expired
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(expired.len())
    }

    async fn delete_pending(&self, all: bool) {
        let due: Vec<Path> = {
            let mut p = self
                .inner
                .pending_deletes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let (due, keep): (Vec<_>, Vec<_>) = p
                .drain(..)
                .partition(|(at, _)| all || at.elapsed() >= DELETE_GRACE);
            *p = keep;
            due.into_iter().map(|(_, path)| path).collect()
        };
        for path in due {
            if let Err(e) = self.inner.objects.delete(&path).await {
                debug!(%path, error = %e, "could not delete a replaced file");
            }
        }
    }

    /// Whether the WAL writer still runs (background tasks stop when it does not).
    fn running(&self) -> bool {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Flushes when the buffer is due.
    async fn background(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if !self.running() {
                return;
            }
            let due = {
                let st = self.state_read();
                let rows: usize = st
                    .segments
                    .values()
                    .flat_map(|s| s.records.iter())
                    .map(|r| r.2.num_rows())
                    .sum();
                let oldest = st.segments.values().filter_map(|s| s.first_at).min();
                rows >= self.inner.cfg.flush_rows
                    || st.buffered_bytes >= self.inner.cfg.flush_bytes
                    || oldest.is_some_and(|t| t.elapsed() >= self.inner.cfg.flush_interval)
            };
            if due && let Err(e) = self.flush().await {
                warn!(error = %e, "flush failed; the rows stay in the WAL and the next flush retries");
            }
        }
    }

    /// Compaction, retention and deleting replaced files, every `maintenance_interval`. A task
    /// of its own, so that a long compaction does not hold up the flushes.
    async fn maintenance(&self) {
        let mut last_maintenance = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if !self.running() {
                return;
            }
            if last_maintenance.elapsed() >= self.inner.cfg.maintenance_interval {
                last_maintenance = Instant::now();
                if let Err(e) = self.compact(false).await {
                    warn!(error = %e, "compaction failed");
                }
                if let Err(e) = self.apply_retention(now_ns()).await {
                    warn!(error = %e, "retention failed");
                }
                self.delete_pending(false).await;
            }
        }
    }

    /// Flushes everything and stops the WAL writer. Appends after this fail with `Closed`.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.cfg.read_only {
            return Ok(());
        }
        let flushed = self.flush().await;
        self.halt().await;
        self.delete_pending(true).await;
        flushed.map(|_| ())
    }

    /// Stops the WAL writer and releases the WAL lock without flushing, as a crash would
    /// leave things (what is acknowledged is in the WAL). Used by `shutdown` and by tests.
    pub async fn halt(&self) {
        let tx = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(tx);
        let handle = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        self.inner
            .lock_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ns());
    h.finish() as u32
}

/// The WAL writer: group-commits appends, rotates segments on request.
fn writer_thread(inner: Arc<Inner>, mut rx: mpsc::Receiver<WalMsg>, mut seg: wal::SegmentWriter) {
    let store = Store {
        inner: inner.clone(),
    };
    let linger = inner.cfg.group_commit.min(Duration::from_millis(100));
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        if !linger.is_zero() && matches!(group[0], WalMsg::Append { .. }) {
            std::thread::sleep(linger);
        }
        while let Ok(m) = rx.try_recv() {
            group.push(m);
            if group.len() >= 4096 {
                break;
            }
        }
        let mut pending: Pending = Vec::new();
        // The group's encoded records, written with one vectored write (no concatenation).
        let mut buf: Vec<Vec<u8>> = Vec::new();
        for msg in group {
            match msg {
                WalMsg::Append {
                    records,
                    positions,
                    ack,
                } => {
                    let mut recs = Vec::with_capacity(records.len());
                    for (t, h, b, bytes) in records {
                        buf.push(bytes);
                        recs.push((t, h, b));
                    }
                    pending.push((recs, positions, ack));
                }
                WalMsg::Rotate { reply } => {
                    commit(&store, &mut seg, &mut buf, &mut pending);
                    let closed = seg.seq;
                    // The new segment starts with every position logged so far, so the
                    // closed one can be deleted once flushed.
                    let res = wal::SegmentWriter::create(&inner.cfg.wal_dir, closed + 1)
                        .and_then(|mut s| match write_positions_snapshot(&inner, &mut s) {
                            Ok(()) => Ok(s),
                            // Leave the file empty, so no later record follows a torn one.
                            Err(e) => {
                                let _ = s.rollback(0);
                                Err(e)
                            }
                        })
                        .map(|s| {
                            seg = s;
                            closed
                        })
                        .map_err(|e| format!("cannot open WAL segment {}: {e}", closed + 1));
                    let _ = reply.send(res);
                }
            }
        }
        commit(&store, &mut seg, &mut buf, &mut pending);
    }
}

type Pending = Vec<(
    Vec<(Table, i64, RecordBatch)>,
    wal::Positions,
    oneshot::Sender<Result<u64, String>>,
)>;

/// Writes the positions logged so far (if any) as the first record of a new segment, synced
/// per the fsync policy.
fn write_positions_snapshot(inner: &Inner, seg: &mut wal::SegmentWriter) -> std::io::Result<()> {
    let all: wal::Positions = inner
        .positions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    seg.write_records(&[wal::encode_positions_record(&all)])?;
    match inner.cfg.fsync {
        FsyncPolicy::Always => seg.sync(),
        FsyncPolicy::Never => Ok(()),
    }
}

/// One group commit: write, fsync (per policy), make visible, acknowledge.
fn commit(
    store: &Store,
    seg: &mut wal::SegmentWriter,
    buf: &mut Vec<Vec<u8>>,
    pending: &mut Pending,
) {
    if pending.is_empty() {
        return;
    }
    let before = seg.bytes;
    let started = Instant::now();
    let res = seg
        .write_records(buf)
        .and_then(|_| match store.inner.cfg.fsync {
            FsyncPolicy::Always => seg.sync(),
            FsyncPolicy::Never => Ok(()),
        });
    store
        .inner
        .stats
        .wal_commit_nanos
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    store
        .inner
        .stats
        .wal_commits
        .fetch_add(1, Ordering::Relaxed);
    store
        .inner
        .stats
        .wal_bytes
        .fetch_add(seg.bytes.saturating_sub(before), Ordering::Relaxed);
    buf.clear();
    match res {
        Ok(()) => {
            let seq = seg.seq;
            {
                let mut st = store.state_write();
                let mut known = store
                    .inner
                    .positions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for (recs, positions, _) in pending.iter_mut() {
                    store.inner.observe(recs);
                    st.insert(seq, std::mem::take(recs));
                    known.extend(std::mem::take(positions));
                }
            }
            for (_, _, ack) in pending.drain(..) {
                let _ = ack.send(Ok(seq));
            }
        }
        Err(e) => {
            // Cut off a partial write so later records are not hidden behind a torn record.
            let _ = seg.rollback(before);
            let msg = format!("WAL write failed: {e}");
            warn!(%msg);
            for (_, _, ack) in pending.drain(..) {
                let _ = ack.send(Err(msg.clone()));
            }
        }
    }
}

/// Reads a Parquet object fully (for tools and tests).
pub async fn read_object(store: &Arc<dyn ObjectStore>, path: &str) -> Result<Bytes, StoreError> {
    Ok(store.get(&Path::from(path)).await?.bytes().await?)
}

#[cfg(test)]
mod tests;
