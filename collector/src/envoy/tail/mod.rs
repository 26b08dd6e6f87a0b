//! Tailing Envoy access-log files (`--access-log <glob>`, repeatable) into `requests` rows.
//!
//! Every poll (1 s) the globs are expanded and each matching regular file is followed by its
//! identity (device, inode), not its name:
//! - **Rotation by rename**: the old file keeps its open descriptor and is read to its end
//!   before the new file at the path; it is closed once it has not grown for
//!   [`TailConfig::rotate_grace`] and no glob matches it any more.
//! - **Truncation** (copytruncate): a file shorter than the position, or whose first bytes
//!   changed, is read again from the start.
//! - **Partial lines**: a last line without its newline, and the pieces of a line split by
//!   the container runtime, wait until the line is complete.
//!
//! Lines are read in chunks of at most [`TailConfig::max_chunk_bytes`] /
//! [`TailConfig::max_chunk_lines`], parsed like the push endpoint does (Istio text or JSON,
//! bare or wrapped by CRI or Docker; identity from `/var/log/containers/<pod>_<ns>_<container>-<id>.log`
//! names), and appended. Bad lines are logged and counted with their file and line number;
//! the good lines around them are stored.
//!
//! **Checkpoints.** Each chunk's rows are appended together with the file's position after
//! the chunk (identity, offset, line number, a fingerprint of the first bytes and a change
//! count), in one WAL record (`StoreWriter::append_at`): a crash keeps both or neither. After the
//! append returns, the position of every file is also written to
//! `<data-dir>/checkpoints/access_log.json`, which covers chunks of rejected lines only (no
//! rows to log) and is what people read. A restart takes, per file, the newer of the two
//! ([`checkpoint::merge_store_positions`]) and resumes each file whose identity and
//! fingerprint match; a file with neither is read from its beginning, so no line is ever
//! skipped. Back-pressure from storage retries the same lines later. So a hard kill between
//! an append and the checkpoint file's write no longer reads the chunk again: the WAL has its
//! position.

pub mod checkpoint;
pub mod file;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshscope_schemas::Table;
use meshscope_schemas::rows::requests_batch;
use tracing::{debug, info, warn};

use super::access_log::{
    ContainerLineJoiner, ProxyIdentity, RejectedLine, parse_container_lines,
    parse_container_log_path,
};
use super::push::EnvoyIngest;
pub use super::sources::FileProgress;
use super::sources::{SourceStatus, Sources};
use checkpoint::FileCheckpoint;
use file::{Chunk, ChunkLimits, FileId, Fingerprint, Position, Reset};
use meshscope_storage::{StoreConfig, StoreError, StoreWriter};

/// What `/api/v1/status` shows in `sources` for this kind of source.
pub const SOURCE_KIND: &str = "access-log-file";

/// Rejected lines logged per chunk; the rest are counted.
const LOGGED_REJECTS_PER_CHUNK: usize = 5;

#[derive(Debug, Clone)]
pub struct TailConfig {
    pub globs: Vec<String>,
    /// The checkpoint file, see [`checkpoint_path`].
    pub checkpoint_path: PathBuf,
    /// How often globs are expanded and files checked for new lines.
    pub poll_interval: Duration,
    /// A file no glob matches any more (rotated away or deleted) is closed once it has not
    /// grown for this long.
    pub rotate_grace: Duration,
    pub max_chunk_bytes: usize,
    pub max_chunk_lines: usize,
}

impl TailConfig {
    pub fn new(globs: Vec<String>, store: &StoreConfig) -> TailConfig {
        TailConfig {
            globs,
            checkpoint_path: checkpoint_path(store),
            poll_interval: Duration::from_secs(1),
            rotate_grace: Duration::from_secs(5),
            max_chunk_bytes: 4 << 20,
            max_chunk_lines: 50_000,
        }
    }
}

