use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;

use arrow::array::{Array, AsArray};

use super::*;
use crate::envoy::access_log::{AccessLogFormat, ISTIO_TEXT_FORMAT, SAMPLE_LINES};
use meshscope_storage::Store;

/// An Istio text line with request id `id`.
fn line(id: &str) -> String {
    SAMPLE_LINES[0].replace("b1c1e2a4-7c2f-9a8e-b7e1-1a2b3c4d5e6f", id)
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> String {
    range
        .map(|i| line(&format!("{prefix}-{i}")) + "\n")
        .collect()
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

struct Setup {
    dir: tempfile::TempDir,
    store: Store,
    ingest: Arc<EnvoyIngest>,
    sources: Sources,
    stop_tx: tokio::sync::watch::Sender<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::local(dir.path().join("data"));
        cfg.flush_interval = Duration::from_secs(3600);
        cfg.group_commit = Duration::ZERO;
        let store = Store::open(cfg).await.unwrap();
        let ingest = EnvoyIngest::new(
            store.clone(),
            AccessLogFormat::compile(ISTIO_TEXT_FORMAT).unwrap(),
        );
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        fs::create_dir_all(dir.path().join("logs")).unwrap();
        Setup {
            dir,
            store,
            ingest,
            sources: Sources::default(),
            stop_tx,
            stop,
        }
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn config(&self) -> TailConfig {
        let mut c = TailConfig::new(
            vec![self.logs().join("*.log").to_string_lossy().into_owned()],
            self.store.config(),
        );
        c.rotate_grace = Duration::ZERO;
        c
    }

    fn tailer(&self, cfg: TailConfig) -> Tailer {
        Tailer::new(cfg, self.ingest.clone(), self.sources.clone())
    }

    /// request_id → how many rows have it.
    fn stored(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for b in self.store.snapshot(Table::Requests, None, None).batches {
            let ids = b.column_by_name("request_id").unwrap().as_string::<i32>();
            for i in 0..ids.len() {
                *out.entry(ids.value(i).to_string()).or_default() += 1;
            }
        }
        out
    }

    /// Asserts every id in `expected` is stored exactly once and nothing else is.
    fn assert_exactly(&self, expected: &[String]) {
        let stored = self.stored();
        let dupes: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dupes.is_empty(), "stored twice: {dupes:?}");
        let want: BTreeMap<String, usize> = expected.iter().map(|i| (i.clone(), 1)).collect();
        assert_eq!(stored, want);
    }
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn partial_last_line_waits_for_its_newline() {
    let s = Setup::new().await;
    let path = s.logs().join("a.log");
    let half = line("a-3");
    let (head, tail) = half.split_at(40);
    append(&path, &(lines("a", 0..3) + head));
    let mut t = s.tailer(s.config());
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("a", 0..3));
    append(&path, &format!("{tail}\n{}", line("a-4")));
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("a", 0..4));
    append(&path, "\n");
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("a", 0..5));
    let p = t.positions();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].2, p[0].3), (fs::metadata(&path).unwrap().len(), 5));
}

#[tokio::test]
async fn rotation_by_rename_reads_the_old_file_to_its_end_first() {
    let s = Setup::new().await;
    let path = s.logs().join("a.log");
    append(&path, &lines("r", 0..5));
    let mut t = s.tailer(s.config());
    t.poll(&s.stop).await.unwrap();
    // Written after the last read, then rotated: must still be read, before the new file.
    append(&path, &lines("r", 5..8));
    fs::rename(&path, s.logs().join("a.log.1")).unwrap();
    append(&path, &lines("r", 8..12));
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("r", 0..12));
    // The old file was read to its end and closed (grace 0); the new one is followed.
    let p = t.positions();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].1, FileId::of(&fs::metadata(&path).unwrap()));
    // Order: the old file's lines came first.
    let batches = s.store.snapshot(Table::Requests, None, None).batches;
    let order: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name("request_id").unwrap().as_string::<i32>();
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(order, ids("r", 0..12));
}

