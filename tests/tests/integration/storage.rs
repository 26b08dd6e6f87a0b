//! The storage engine end to end, in process: WAL → buffer → Parquet → DataFusion round trips,
//! WAL replay, torn tails, pruning, retention, compaction and quarantine.

use std::time::Duration;

use arrow::array::RecordBatch;
use meshscope_query::sql::{QueryEngine, SqlLimits, batches_to_json};
use meshscope_schemas::Table;
use meshscope_schemas::rows::{requests_batch, spans_batch, stat_samples_batch};
use meshscope_storage::{Store, StoreConfig, StoreError, wal};
use meshscope_tests::{hour_start_ns, request, span, stat};
use serde_json::Value;

fn cfg(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::local(dir);
    c.flush_interval = Duration::from_secs(3600); // tests flush explicitly
    c.group_commit = Duration::ZERO;
    c.maintenance_interval = Duration::from_secs(3600);
    c
}

/// Rows of a batch as sorted JSON strings: an order-independent, value-exact comparison.
fn rows_of(batches: &[RecordBatch]) -> Vec<String> {
    let v: Value = serde_json::from_slice(&batches_to_json(batches).unwrap()).unwrap();
    let mut rows: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    rows.sort();
    rows
}

async fn select_all(engine: &QueryEngine, table: Table) -> Vec<String> {
    let out = engine
        .query(
            &format!("SELECT * FROM {}", table.name()),
            SqlLimits {
                timeout: Duration::from_secs(60),
                max_rows: 1_000_000,
                ..SqlLimits::default()
            },
        )
        .await
        .unwrap();
    rows_of(&out.batches)
}

