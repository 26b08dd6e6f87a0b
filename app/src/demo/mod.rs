//! `meshscope demo`: the all-in-one server plus a bookinfo traffic simulator that plays the
//! Istio tutorials on a repeating timeline (`timeline`) over the testkit's bookinfo mesh.
//!
//! The simulator (`sim`) decides every request from a seed; the driver here pushes what the
//! sidecars would have written through the real ingest paths over loopback HTTP (`client`):
//! Istio text access-log lines, Envoy Prometheus stats and OTLP/HTTP protobuf spans. It keeps
//! its own counts per phase and serves them at `GET /api/v1/demo`, so the stored data can be
//! checked against them.
//!
//! Stats samples are stamped by the server when they arrive, so the driver plays requests up
//! to half a second ahead of the clock but never across a phase boundary before the boundary
//! is reached: a counter sample taken inside a phase's window then counts exactly that
//! phase's requests (`upstream_rq_pending_overflow` over the breaker phase equals its `UO`
//! lines).

pub mod client;
pub mod emit;
pub mod sim;
pub mod timeline;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};
use tracing::warn;

use meshscope_query::api::time::now_ns;

use crate::config::ServerConfig;
use crate::server::{self, Bound, Extras};
use crate::status::Role;
use client::Pusher;
use meshscope_testkit::bookinfo::PODS;
use sim::{PhaseRun, Simulator};
use timeline::{Phase, Slot};

/// How often the driver plays and pushes.
const TICK: Duration = Duration::from_millis(250);
/// How often every proxy's stats are pushed (and at every phase end).
const STATS_EVERY: Duration = Duration::from_secs(2);

/// What `/api/v1/demo` shows; updated by the driver after each step.
#[derive(Default)]
struct Shared {
    seed: u64,
    speed: f64,
    started: Option<i64>,
    phase_seconds: i64,
    current: Option<Slot>,
    runs: std::collections::BTreeMap<usize, PhaseRun>,
    pushes_ok: u64,
    pushes_failed: u64,
    last_error: Option<String>,
}

#[derive(Clone, Default)]
pub struct DemoState(Arc<Mutex<Shared>>);

impl DemoState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole report: settings, the current phase, and the latest run of every phase.
    pub fn report(&self) -> Value {
        let s = self.lock();
        let phases: Vec<Value> = Phase::ALL
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({
                    "index": i,
                    "name": p.name(),
                    "description": p.description(),
                    "last": s.runs.get(&i),
                })
            })
            .collect();
        json!({
            "seed": s.seed,
            "speed": s.speed,
            "started": s.started,
            "phase_seconds": s.phase_seconds,
            "cycle_seconds": s.phase_seconds * Phase::ALL.len() as i64,
            "cycle": s.current.map(|c| c.cycle),
            "phase": s.current.map(current_json),
            "phases": phases,
            "pushes": {"ok": s.pushes_ok, "failed": s.pushes_failed, "last_error": s.last_error},
        })
    }

    /// The short form shown in `/api/v1/status`.
    pub fn status(&self) -> Value {
        let s = self.lock();
        json!({"seed": s.seed, "speed": s.speed, "phase": s.current.map(current_json)})
    }
}

fn current_json(c: Slot) -> Value {
    json!({
        "index": c.index,
        "name": c.phase.name(),
        "description": c.phase.description(),
        "cycle": c.cycle,
        "from": c.from_s,
        "to": c.to_s,
    })
}

pub fn routes(state: DemoState) -> Router {
    Router::new().route(
        "/api/v1/demo",
        get(move || {
            let s = state.clone();
            async move { axum::Json(s.report()) }
        }),
    )
}

/// Runs `serve` with the simulator until SIGINT/SIGTERM.
pub async fn run(cfg: ServerConfig, speed: f64, seed: Option<u64>) -> anyhow::Result<()> {
    let seed = seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    let state = DemoState::default();
    {
        let mut s = state.lock();
        s.seed = seed;
        s.speed = speed;
    }
    let token = cfg.auth.ingest_token();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let status = state.clone();
    let extras = Extras {
        routes: Some(routes(state.clone())),
        demo_status: Some(Arc::new(move || status.status())),
        ready: Some(ready_tx),
    };
    let server = tokio::spawn(server::run_with(
        Role::AllInOne,
        cfg,
        server::shutdown_signal(),
        extras,
    ));
    let Ok(bound) = ready_rx.await else {
        // the server stopped before listening: its error says why
        return server.await?;
    };
    println!(
        "meshscope demo: bookinfo simulator (seed {seed}, speed {speed}); open http://{}/",
        display_addr(bound.api)
    );
    if token.is_some() {
        // never the token itself: stdout often ends up in logs
        println!(
            "meshscope demo: the UI asks for a token (one of --auth-token-file's), or open http://{}/#token=<token>",
            display_addr(bound.api)
        );
    }
    let driver = tokio::spawn(drive(bound, speed, seed, state, token));
    let result = server.await;
    driver.abort();
    result?
}

