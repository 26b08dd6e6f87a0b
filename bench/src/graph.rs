//! `meshscope bench graph`: service-graph latency over rollups holding an hour of traffic.
//!
//! Builds the rollups the way the server does (requests batches folded in per bucket), with
//! `rps` requests per second for `minutes` minutes spread over `edges` edges (each a
//! source workload → destination workload call, seen by both reporters, with a few response
//! codes and flags), then times `GET /api/v1/graph`'s work (`graph::build` over the whole
//! hour) and prints p50/p99 latency, rollup size and memory.

use std::time::{Duration, Instant};

use meshscope_schemas::Table;
use meshscope_schemas::rows::{RequestRow, requests_batch};

use meshscope_query::graph::{GraphQuery, GraphType, HealthConfig, Phases, build_timed};
use meshscope_query::rollup::{RollupConfig, Rollups};

use crate::proc_status_mib;

/// Runs the benchmark for each edge count and prints one line per configuration.
pub fn graph(edges: &[usize], rps: usize, minutes: usize, iterations: usize) -> anyhow::Result<()> {
    println!(
        "graph benchmark: {rps} rps for {minutes} min ({} requests), window = the whole span, ending 25 min into an hour (5 + 5 one-minute and 5 ten-minute buckets), {iterations} iterations",
        rps * minutes * 60
    );
    for &n in edges {
        run_one(n, rps, minutes, iterations)?;
    }
    Ok(())
}