/// `<data-dir>/checkpoints/access_log.json`; under the WAL directory when the data
/// directory is an object-store URL (checkpoints need a local disk, as the WAL does).
pub fn checkpoint_path(store: &StoreConfig) -> PathBuf {
    let dir = if store.location.contains("://") {
        store.wal_dir.join("checkpoints")
    } else {
        Path::new(&store.location).join("checkpoints")
    };
    dir.join("access_log.json")
}

/// Checks a `--access-log` glob.
pub fn validate_glob(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() {
        return Err("the glob is empty".into());
    }
    glob::Pattern::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("{pattern:?} is not a valid glob: {e}"))
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("the store is closed")]
    Closed,
}

/// One file being followed.
struct Followed {
    id: FileId,
    file: Arc<File>,
    /// Where it was found first: `log_source` of its rows and the name in messages.
    source: String,
    proxy: ProxyIdentity,
    pos: Position,
    fingerprint: Fingerprint,
    /// Whether a glob matched it in the last expansion.
    at_path: bool,
    /// When it was last seen growing (for closing rotated files).
    last_growth: Instant,
    progress: FileProgress,
    last_error: Option<String>,
    last_success_unix: Option<u64>,
    chunks: u64,
    /// Position changes so far ([`FileCheckpoint::seq`]).
    seq: u64,
}

impl Followed {
    fn checkpoint(&self) -> FileCheckpoint {
        FileCheckpoint {
            path: self.source.clone(),
            dev: self.id.dev,
            inode: self.id.inode,
            offset: self.pos.offset,
            line_number: self.pos.line,
            fingerprint: self.fingerprint,
            seq: self.seq,
        }
    }

    fn status(&self) -> SourceStatus {
        let mut progress = self.progress.clone();
        progress.dev = self.id.dev;
        progress.inode = self.id.inode;
        progress.offset = self.pos.offset;
        progress.line_number = self.pos.line;
        progress.rotated = !self.at_path;
        SourceStatus {
            kind: SOURCE_KIND,
            url: self.source.clone(),
            proxy: self.proxy.pod.clone(),
            scrapes: self.chunks,
            samples_stored: progress.lines_stored,
            last_success_unix: self.last_success_unix,
            last_error: self.last_error.clone(),
            file: Some(progress),
        }
    }
}

/// The tailer: owns the followed files and the checkpoint.
pub struct Tailer {
    cfg: TailConfig,
    ingest: Arc<EnvoyIngest>,
    sources: Sources,
    files: Vec<Followed>,
    /// Checkpoints loaded at start and not yet matched to a file.
    resume: Vec<FileCheckpoint>,
    /// Glob errors already logged (logged once each).
    logged: HashSet<String>,
    checkpoint_dirty: bool,
}

/// Result of one step on one file.
enum Step {
    /// Nothing new.
    Idle,
    /// Lines were stored or rejected.
    Progress,
}

impl Tailer {
    /// Loads the checkpoint. An unreadable checkpoint is moved aside with an error in the
    /// log, and files are read from their beginning (lines may be stored twice, none lost).
    pub fn new(cfg: TailConfig, ingest: Arc<EnvoyIngest>, sources: Sources) -> Tailer {
        let mut resume = match checkpoint::load(&cfg.checkpoint_path) {
            Ok(r) => r,
            Err(e) => {
                let aside = checkpoint::move_aside(&cfg.checkpoint_path);
                warn!(error = %e, moved_to = ?aside.ok(), "ignoring the access-log checkpoint; files are read from their beginning");
                Vec::new()
            }
        };
        checkpoint::merge_store_positions(&mut resume, &ingest.store.positions());
        Tailer {
            cfg,
            ingest,
            sources,
            files: Vec::new(),
            resume,
            logged: HashSet::new(),
            checkpoint_dirty: false,
        }
    }

