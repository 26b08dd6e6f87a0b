use super::*;
use meshscope_schemas::rows::{StatSampleRow, stat_samples_batch};

fn sample(i: usize, t_ns: i64) -> StatSampleRow {
    StatSampleRow {
        time_unix_nano: t_ns,
        proxy: format!("p{i}"),
        metric: "envoy_cluster_upstream_rq_pending_overflow".into(),
        value: i as f64,
        kind: "counter".into(),
        ..Default::default()
    }
}

fn cfg(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::local(dir);
    c.flush_interval = Duration::from_secs(3600);
    c.group_commit = Duration::ZERO;
    c
}

fn rows(snap: &Snapshot) -> usize {
    snap.batches.iter().map(|b| b.num_rows()).sum::<usize>()
        + snap.files.iter().map(|f| f.rows as usize).sum::<usize>()
}

#[tokio::test]
async fn append_flush_replay_and_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_764_118_800_000_000_000i64; // an hour boundary
    {
        let store = Store::open(cfg(dir.path())).await.unwrap();
        let b = stat_samples_batch(
            &(0..10)
                .map(|i| sample(i, t0 + i as i64))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        store.append(Table::StatSamples, b).await.unwrap();
        assert_eq!(rows(&store.snapshot(Table::StatSamples, None, None)), 10);
        assert_eq!(store.flush().await.unwrap(), 10);
        let snap = store.snapshot(Table::StatSamples, None, None);
        assert_eq!((snap.batches.len(), snap.files.len()), (0, 1));
        // spans two hours: split into two records
        let b = stat_samples_batch(&[sample(1, t0 + 5), sample(2, t0 + HOUR + 5)]).unwrap();
        store.append(Table::StatSamples, b).await.unwrap();
        // no flush: stop as a crash would (the WAL holds the last two rows)
        store.halt().await;
    }
    // corrupt the tail: append garbage to the newest segment
    let wal_dir = dir.path().join("wal");
    let last = *wal::list_segments(&wal_dir).unwrap().last().unwrap();
    let path = wal::segment_path(&wal_dir, last);
    let mut bytes = std::fs::read(&path).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    std::fs::write(&path, &bytes).unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    assert!(matches!(
        Store::open(cfg(dir.path())).await,
        Err(StoreError::Locked(_))
    ));
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, good);
    assert_eq!(rows(&store.snapshot(Table::StatSamples, None, None)), 12);
    assert_eq!(
        rows(&store.snapshot(Table::StatSamples, Some(t0 + HOUR), None)),
        1
    );
}

const HOUR: i64 = manifest::HOUR_NS;

/// Positions are logged in the rows' record: a torn record loses both, a good one keeps
/// both, and a batch spanning two hours logs them once.
#[tokio::test]
async fn positions_are_replayed_with_their_rows_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_764_118_800_000_000_000i64;
    let at = |v: &str| vec![("src a".to_string(), v.to_string())];
    {
        let store = Store::open(cfg(dir.path())).await.unwrap();
        let b = stat_samples_batch(&[sample(1, t0), sample(2, t0 + HOUR)]).unwrap();
        store
            .append_at(Table::StatSamples, b, at("1"))
            .await
            .unwrap();
        let b = stat_samples_batch(&[sample(3, t0 + 1)]).unwrap();
        store
            .append_at(Table::StatSamples, b, at("2"))
            .await
            .unwrap();
        assert_eq!(store.positions()["src a"], "2");
        store.halt().await;
    }
    let wal_dir = dir.path().join("wal");
    let last = *wal::list_segments(&wal_dir).unwrap().last().unwrap();
    let path = wal::segment_path(&wal_dir, last);
    let read = wal::read_segment(&path, 0, None).unwrap();
    assert_eq!((read.records.len(), read.positions.len()), (3, 2));
    // Tear the last record (rows of sample 3 and position "2").
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    assert_eq!(rows(&store.snapshot(Table::StatSamples, None, None)), 2);
    assert_eq!(store.positions()["src a"], "1");
}

#[test]
fn compaction_merges_tiers_of_the_current_hour_and_all_of_a_past_one() {
    let f = |path: &str, level: u32| FileEntry {
        path: path.into(),
        rows: 1,
        bytes: 1,
        min_time: 0,
        max_time: 0,
        min_trace_id: None,
        max_trace_id: None,
        level,
    };
    let picked = |table: Table, files: &[FileEntry], rule: Compaction| -> Vec<String> {
        compaction_inputs(table, files, rule)
            .into_iter()
            .map(|f| f.path)
            .collect()
    };
    let tiered = Compaction::Tiered { min_files: 3 };
    // The current hour: two flushes are not a tier yet, three are; the merged file of an
    // earlier tier stays out of it.
    assert!(picked(Table::Spans, &[f("a", 0), f("b", 0)], tiered).is_empty());
    let hour = [f("big", 1), f("a", 0), f("b", 0), f("c", 0)];
    assert_eq!(picked(Table::Spans, &hour, tiered), ["a", "b", "c"]);
    // The lowest full tier goes first.
    let hour = [f("x", 1), f("a", 0), f("y", 1), f("z", 1), f("b", 0)];
    assert_eq!(picked(Table::Spans, &hour, tiered), ["x", "y", "z"]);
    assert!(picked(Table::Spans, &hour[..3], tiered).is_empty());

    // A past hour ends as one sorted file: everything is merged, and a lone flushed (unsorted)
    // file is rewritten; a lone compacted file, or a stat-sample flush (sorted), is left be.
    let closed = Compaction::Closed;
    assert_eq!(
        picked(Table::Spans, &[f("big", 2), f("late", 0)], closed),
        ["big", "late"]
    );
    assert_eq!(picked(Table::Requests, &[f("a", 0)], closed), ["a"]);
    assert!(picked(Table::Spans, &[f("big", 2)], closed).is_empty());
    assert!(picked(Table::StatSamples, &[f("a", 0)], closed).is_empty());
    assert!(picked(Table::Spans, &[], closed).is_empty());

    // `compact(true)`: every hour of two or more files.
    assert_eq!(
        picked(Table::Spans, &[f("a", 0), f("big", 3)], Compaction::Whole),
        ["a", "big"]
    );
    assert!(picked(Table::Spans, &[f("a", 0)], Compaction::Whole).is_empty());
}