#[tokio::test]
async fn a_rotated_file_still_matched_by_the_glob_is_not_read_twice() {
    let s = Setup::new().await;
    let path = s.logs().join("a.log");
    append(&path, &lines("g", 0..4));
    let mut cfg = s.config();
    cfg.globs = vec![s.logs().join("a.log*").to_string_lossy().into_owned()];
    let mut t = s.tailer(cfg);
    t.poll(&s.stop).await.unwrap();
    fs::rename(&path, s.logs().join("a.log.1")).unwrap();
    append(&path, &lines("g", 4..6));
    t.poll(&s.stop).await.unwrap();
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("g", 0..6));
    assert_eq!(t.positions().len(), 2);
}

#[tokio::test]
async fn copytruncate_restarts_at_the_beginning() {
    let s = Setup::new().await;
    let path = s.logs().join("a.log");
    append(&path, &lines("c", 0..5));
    let mut t = s.tailer(s.config());
    t.poll(&s.stop).await.unwrap();
    // copytruncate: copy (to a name the glob does not match), then truncate in place.
    fs::copy(&path, s.logs().join("a.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, &lines("c", 5..7));
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("c", 0..7));
    // Truncated and written again past the old offset before the next read: the first
    // bytes differ, so it is still read from the start.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, &lines("c", 7..20));
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("c", 0..20));
    let st = s.sources.lock().unwrap().clone();
    assert_eq!(st.len(), 1);
    let f = st[0].file.as_ref().unwrap();
    assert_eq!((f.truncations, f.lines_stored, f.line_number), (2, 20, 13));
}

#[tokio::test]
async fn checkpoint_resume_neither_duplicates_nor_skips() {
    let s = Setup::new().await;
    let path = s.logs().join("a.log");
    append(&path, &lines("k", 0..5));
    let mut t = s.tailer(s.config());
    t.poll(&s.stop).await.unwrap();
    drop(t);
    let cp = checkpoint::load(&s.config().checkpoint_path).unwrap();
    assert_eq!(cp.len(), 1);
    assert_eq!(cp[0].line_number, 5);
    assert_eq!(cp[0].offset, fs::metadata(&path).unwrap().len());
    // Written while meshscope was down.
    append(&path, &lines("k", 5..9));
    let mut t = s.tailer(s.config());
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("k", 0..9));
    // Rejected lines keep their file line numbers after a restart.
    append(&path, "garbage\n");
    t.poll(&s.stop).await.unwrap();
    let st = s.sources.lock().unwrap().clone();
    let last = st[0].file.as_ref().unwrap().last_rejected.clone().unwrap();
    assert!(last.contains("line 10:"), "{last}");
}

/// request_id → how many rows have it, buffered and in Parquet.
async fn stored_everywhere(store: &Store) -> BTreeMap<String, usize> {
    let snap = store.snapshot(Table::Requests, None, None);
    let mut batches = snap.batches;
    for f in &snap.files {
        let bytes = meshscope_storage::read_object(&store.object_store(), &f.path)
            .await
            .unwrap();
        batches.extend(meshscope_storage::segment::decode_parquet(bytes).unwrap());
    }
    let mut out = BTreeMap::new();
    for b in batches {
        let ids = b.column_by_name("request_id").unwrap().as_string::<i32>();
        for i in 0..ids.len() {
            *out.entry(ids.value(i).to_string()).or_default() += 1;
        }
    }
    out
}

