//! `meshscope bench storage`: throughput, size and latency figures for the storage engine.
//!
//! The benchmark stores `spans` synthetic but realistic Envoy/Istio spans — the bookinfo
//! sample (ingress gateway → productpage → details, productpage → reviews → ratings), one
//! CLIENT/SERVER pair per hop, with the attributes Istio's sidecars put on every span — and
//! reports:
//!
//! 1. **Durable append throughput.** `writers` tokio tasks append pre-built batches of
//!    `batch` spans with `Store::append`, which returns only once the WAL is fsynced. Building
//!    the batches is timed separately and not counted. The store runs with the defaults of
//!    `StoreConfig::local` (fsync always, 5 ms group commit, flush to Parquet at 500k rows,
//!    256 MiB or 60 s), so background flushes compete with the appends as in production.
//! 2. **Bytes on disk per span** once everything is flushed and every hour is compacted into
//!    one file, with a per-column breakdown read from the Parquet footers, and the WAL's
//!    bytes per span for comparison.
//! 3. **Trace-by-id lookup latency** through the SQL engine (`SELECT *`, what a trace view
//!    needs), with every trace's row count checked against what was generated; plus ids that
//!    do not exist and one lookup bounded by time.
//! 4. **Peak RSS** of the process (`VmHWM`), and each phase's peak where Linux lets us reset
//!    the high-water mark: generating (the pre-built batches), appending (with the flushes),
//!    compacting, looking up.
//!
//! The data is seeded, so every run stores the same spans (only the wall-clock base differs:
//! spans cover the 50 minutes before the run, i.e. one or two hour partitions).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use arrow::array::RecordBatch;
use meshscope_schemas::{Table, TraceId};
use meshscope_storage::{FsyncPolicy, Store, StoreConfig, StoreError, read_object};
use parquet::file::metadata::ParquetMetaDataReader;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use meshscope_query::api::time::{now_ns, rfc3339};
use meshscope_query::sql::{QueryEngine, SqlLimits};
use meshscope_testkit::spans::{SEED, TraceInfo, generate};

use crate::{MemoryPhases, bench_dir, ms, percentile, proc_status_mib};

/// Trace ids looked up that exist, and that do not.
const LOOKUPS: usize = 50;
const ABSENT_LOOKUPS: usize = 5;
const GOAL_BYTES_PER_SPAN: f64 = 45.0;
pub(crate) const GOAL_LOOKUP_MS: f64 = 50.0;
pub(crate) const MS: i64 = 1_000_000;