// Long on purpose: a benchmark reads best top to bottom as the run it performs (fill the
// rollups, time the builds, time the Prometheus panels, print), with its figures in locals.
fn run_one(edges: usize, rps: usize, minutes: usize, iterations: usize) -> anyhow::Result<()> {
    // The window ends 25 minutes into an hour that ended before now: an hour-long window then
    // reads 5 one-minute, 5 ten-minute and 5 one-minute buckets, as any window not on a
    // 10-minute boundary does. A window ending at the wall clock would make each run differ
    // (one on a 10-minute boundary reads 6 buckets, one on the hour 1).
    let wall = meshscope_query::rollup::now_secs();
    let now = wall - wall.rem_euclid(3600) - 35 * 60;
    let start = now - (minutes as i64) * 60;
    let rollups = Rollups::start(RollupConfig {
        resolution: Duration::from_secs(60),
        retention: Duration::from_secs(7 * 24 * 3600),
    });
    rollups.mark_loaded();
    // Sources: 1 per 10 edges, so 50 edges look like a mesh of ~60 workloads.
    let sources = (edges / 10).max(1);
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let rss_before = proc_status_mib("VmRSS:");
    let fold_started = Instant::now();
    let mut rows_total = 0usize;
    let per_sec = rps;
    let mut batch: Vec<RequestRow> = Vec::with_capacity(per_sec * 10);
    for sec in 0..(minutes * 60) {
        let t = (start + sec as i64) * 1_000_000_000;
        for i in 0..per_sec {
            let e = (next() as usize) % edges;
            let src = e % sources;
            let r = next();
            let (code, flags) = match r % 100 {
                0..=1 => (503, Some("UO")),
                2..=3 => (503, Some("FI")),
                4..=6 => (500, None),
                7..=9 => (404, None),
                _ => (200, None),
            };
            let local = flags.is_some();
            let mut row = RequestRow {
                start_time_unix_nano: t + (i as i64) * 1000,
                response_code: code,
                response_flags: flags.map(Into::into),
                duration_ms: (next() % 200) as i64 + if r % 50 == 0 { 1000 } else { 1 },
                bytes_received: 100,
                bytes_sent: 1000 + (r % 500) as i64,
                reporter: Some(
                    if local || r % 2 == 0 {
                        "source"
                    } else {
                        "destination"
                    }
                    .into(),
                ),
                request_protocol: Some("http".into()),
                source_namespace: Some("bench".into()),
                source_workload: Some(format!("client-{src}").into()),
                source_app: Some(format!("client-{src}").into()),
                source_version: Some("v1".into()),
                destination_service: Some(format!("svc-{e}.bench.svc.cluster.local").into()),
                destination_service_name: Some(format!("svc-{e}").into()),
                ..Default::default()
            };
            if !local {
                row.destination_namespace = Some("bench".into());
                row.destination_workload = Some(format!("svc-{e}-v1").into());
                row.destination_app = Some(format!("svc-{e}").into());
                row.destination_version = Some("v1".into());
            }
            batch.push(row);
        }
        if batch.len() >= per_sec * 10 || sec + 1 == minutes * 60 {
            rows_total += batch.len();
            rollups.fold(Table::Requests, &requests_batch(&batch)?);
            batch.clear();
        }
    }
    let fold = fold_started.elapsed();
    let (buckets, label_sets) = {
        let st = rollups.read();
        (st.edges.len(), st.edges.label_sets())
    };
    let q = GraphQuery {
        from_ns: start * 1_000_000_000,
        to_ns: now * 1_000_000_000,
        graph_type: GraphType::Workload,
        namespaces: vec![],
        include_idle: false,
        inject_service_nodes: true,
        health: HealthConfig::default(),
    };
    let mut times = Vec::with_capacity(iterations);
    let mut phases = Vec::with_capacity(iterations);
    let mut shown = (0, 0);
    for _ in 0..iterations.max(1) {
        let t = Instant::now();
        let st = rollups.read();
        let (g, p) = build_timed(&st, 60, &q);
        let before_json = t.elapsed();
        let body: usize = meshscope_query::graph::to_json_chunks(&g)?
            .iter()
            .map(Vec::len)
            .sum();
        times.push(t.elapsed());
        phases.push((p, times[times.len() - 1] - before_json));
        shown = (g.edges.len(), body);
    }
    // The first build is shown apart: it faults in the memory the later ones reuse.
    let first = times[0];
    if times.len() > 1 {
        times.remove(0);
    }
    times.sort();
    let pct = |p: f64, times: &[Duration]| {
        times[((p * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1]
    };
    println!(
        "{edges:>6} edges: folded {rows_total} rows in {:.2} s ({:.0} rows/s); rollups {buckets} buckets, {label_sets} label sets, +{} MiB RSS; graph of the hour ({} edges drawn, {} KiB JSON): first {:.1} ms, then p50 {:.1} ms, p99 {:.1} ms",
        fold.as_secs_f64(),
        rows_total as f64 / fold.as_secs_f64(),
        proc_status_mib("VmRSS:").saturating_sub(rss_before),
        shown.0,
        shown.1 >> 10,
        first.as_secs_f64() * 1e3,
        pct(0.5, &times).as_secs_f64() * 1e3,
        pct(0.99, &times).as_secs_f64() * 1e3,
    );
    let median = |f: &dyn Fn(&(Phases, Duration)) -> Duration| {
        let mut v: Vec<Duration> = phases.iter().map(f).collect();
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!(
        "{edges:>6} edges: graph phases (medians): window {:.1} ms, fold {:.1} ms, edges {:.1} ms, rest {:.1} ms, JSON {:.1} ms",
        median(&|p| p.0.window),
        median(&|p| p.0.fold),
        median(&|p| p.0.edges),
        median(&|p| p.0.rest),
        median(&|p| p.1),
    );
    // Istio's service dashboard: request rate and p95 of one service, 1 h at a 15 s step
    let service = "svc-1.bench.svc.cluster.local";
    for (panel, q) in [
        (
            "request rate",
            format!(
                "round(sum(irate(istio_requests_total{{reporter=~\"source|destination\",destination_service=~\"{service}\"}}[1m])), 0.001)"
            ),
        ),
        (
            "p95 latency",
            format!(
                "histogram_quantile(0.95, sum(irate(istio_request_duration_milliseconds_bucket{{reporter=~\"source|destination\",destination_service=~\"{service}\"}}[1m])) by (le))"
            ),
        ),
    ] {
        let expr = promql_parser::parser::parse(&q).map_err(anyhow::Error::msg)?;
        let mut times = Vec::new();
        let mut points = 0;
        for _ in 0..iterations.max(1) {
            let t = Instant::now();
            let mut sels = Vec::new();
            meshscope_query::prom::eval::selectors(&expr, &mut sels)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut map = std::collections::HashMap::new();
            {
                let st = rollups.read();
                for (vs, _) in sels {
                    let name = vs.name.clone().unwrap_or_default();
                    let series =
                        meshscope_query::prom::series::rollup_series(&st, 60, &name, &vs.matchers)
                            .unwrap_or_default();
                    map.insert(meshscope_query::prom::eval::selector_key(&vs), series);
                }
            }
            let ev = meshscope_query::prom::eval::Evaluator {
                series: map,
                now_ms: now * 1000,
                deadline: None,
            };
            let out = meshscope_query::prom::eval_range(
                &ev,
                &expr,
                start * 1000,
                now * 1000,
                15_000,
                None,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let _ = serde_json::to_vec(&out.iter().collect::<Vec<_>>())?;
            times.push(t.elapsed());
            points = out.values().map(Vec::len).sum();
        }
        times.sort();
        println!(
            "{edges:>6} edges: Prometheus query_range 1 h / 15 s, Istio service dashboard {panel} ({points} points): p50 {:.1} ms, p99 {:.1} ms",
            pct(0.5, &times).as_secs_f64() * 1e3,
            pct(0.99, &times).as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