/// What a hard kill can leave: the chunk's rows are in the WAL, the checkpoint file was not
/// written after them (or is lost). The position logged with the rows makes the restart
/// resume after them, also when a flush deleted the WAL segment that held them.
#[tokio::test]
async fn a_hard_kill_between_an_append_and_the_checkpoint_file_stores_no_line_twice() {
    let mut s = Setup::new().await;
    let path = s.logs().join("a.log");
    let cfg = s.config();
    let once =
        |ids: Vec<String>| -> BTreeMap<String, usize> { ids.into_iter().map(|i| (i, 1)).collect() };
    // Kills a store without flushing and opens it again, as a restart after kill -9 does.
    async fn restart(s: &mut Setup) {
        s.store.halt().await;
        s.store = Store::open(s.store.config().clone()).await.unwrap();
        s.ingest = EnvoyIngest::new(
            s.store.clone(),
            AccessLogFormat::compile(ISTIO_TEXT_FORMAT).unwrap(),
        );
    }

    append(&path, &lines("h", 0..5));
    s.tailer(cfg.clone()).poll(&s.stop).await.unwrap();
    let first = fs::read(&cfg.checkpoint_path).unwrap();
    append(&path, &lines("h", 5..12));
    s.tailer(cfg.clone()).poll(&s.stop).await.unwrap();
    // The kill came after the second append and before its checkpoint.
    fs::write(&cfg.checkpoint_path, &first).unwrap();
    restart(&mut s).await;
    assert_eq!(
        checkpoint::load(&cfg.checkpoint_path).unwrap()[0].line_number,
        5
    );
    append(&path, &lines("h", 12..15));
    s.tailer(cfg.clone()).poll(&s.stop).await.unwrap();
    assert_eq!(stored_everywhere(&s.store).await, once(ids("h", 0..15)));
    let cp = checkpoint::load(&cfg.checkpoint_path).unwrap();
    assert_eq!((cp[0].line_number, cp[0].seq), (15, 3));

    // A flush deletes the segments that held the positions; the next segment starts with
    // all of them. Without the checkpoint file at all, nothing is read again.
    s.store.flush().await.unwrap();
    fs::remove_file(&cfg.checkpoint_path).unwrap();
    restart(&mut s).await;
    // Twice: replay of a segment that holds only positions keeps them too.
    restart(&mut s).await;
    append(&path, &lines("h", 15..16));
    s.tailer(cfg.clone()).poll(&s.stop).await.unwrap();
    assert_eq!(stored_everywhere(&s.store).await, once(ids("h", 0..16)));

    // A truncated file starts over: its next position is newer (by its change count) even
    // though its offset is smaller than the one the checkpoint file holds.
    let stale = fs::read(&cfg.checkpoint_path).unwrap();
    fs::write(&path, lines("t", 0..2)).unwrap();
    s.tailer(cfg.clone()).poll(&s.stop).await.unwrap();
    fs::write(&cfg.checkpoint_path, &stale).unwrap();
    restart(&mut s).await;
    append(&path, &lines("t", 2..3));
    s.tailer(cfg.clone()).poll(&s.stop).await.unwrap();
    let mut want = ids("h", 0..16);
    want.extend(ids("t", 0..3));
    assert_eq!(stored_everywhere(&s.store).await, once(want));
}

#[tokio::test]
async fn a_reused_inode_with_other_content_is_read_from_the_start() {
    let s = Setup::new().await;
    let path = s.logs().join("a.log");
    append(&path, &lines("u", 0..5));
    let cfg = s.config();
    let mut t = s.tailer(cfg.clone());
    t.poll(&s.stop).await.unwrap();
    drop(t);
    // Same inode, different first bytes, longer than the checkpointed offset.
    let mut cp = checkpoint::load(&cfg.checkpoint_path).unwrap();
    fs::write(&path, lines("v", 0..8)).unwrap();
    assert_eq!(cp[0].id(), FileId::of(&fs::metadata(&path).unwrap()));
    // And a checkpoint for a file that no longer exists is dropped.
    cp.push(FileCheckpoint {
        path: "/nonexistent.log".into(),
        dev: 1,
        inode: 1,
        offset: 10,
        line_number: 1,
        fingerprint: Fingerprint::default(),
        seq: 0,
    });
    checkpoint::save(&cfg.checkpoint_path, &cp).unwrap();
    let mut t = s.tailer(cfg.clone());
    t.poll(&s.stop).await.unwrap();
    let mut want = ids("u", 0..5);
    want.extend(ids("v", 0..8));
    s.assert_exactly(&want);
    assert_eq!(checkpoint::load(&cfg.checkpoint_path).unwrap().len(), 1);
}

/// `/var/log/containers/<pod>_<ns>_<container>-<id>.log`
fn cri_name(pod: &str) -> String {
    format!(
        "{pod}_default_istio-proxy-{}.log",
        "0123456789abcdef".repeat(4)
    )
}

fn cri(t: usize, tag: &str, text: &str) -> String {
    format!(
        "2026-11-26T01:02:{:02}.000000001Z stdout {tag} {text}\n",
        t % 60
    )
}

