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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use arrow::array::RecordBatch;
use chrono::{DateTime, Utc};
use meshscope_collector::storage::{FsyncPolicy, StoreError, read_object};
use meshscope_collector::{Store, StoreConfig};
use meshscope_schemas::rows::{SpanRow, spans_batch};
use meshscope_schemas::{SpanId, Table, TraceId};
use parquet::file::metadata::ParquetMetaDataReader;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::sql::{QueryEngine, SqlLimits};

const SEED: u64 = 0x6d65_7368_7363_6f70;
/// Spans start within this window before the run.
const WINDOW: Duration = Duration::from_secs(50 * 60);
/// Trace ids looked up that exist, and that do not.
const LOOKUPS: usize = 50;
const ABSENT_LOOKUPS: usize = 5;
const GOAL_BYTES_PER_SPAN: f64 = 45.0;
const GOAL_LOOKUP_MS: f64 = 50.0;
const MS: i64 = 1_000_000;

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

/// `meshscope bench access-log`: Istio text lines parsed per second on this thread (one
/// core), with the binary's allocator; best of three runs after a warm-up.
pub fn access_log(lines: usize) {
    use meshscope_collector::envoy::access_log::bench_parse;
    bench_parse(lines.min(100_000));
    let runs: Vec<_> = (0..3).map(|_| bench_parse(lines)).collect();
    let best = |f: &dyn Fn(&_) -> f64| runs.iter().map(f).fold(0.0, f64::max);
    let wall = best(&|r| r.per_second);
    let cpu = best(&|r| r.per_cpu_second.unwrap_or(0.0));
    println!(
        "access-log parse: {lines} Istio text lines (identity derived) on one thread, best of 3: \
         {cpu:.0} lines per CPU-second, {wall:.0} lines per wall-clock second"
    );
}

// ---------------------------------------------------------------------------------------
// Appends

struct AppendFigures {
    elapsed: Duration,
    latencies: Vec<Duration>,
    retries: u64,
}