/// Runs the storage benchmark and prints its figures.
pub async fn storage(
    spans: usize,
    writers: usize,
    batch: usize,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    ensure!(
        spans > 0 && writers > 0 && batch > 0,
        "--spans, --writers and --batch must be at least 1"
    );
    let (root, _tmp) = bench_dir(dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cfg = StoreConfig::local(&root);
    let fsync = match cfg.fsync {
        FsyncPolicy::Always => "always",
        FsyncPolicy::Never => "never",
    };
    println!(
        "store: {} (fsync {fsync}, group commit {:?}, flush at {} rows / {} MiB / {:?})",
        root.display(),
        cfg.group_commit,
        cfg.flush_rows,
        cfg.flush_bytes >> 20,
        cfg.flush_interval
    );
    let store = Store::open(cfg).await?;

    let mut memory = MemoryPhases::new();
    memory.start("generate");
    let t = Instant::now();
    let data = generate(spans, batch, now_ns());
    memory.start("append+flush");
    println!(
        "generated {} spans in {} traces ({:.1} spans/trace), {} batches, in {:.1} s (not timed below); RSS {} MiB",
        data.spans,
        data.traces.len(),
        data.spans as f64 / data.traces.len() as f64,
        data.batches.len(),
        t.elapsed().as_secs_f64(),
        proc_status_mib("VmRSS:")
    );

    let appends = append_all(&store, data.batches, writers).await?;
    let spans_per_s = data.spans as f64 / appends.elapsed.as_secs_f64();
    let commits = store.stats().wal_commits.load(Ordering::Relaxed);
    println!(
        "append: {} appends in {:.2} s: {spans_per_s:.0} spans/s, {:.0} appends/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         {commits} group commits ({:.1} appends each); {} retries after back-pressure; {} flushes ran meanwhile",
        appends.latencies.len(),
        appends.elapsed.as_secs_f64(),
        appends.latencies.len() as f64 / appends.elapsed.as_secs_f64(),
        ms(percentile(&appends.latencies, 0.50)),
        ms(percentile(&appends.latencies, 0.99)),
        ms(percentile(&appends.latencies, 1.0)),
        appends.latencies.len() as f64 / commits.max(1) as f64,
        appends.retries,
        store.stats().flushes.load(Ordering::Relaxed),
    );

    let disk = disk_figures(&store, data.spans, &mut memory).await?;
    memory.start("lookups");
    let lookups = lookup_figures(&store, &data.traces).await?;
    memory.finish();

    let p = |q| ms(percentile(&lookups.latencies, q));
    println!();
    println!(
        "meshscope storage benchmark ({} spans, {writers} writers × {batch} spans/append, fsync={fsync}) on {cores} cores",
        data.spans
    );
    println!(
        "append: {spans_per_s:.0} spans/s durable, p50 {:.1} ms, p99 {:.1} ms per append",
        ms(percentile(&appends.latencies, 0.50)),
        ms(percentile(&appends.latencies, 0.99))
    );
    println!(
        "disk:   {:.1} bytes/span after compaction (goal ≤ {GOAL_BYTES_PER_SPAN}), WAL {:.1} bytes/span",
        disk.parquet_bytes_per_span, disk.wal_bytes_per_span
    );
    println!(
        "lookup: trace by id p50 {:.1} p95 {:.1} p99 {:.1} max {:.1} ms over {} lookups (goal ≤ {GOAL_LOOKUP_MS} ms), \
         first {:.1} ms, rows/trace ok",
        p(0.50),
        p(0.95),
        p(0.99),
        p(1.0),
        lookups.latencies.len(),
        ms(lookups.first),
    );
    println!("memory: {memory}");

    store.shutdown().await?;
    Ok(())
}

pub(crate) struct AppendFigures {
    elapsed: Duration,
    latencies: Vec<Duration>,
    retries: u64,
}

/// Appends the batches from `writers` concurrent tasks (batch i goes to task i mod writers)
/// and times every append from its first attempt to its acknowledgement.
pub(crate) async fn append_all(
    store: &Store,
    batches: Vec<RecordBatch>,
    writers: usize,
) -> anyhow::Result<AppendFigures> {
    let mut queues: Vec<Vec<RecordBatch>> = (0..writers).map(|_| Vec::new()).collect();
    for (i, b) in batches.into_iter().enumerate() {
        queues[i % writers].push(b);
    }
    let start = Instant::now();
    let tasks: Vec<_> = queues
        .into_iter()
        .map(|queue| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(queue.len());
                let mut retries = 0u64;
                for b in queue {
                    let t = Instant::now();
                    loop {
                        match store.append(Table::Spans, b.clone()).await {
                            Ok(_) => break,
                            Err(StoreError::Overloaded(_, wait)) => {
                                retries += 1;
                                tokio::time::sleep(wait).await;
                            }
                            Err(e) => return Err(anyhow::Error::from(e).context("append failed")),
                        }
                    }
                    latencies.push(t.elapsed());
                }
                Ok((latencies, retries))
            })
        })
        .collect();
    let mut figures = AppendFigures {
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        retries: 0,
    };
    for task in tasks {
        let (latencies, retries) = task.await.context("an append task panicked")??;
        figures.latencies.extend(latencies);
        figures.retries += retries;
    }
    figures.elapsed = start.elapsed();
    figures.latencies.sort_unstable();
    Ok(figures)
}

pub(crate) struct DiskFigures {
    parquet_bytes_per_span: f64,
    wal_bytes_per_span: f64,
}