    /// Polls every `poll_interval` until `stop` flips; the chunk in hand is finished and
    /// checkpointed first.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            if let Err(e) = self.poll(&stop).await {
                warn!(error = %e, "access-log tailer stopped");
                break;
            }
        }
        self.save_checkpoint().await;
    }

    /// One pass: expand the globs, then read every file to its end (one chunk per file in
    /// turn), unless `stop` flips.
    pub async fn poll(
        &mut self,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), TailError> {
        self.discover();
        // Rotated files first: their lines are older than those of the file now at the path.
        self.files
            .sort_by(|a, b| (a.at_path, &a.source, a.id).cmp(&(b.at_path, &b.source, b.id)));
        loop {
            let mut progress = false;
            for i in 0..self.files.len() {
                if *stop.borrow() {
                    return Ok(());
                }
                if let Step::Progress = self.step(i, stop).await? {
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        self.close_finished();
        if self.checkpoint_dirty {
            self.save_checkpoint().await;
        }
        self.publish();
        Ok(())
    }

    /// Expands the globs: opens files not followed yet, marks followed ones still matched.
    fn discover(&mut self) {
        let mut seen = HashSet::new();
        for f in &mut self.files {
            f.at_path = false;
        }
        for pattern in self.cfg.globs.clone() {
            let paths = match glob::glob(&pattern) {
                Ok(p) => p,
                Err(e) => {
                    self.log_once(format!("--access-log {pattern:?}: {e}"));
                    continue;
                }
            };
            for entry in paths {
                let path = match entry {
                    Ok(p) => p,
                    Err(e) => {
                        self.log_once(format!("--access-log {pattern:?}: {e}"));
                        continue;
                    }
                };
                // Follows symlinks (/var/log/containers/* point into /var/log/pods).
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                let id = FileId::of(&meta);
                if !seen.insert(id) {
                    continue;
                }
                if let Some(f) = self.files.iter_mut().find(|f| f.id == id) {
                    f.at_path = true;
                    continue;
                }
                match self.open(&path) {
                    Ok(f) => self.files.push(f),
                    Err(e) => self.log_once(format!("opening {}: {e}", path.display())),
                }
            }
        }
        // Checkpoints of files that are gone are forgotten after the first expansion.
        if !self.resume.is_empty() {
            for c in self.resume.drain(..) {
                self.ingest.store.forget_position(&c.store_key());
            }
            self.checkpoint_dirty = true;
        }
    }

    fn log_once(&mut self, msg: String) {
        if self.logged.insert(msg.clone()) {
            warn!("{msg}");
        }
    }

    /// Opens a newly matched file and decides where to start: at its checkpoint if the
    /// identity and first bytes match, else at the beginning.
    fn open(&mut self, path: &Path) -> std::io::Result<Followed> {
        let file = File::open(path)?;
        // The identity of what was opened, not of what the path names a moment later.
        let id = FileId::of(&file.metadata()?);
        let source = path.to_string_lossy().into_owned();
        let size = file.metadata()?.len();
        let head = file::read_head(&file)?;
        let mut pos = Position::default();
        let mut fingerprint = Fingerprint::default();
        let mut seq = 0;
        if let Some(i) = self.resume.iter().position(|c| c.id() == id) {
            let c = self.resume.swap_remove(i);
            // Newer than anything logged for the inode before.
            seq = c.seq + 1;
            if c.fingerprint.matches(&head) && c.offset <= size {
                pos = c.position();
                fingerprint = c.fingerprint;
                seq = c.seq;
                info!(file = %source, offset = pos.offset, line = pos.line, "resuming an access-log file at its checkpoint");
            } else {
                info!(file = %source, "an access-log file changed since its checkpoint; reading it from the start");
            }
        } else {
            info!(file = %source, size, "following a new access-log file from its start");
        }
        let proxy = parse_container_log_path(&source)
            .map(|c| c.proxy_identity())
            .unwrap_or_default();
        self.ingest.learn(&proxy);
        Ok(Followed {
            id,
            file: Arc::new(file),
            source,
            proxy,
            pos,
            fingerprint,
            at_path: true,
            last_growth: Instant::now(),
            progress: FileProgress {
                size,
                ..Default::default()
            },
            last_error: None,
            last_success_unix: None,
            chunks: 0,
            seq,
        })
    }

    /// Reads, parses and stores one chunk of file `i`.
    async fn step(
        &mut self,
        i: usize,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Step, TailError> {
        let f = &self.files[i];
        let (file, pos, fingerprint) = (f.file.clone(), f.pos, f.fingerprint);
        let (proxy, source) = (f.proxy.clone(), f.source.clone());
        let ingest = self.ingest.clone();
        let limits = ChunkLimits {
            max_bytes: self.cfg.max_chunk_bytes,
            max_lines: self.cfg.max_chunk_lines,
        };
        let prepared = tokio::task::spawn_blocking(move || {
            prepare(&file, pos, fingerprint, limits, &ingest, &proxy, &source)
        })
        .await;
        let f = &mut self.files[i];
        let prepared = match prepared {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                let msg = format!("reading {}: {e}", f.source);
                if f.last_error.as_deref() != Some(msg.as_str()) {
                    warn!("{msg}");
                }
                f.last_error = Some(msg);
                return Ok(Step::Idle);
            }
            Err(e) => {
                f.last_error = Some(format!("reading {}: task failed: {e}", f.source));
                return Ok(Step::Idle);
            }
        };
        f.progress.size = prepared.size;
        if let Some(reset) = prepared.reset {
            warn!(file = %f.source, offset = f.pos.offset, "access-log file {reset}; reading it from the start");
            f.progress.truncations += 1;
            f.pos = Position::default();
            f.seq += 1;
            self.checkpoint_dirty = true;
        }
        if f.fingerprint != prepared.fingerprint {
            f.fingerprint = prepared.fingerprint;
            self.checkpoint_dirty = true;
        }
        let Some(chunk) = prepared.chunk else {
            return Ok(Step::Idle);
        };
        f.last_growth = Instant::now();
        // Where the file stands once the chunk is stored, logged with its rows.
        let after = FileCheckpoint {
            offset: chunk.end.offset,
            line_number: chunk.end.line,
            seq: f.seq + 1,
            ..f.checkpoint()
        };
        let stored = match chunk.batch {
            Some(batch) => {
                let at = vec![(
                    after.store_key(),
                    serde_json::to_string(&after).unwrap_or_default(),
                )];
                match append_retrying(&self.ingest.store, batch, at, &f.source, stop).await {
                    Ok(Some(n)) => n,
                    // Stopping: the lines stay unread and are read again after a restart.
                    Ok(None) => return Ok(Step::Idle),
                    Err(e) => return Err(e),
                }
            }
            None => 0,
        };
        let f = &mut self.files[i];
        f.pos = chunk.end;
        f.seq += 1;
        f.chunks += 1;
        f.progress.lines_stored += stored as u64;
        f.progress.lines_rejected += chunk.rejected.len() as u64;
        f.last_success_unix = unix_now();
        f.last_error = None;
        self.ingest.accesslog_files.add(
            stored + chunk.rejected.len(),
            stored,
            chunk.rejected.len(),
        );
        if let Some(last) = chunk.rejected.last() {
            f.progress.last_rejected =
                Some(format!("{}: line {}: {}", f.source, last.line, last.reason));
            for r in chunk.rejected.iter().take(LOGGED_REJECTS_PER_CHUNK) {
                warn!(file = %f.source, line = r.line, reason = %r.reason, "access-log line rejected");
            }
            if chunk.rejected.len() > LOGGED_REJECTS_PER_CHUNK {
                warn!(file = %f.source, more = chunk.rejected.len() - LOGGED_REJECTS_PER_CHUNK, "more access-log lines rejected in this read");
            }
        }
        debug!(file = %f.source, stored, rejected = chunk.rejected.len(), offset = f.pos.offset, "access-log chunk stored");
        self.checkpoint_dirty = true;
        // The checkpoint follows every append: it must never be behind what is stored by
        // more than the chunk in flight.
        self.save_checkpoint().await;
        self.publish();
        Ok(Step::Progress)
    }

    /// Closes rotated or deleted files that are read to their end and no longer grow.
    fn close_finished(&mut self) {
        let grace = self.cfg.rotate_grace;
        let before = self.files.len();
        self.files.retain(|f| {
            let done = !f.at_path
                && f.last_growth.elapsed() >= grace
                && f.pos.offset >= f.progress.size;
            if done {
                info!(file = %f.source, inode = f.id.inode, lines = f.pos.line, "finished a rotated access-log file");
                self.ingest.store.forget_position(&checkpoint::store_key(f.id));
            }
            !done
        });
        if self.files.len() != before {
            self.checkpoint_dirty = true;
        }
    }

    async fn save_checkpoint(&mut self) {
        if !self.checkpoint_dirty {
            return;
        }
        let path = self.cfg.checkpoint_path.clone();
        let mut all: Vec<FileCheckpoint> = self.files.iter().map(Followed::checkpoint).collect();
        // Checkpoints not matched yet (before the first expansion) are kept.
        all.extend(self.resume.iter().cloned());
        match tokio::task::spawn_blocking(move || checkpoint::save(&path, &all)).await {
            Ok(Ok(())) => self.checkpoint_dirty = false,
            Ok(Err(e)) => {
                warn!(error = %e, "could not save the access-log checkpoint; retrying after the next read")
            }
            Err(e) => warn!(error = %e, "saving the access-log checkpoint failed"),
        }
    }

    /// Shows every followed file in `sources`. Entries of other kinds keep their places
    /// (the scrapers address theirs by index); this kind's entries are replaced at the end.
    fn publish(&self) {
        let mut all = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|s| s.kind != SOURCE_KIND);
        all.extend(self.files.iter().map(Followed::status));
    }

    /// Positions of the followed files (for tests).
    pub fn positions(&self) -> Vec<(String, FileId, u64, u64)> {
        self.files
            .iter()
            .map(|f| (f.source.clone(), f.id, f.pos.offset, f.pos.line))
            .collect()
    }
}

/// Appends, retrying while storage pushes back or fails for a while; `None` when `stop`
/// flipped first. Only a closed store ends the tailer.
async fn append_retrying(
    store: &StoreWriter,
    batch: arrow::array::RecordBatch,
    positions: Vec<(String, String)>,
    source: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<usize>, TailError> {
    let mut logged = false;
    loop {
        let wait = match store
            .append_at(Table::Requests, batch.clone(), positions.clone())
            .await
        {
            Ok(r) => {
                if let Some(refused) = &r.refused {
                    warn!(file = %source, rows = refused.rows, reason = %refused.reason, "access-log lines refused by the ingest window");
                }
                return Ok(Some(r.rows));
            }
            Err(StoreError::Closed) => return Err(TailError::Closed),
            Err(StoreError::Overloaded(_, retry)) => retry,
            Err(e) => {
                if !logged {
                    warn!(file = %source, error = %e, "storing access-log lines failed; retrying");
                    logged = true;
                }
                Duration::from_secs(1)
            }
        };
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
    }
}

fn unix_now() -> Option<u64> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// One chunk, parsed.
struct ParsedChunk {
    batch: Option<arrow::array::RecordBatch>,
    rejected: Vec<RejectedLine>,
    end: Position,
}

struct Prepared {
    size: u64,
    reset: Option<Reset>,
    fingerprint: Fingerprint,
    chunk: Option<ParsedChunk>,
}

/// Checks the file for truncation, reads the next chunk and parses it (blocking).
fn prepare(
    file: &File,
    pos: Position,
    fingerprint: Fingerprint,
    limits: ChunkLimits,
    ingest: &EnvoyIngest,
    proxy: &ProxyIdentity,
    source: &str,
) -> std::io::Result<Prepared> {
    let (pos, fingerprint, reset) = file::check(file, pos, fingerprint)?;
    let size = file.metadata()?.len();
    let chunk = match file::read_chunk(file, pos, limits)? {
        Chunk::Nothing => None,
        Chunk::Overlong { bytes, end } => Some(ParsedChunk {
            batch: None,
            rejected: vec![RejectedLine {
                line: end.line as usize,
                reason: format!(
                    "line is {bytes} bytes, over the {}-byte limit",
                    limits.max_bytes
                ),
            }],
            end,
        }),
        Chunk::Lines { text, end } => {
            // Invalid UTF-8 is replaced (U+FFFD) rather than costing the whole chunk.
            let text = String::from_utf8_lossy(&text);
            let book = ingest.book.read().unwrap_or_else(|e| e.into_inner());
            let mut joiner = ContainerLineJoiner::new();
            let mut out =
                parse_container_lines(&ingest.format, &text, &mut joiner, proxy, &book, source);
            drop(book);
            for r in &mut out.rejected {
                r.line += pos.line as usize;
            }
            if joiner.has_pending() {
                // Only when the pieces of one line overflow a whole chunk (see read_chunk).
                out.rejected.push(RejectedLine {
                    line: end.line as usize,
                    reason: format!(
                        "a line split by the container runtime is longer than {} bytes",
                        limits.max_bytes
                    ),
                });
            }
            let batch = if out.rows.is_empty() {
                None
            } else {
                Some(requests_batch(&out.rows).map_err(std::io::Error::other)?)
            };
            Some(ParsedChunk {
                batch,
                rejected: out.rejected,
                end,
            })
        }
    };
    Ok(Prepared {
        size,
        reset,
        fingerprint,
        chunk,
    })
}

/// Per-file gauges and counters for `/metrics` (Prometheus text), from `sources`.
pub fn write_metrics(sources: &Sources, out: &mut String) {
    let all = sources.lock().unwrap_or_else(|e| e.into_inner());
    let files: Vec<_> = all
        .iter()
        .filter_map(|s| s.file.as_ref().map(|f| (s, f)))
        .collect();
    let _ = writeln!(
        out,
        "# HELP meshscope_access_log_files Access-log files followed.\n# TYPE meshscope_access_log_files gauge\nmeshscope_access_log_files {}",
        files.len()
    );
    // (name, type, help, value)
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&FileProgress) -> u64,
    );
    let series: [Series; 4] = [
        (
            "meshscope_access_log_file_offset_bytes",
            "gauge",
            "Bytes of the file read and stored.",
            |f| f.offset,
        ),
        (
            "meshscope_access_log_file_size_bytes",
            "gauge",
            "Size of the file at the last read.",
            |f| f.size,
        ),
        (
            "meshscope_access_log_file_lines_stored_total",
            "counter",
            "Lines of the file stored as requests rows.",
            |f| f.lines_stored,
        ),
        (
            "meshscope_access_log_file_lines_rejected_total",
            "counter",
            "Lines of the file rejected.",
            |f| f.lines_rejected,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (s, f) in &files {
            let _ = writeln!(
                out,
                "{name}{{path=\"{}\",inode=\"{}\"}} {}",
                escape_label(&s.url),
                f.inode,
                value(f)
            );
        }
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Starts the tailer task.
pub fn spawn_tailer(
    ingest: Arc<EnvoyIngest>,
    cfg: TailConfig,
    sources: Sources,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    info!(globs = ?cfg.globs, checkpoint = %cfg.checkpoint_path.display(), "tailing access-log files");
    let tailer = Tailer::new(cfg, ingest, sources);
    tokio::spawn(tailer.run(stop))
}