/// Appends the batches from `writers` concurrent tasks (batch i goes to task i mod writers)
/// and times every append from its first attempt to its acknowledgement.
async fn append_all(
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

// ---------------------------------------------------------------------------------------
// Bytes on disk

struct DiskFigures {
    parquet_bytes_per_span: f64,
    wal_bytes_per_span: f64,
}

/// Flushes, compacts every hour into one file, and prints what the files and the WAL cost
/// per span, with a per-column breakdown from the Parquet footers.
async fn disk_figures(
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

// ---------------------------------------------------------------------------------------
// Lookups

struct LookupFigures {
    /// Lookups of existing trace ids after the first, sorted.
    latencies: Vec<Duration>,
    /// The very first query of the engine.
    first: Duration,
}

/// Looks traces up by id through SQL and checks every answer's row count.
async fn lookup_figures(store: &Store, traces: &[TraceInfo]) -> anyhow::Result<LookupFigures> {
    let engine = QueryEngine::new(store.clone())?;
    let limits = SqlLimits {
        timeout: Duration::from_secs(60),
        max_rows: 10_000,
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

// ---------------------------------------------------------------------------------------
// Span generation: the bookinfo sample behind Istio sidecars

/// What the generator remembers of a trace, to check lookups against.
#[derive(Debug, Clone, Copy)]
struct TraceInfo {
    id: TraceId,
    /// Spans stored (the last trace may be cut short to hit the span count exactly).
    spans: usize,
    start_ns: i64,
    end_ns: i64,
}

struct Dataset {
    batches: Vec<RecordBatch>,
    traces: Vec<TraceInfo>,
    spans: usize,
}

/// A workload's Envoy: what it stamps on every span it reports.
struct Proxy {
    service_name: String,
    canonical_service: &'static str,
    revision: &'static str,
    namespace: &'static str,
    ip: String,
    node_id: String,
    zone: &'static str,
}

struct Mesh {
    gateways: Vec<Proxy>,
    productpage: Vec<Proxy>,
    details: Vec<Proxy>,
    reviews: [Vec<Proxy>; 3],
    ratings: Vec<Proxy>,
    /// End users' addresses as the gateway sees them.
    clients: Vec<String>,
}

const ZONES: [&str; 3] = ["us-central1-a", "us-central1-b", "us-central1-c"];
const BROWSERS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
    "fortio.org/fortio-1.63.7",
];
/// Envoy's OpenTelemetry tracer sets these resource attributes besides `service.name`.
const SDK_VERSION: &str = "6d9d6c2f6b0e1c9a4ab0b2f5f0c3b6a1d1e5c7a8/1.31.2/Clean/RELEASE/BoringSSL";

impl Mesh {
    fn new(rng: &mut StdRng) -> Mesh {
        let mut node = 0u8;
        let mut pods = |rng: &mut StdRng,
                        app: &'static str,
                        version: &'static str,
                        ns: &'static str,
                        replicas: usize| {
            (0..replicas)
                .map(|_| {
                    node = node.wrapping_add(1);
                    let ip = format!("10.244.{}.{}", node % 3, rng.random_range(2..250));
                    let (kind, pod, revision) = if ns == "istio-system" {
                        (
                            "router",
                            format!("{app}-{}-{}", k8s_suffix(rng, 10), k8s_suffix(rng, 5)),
                            "latest",
                        )
                    } else {
                        (
                            "sidecar",
                            format!(
                                "{app}-{version}-{}-{}",
                                k8s_suffix(rng, 10),
                                k8s_suffix(rng, 5)
                            ),
                            version,
                        )
                    };
                    Proxy {
                        service_name: format!("{app}.{ns}"),
                        canonical_service: app,
                        revision,
                        namespace: ns,
                        node_id: format!("{kind}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
                        ip,
                        zone: ZONES[(node % 3) as usize],
                    }
                })
                .collect::<Vec<_>>()
        };
        Mesh {
            gateways: pods(rng, "istio-ingressgateway", "", "istio-system", 2),
            productpage: pods(rng, "productpage", "v1", "default", 3),
            details: pods(rng, "details", "v1", "default", 2),
            reviews: [
                pods(rng, "reviews", "v1", "default", 2),
                pods(rng, "reviews", "v2", "default", 2),
                pods(rng, "reviews", "v3", "default", 2),
            ],
            ratings: pods(rng, "ratings", "v1", "default", 2),
            clients: (0..300)
                .map(|_| {
                    format!(
                        "10.128.{}.{}",
                        rng.random_range(0..16),
                        rng.random_range(1..255)
                    )
                })
                .collect(),
        }
    }
}

/// Kubernetes' pod-name alphabet.
fn k8s_suffix(rng: &mut StdRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// One HTTP request as one proxy reports it.
struct Request<'a> {
    name: &'a str,
    url: &'a str,
    user_agent: &'a str,
    upstream_cluster: String,
    upstream_address: Option<String>,
    peer_address: &'a str,
    status: i32,
    response_flags: Option<&'static str>,
    response_size: u32,
}

/// Builds the spans of one trace.
struct TraceBuilder<'r> {
    rng: &'r mut StdRng,
    trace_id: TraceId,
    request_id: String,
    spans: Vec<SpanRow>,
}

impl TraceBuilder<'_> {
    fn span(
        &mut self,
        reporter: &Proxy,
        kind: &str,
        parent: Option<SpanId>,
        start: i64,
        duration: i64,
        r: &Request,
    ) -> SpanId {
        let span_id = SpanId(self.rng.random::<u64>().max(1).to_be_bytes());
        let error = r.status >= 500;
        self.spans.push(SpanRow {
            trace_id: self.trace_id,
            span_id,
            parent_span_id: parent,
            start_time_unix_nano: start,
            duration_ns: duration,
            service_name: reporter.service_name.clone(),
            name: r.name.to_string(),
            kind: kind.to_string(),
            status_code: if error { "error" } else { "unset" }.to_string(),
            request_id: Some(self.request_id.clone()),
            http_method: Some("GET".into()),
            http_status_code: Some(r.status),
            http_url: Some(r.url.to_string()),
            http_protocol: Some("HTTP/1.1".into()),
            user_agent: Some(r.user_agent.to_string()),
            upstream_cluster: Some(r.upstream_cluster.clone()),
            upstream_address: r.upstream_address.clone(),
            response_flags: r.response_flags.map(str::to_string),
            peer_address: Some(r.peer_address.to_string()),
            downstream_cluster: Some("-".into()),
            node_id: Some(reporter.node_id.clone()),
            component: Some("proxy".into()),
            istio_canonical_service: Some(reporter.canonical_service.into()),
            istio_canonical_revision: Some(reporter.revision.into()),
            istio_namespace: Some(reporter.namespace.into()),
            istio_mesh_id: Some("cluster.local".into()),
            attributes: vec![
                ("zone".into(), reporter.zone.into()),
                ("request_size".into(), "0".into()),
                ("response_size".into(), r.response_size.to_string()),
            ],
            resource_attributes: vec![
                ("telemetry.sdk.language".into(), "cpp".into()),
                ("telemetry.sdk.name".into(), "envoy".into()),
                ("telemetry.sdk.version".into(), SDK_VERSION.into()),
            ],
            ..Default::default()
        });
        span_id
    }

    /// One mesh hop `from` → `to`: the caller's CLIENT span and, unless the caller's proxy
    /// answered itself (`UO`), the callee's SERVER span inside it. Returns the server span.
    #[allow(clippy::too_many_arguments)]
    fn hop(
        &mut self,
        from: &Proxy,
        to: &Proxy,
        parent: Option<SpanId>,
        (client_start, client_ns): (i64, i64),
        server_ns: Option<i64>,
        url: &str,
        user_agent: &str,
        app_address: &str,
        response_size: u32,
    ) -> Option<(SpanId, i64)> {
        let host = to.canonical_service;
        let fqdn = format!("{host}.{}.svc.cluster.local", to.namespace);
        let name = format!("{fqdn}:9080/*");
        let overflow = server_ns.is_none();
        let client = Request {
            name: &name,
            url,
            user_agent,
            upstream_cluster: format!("outbound|9080|{}|{fqdn}", to.revision),
            upstream_address: (!overflow).then(|| format!("{}:9080", to.ip)),
            peer_address: app_address,
            status: if overflow { 503 } else { 200 },
            response_flags: overflow.then_some("UO"),
            response_size: if overflow { 81 } else { response_size },
        };
        let client_id = self.span(from, "client", parent, client_start, client_ns, &client);
        let server_ns = server_ns?;
        let server_start = client_start + (client_ns - server_ns) / 2;
        let server = Request {
            upstream_cluster: "inbound|9080||".into(),
            upstream_address: Some(format!("{}:9080", to.ip)),
            peer_address: &from.ip,
            ..client
        };
        Some((
            self.span(
                to,
                "server",
                Some(client_id),
                server_start,
                server_ns,
                &server,
            ),
            server_start,
        ))
    }
}

/// A duration between `lo` and `hi` ms, skewed towards `lo`, with a 1% slow tail.
fn dur(rng: &mut StdRng, lo: f64, hi: f64) -> i64 {
    let u: f64 = rng.random();
    let tail = if rng.random_bool(0.01) {
        rng.random_range(2.0..6.0)
    } else {
        1.0
    };
    ((lo + (hi - lo) * u * u) * tail * MS as f64) as i64
}

fn uuid(rng: &mut StdRng) -> String {
    let a: u128 = rng.random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (a >> 96) as u32,
        (a >> 80) as u16,
        (a >> 68) as u16 & 0xfff,
        ((a >> 52) as u16 & 0x3fff) | 0x8000,
        a as u64 & 0xffff_ffff_ffff
    )
}

/// Appends one bookinfo request's spans; returns (start, end) of the trace.
fn bookinfo_trace(mesh: &Mesh, b: &mut TraceBuilder, start: i64) -> (i64, i64) {
    let rng = &mut *b.rng;
    let pp = mesh.productpage.choose(rng).expect("pods");
    let details = mesh.details.choose(rng).expect("pods");
    let version = rng.random_range(0..3);
    let reviews = mesh.reviews[version].choose(rng).expect("pods");
    let ratings = mesh.ratings.choose(rng).expect("pods");
    let via_gateway = rng.random_bool(0.7);
    let overflow = rng.random_bool(0.003);
    let calls_ratings = version > 0 && !overflow;
    let browser = *BROWSERS.choose(rng).expect("agents");
    let client_ip = mesh.clients.choose(rng).expect("clients").as_str();
    let path = match rng.random_range(0..20) {
        0..16 => "/productpage",
        16..19 => "/productpage?u=normal",
        _ => "/productpage?u=test",
    };

    // Durations inside out, so that every server span fits in its client span.
    let det_srv = dur(rng, 0.8, 6.0);
    let det_cli = det_srv + dur(rng, 0.2, 1.5);
    let rat_srv = dur(rng, 0.6, 4.0);
    let rat_cli = rat_srv + dur(rng, 0.2, 1.5);
    let (rev_pre, rev_post) = (dur(rng, 0.5, 3.0), dur(rng, 1.0, 10.0));
    let rev_srv = rev_pre + if calls_ratings { rat_cli } else { 0 } + rev_post;
    let rev_cli = if overflow {
        dur(rng, 0.05, 0.3)
    } else {
        rev_srv + dur(rng, 0.2, 1.5)
    };
    let (pp_pre, pp_gap, pp_post) = (dur(rng, 0.5, 3.0), dur(rng, 0.1, 1.0), dur(rng, 2.0, 15.0));
    let pp_srv = pp_pre + det_cli + pp_gap + rev_cli + pp_post;
    let gw_cli = pp_srv + dur(rng, 0.3, 2.0);
    let size = |v: usize| [295, 358, 375][v];
    let page_size = 4_294 + if version > 0 { 912 } else { 0 } + rng.random_range(0..40);

    let url = format!("http://bookinfo.example.com{path}");
    let (pp_id, pp_start, end) = if via_gateway {
        let gw = mesh.gateways.choose(&mut *b.rng).expect("pods");
        let (id, s) = b
            .hop(
                gw,
                pp,
                None,
                (start, gw_cli),
                Some(pp_srv),
                &url,
                browser,
                client_ip,
                page_size,
            )
            .expect("a server span");
        (id, s, start + gw_cli)
    } else {
        let r = Request {
            name: "productpage.default.svc.cluster.local:9080/*",
            url: &url,
            user_agent: browser,
            upstream_cluster: "inbound|9080||".into(),
            upstream_address: Some(format!("{}:9080", pp.ip)),
            peer_address: client_ip,
            status: 200,
            response_flags: None,
            response_size: page_size,
        };
        (
            b.span(pp, "server", None, start, pp_srv, &r),
            start,
            start + pp_srv,
        )
    };
    let py = "python-requests/2.31.0";
    let det_start = pp_start + pp_pre;
    b.hop(
        pp,
        details,
        Some(pp_id),
        (det_start, det_cli),
        Some(det_srv),
        "http://details:9080/details/0",
        py,
        &pp.ip,
        178,
    );
    let rev_start = det_start + det_cli + pp_gap;
    let rev = b.hop(
        pp,
        reviews,
        Some(pp_id),
        (rev_start, rev_cli),
        (!overflow).then_some(rev_srv),
        "http://reviews:9080/reviews/0",
        py,
        &pp.ip,
        size(version),
    );
    if let Some((rev_id, rev_srv_start)) = rev.filter(|_| calls_ratings) {
        let at = (rev_srv_start + rev_pre, rat_cli);
        let ua = "Apache-CXF/3.1.18";
        b.hop(
            reviews,
            ratings,
            Some(rev_id),
            at,
            Some(rat_srv),
            "http://ratings:9080/ratings/0",
            ua,
            &reviews.ip,
            48,
        );
    }
    (start, end)
}

/// Bookinfo traces until there are exactly `spans` spans (the last trace cut short), their
/// starts spread evenly over the `WINDOW` before `now_ns` in generation order (as a collector
/// would receive them). Each trace's spans are appended to `rows`; `each` then sees the trace
/// and `rows`.
fn bookinfo_traces(
    spans: usize,
    now_ns: i64,
    rows: &mut Vec<SpanRow>,
    mut each: impl FnMut(TraceInfo, &mut Vec<SpanRow>),
) {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mesh = Mesh::new(&mut rng);
    let window = WINDOW.as_nanos() as i64;
    let mut made = 0usize;
    while made < spans {
        let progress = made as f64 / spans as f64;
        let start = now_ns - window
            + (progress * (window - 60_000 * MS) as f64) as i64
            + rng.random_range(0..100 * MS);
        let trace_id = TraceId(rng.random::<u128>().max(1).to_be_bytes());
        let request_id = uuid(&mut rng);
        let mut b = TraceBuilder {
            rng: &mut rng,
            trace_id,
            request_id,
            spans: std::mem::take(rows),
        };
        let before = b.spans.len();
        let (start_ns, end_ns) = bookinfo_trace(&mesh, &mut b, start);
        let keep = (b.spans.len() - before).min(spans - made);
        b.spans.truncate(before + keep);
        *rows = b.spans;
        made += keep;
        let trace = TraceInfo {
            id: trace_id,
            spans: keep,
            start_ns,
            end_ns,
        };
        each(trace, rows);
    }
}

/// Generates exactly `spans` spans in batches of `batch` (see [`bookinfo_traces`]).
fn generate(spans: usize, batch: usize, now_ns: i64) -> Dataset {
    let mut traces = Vec::with_capacity(spans / 5);
    let mut batches = Vec::with_capacity(spans.div_ceil(batch));
    let mut to_batch = |rows: Vec<SpanRow>| {
        batches.push(spans_batch(&rows).expect("generated rows match the spans schema"));
    };
    let mut pending: Vec<SpanRow> = Vec::with_capacity(batch + 8);
    bookinfo_traces(spans, now_ns, &mut pending, |trace, pending| {
        traces.push(trace);
        while pending.len() >= batch {
            to_batch(pending.drain(..batch).collect());
        }
    });
    if !pending.is_empty() {
        to_batch(pending);
    }
    Dataset {
        batches,
        traces,
        spans,
    }
}

/// `spans` bookinfo spans in generation order, traces starting over the `WINDOW` before
/// `now_ns`: the rows `bench otlp` sends as OTLP.
pub(crate) fn bookinfo_spans(spans: usize, now_ns: i64) -> Vec<SpanRow> {
    let mut out = Vec::with_capacity(spans + 8);
    bookinfo_traces(spans, now_ns, &mut out, |_, _| {});
    out
}

// ---------------------------------------------------------------------------------------
// Helpers

/// `dir` when it is empty or new, else a temporary directory (removed when dropped).
fn bench_dir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(&d)?.next().is_some() {
                bail!(
                    "{} is not empty; the benchmark needs an empty or new directory",
                    d.display()
                );
            }
            Ok((d, None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("meshscope-bench-")
                .tempdir()?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn rfc3339(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

/// Nearest-rank percentile of sorted durations (`q` = 1.0 is the maximum).
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Memory by phase: RSS when a phase starts and its peak RSS, using the resettable
/// high-water mark (`5` written to /proc/self/clear_refs, Linux ≥ 4.0); where that is not
/// allowed, only the process's peak.
struct MemoryPhases {
    resettable: bool,
    peak: u64,
    /// (phase, RSS at its start, its peak), MiB.
    phases: Vec<(&'static str, u64, u64)>,
    current: Option<(&'static str, u64)>,
}

impl MemoryPhases {
    fn new() -> MemoryPhases {
        MemoryPhases {
            resettable: true,
            peak: 0,
            phases: Vec::new(),
            current: None,
        }
    }

    /// Ends the current phase, if any, and starts `name`.
    fn start(&mut self, name: &'static str) {
        self.finish();
        let rss = proc_status_mib("VmRSS:");
        self.resettable = self.resettable && std::fs::write("/proc/self/clear_refs", "5").is_ok();
        self.current = Some((name, rss));
    }

    fn finish(&mut self) {
        let hwm = proc_status_mib("VmHWM:");
        self.peak = self.peak.max(hwm);
        if let Some((name, rss)) = self.current.take() {
            self.phases.push((name, rss, hwm));
        }
    }
}

impl std::fmt::Display for MemoryPhases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peak RSS {} MiB", self.peak)?;
        if !self.resettable {
            return f.write_str(
                " (per-phase peaks unavailable: /proc/self/clear_refs is not writable)",
            );
        }
        f.write_str("; by phase, RSS at start → peak:")?;
        for (i, (name, rss, peak)) in self.phases.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{name} {rss} → {peak}")?;
        }
        f.write_str(" MiB")
    }
}

/// A `kB` field of /proc/self/status (`VmRSS:`, `VmHWM:`) in MiB; 0 where there is none.
fn proc_status_mib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) >> 10
}

// ---------------------------------------------------------------------------------------
// `meshscope bench lookup`: the trace APIs over many stored spans

/// Lookups of each kind measured warm; cold ones reopen the store each time.
const API_LOOKUPS: usize = 30;
const COLD_LOOKUPS: usize = 5;

/// Stores `spans` bookinfo spans plus one access-log row per span (what each sidecar logs,
/// without a trace id, as Istio's default format has none), flushes and (if `compact`)
/// compacts them, then
/// times the trace APIs through their HTTP handlers: `/api/v1/traces/{id}`,
/// `/api/v1/requests/{id}` and `/jaeger/api/traces/{id}`. Warm: the same engine, other ids.
/// Cold: a freshly opened store and engine (no Parquet footer verified or cached yet; the
/// OS page cache is not dropped). Every answer is checked against what was generated.
pub async fn lookup(spans: usize, dir: Option<PathBuf>, compact: bool) -> anyhow::Result<()> {
    use crate::traces::TraceService;
    ensure!(spans > 0, "--spans must be at least 1");
    let (root, _tmp) = bench_dir(dir)?;
    let mut cfg = StoreConfig::local(&root);
    // Loading is not what is measured here.
    cfg.fsync = FsyncPolicy::Never;
    if !compact {
        // No background compaction either, however long the loading takes.
        cfg.compaction_min_files = usize::MAX;
    }
    let store = Store::open(cfg.clone()).await?;
    let t = Instant::now();
    let data = generate(spans, 50_000, now_ns());
    println!(
        "generated {} spans in {} traces in {:.1} s; RSS {} MiB",
        data.spans,
        data.traces.len(),
        t.elapsed().as_secs_f64(),
        proc_status_mib("VmRSS:")
    );
    let mut rng = StdRng::seed_from_u64(SEED ^ 0x10_0c0b);
    // Whole traces only (the last one may be cut short).
    let whole = &data.traces[..data.traces.len().saturating_sub(1).max(1)];
    let sample: Vec<TraceInfo> = whole
        .choose_multiple(&mut rng, API_LOOKUPS + COLD_LOOKUPS)
        .copied()
        .collect();
    ensure!(!sample.is_empty(), "no traces were generated");
    let wanted: HashSet<TraceId> = sample.iter().map(|t| t.id).collect();
    let mut request_of: std::collections::HashMap<TraceId, String> = Default::default();

    let t = Instant::now();
    let mut rows = 0usize;
    for b in data.batches {
        let span_rows = crate::traces::spans_from_batches(std::slice::from_ref(&b))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for s in &span_rows {
            if wanted.contains(&s.trace_id)
                && let Some(r) = &s.request_id
            {
                request_of.entry(s.trace_id).or_insert_with(|| r.clone());
            }
        }
        let log: Vec<meshscope_schemas::rows::RequestRow> =
            span_rows.iter().map(access_log_row).collect();
        rows += log.len();
        append_retrying(&store, Table::Spans, b).await?;
        append_retrying(
            &store,
            Table::Requests,
            meshscope_schemas::rows::requests_batch(&log)?,
        )
        .await?;
    }
    store.flush().await?;
    let compacted = if compact {
        store.compact(true).await?
    } else {
        0
    };
    let files = |t: Table| {
        store
            .manifests(t)
            .iter()
            .map(|m| m.files.len())
            .sum::<usize>()
    };
    println!(
        "stored {} spans and {rows} access-log rows in {:.1} s; {compacted} hours compacted: {} span files, {} request files",
        data.spans,
        t.elapsed().as_secs_f64(),
        files(Table::Spans),
        files(Table::Requests),
    );
    store.shutdown().await?;
    drop(store);
    // Lookups run in a read-only follower, as in a `meshscope query` process.
    cfg.read_only = true;

    let limits = SqlLimits {
        timeout: Duration::from_secs(60),
        max_rows: 10_000,
    };
    let open = || async {
        let store = Store::open(cfg.clone()).await?;
        let svc = TraceService::new(QueryEngine::new(store.clone())?, limits);
        let app = crate::traces::router(svc.clone()).merge(crate::jaeger::router(svc.clone()));
        anyhow::Ok((store, svc, app))
    };
    let get = |app: axum::Router, uri: String| async move {
        use tower::ServiceExt;
        let t = Instant::now();
        let resp = app
            .oneshot(axum::http::Request::get(&uri).body(axum::body::Body::empty())?)
            .await?;
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
        let elapsed = t.elapsed();
        ensure!(
            status.is_success(),
            "{uri}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        anyhow::Ok((elapsed, v))
    };
    let check_trace = |t: &TraceInfo, v: &serde_json::Value| -> anyhow::Result<()> {
        ensure!(
            v["span_count"].as_u64() == Some(t.spans as u64),
            "trace {} has {} spans, the API showed {}",
            t.id,
            t.spans,
            v["span_count"]
        );
        Ok(())
    };
    let request_uri = |t: &TraceInfo| -> anyhow::Result<String> {
        let r = request_of
            .get(&t.id)
            .context("a sampled trace without a request id")?;
        Ok(format!("/api/v1/requests/{r}"))
    };

    // Cold: each on a freshly opened store.
    let (cold, warm) = sample.split_at(COLD_LOOKUPS.min(sample.len() - 1));
    let mut cold_trace = Vec::new();
    let mut cold_request = Vec::new();
    for t in cold {
        let (store, _svc, app) = open().await?;
        let (d, v) = get(app.clone(), format!("/api/v1/traces/{}", t.id)).await?;
        check_trace(t, &v)?;
        cold_trace.push(d);
        drop((store, app));
        let (store, _svc, app) = open().await?;
        let (d, v) = get(app, request_uri(t)?).await?;
        check_trace(t, &v["traces"][0])?;
        ensure!(v["access_log"].as_array().map(Vec::len) == Some(t.spans));
        cold_request.push(d);
        drop(store);
    }

    // Warm: one engine, other ids.
    let (store, svc, app) = open().await?;
    get(app.clone(), format!("/api/v1/traces/{}", cold[0].id)).await?;
    let (mut by_trace, mut by_request, mut jaeger) = (Vec::new(), Vec::new(), Vec::new());
    let before = (store.status(), svc.scan_figures());
    for t in warm {
        let (d, v) = get(app.clone(), format!("/api/v1/traces/{}", t.id)).await?;
        check_trace(t, &v)?;
        by_trace.push(d);
    }
    let mid = (store.status(), svc.scan_figures());
    for t in warm {
        let (d, v) = get(app.clone(), request_uri(t)?).await?;
        check_trace(t, &v["traces"][0])?;
        ensure!(
            v["access_log"].as_array().map(Vec::len) == Some(t.spans),
            "one access-log row per span"
        );
        by_request.push(d);
    }
    let after = (store.status(), svc.scan_figures());
    for t in warm {
        let (d, v) = get(app.clone(), format!("/jaeger/api/traces/{}", t.id)).await?;
        ensure!(v["data"][0]["spans"].as_array().map(Vec::len) == Some(t.spans));
        jaeger.push(d);
    }
    for v in [
        &mut cold_trace,
        &mut cold_request,
        &mut by_trace,
        &mut by_request,
        &mut jaeger,
    ] {
        v.sort_unstable();
    }
    let n = warm.len() as u64;
    let per = |a: u64, b: u64| (a - b) as f64 / n as f64;
    println!(
        "per trace lookup: {:.1} of {:.1} span files scanned, {:.0} bytes scanned; per request-id lookup \
         (requests + spans by request id, then the trace): {:.1} of {:.1} files scanned, {:.0} bytes, \
         {:.1} row groups pruned by bloom filters",
        per(mid.0.files_scanned, before.0.files_scanned),
        per(mid.0.files_considered, before.0.files_considered),
        per(mid.1.bytes_scanned, before.1.bytes_scanned),
        per(after.0.files_scanned, mid.0.files_scanned),
        per(after.0.files_considered, mid.0.files_considered),
        per(after.1.bytes_scanned, mid.1.bytes_scanned),
        per(
            after.1.row_groups_pruned_by_bloom_filter,
            mid.1.row_groups_pruned_by_bloom_filter
        ),
    );
    let line = |what: &str, l: &[Duration]| {
        println!(
            "{what:<36} p50 {:>7.1}  p95 {:>7.1}  max {:>7.1} ms  ({} lookups)",
            ms(percentile(l, 0.5)),
            ms(percentile(l, 0.95)),
            ms(percentile(l, 1.0)),
            l.len()
        );
    };
    println!();
    println!(
        "meshscope lookup benchmark ({} spans, {} traces, {rows} access-log rows; goal ≤ {GOAL_LOOKUP_MS} ms warm)",
        data.spans,
        data.traces.len()
    );
    line("trace by id, warm", &by_trace);
    line("trace by id, cold", &cold_trace);
    line("request id (trace + access log), warm", &by_request);
    line("request id, cold", &cold_request);
    line("jaeger trace by id, warm", &jaeger);
    drop(store);
    Ok(())
}

async fn append_retrying(store: &Store, table: Table, b: RecordBatch) -> anyhow::Result<()> {
    loop {
        match store.append(table, b.clone()).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Overloaded(_, wait)) => tokio::time::sleep(wait).await,
            Err(e) => return Err(anyhow::Error::from(e).context("append failed")),
        }
    }
}

