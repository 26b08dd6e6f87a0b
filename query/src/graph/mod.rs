//! The service graph: rollups of a time window → nodes and edges with RED numbers, the
//! canary split, latency percentiles, response codes × Envoy flags, circuit-breaker state and
//! health, as a petgraph `DiGraph` (layered left to right for drawing).
//!
//! Kiali's rules: destination-reported rows are preferred; source-reported rows count only
//! for requests the destination never saw (local replies: `UO`, `UH`, `NR`, `FI`, …), or for
//! a (source workload, destination service) pair no destination proxy reported at all.

pub mod api;
pub mod render;

mod acc;
mod breaker;
mod build;
mod json;

use acc::*;
use breaker::*;
use build::*;
pub use json::to_json_chunks;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::time::Duration;

use meshscope_schemas::envoy::{IstioCluster, response_flag_meaning};
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::rollup::breaker::{
    BreakerSeries, CX_OVERFLOW, EJECTIONS_ACTIVE, EJECTIONS_ENFORCED, OVERFLOW_COUNTERS,
    PENDING_OVERFLOW, SeriesKey, is_open_gauge,
};
use crate::rollup::edges::{EdgeAgg, EdgeKey, FastMap, FastSet, KeyId, Label, service_namespace};
use crate::rollup::sketch::UnionQuantiles;
use crate::rollup::{LatencySketch, RollupState};

/// Kiali's graph types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphType {
    Workload,
    App,
    VersionedApp,
    Service,
}

impl GraphType {
    pub fn parse(s: &str) -> Option<GraphType> {
        Some(match s {
            "workload" => GraphType::Workload,
            "app" => GraphType::App,
            "versioned_app" | "versionedApp" => GraphType::VersionedApp,
            "service" => GraphType::Service,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GraphType::Workload => "workload",
            GraphType::App => "app",
            GraphType::VersionedApp => "versioned_app",
            GraphType::Service => "service",
        }
    }
}

/// Kiali's default health thresholds, in percent of requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HealthConfig {
    /// 5xx (and code 0: no response) above this → degraded (0: any 5xx).
    pub degraded_5xx: f64,
    /// 5xx at or above this → failure.
    pub failure_5xx: f64,
    pub degraded_4xx: f64,
    pub failure_4xx: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            degraded_5xx: 0.0,
            failure_5xx: 10.0,
            degraded_4xx: 10.0,
            failure_4xx: 20.0,
        }
    }
}