fn sample_batches() -> Vec<(Table, RecordBatch)> {
    let t = hour_start_ns(1);
    vec![
        (
            Table::Spans,
            spans_batch(&(0..200).map(|i| span(i, t)).collect::<Vec<_>>()).unwrap(),
        ),
        (
            Table::Requests,
            requests_batch(
                &(0..200)
                    .map(|i| request(i, t + i as i64, &format!("r{i}")))
                    .collect::<Vec<_>>(),
            )
            .unwrap(),
        ),
        (
            Table::StatSamples,
            stat_samples_batch(&(0..200).map(|i| stat(i, t)).collect::<Vec<_>>()).unwrap(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_round_trips_wal_buffer_parquet_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_batches();
    let expected: Vec<Vec<String>> = data
        .iter()
        .map(|(_, b)| rows_of(std::slice::from_ref(b)))
        .collect();
    assert!(expected.iter().all(|rows| rows.len() == 200));
    assert!(
        expected[0].iter().any(|r| r.contains(r#""name":"retry""#)),
        "events are part of the comparison"
    );

    // 1. buffer: visible as soon as the append is acknowledged
    let store = Store::open(cfg(dir.path())).await.unwrap();
    for (t, b) in &data {
        assert_eq!(
            store.append(*t, b.clone()).await.unwrap().rows,
            b.num_rows()
        );
    }
    let engine = QueryEngine::new(store.clone()).unwrap();
    for ((t, _), want) in data.iter().zip(&expected) {
        assert_eq!(
            &select_all(&engine, *t).await,
            want,
            "{} from the buffer",
            t.name()
        );
    }
    // 2. WAL: stop without flushing, reopen, replay
    store.halt().await;
    drop(engine);
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let engine = QueryEngine::new(store.clone()).unwrap();
    for ((t, _), want) in data.iter().zip(&expected) {
        assert_eq!(
            &select_all(&engine, *t).await,
            want,
            "{} after WAL replay",
            t.name()
        );
        assert!(store.manifests(*t).is_empty(), "nothing flushed yet");
    }
    // 3. Parquet: flush, and the rows come only from files now
    assert_eq!(store.flush().await.unwrap(), 600);
    for ((t, _), want) in data.iter().zip(&expected) {
        let snap = store.snapshot(*t, None, None);
        assert!(snap.batches.is_empty());
        assert_eq!(snap.files.iter().map(|f| f.rows).sum::<u64>(), 200);
        assert_eq!(
            &select_all(&engine, *t).await,
            want,
            "{} from Parquet",
            t.name()
        );
    }
    // 4. and again after a restart: the flushed WAL is not replayed twice
    store.shutdown().await.unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let engine = QueryEngine::new(store.clone()).unwrap();
    for ((t, _), want) in data.iter().zip(&expected) {
        assert_eq!(
            &select_all(&engine, *t).await,
            want,
            "{} after restart",
            t.name()
        );
    }
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_typed_column_is_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    // a stat_samples batch offered as requests
    let (_, stats) = sample_batches().remove(2);
    let err = store
        .append(Table::Requests, stats)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("column"), "{err}");
    // a batch whose `value` column is Utf8 instead of Float64
    let (_, good) = sample_batches().remove(2);
    let schema = good.schema();
    let mut fields: Vec<_> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut cols = good.columns().to_vec();
    let idx = schema.index_of("value").unwrap();
    fields[idx] = arrow::datatypes::Field::new("value", arrow::datatypes::DataType::Utf8, false);
    cols[idx] = std::sync::Arc::new(arrow::array::StringArray::from(vec!["x"; good.num_rows()]));
    let bad = RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        cols,
    )
    .unwrap();
    let err = store.append(Table::StatSamples, bad).await.unwrap_err();
    assert!(matches!(err, StoreError::Schema(_)));
    assert_eq!(
        err.to_string(),
        "table stat_samples: column `value` has type Utf8, expected Float64"
    );
    store.shutdown().await.unwrap();
}

/// A store with five appends of ten requests (`b0-…` to `b4-…`) in the WAL, halted without a
/// flush; its directory, the current hour's start and the last WAL segment.
async fn five_appends_in_the_wal() -> (tempfile::TempDir, i64, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let t = hour_start_ns(0);
    let store = Store::open(cfg(dir.path())).await.unwrap();
    for k in 0..5u64 {
        let rows: Vec<_> = (0..10)
            .map(|i| request(i, t, &format!("b{k}-{i}")))
            .collect();
        store
            .append(Table::Requests, requests_batch(&rows).unwrap())
            .await
            .unwrap();
    }
    store.halt().await;
    let wal_dir = dir.path().join("wal");
    let seg = wal::segment_path(
        &wal_dir,
        *wal::list_segments(&wal_dir).unwrap().last().unwrap(),
    );
    (dir, t, seg)
}

/// Byte offsets of the records of a WAL segment (`len: u32 | crc: u32 | payload`).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        out.push(pos);
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 8 + len;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_wal_record_in_the_middle_is_skipped_and_the_records_after_it_replay() {
    let (dir, _, seg) = five_appends_in_the_wal().await;
    let mut bytes = std::fs::read(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    assert!(offsets.len() >= 5, "{offsets:?}");
    // the third of the five appends: a byte flipped inside its payload
    let third = offsets[offsets.len() - 3];
    bytes[third + 20] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let engine = QueryEngine::new(store.clone()).unwrap();
    let out = engine
        .query("SELECT request_id FROM requests", SqlLimits::default())
        .await
        .unwrap();
    let ids: Vec<String> = rows_of(&out.batches);
    assert_eq!(ids.len(), 40, "four appends survive: {ids:?}");
    assert!(ids.iter().all(|r| !r.contains("b2-")));
    assert!(
        ids.iter().any(|r| r.contains("b4-")),
        "the records after the bad one replay"
    );
    assert_eq!(store.status().wal_records_skipped, 1);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        bytes.len() as u64,
        "nothing is truncated"
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_wal_tail_is_truncated_and_earlier_rows_survive() {
    let (dir, t, seg) = five_appends_in_the_wal().await;
    // flip one byte inside the last record: its checksum fails
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let engine = QueryEngine::new(store.clone()).unwrap();
    let out = engine
        .query("SELECT request_id FROM requests", SqlLimits::default())
        .await
        .unwrap();
    let mut ids: Vec<String> = rows_of(&out.batches);
    ids.dedup();
    assert_eq!(
        ids.len(),
        40,
        "the four intact appends survive, the corrupt fifth is dropped"
    );
    assert!(ids.iter().all(|r| !r.contains("b4-")));
    assert!(
        std::fs::metadata(&seg).unwrap().len() < n as u64,
        "the torn tail was truncated"
    );
    // and the store keeps working after the truncation
    store
        .append(
            Table::Requests,
            requests_batch(&[request(1, t, "after")]).unwrap(),
        )
        .await
        .unwrap();
    store.shutdown().await.unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let engine = QueryEngine::new(store.clone()).unwrap();
    let out = engine
        .query("SELECT count(*) AS n FROM requests", SqlLimits::default())
        .await
        .unwrap();
    assert_eq!(rows_of(&out.batches), vec![r#"{"n":41}"#.to_string()]);
    store.shutdown().await.unwrap();
}

/// Three hours, one file each: a one-hour query scans one file; a trace-id lookup scans one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_and_trace_bounded_queries_open_only_the_files_they_need() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    for h in 0..3i64 {
        let t = hour_start_ns(3 - h);
        let rows: Vec<_> = (0..100u64).map(|i| span(h as u64 * 1000 + i, t)).collect();
        store
            .append(Table::Spans, spans_batch(&rows).unwrap())
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    assert_eq!(store.manifests(Table::Spans).len(), 3);
    let engine = QueryEngine::new(store.clone()).unwrap();
    let scanned = |s: &Store| s.status().files_scanned;

    let before = scanned(&store);
    let lo = chrono_rfc3339(hour_start_ns(2));
    let hi = chrono_rfc3339(hour_start_ns(1) - 1);
    let sql = format!(
        "SELECT count(*) AS n FROM spans WHERE start_time >= '{lo}' AND start_time <= '{hi}'"
    );
    let out = engine.query(&sql, SqlLimits::default()).await.unwrap();
    assert_eq!(rows_of(&out.batches), vec![r#"{"n":100}"#.to_string()]);
    assert_eq!(scanned(&store) - before, 1, "one hour → one file");

    let before = scanned(&store);
    let out = engine
        .query("SELECT count(*) AS n FROM spans", SqlLimits::default())
        .await
        .unwrap();
    assert_eq!(rows_of(&out.batches), vec![r#"{"n":300}"#.to_string()]);
    assert_eq!(scanned(&store) - before, 3);

    // trace ids of hour 1 are (1000/4+1 ..); look one up by id
    let trace = meshscope_tests::span(1004, 0).trace_id.to_hex();
    let before = scanned(&store);
    let out = engine
        .query(
            &format!("SELECT count(*) AS n FROM spans WHERE trace_id = X'{trace}'"),
            SqlLimits::default(),
        )
        .await
        .unwrap();
    assert_eq!(rows_of(&out.batches), vec![r#"{"n":4}"#.to_string()]);
    assert_eq!(
        scanned(&store) - before,
        1,
        "manifest min/max trace id prunes the other files"
    );

    // inside the file, a missing id in range is answered by the bloom filter / statistics
    let missing = meshscope_tests::span(1004, 0).trace_id.0;
    let mut m = missing;
    m[15] ^= 1;
    let hex: String = m.iter().map(|b| format!("{b:02x}")).collect();
    let out = engine
        .query(
            &format!("SELECT * FROM spans WHERE trace_id = X'{hex}'"),
            SqlLimits::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    let pruned = parquet_pruning(&out.plan);
    assert!(
        pruned > 0,
        "Parquet pruning (statistics or bloom filter) skipped nothing"
    );
    store.shutdown().await.unwrap();
}

/// Row groups pruned by statistics or bloom filters, plus pages pruned by the page index.
fn parquet_pruning(plan: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::physical_plan::metrics::MetricValue;
    let mut total = 0;
    if let Some(dse) = plan.downcast_ref::<DataSourceExec>()
        && let Some(m) = dse.metrics()
    {
        for name in [
            "row_groups_pruned_statistics",
            "row_groups_pruned_bloom_filter",
            "page_index_pages_pruned",
            "files_ranges_pruned_statistics",
        ] {
            if let Some(MetricValue::PruningMetrics {
                pruning_metrics, ..
            }) = m.sum_by_name(name)
            {
                total += pruning_metrics.pruned();
            }
        }
    }
    for c in plan.children() {
        total += parquet_pruning(c);
    }
    total
}

fn chrono_rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp(secs, nanos).unwrap();
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_partitions_and_nothing_newer() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.retention = Duration::from_secs(7 * 24 * 3600);
    let store = Store::open(c).await.unwrap();
    // 9 days, 8 days, 6 days and 1 hour old
    for hours_ago in [9 * 24, 8 * 24, 6 * 24, 1] {
        let t = hour_start_ns(hours_ago);
        let rows: Vec<_> = (0..10u64)
            .map(|i| request(i, t, &format!("h{hours_ago}-{i}")))
            .collect();
        store
            .append(Table::Requests, requests_batch(&rows).unwrap())
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    let files: Vec<String> = store
        .manifests(Table::Requests)
        .iter()
        .flat_map(|m| m.files.iter().map(|f| f.path.clone()))
        .collect();
    assert_eq!(files.len(), 4);
    let now = hour_start_ns(0) + 1;
    assert_eq!(store.apply_retention(now).await.unwrap(), 2);
    let left: Vec<i64> = store
        .manifests(Table::Requests)
        .iter()
        .map(|m| m.hour)
        .collect();
    assert_eq!(
        left,
        vec![
            hour_start_ns(6 * 24) / 1_000_000_000,
            hour_start_ns(1) / 1_000_000_000
        ]
    );
    // the two old files are gone from disk, the two newer ones remain
    let on_disk: Vec<bool> = files
        .iter()
        .map(|p| std::path::Path::new(&format!("/{p}")).exists())
        .collect();
    assert_eq!(on_disk, vec![false, false, true, true]);
    let engine = QueryEngine::new(store.clone()).unwrap();
    let out = engine
        .query("SELECT count(*) AS n FROM requests", SqlLimits::default())
        .await
        .unwrap();
    assert_eq!(rows_of(&out.batches), vec![r#"{"n":20}"#.to_string()]);
    store.shutdown().await.unwrap();
}

/// The maintenance pass (`compact(false)`): the current hour is merged in tiers of
/// `compaction_min_files` files of one level; a past hour becomes one sorted file, even when
/// it has a single flushed file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_compacts_the_current_hour_in_tiers_and_a_past_hour_whole() {
    use meshscope_storage::segment::decode_parquet;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.compaction_min_files = 3;
    let store = Store::open(c).await.unwrap();
    let now = hour_start_ns(0) + 1;
    // Far enough back to be closed even with the tests' one-hour flush interval.
    let past = hour_start_ns(3);
    let mut expected = Vec::new();
    let mut flush = |rows: Vec<_>| {
        let b = spans_batch(&rows).unwrap();
        expected.extend(rows_of(std::slice::from_ref(&b)));
        let store = store.clone();
        async move {
            store.append(Table::Spans, b).await.unwrap();
            store.flush().await.unwrap();
        }
    };
    // Trace ids descending, so a sorted file differs from arrival order.
    flush((0..40u64).rev().map(|i| span(i, past)).collect()).await;
    for k in 0..5u64 {
        flush((0..20u64).map(|i| span(1000 + k * 20 + i, now)).collect()).await;
    }
    let levels = |hour_ns: i64| {
        let hour = hour_ns.div_euclid(1_000_000_000) / 3600 * 3600;
        let m = store.manifests(Table::Spans);
        let m = m.iter().find(|m| m.hour == hour).unwrap();
        let mut l: Vec<u32> = m.files.iter().map(|f| f.level).collect();
        l.sort();
        (l, m.files.clone())
    };
    assert_eq!(levels(past).0, vec![0]);
    assert_eq!(levels(now).0, vec![0; 5]);

    // The past hour's lone file is rewritten sorted; the current hour's five flushes fill the
    // level-0 tier (three or more files), so they are merged into one level-1 file.
    assert_eq!(store.compact(false).await.unwrap(), 2);
    let (l, files) = levels(past);
    assert_eq!(l, vec![1]);
    let path = format!("/{}", files[0].path);
    let batches = decode_parquet(std::fs::read(path).unwrap().into()).unwrap();
    let ids: Vec<Vec<u8>> = batches
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name("trace_id").unwrap();
            let ids = arrow::array::AsArray::as_fixed_size_binary(col.as_ref());
            (0..arrow::array::Array::len(ids))
                .map(|i| ids.value(i).to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ids.len(), 40);
    assert!(ids.windows(2).all(|w| w[0] <= w[1]), "sorted by trace id");
    assert_eq!(levels(now).0, vec![1]);
    // Nothing is left to do until a tier fills again; the level-1 file does not count
    // towards the level-0 tier.
    assert_eq!(store.compact(false).await.unwrap(), 0);
    for k in 0..2u64 {
        flush((0..20u64).map(|i| span(2000 + k * 20 + i, now)).collect()).await;
    }
    assert_eq!(store.compact(false).await.unwrap(), 0);
    assert_eq!(levels(now).0, vec![0, 0, 1]);
    flush((0..20u64).map(|i| span(3000 + i, now)).collect()).await;
    assert_eq!(store.compact(false).await.unwrap(), 1);
    assert_eq!(levels(now).0, vec![1, 1]);

    expected.sort();
    let engine = QueryEngine::new(store.clone()).unwrap();
    assert_eq!(select_all(&engine, Table::Spans).await, expected);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_an_hour_into_one_sorted_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let t = hour_start_ns(1);
    let mut expected = Vec::new();
    for k in 0..4u64 {
        let rows: Vec<_> = (0..50u64).map(|i| span(k * 50 + i, t)).collect();
        let b = spans_batch(&rows).unwrap();
        expected.extend(rows_of(std::slice::from_ref(&b)));
        store.append(Table::Spans, b).await.unwrap();
        store.flush().await.unwrap();
    }
    expected.sort();
    assert_eq!(store.manifests(Table::Spans)[0].files.len(), 4);
    assert_eq!(store.compact(true).await.unwrap(), 1);
    let m = &store.manifests(Table::Spans)[0];
    assert_eq!(
        (m.files.len(), m.files[0].rows, m.files[0].level),
        (1, 200, 1)
    );
    let engine = QueryEngine::new(store.clone()).unwrap();
    assert_eq!(select_all(&engine, Table::Spans).await, expected);
    store.shutdown().await.unwrap();
}

/// A file that cannot be read for a while (here: a directory stands where it was, so every
/// read fails with an I/O error, as an S3 503 or EACCES would) is not quarantined: the query
/// that needs it fails and says why, the status reports it, and once the file is back the
/// same query answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_read_error_quarantines_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let t = hour_start_ns(1);
    let rows: Vec<_> = (0..10u64)
        .map(|i| request(i, t, &format!("tr-{i}")))
        .collect();
    store
        .append(Table::Requests, requests_batch(&rows).unwrap())
        .await
        .unwrap();
    store.flush().await.unwrap();
    let victim = format!("/{}", store.manifests(Table::Requests)[0].files[0].path);
    store.shutdown().await.unwrap();
    let aside = format!("{victim}.aside");
    std::fs::rename(&victim, &aside).unwrap();
    std::fs::create_dir(&victim).unwrap();

    let store = Store::open(cfg(dir.path())).await.unwrap();
    let engine = QueryEngine::new(store.clone()).unwrap();
    let err = engine
        .query("SELECT count(*) AS n FROM requests", SqlLimits::default())
        .await
        .err()
        .expect("the query needs the unreadable file and fails");
    assert!(!err.to_string().is_empty());
    let status = store.status();
    assert!(status.quarantined.is_empty(), "{:?}", status.quarantined);
    assert!(status.transient_read_errors >= 1);
    assert!(
        status
            .last_read_error
            .as_deref()
            .is_some_and(|e| e.contains(victim.trim_start_matches('/'))),
        "{:?}",
        status.last_read_error
    );
    // the file comes back: the same query answers, with every row
    std::fs::remove_dir(&victim).unwrap();
    std::fs::rename(&aside, &victim).unwrap();
    let out = engine
        .query("SELECT count(*) AS n FROM requests", SqlLimits::default())
        .await
        .unwrap();
    assert_eq!(rows_of(&out.batches), vec![r#"{"n":10}"#.to_string()]);
    assert!(store.status().quarantined.is_empty());
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_file_that_fails_to_open_is_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    for h in [2i64, 1] {
        let t = hour_start_ns(h);
        let rows: Vec<_> = (0..10u64)
            .map(|i| request(i, t, &format!("q{h}-{i}")))
            .collect();
        store
            .append(Table::Requests, requests_batch(&rows).unwrap())
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let victim = store.manifests(Table::Requests)[0].files[0].path.clone();
    store.shutdown().await.unwrap();
    std::fs::write(format!("/{victim}"), b"this is not parquet").unwrap();

    let store = Store::open(cfg(dir.path())).await.unwrap();
    let engine = QueryEngine::new(store.clone()).unwrap();
    let out = engine
        .query("SELECT count(*) AS n FROM requests", SqlLimits::default())
        .await
        .unwrap();
    assert_eq!(
        rows_of(&out.batches),
        vec![r#"{"n":10}"#.to_string()],
        "the healthy hour still answers"
    );
    let status = store.status();
    assert_eq!(status.quarantined.len(), 1);
    assert_eq!(status.quarantined[0].path, victim);
    assert!(
        status.quarantined[0]
            .moved_to
            .as_deref()
            .is_some_and(|p| p.contains("_quarantine/requests/"))
    );
    assert!(!std::path::Path::new(&format!("/{victim}")).exists());
    // the manifest no longer lists it, so a restart does not trip over it again
    store.shutdown().await.unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    assert_eq!(
        store
            .manifests(Table::Requests)
            .iter()
            .map(|m| m.files.len())
            .sum::<usize>(),
        1
    );
    store.shutdown().await.unwrap();
}
