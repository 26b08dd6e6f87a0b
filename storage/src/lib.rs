//! meshscope's storage engine: the WAL, the Arrow buffer, Parquet flushes, compaction,
//! retention and the manifests, over a local directory or an object store.
//!
//! It owns durability and the layout of the data; it hands out a [`StoreWriter`] to receivers
//! and a [`StoreReader`] to readers. It must never import a receiver (`collector`) or the
//! query side (`query`): a receiver that logs requests as received hands the WAL its decoder
//! ([`StoreConfig::request_decoder`]) instead.
//!
//! One writer, many readers.
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

mod append;
mod flush;
pub mod handles;
mod maintenance;
pub mod manifest;
pub mod merge;
mod read;
mod replay;
pub mod segment;
pub mod wal;
pub mod window;

pub use handles::{StoreReader, StoreWriter};
pub use maintenance::{Compaction, compaction_inputs};
pub use wal::RequestDecoder;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
/// Told about every batch that enters the buffer. The [`Charge`] counts the batch against the
/// buffer limit until the observer drops it (after it has used the batch), so a slow
/// observer's queue applies back-pressure instead of growing without bound.
pub type BatchObserver = Arc<dyn Fn(Table, &RecordBatch, Charge) + Send + Sync>;

/// Memory held outside the buffer that counts against `max_buffer_bytes` (batches queued for
/// an observer, a compaction's working set) until dropped.
#[derive(Debug)]
pub struct Charge {
    bytes: usize,
    pool: Arc<std::sync::atomic::AtomicUsize>,
}

impl Charge {
    fn new(pool: &Arc<std::sync::atomic::AtomicUsize>, bytes: usize) -> Charge {
        pool.fetch_add(bytes, Ordering::AcqRel);
        Charge {
            bytes,
            pool: pool.clone(),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

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
    /// Turns a `spans` request logged as received back into rows at replay and when a
    /// follower reads the WAL (the OTLP receiver's decoder). A WAL that holds such records
    /// cannot be opened without it.
    pub request_decoder: Option<RequestDecoder>,
    /// The times an append may write ([`window`]); `None` accepts any time (tests, tools).
    pub ingest_window: Option<window::IngestWindow>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("location", &self.location)
            .field("wal_dir", &self.wal_dir)
            .field("fsync", &self.fsync)
            .field("read_only", &self.read_only)
            .field("observer", &self.observer.is_some())
            .field("request_decoder", &self.request_decoder.is_some())
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
            request_decoder: None,
            ingest_window: None,
        }
    }
}

/// What one append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReceipt {
    pub rows: usize,
    /// The WAL segment that holds the rows.
    pub segment: u64,
    /// Rows refused by the ingest window, and why (the rest were stored).
    pub refused: Option<window::Refused>,
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
    /// Rows refused by the ingest window.
    pub refused_window: AtomicU64,
    /// Corrupt WAL records skipped at replay (the records after them were kept).
    pub wal_records_skipped: AtomicU64,
    /// Hour compactions that failed (each hour then waits before it is tried again).
    pub compaction_failures: AtomicU64,
    /// Parquet reads that failed without showing corruption (not quarantined).
    pub transient_read_errors: AtomicU64,
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
    /// Bytes held outside the buffer that count against its limit: batches queued for the
    /// rollups, a compaction's working set.
    pub charged_bytes: usize,
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
    pub refused_window: u64,
    pub wal_records_skipped: u64,
    pub compaction_failures: u64,
    pub transient_read_errors: u64,
    /// The last such failure: file and error.
    pub last_read_error: Option<String>,
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
    /// Hours whose compaction failed: failures in a row, and when to try again.
    compaction_backoff: Mutex<HashMap<(Table, i64), (u32, Instant)>>,
    last_read_error: Mutex<Option<String>>,
    /// Bytes held outside the buffer that count against its limit ([`Charge`]).
    charged: Arc<std::sync::atomic::AtomicUsize>,
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
                obs(*t, b, Charge::new(&self.charged, b.get_array_memory_size()));
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
        if !cfg.read_only {
            // spill directories of compactions a crash interrupted
            for e in std::fs::read_dir(&cfg.wal_dir)?.flatten() {
                if e.file_name().to_string_lossy().starts_with(".compaction-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
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
            compaction_backoff: Mutex::new(HashMap::new()),
            last_read_error: Mutex::new(None),
            charged: Default::default(),
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
        append::write_positions_snapshot(&store.inner, &mut seg)?;
        for path in flushed_segments {
            let _ = std::fs::remove_file(&path);
        }
        let (tx, rx) = mpsc::channel(1024);
        let inner = store.inner.clone();
        let handle = std::thread::Builder::new()
            .name("meshscope-wal".into())
            .spawn(move || append::writer_thread(inner, rx, seg))?;
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
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ns());
    h.finish() as u32
}

/// Reads a Parquet object fully (for tools and tests).
pub async fn read_object(store: &Arc<dyn ObjectStore>, path: &str) -> Result<Bytes, StoreError> {
    Ok(store.get(&Path::from(path)).await?.bytes().await?)
}

#[cfg(test)]
mod tests;