#[tokio::test]
async fn cri_files_name_the_proxy_and_split_lines_are_never_cut() {
    let s = Setup::new().await;
    let path = s.logs().join(cri_name("productpage-v1-6b7f9c8d4-x2x9z"));
    // Every other line split by the runtime into three pieces, with stderr noise between.
    let mut text = String::new();
    for i in 0..30 {
        let l = line(&format!("p-{i}"));
        if i % 2 == 0 {
            text += &cri(i, "F", &l);
        } else {
            text += &cri(i, "P", &l[..30]);
            text += &format!("2026-11-26T01:02:03Z stderr F warming up {i}\n");
            text += &cri(i, "P", &l[30..100]);
            text += &cri(i, "F", &l[100..]);
        }
    }
    append(&path, &text);
    let mut cfg = s.config();
    // Small chunks so that chunk ends fall between the pieces of a line.
    cfg.max_chunk_lines = 3;
    let mut t = s.tailer(cfg);
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("p", 0..30));
    let b = &s.store.snapshot(Table::Requests, None, None).batches[0];
    let proxy = b.column_by_name("proxy").unwrap().as_string::<i32>();
    assert_eq!(proxy.value(0), "productpage-v1-6b7f9c8d4-x2x9z");
    let source = b.column_by_name("log_source").unwrap().as_string::<i32>();
    assert_eq!(source.value(0), path.to_string_lossy());
    // The stderr lines are not access-log lines: rejected, each with its own number.
    let st = s.sources.lock().unwrap().clone();
    let f = st[0].file.as_ref().unwrap();
    assert_eq!((f.lines_stored, f.lines_rejected), (30, 15));
    assert_eq!(
        st[0].proxy.as_deref(),
        Some("productpage-v1-6b7f9c8d4-x2x9z")
    );
}

#[tokio::test]
async fn a_split_line_waits_for_its_last_piece() {
    let s = Setup::new().await;
    let path = s.logs().join(cri_name("reviews-v2-5b64f47978-abcde"));
    let l = line("w-1");
    append(&path, &(cri(0, "F", &line("w-0")) + &cri(1, "P", &l[..50])));
    let mut t = s.tailer(s.config());
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("w", 0..1));
    // A restart while the line is half written must not lose its first piece.
    drop(t);
    let mut t = s.tailer(s.config());
    append(&path, &cri(2, "F", &l[50..]));
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("w", 0..2));
}

#[tokio::test]
async fn docker_json_files() {
    let s = Setup::new().await;
    let path = s.logs().join(cri_name("ratings-v1-7dc98c7588-qwert"));
    let mut text = String::new();
    for i in 0..4 {
        text += &serde_json::json!({"log": format!("{}\n", line(&format!("d-{i}"))), "stream": "stdout", "time": "2026-11-26T01:02:03.5Z"}).to_string();
        text += "\n";
    }
    append(&path, &text);
    let mut t = s.tailer(s.config());
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("d", 0..4));
}

#[tokio::test]
async fn bad_lines_are_counted_by_file_line_and_the_good_ones_stored() {
    let s = Setup::new().await;
    let path = s.logs().join("a.log");
    let mut text = String::new();
    for i in 0..20 {
        text += &line(&format!("b-{i}"));
        text += "\n";
        if i % 5 == 4 {
            text += "not an access log line\n";
        }
    }
    // An overlong line (longer than a chunk) in the middle.
    text += &"x".repeat(3000);
    text += "\n";
    text += &line("b-20");
    text += "\n";
    append(&path, &text);
    let mut cfg = s.config();
    cfg.max_chunk_bytes = 2048;
    let mut t = s.tailer(cfg);
    t.poll(&s.stop).await.unwrap();
    s.assert_exactly(&ids("b", 0..21));
    let st = s.sources.lock().unwrap().clone();
    let f = st[0].file.as_ref().unwrap();
    assert_eq!(
        (f.lines_stored, f.lines_rejected, f.line_number),
        (21, 5, 26)
    );
    let last = f.last_rejected.as_deref().unwrap();
    assert!(
        last.contains("line 25:") && last.contains("3000 bytes"),
        "{last}"
    );
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(s.ingest.accesslog_files.rejected.load(Relaxed), 5);
    assert_eq!(s.ingest.accesslog_files.stored.load(Relaxed), 21);
    let mut m = String::new();
    write_metrics(&s.sources, &mut m);
    assert!(m.contains("meshscope_access_log_files 1"), "{m}");
    assert!(
        m.contains("meshscope_access_log_file_lines_rejected_total{path="),
        "{m}"
    );
}