impl HealthConfig {
    /// Parses `5xx=0:10,4xx=10:20` (degraded:failure percentages).
    pub fn parse(s: &str) -> Result<HealthConfig, String> {
        let mut h = HealthConfig::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (class, th) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected 5xx=<degraded>:<failure>"))?;
            let (d, f) = th
                .split_once(':')
                .ok_or_else(|| format!("`{part}`: expected <degraded>:<failure>"))?;
            let num = |v: &str| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| (0.0..=100.0).contains(x))
                    .ok_or_else(|| format!("`{part}`: `{v}` is not a percentage 0…100"))
            };
            let (d, f) = (num(d)?, num(f)?);
            if d > f {
                return Err(format!("`{part}`: degraded is above failure"));
            }
            match class.trim() {
                "5xx" => (h.degraded_5xx, h.failure_5xx) = (d, f),
                "4xx" => (h.degraded_4xx, h.failure_4xx) = (d, f),
                c => return Err(format!("`{c}`: expected 5xx or 4xx")),
            }
        }
        Ok(h)
    }

    fn rate_health(&self, rate: f64, degraded: f64, failure: f64) -> Health {
        if rate > 0.0 && rate >= failure {
            Health::Failure
        } else if rate > degraded || (degraded > 0.0 && rate >= degraded) {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }

    pub fn health(&self, requests: u64, errors_5xx: u64, errors_4xx: u64) -> Health {
        if requests == 0 {
            return Health::Idle;
        }
        let pct = |n: u64| 100.0 * n as f64 / requests as f64;
        self.rate_health(pct(errors_5xx), self.degraded_5xx, self.failure_5xx)
            .max(self.rate_health(pct(errors_4xx), self.degraded_4xx, self.failure_4xx))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Idle,
    Healthy,
    Degraded,
    Failure,
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct GraphQuery {
    pub from_ns: i64,
    pub to_ns: i64,
    pub graph_type: GraphType,
    /// Empty: all namespaces. Otherwise edges touching one of these.
    pub namespaces: Vec<String>,
    pub include_idle: bool,
    /// Kiali's default: a service node between a caller and the workloads behind the service,
    /// so `source → service` carries everything the caller sent (local replies included) and
    /// `service → workload` edges carry the split across versions.
    pub inject_service_nodes: bool,
    pub health: HealthConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: String,
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub app: Option<String>,
    pub version: Option<String>,
    pub service: Option<String>,
    pub health: Health,
    /// Requests into and out of the node in the window.
    pub requests_in: u64,
    pub requests_out: u64,
    pub errors_in: u64,
    /// Layer for a left-to-right layout: 0 for nodes nothing calls.
    pub rank: usize,
    #[serde(skip)]
    in_5xx: u64,
    #[serde(skip)]
    in_4xx: u64,
    #[serde(skip)]
    out_requests_5xx: (u64, u64, u64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub avg: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Latency {
    /// From the p50, p95 and p99 of the union of an edge's sketches, their count, and the
    /// duration sum.
    fn of(([p50, p95, p99], n): ([Option<f64>; 3], u64), sum: f64) -> Latency {
        let [p50, p95, p99] = [p50, p95, p99].map(|v| v.map(round3));
        Latency {
            avg: (n > 0).then(|| round3(sum / n as f64)),
            p50,
            p95,
            p99,
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[derive(Debug, Clone, Serialize)]
pub struct FlagCount {
    pub count: u64,
    pub meaning: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct CodeFlags {
    pub code: u16,
    pub flags: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CircuitBreaker {
    pub tripped: bool,
    /// Requests the breaker refused: the increase of upstream_rq_pending_overflow +
    /// upstream_rq_retry_overflow of the source proxies' clusters for the destination service.
    pub overflow: f64,
    pub pending_overflow: f64,
    /// Connections the breaker refused (upstream_cx_overflow): the requests waited instead.
    pub cx_overflow: f64,
    /// Requests answered `UO` (upstream overflow) in the access logs.
    pub uo_responses: u64,
    /// A `circuit_breakers.*_open` gauge was 1 in the window.
    pub open: bool,
    pub open_gauges: Vec<String>,
    /// Outlier ejections enforced in the window, and the most hosts ejected at once.
    pub ejections: f64,
    pub ejections_active_max: f64,
    /// Requests answered `UH` (no healthy upstream).
    pub uh_responses: u64,
    /// The clusters whose stats fed this.
    pub clusters: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultInjection {
    /// Requests aborted by fault injection (`FI`).
    pub aborted: u64,
    /// Requests delayed by fault injection (`DI`).
    pub delayed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    pub protocol: String,
    /// The destination service most of this edge's requests went to.
    pub destination_service: Option<String>,
    pub requests: u64,
    pub rps: f64,
    pub errors: u64,
    pub errors_5xx: u64,
    pub errors_4xx: u64,
    pub error_rate: f64,
    /// This edge's share of its source's requests to `destination_service` (the canary split).
    pub traffic_share: f64,
    pub latency_ms: Latency,
    /// Latency as each side measured it, when both reported.
    pub latency_ms_by_reporter: BTreeMap<String, Latency>,
    pub response_codes: BTreeMap<String, u64>,
    pub response_flags: BTreeMap<String, FlagCount>,
    pub codes_by_flags: Vec<CodeFlags>,
    /// Request bytes (source → destination) and response bytes.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub circuit_breaker: CircuitBreaker,
    pub fault_injection: FaultInjection,
    pub health: Health,
}

#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    pub graph_type: GraphType,
    /// The window asked for (unix seconds) and the rollup buckets it covered.
    pub from: f64,
    pub to: f64,
    pub buckets_from: i64,
    pub buckets_to: i64,
    pub resolution_seconds: i64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// The reporters whose measured latency an edge shows next to its own, in `Acc::parts` bits
/// from `REPORTED_BY` up.
const REPORTERS: [&str; 2] = ["destination", "source"];
const COUNTED: u8 = 1;
const REPORTED_BY: u8 = 2;

/// Label sets in a window from which folding them into edges is split over two threads.
const PARALLEL_LABEL_SETS: usize = 8192;

/// Edges from which the per-edge work is split over two threads.
const PARALLEL_EDGES: usize = 4096;

/// Builds the graph for `q` from the rollups.
pub fn build(st: &RollupState, resolution_secs: i64, q: &GraphQuery) -> Graph {
    build_with(st, resolution_secs, q, true, &mut Phases::default())
}

/// Where a build's time went, for `meshscope bench graph`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    /// Label sets merged over the window's buckets, and Kiali's reporter rules prepared.
    pub window: Duration,
    /// Label sets folded into nodes and edges.
    pub fold: Duration,
    /// Per-edge percentiles, breaker state and fields.
    pub edges: Duration,
    /// Node health, ranks and the rest.
    pub rest: Duration,
}

/// [`build`], also saying where the time went.
pub fn build_timed(st: &RollupState, resolution_secs: i64, q: &GraphQuery) -> (Graph, Phases) {
    let mut p = Phases::default();
    let g = build_with(st, resolution_secs, q, true, &mut p);
    (g, p)
}

#[cfg(test)]
mod tests;