/// Flushes, compacts every hour into one file, and prints what the files and the WAL cost
/// per span, with a per-column breakdown from the Parquet footers.
pub(crate) async fn disk_figures(
    store: &Store,
    spans: usize,
    memory: &mut MemoryPhases,
) -> anyhow::Result<DiskFigures> {
    let t = Instant::now();
    store.flush().await?;
    let flush_s = t.elapsed().as_secs_f64();
    memory.start("compact");
    let files_before: usize = store
        .manifests(Table::Spans)
        .iter()
        .map(|m| m.files.len())
        .sum();
    let t = Instant::now();
    let compacted = store.compact(true).await?;
    let compact_s = t.elapsed().as_secs_f64();
    memory.start("inspect files");

    let manifests = store.manifests(Table::Spans);
    let files: Vec<_> = manifests.iter().flat_map(|m| m.files.iter()).collect();
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    ensure!(
        rows == spans as u64,
        "the manifests list {rows} spans, {spans} were appended"
    );
    let per_span = |b: u64| b as f64 / spans as f64;
    println!(
        "disk: final flush {flush_s:.2} s; {files_before} files in {} hours, {compacted} hours compacted in {compact_s:.2} s; \
         now {} files, {} bytes = {:.1} bytes/span",
        manifests.len(),
        files.len(),
        bytes,
        per_span(bytes)
    );

    // Per-column cost, from the footers: compressed column chunks (pages and page headers),
    // bloom filters, page indexes, and the footer itself.
    let mut columns: Vec<(String, u64)> = Vec::new();
    let (mut bloom, mut index, mut footer, mut row_groups) = (0u64, 0u64, 0u64, 0usize);
    for f in &files {
        let raw = read_object(&store.object_store(), &f.path).await?;
        let meta = ParquetMetaDataReader::new().parse_and_finish(&raw)?;
        if raw.len() >= 8 {
            let n = raw.len();
            footer +=
                u32::from_le_bytes([raw[n - 8], raw[n - 7], raw[n - 6], raw[n - 5]]) as u64 + 12;
        }
        row_groups += meta.num_row_groups();
        for rg in meta.row_groups() {
            for c in rg.columns() {
                let name = c.column_path().parts().first().cloned().unwrap_or_default();
                match columns.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, b)) => *b += c.compressed_size() as u64,
                    None => columns.push((name, c.compressed_size() as u64)),
                }
                bloom += c.bloom_filter_length().unwrap_or(0) as u64;
                index += (c.column_index_length().unwrap_or(0)
                    + c.offset_index_length().unwrap_or(0)) as u64;
            }
        }
    }
    columns.sort_by_key(|c| std::cmp::Reverse(c.1));
    let data: u64 = columns.iter().map(|c| c.1).sum();
    println!("disk: where the bytes go ({row_groups} row groups), bytes/span:");
    let shown = 12.min(columns.len());
    for (name, b) in &columns[..shown] {
        println!(
            "  {name:<26} {:>6.2}  {:>4.1}%",
            per_span(*b),
            100.0 * *b as f64 / bytes.max(1) as f64
        );
    }
    let rest: u64 = columns[shown..].iter().map(|c| c.1).sum();
    let other = bytes.saturating_sub(data + bloom + index + footer);
    for (name, b) in [
        (format!("{} other columns", columns.len() - shown), rest),
        ("bloom filters".to_string(), bloom),
        ("page indexes".to_string(), index),
        ("footers".to_string(), footer),
        ("unaccounted".to_string(), other),
    ] {
        println!(
            "  {name:<26} {:>6.2}  {:>4.1}%",
            per_span(b),
            100.0 * b as f64 / bytes.max(1) as f64
        );
    }

    let wal_bytes = store.stats().wal_bytes.load(Ordering::Relaxed);
    println!(
        "wal: {wal_bytes} bytes written = {:.1} bytes/span (Arrow IPC records)",
        per_span(wal_bytes)
    );
    Ok(DiskFigures {
        parquet_bytes_per_span: per_span(bytes),
        wal_bytes_per_span: per_span(wal_bytes),
    })
}

pub(crate) struct LookupFigures {
    /// Lookups of existing trace ids after the first, sorted.
    latencies: Vec<Duration>,
    /// The very first query of the engine.
    first: Duration,
}