#[tokio::test]
async fn overload_retries_the_same_lines() {
    let s = Setup::new().await;
    // A store whose buffer limit is tiny: the second append is refused until a flush.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::local(dir.path().join("data"));
    cfg.flush_interval = Duration::from_secs(3600);
    cfg.group_commit = Duration::ZERO;
    cfg.max_buffer_bytes = 1;
    let store = Store::open(cfg).await.unwrap();
    let ingest = EnvoyIngest::new(
        store.clone(),
        AccessLogFormat::compile(ISTIO_TEXT_FORMAT).unwrap(),
    );
    let path = s.logs().join("a.log");
    append(&path, &lines("o", 0..6));
    let mut tc = s.config();
    tc.max_chunk_lines = 2;
    tc.checkpoint_path = dir.path().join("cp.json");
    let mut t = Tailer::new(tc, ingest, Sources::default());
    let stop = s.stop.clone();
    // Flush in the background so the refused appends succeed on retry.
    let flusher = store.clone();
    let bg = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = flusher.flush().await;
        }
    });
    tokio::time::timeout(Duration::from_secs(30), t.poll(&stop))
        .await
        .unwrap()
        .unwrap();
    bg.abort();
    assert!(
        store
            .stats()
            .rejected_overload
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    let snap = store.snapshot(Table::Requests, None, None);
    let rows: u64 = snap
        .batches
        .iter()
        .map(|b| b.num_rows() as u64)
        .sum::<u64>()
        + snap.files.iter().map(|f| f.rows).sum::<u64>();
    assert_eq!(rows, 6);
    let _ = s.stop_tx.send(true);
}

#[test]
fn chunks_stop_at_whole_lines_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.log");
    fs::write(&path, "a\nbb\nccc\ndd").unwrap();
    let f = File::open(&path).unwrap();
    let lim = |b, l| ChunkLimits {
        max_bytes: b,
        max_lines: l,
    };
    let start = Position::default();
    let Chunk::Lines { text, end } = file::read_chunk(&f, start, lim(100, 100)).unwrap() else {
        panic!()
    };
    assert_eq!(
        (text.as_slice(), end),
        (&b"a\nbb\nccc\n"[..], Position { offset: 9, line: 3 })
    );
    let Chunk::Lines { text, end } = file::read_chunk(&f, start, lim(100, 2)).unwrap() else {
        panic!()
    };
    assert_eq!((text.as_slice(), end.line), (&b"a\nbb\n"[..], 2));
    let Chunk::Lines { text, .. } = file::read_chunk(&f, start, lim(6, 100)).unwrap() else {
        panic!()
    };
    assert_eq!(text, b"a\nbb\n");
    assert_eq!(
        file::read_chunk(&f, Position { offset: 9, line: 3 }, lim(100, 100)).unwrap(),
        Chunk::Nothing
    );
    assert_eq!(
        file::read_chunk(&f, Position { offset: 5, line: 2 }, lim(2, 100)).unwrap(),
        Chunk::Overlong {
            bytes: 3,
            end: Position { offset: 9, line: 3 }
        }
    );
}

#[test]
fn checkpoint_path_is_under_the_data_dir_or_the_wal_dir() {
    let local = StoreConfig::local("/var/lib/meshscope");
    assert_eq!(
        checkpoint_path(&local),
        Path::new("/var/lib/meshscope/checkpoints/access_log.json")
    );
    let mut s3 = StoreConfig::local("/x");
    s3.location = "s3://bucket/prefix".into();
    s3.wal_dir = "/wal".into();
    assert_eq!(
        checkpoint_path(&s3),
        Path::new("/wal/checkpoints/access_log.json")
    );
    assert!(validate_glob("/var/log/containers/*istio-proxy*.log").is_ok());
    assert!(validate_glob("/var/log/[").is_err());
    assert!(validate_glob(" ").is_err());
}