fn display_addr(a: std::net::SocketAddr) -> String {
    if a.ip().is_unspecified() {
        format!("127.0.0.1:{}", a.port())
    } else {
        a.to_string()
    }
}

/// The driver: step the simulator with the clock and push each step.
async fn drive(bound: Bound, speed: f64, seed: u64, state: DemoState, token: Option<String>) {
    let pusher = Pusher::new(bound.api, bound.otlp_http, token);
    // Start on the next whole second so phases cover whole rollup buckets.
    let start_s = now_ns() / 1_000_000_000 + 1;
    let mut sim = Simulator::new(seed, speed, start_s);
    {
        let mut s = state.lock();
        s.started = Some(start_s);
        s.phase_seconds = sim.timeline.phase_secs;
    }
    // Every proxy's stats first: the address book then knows every pod before any line.
    push_stats(&pusher, &sim, now_ns(), &state).await;
    let mut last_stats = tokio::time::Instant::now();
    loop {
        let now = now_ns();
        let cursor = sim.cursor_ns();
        if now < cursor {
            tokio::time::sleep(Duration::from_nanos((cursor - now) as u64)).await;
            continue;
        }
        if now - cursor > 30_000_000_000 {
            warn!(
                behind_s = (now - cursor) / 1_000_000_000,
                "demo: the simulator fell behind the clock; skipping ahead"
            );
            sim.skip_to(now);
            continue;
        }
        // Up to two ticks ahead, but a phase's last step ends exactly on its boundary and
        // happens at least a tick before it, so its stats arrive inside the phase.
        let tick = TICK.as_nanos() as i64;
        let end = sim.phase_end_ns();
        let target = if end - (now + tick) > tick {
            now + tick
        } else {
            end
        };
        let batch = sim.advance(target);
        for slot in &batch.entered {
            println!(
                "meshscope demo: phase {}/{} {} (cycle {}, {} s): {}",
                slot.index + 1,
                Phase::ALL.len(),
                slot.phase.name(),
                slot.cycle,
                slot.to_s - slot.from_s,
                slot.phase.description()
            );
        }
        push_batch(&pusher, batch, &state).await;
        if target == end || last_stats.elapsed() >= STATS_EVERY {
            push_stats(&pusher, &sim, target.min(now_ns()), &state).await;
            last_stats = tokio::time::Instant::now();
        }
        {
            let mut s = state.lock();
            s.current = sim.current();
            s.runs = sim.runs.clone();
        }
        tokio::time::sleep(TICK).await;
    }
}

fn record(state: &DemoState, r: Result<(), String>) {
    let mut s = state.lock();
    match r {
        Ok(()) => s.pushes_ok += 1,
        Err(e) => {
            warn!(error = %e, "demo: a push failed");
            s.pushes_failed += 1;
            s.last_error = Some(e);
        }
    }
}

async fn push_batch(pusher: &Pusher, batch: sim::Batch, state: &DemoState) {
    // Lines of all proxies concurrently; spans after them in one OTLP request.
    let logs = batch
        .lines
        .iter()
        .map(|(pod, lines)| pusher.access_log(&PODS[*pod], lines));
    for r in futures::future::join_all(logs).await {
        record(state, r);
    }
    if !batch.spans.is_empty() {
        let spans = batch
            .spans
            .into_iter()
            .map(|(pod, s)| (&PODS[pod], s))
            .collect();
        record(state, pusher.spans(spans).await);
    }
}

async fn push_stats(pusher: &Pusher, sim: &Simulator, t_ns: i64, state: &DemoState) {
    let pushes = (0..PODS.len()).map(|i| pusher.stats(&PODS[i], sim.stats_text(i, t_ns)));
    for r in futures::future::join_all(pushes).await {
        record(state, r);
    }
}