/// Looks traces up by id through SQL and checks every answer's row count.
pub(crate) async fn lookup_figures(
    store: &Store,
    traces: &[TraceInfo],
) -> anyhow::Result<LookupFigures> {
    let engine = QueryEngine::new(store.clone())?;
    let limits = SqlLimits {
        timeout: Duration::from_secs(60),
        max_rows: 10_000,
        ..SqlLimits::default()
    };
    let mut rng = StdRng::seed_from_u64(SEED ^ 0x0100_c0b5);
    let sample: Vec<TraceInfo> = traces
        .choose_multiple(&mut rng, LOOKUPS + 2)
        .copied()
        .collect();
    let (first, rest) = sample.split_first().context("no traces were generated")?;
    let (bounded, existing) = rest.split_first().context("too few traces to look up")?;
    let known: HashSet<TraceId> = traces.iter().map(|t| t.id).collect();
    let mut absent = Vec::new();
    while absent.len() < ABSENT_LOOKUPS {
        let id = TraceId(rng.random());
        if !known.contains(&id) {
            absent.push(id);
        }
    }

    let lookup = |id: TraceId, extra: String| {
        let sql = format!(
            "SELECT * FROM spans WHERE trace_id = X'{}'{extra}",
            id.to_hex()
        );
        let engine = &engine;
        async move {
            let t = Instant::now();
            let out = engine
                .query(&sql, limits)
                .await
                .with_context(|| format!("lookup failed: {sql}"))?;
            let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
            anyhow::Ok((t.elapsed(), rows))
        }
    };
    let check = |t: &TraceInfo, rows: usize| -> anyhow::Result<()> {
        ensure!(
            rows == t.spans,
            "trace {} has {} spans stored, the lookup returned {rows} rows",
            t.id,
            t.spans
        );
        Ok(())
    };

    let (first_latency, rows) = lookup(first.id, String::new()).await?;
    check(first, rows)?;
    let mut latencies = Vec::with_capacity(existing.len());
    let mut absent_latencies = Vec::with_capacity(absent.len());
    let mut order: Vec<Option<&TraceInfo>> = existing
        .iter()
        .map(Some)
        .chain(absent.iter().map(|_| None))
        .collect();
    order.shuffle(&mut rng);
    let mut absent_ids = absent.iter();
    for t in order {
        match t {
            Some(t) => {
                let (d, rows) = lookup(t.id, String::new()).await?;
                check(t, rows)?;
                latencies.push(d);
            }
            None => {
                let id = *absent_ids.next().context("absent ids ran out")?;
                let (d, rows) = lookup(id, String::new()).await?;
                ensure!(
                    rows == 0,
                    "trace {id} was never stored, the lookup returned {rows} rows"
                );
                absent_latencies.push(d);
            }
        }
    }
    latencies.sort_unstable();
    absent_latencies.sort_unstable();

    let before = store.status();
    let window = format!(
        " AND start_time BETWEEN TIMESTAMP '{}' AND TIMESTAMP '{}'",
        rfc3339(bounded.start_ns - 1_000 * MS),
        rfc3339(bounded.end_ns + 1_000 * MS)
    );
    let (bounded_latency, rows) = lookup(bounded.id, window).await?;
    check(bounded, rows)?;
    let after = store.status();

    println!(
        "lookup: SELECT * by trace id: first {:.1} ms; {} more p50 {:.1} p95 {:.1} p99 {:.1} max {:.1} ms, every row count matches; \
         {} absent ids max {:.1} ms, 0 rows",
        ms(first_latency),
        latencies.len(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.95)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
        absent_latencies.len(),
        ms(percentile(&absent_latencies, 1.0)),
    );
    println!(
        "lookup: with a ±1 s time bound: {:.1} ms, {rows} rows, {} of {} files scanned",
        ms(bounded_latency),
        after.files_scanned - before.files_scanned,
        store
            .manifests(Table::Spans)
            .iter()
            .map(|m| m.files.len())
            .sum::<usize>(),
    );
    Ok(LookupFigures {
        latencies,
        first: first_latency,
    })
}