/// The access-log line the sidecar that reported `s` writes for the same request.
fn access_log_row(s: &SpanRow) -> meshscope_schemas::rows::RequestRow {
    let pod = s
        .node_id
        .as_deref()
        .and_then(meshscope_schemas::envoy::IstioNodeId::parse);
    let outbound = s
        .upstream_cluster
        .as_deref()
        .and_then(meshscope_schemas::envoy::IstioCluster::parse);
    use meshscope_schemas::rows::Text;
    let t = |v: &Option<String>| v.as_deref().map(Text::from);
    meshscope_schemas::rows::RequestRow {
        start_time_unix_nano: s.start_time_unix_nano,
        method: t(&s.http_method),
        path: s
            .http_url
            .as_deref()
            .and_then(|u| u.splitn(4, '/').nth(3))
            .map(|p| Text::from(format!("/{p}"))),
        protocol: t(&s.http_protocol),
        response_code: s.http_status_code.unwrap_or(0),
        response_flags: t(&s.response_flags),
        bytes_sent: s
            .attributes
            .iter()
            .find(|(k, _)| k == "response_size")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0),
        duration_ms: s.duration_ns / MS,
        user_agent: t(&s.user_agent),
        request_id: t(&s.request_id),
        upstream_host: t(&s.upstream_address),
        upstream_cluster: t(&s.upstream_cluster),
        downstream_remote_address: t(&s.peer_address),
        route_name: Some("default".into()),
        reporter: Some(
            if s.kind == "client" {
                "source"
            } else {
                "destination"
            }
            .into(),
        ),
        request_protocol: Some("http".into()),
        proxy: pod.as_ref().map(|p| p.pod.as_str().into()),
        destination_service: outbound.as_ref().and_then(|c| t(&c.host)),
        destination_service_name: outbound
            .as_ref()
            .and_then(|c| c.service_name().map(Text::from)),
        destination_subset: outbound.as_ref().and_then(|c| t(&c.subset)),
        destination_port: outbound.as_ref().and_then(|c| c.port),
        log_source: Some("push".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn generated_traces_are_bookinfo_shaped() {
        let now = 1_764_120_600_000_000_000;
        let d = generate(10_007, 500, now);
        assert_eq!(d.spans, 10_007);
        assert_eq!(
            d.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            10_007
        );
        assert!(d.batches.iter().all(|b| b.num_rows() <= 500));
        assert_eq!(d.traces.iter().map(|t| t.spans).sum::<usize>(), 10_007);
        let whole = &d.traces[..d.traces.len() - 1];
        assert!(
            whole.iter().all(|t| (4..=8).contains(&t.spans)),
            "4 to 8 spans per trace"
        );
        assert!(
            d.traces
                .iter()
                .all(|t| t.start_ns >= now - WINDOW.as_nanos() as i64 && t.end_ns <= now)
        );

        // Every server span lies inside its parent client span.
        let mut by_id = HashMap::new();
        for b in &d.batches {
            let ids = b
                .column_by_name("span_id")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::FixedSizeBinaryArray>()
                .unwrap();
            let starts = b
                .column_by_name("start_time")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::TimestampNanosecondArray>()
                .unwrap();
            let durs = b
                .column_by_name("duration_ns")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            let parents = b
                .column_by_name("parent_span_id")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::FixedSizeBinaryArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                let parent =
                    arrow::array::Array::is_valid(parents, i).then(|| parents.value(i).to_vec());
                by_id.insert(
                    ids.value(i).to_vec(),
                    (starts.value(i), durs.value(i), parent),
                );
            }
        }
        for (start, dur, parent) in by_id.values() {
            assert!(*dur > 0);
            if let Some((ps, pd, _)) = parent.as_ref().and_then(|p| by_id.get(p)) {
                assert!(
                    *start >= *ps && start + dur <= ps + pd,
                    "a child span lies inside its parent"
                );
            }
        }
    }
}
