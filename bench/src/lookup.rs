//! `meshscope bench lookup`: the trace APIs over many stored spans and access-log rows.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use arrow::array::RecordBatch;
use meshscope_query::api::time::now_ns;
use meshscope_query::sql::{QueryEngine, SqlLimits};
use meshscope_schemas::rows::SpanRow;
use meshscope_schemas::{Table, TraceId};
use meshscope_storage::{FsyncPolicy, Store, StoreConfig, StoreError};
use meshscope_testkit::spans::{SEED, TraceInfo, generate};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use crate::storage::{GOAL_LOOKUP_MS, MS};
use crate::{bench_dir, ms, percentile, proc_status_mib};

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
// Long on purpose: a benchmark reads best top to bottom as the run it performs (load, then
// cold lookups, warm lookups, the report), with its figures in locals.
pub async fn lookup(spans: usize, dir: Option<PathBuf>, compact: bool) -> anyhow::Result<()> {
    use meshscope_query::traces::TraceService;
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
    let t = Instant::now();
    let (rows, request_of) = load(&store, data.batches, &wanted).await?;
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
        ..SqlLimits::default()
    };
    let open = || async {
        let store = Store::open(cfg.clone()).await?;
        let svc = TraceService::new(QueryEngine::new(store.clone())?, limits);
        let app = meshscope_query::traces::router(svc.clone())
            .merge(meshscope_query::jaeger::router(svc.clone()));
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
    println!();
    println!(
        "meshscope lookup benchmark ({} spans, {} traces, {rows} access-log rows; goal ≤ {GOAL_LOOKUP_MS} ms warm)",
        data.spans,
        data.traces.len()
    );
    for (what, l) in [
        ("trace by id, warm", &by_trace),
        ("trace by id, cold", &cold_trace),
        ("request id (trace + access log), warm", &by_request),
        ("request id, cold", &cold_request),
        ("jaeger trace by id, warm", &jaeger),
    ] {
        println!(
            "{what:<36} p50 {:>7.1}  p95 {:>7.1}  max {:>7.1} ms  ({} lookups)",
            ms(percentile(l, 0.5)),
            ms(percentile(l, 0.95)),
            ms(percentile(l, 1.0)),
            l.len()
        );
    }
    drop(store);
    Ok(())
}

/// Appends the span batches and one access-log row per span; returns the rows appended and
/// the request id of each `wanted` trace.
async fn load(
    store: &Store,
    batches: Vec<RecordBatch>,
    wanted: &HashSet<TraceId>,
) -> anyhow::Result<(usize, HashMap<TraceId, String>)> {
    let mut request_of: HashMap<TraceId, String> = HashMap::new();
    let mut rows = 0usize;
    for b in batches {
        let span_rows = meshscope_schemas::rows::spans_from_batches(std::slice::from_ref(&b))
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
        append_retrying(store, Table::Spans, b).await?;
        append_retrying(
            store,
            Table::Requests,
            meshscope_schemas::rows::requests_batch(&log)?,
        )
        .await?;
    }
    Ok((rows, request_of))
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
