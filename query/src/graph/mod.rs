//! The service graph: rollups of a time window → nodes and edges with RED numbers, the
//! canary split, latency percentiles, response codes × Envoy flags, circuit-breaker state and
//! health, as a petgraph `DiGraph` (layered left to right for drawing).
//!
//! Kiali's rules: destination-reported rows are preferred; source-reported rows count only
//! for requests the destination never saw (local replies: `UO`, `UH`, `NR`, `FI`, …), or for
//! a (source workload, destination service) pair no destination proxy reported at all.

pub mod api;
pub mod render;

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

/// A few counters by key in key order (an edge has a handful of codes, flags and services):
/// a sorted vector, so an edge allocates once per kind of counter, not once per tree node,
/// and iterates in the order a `BTreeMap` would.
#[derive(Debug)]
struct Counts<K>(Vec<(K, u64)>);

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts(Vec::new())
    }
}

impl<K: Ord> Counts<K> {
    fn add(&mut self, k: K, n: u64) {
        match self.0.binary_search_by(|(x, _)| x.cmp(&k)) {
            Ok(i) => self.0[i].1 += n,
            Err(i) => self.0.insert(i, (k, n)),
        }
    }

    fn get(&self, k: &K) -> Option<u64> {
        self.0
            .binary_search_by(|(x, _)| x.cmp(k))
            .ok()
            .map(|i| self.0[i].1)
    }

    fn merge(&mut self, other: Counts<K>) {
        for (k, n) in other.0 {
            self.add(k, n);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &u64)> {
        self.0.iter().map(|(k, n)| (k, n))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Per-edge accumulation while building (label values borrowed from the rollups).
#[derive(Default)]
struct Acc<'a> {
    source: usize,
    target: usize,
    /// Counted requests.
    totals: Totals,
    /// The edge's label sets (indices in the window) and the latencies their duration
    /// sketches feed: `COUNTED` (the edge's own) and `REPORTED_BY` each Istio reporter.
    parts: Vec<(u32, u8)>,
    /// Duration sums of every request (counted or not) each reporter in `REPORTERS` saw;
    /// `None` when it saw none.
    reporter_sums: [Option<f64>; 2],
    codes: Counts<u16>,
    code_flags: Counts<(u16, &'a str)>,
    flags: Counts<&'a str>,
    services: Counts<&'a str>,
    protocols: Counts<&'a str>,
    sources: FastSet<(&'a str, &'a str)>,
    /// The edge starts at a caller (not an injected service node): its proxy's breaker stats
    /// describe it.
    from_caller: bool,
    e5: u64,
    e4: u64,
}

/// A label set's counts over the window, with its per-bucket duration sketches (merged only
/// per edge, when the percentiles are read).
#[derive(Default)]
struct Totals {
    requests: u64,
    request_bytes: u64,
    response_bytes: u64,
    duration_ms_sum: f64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
        self.duration_ms_sum += o.duration_ms_sum;
    }
}

#[derive(Default)]
struct KeyWindow<'a> {
    totals: Totals,
    sketches: Vec<&'a LatencySketch>,
}

impl<'a> KeyWindow<'a> {
    fn add(&mut self, a: &EdgeAgg) {
        self.totals.add(&Totals {
            requests: a.requests,
            request_bytes: a.request_bytes,
            response_bytes: a.response_bytes,
            duration_ms_sum: a.duration_ms_sum,
        });
    }

    /// The durations of the latency group this label set leads, in one bucket.
    fn add_sketch(&mut self, s: &'a LatencySketch) {
        if s.count() > 0 {
            if self.sketches.capacity() == 0 {
                self.sketches.reserve(16);
            }
            self.sketches.push(s);
        }
    }
}

impl<'a> Acc<'a> {
    /// Adds another accumulation of the same edge.
    fn merge(&mut self, o: Acc<'a>) {
        self.totals.add(&o.totals);
        self.parts.extend(o.parts);
        for (mine, theirs) in self.reporter_sums.iter_mut().zip(o.reporter_sums) {
            if let Some(t) = theirs {
                *mine.get_or_insert(0.0) += t;
            }
        }
        self.codes.merge(o.codes);
        self.code_flags.merge(o.code_flags);
        self.flags.merge(o.flags);
        self.services.merge(o.services);
        self.protocols.merge(o.protocols);
        self.sources.extend(o.sources);
        self.from_caller |= o.from_caller;
        self.e5 += o.e5;
        self.e4 += o.e4;
    }

    fn add(&mut self, k: &'a EdgeKey, w: &KeyWindow<'a>) {
        let a = &w.totals;
        self.totals.add(a);
        let code = k.response_code();
        self.codes.add(code, a.requests);
        self.code_flags
            .add((code, k.get(Label::ResponseFlags)), a.requests);
        for f in k.flags() {
            self.flags.add(f, a.requests);
        }
        if let Some(s) = k.known(Label::DestinationService) {
            self.services.add(s, a.requests);
        }
        self.protocols
            .add(k.get(Label::RequestProtocol), a.requests);
        if let (Some(ns), Some(wl)) = (
            k.known(Label::SourceWorkloadNamespace),
            k.known(Label::SourceWorkload),
        ) {
            self.sources.insert((ns, wl));
        }
        if is_5xx(code) {
            self.e5 += a.requests;
        } else if is_4xx(code) {
            self.e4 += a.requests;
        }
    }
}

/// Nodes and edges while building: each node and edge is made once, however many label sets
/// and buckets lead to it.
struct Builder<'a> {
    gt: GraphType,
    /// (side, the labels `node_for` reads) → index in `nodes`. Label values are interned,
    /// so their addresses stand for them.
    node_of: FastMap<(u8, [usize; 8]), usize>,
    nodes: Vec<Node>,
    node_by_id: FastMap<String, usize>,
    acc_of: FastMap<(usize, usize), usize>,
    accs: Vec<Acc<'a>>,
}

impl<'a> Builder<'a> {
    fn new(gt: GraphType) -> Builder<'a> {
        Builder {
            gt,
            node_of: FastMap::default(),
            nodes: Vec::new(),
            node_by_id: FastMap::default(),
            acc_of: FastMap::default(),
            accs: Vec::new(),
        }
    }

    /// Takes in the nodes and edges another builder made from other label sets.
    fn absorb(&mut self, other: Builder<'a>) {
        let map: Vec<usize> = other.nodes.into_iter().map(|n| self.add_node(n)).collect();
        for mut acc in other.accs {
            acc.source = map[acc.source];
            acc.target = map[acc.target];
            let next = self.accs.len();
            let i = *self.acc_of.entry((acc.source, acc.target)).or_insert(next);
            if i == next {
                self.accs.push(acc);
            } else {
                self.accs[i].merge(acc);
            }
        }
    }

    /// The node for one side of a label set (0 source, 1 destination, 2 its service).
    fn node(&mut self, k: &'a EdgeKey, side: u8) -> usize {
        let (wl, ns, app, ver, canon) = if side == 0 {
            (
                Label::SourceWorkload,
                Label::SourceWorkloadNamespace,
                Label::SourceApp,
                Label::SourceVersion,
                Label::SourceCanonicalService,
            )
        } else {
            (
                Label::DestinationWorkload,
                Label::DestinationWorkloadNamespace,
                Label::DestinationApp,
                Label::DestinationVersion,
                Label::DestinationCanonicalService,
            )
        };
        let sig = [
            wl,
            ns,
            app,
            ver,
            canon,
            Label::DestinationServiceName,
            Label::DestinationService,
            Label::DestinationServiceNamespace,
        ]
        .map(|l| k.0[l as usize].as_ptr() as usize);
        if let Some(i) = self.node_of.get(&(side, sig)) {
            return *i;
        }
        let n = match side {
            0 => node_for(k, true, self.gt),
            1 => node_for(k, false, self.gt),
            _ => node_for(k, false, GraphType::Service),
        };
        // Signatures differ between a workload calling and being called: the id is what
        // identifies a node.
        let i = self.add_node(n);
        self.node_of.insert((side, sig), i);
        i
    }

    /// Adds a node, or reconciles it with the node of the same id made from other label sets.
    /// A workload behind several services is reached through label sets naming each of them;
    /// it shows the least name, whatever order the label sets came in.
    fn add_node(&mut self, n: Node) -> usize {
        let next = self.nodes.len();
        let i = *self.node_by_id.entry(n.id.clone()).or_insert(next);
        if i == next {
            self.nodes.push(n);
        } else {
            let have = &mut self.nodes[i];
            for (have, new) in [
                (&mut have.namespace, n.namespace),
                (&mut have.workload, n.workload),
                (&mut have.app, n.app),
                (&mut have.version, n.version),
                (&mut have.service, n.service),
            ] {
                if let Some(new) = new
                    && have.as_ref().is_none_or(|h| new < *h)
                {
                    *have = Some(new);
                }
            }
        }
        i
    }

    fn acc(&mut self, from: usize, to: usize) -> &mut Acc<'a> {
        let next = self.accs.len();
        let i = *self.acc_of.entry((from, to)).or_insert(next);
        if i == next {
            self.accs.push(Acc {
                source: from,
                target: to,
                ..Acc::default()
            });
        }
        &mut self.accs[i]
    }

    /// The edges one label set adds to: caller → destination, or with service nodes
    /// injected, caller → service (→ workload when the request reached one).
    fn hops(&mut self, k: &'a EdgeKey, q: &GraphQuery) -> ([(usize, usize); 2], usize) {
        let src = self.node(k, 0);
        let dst = self.node(k, 1);
        if !q.inject_service_nodes
            || q.graph_type == GraphType::Service
            || self.nodes[dst].kind == "service"
        {
            return ([(src, dst), (0, 0)], 1);
        }
        let svc = self.node(k, 2);
        if self.nodes[svc].kind != "service" {
            return ([(src, dst), (0, 0)], 1);
        }
        ([(src, svc), (svc, dst)], 2)
    }
}

fn is_5xx(code: u16) -> bool {
    code >= 500 || code == 0
}

fn is_4xx(code: u16) -> bool {
    (400..500).contains(&code)
}

fn ns_of_service(k: &EdgeKey) -> Option<&str> {
    k.known(Label::DestinationServiceNamespace).or_else(|| {
        k.known(Label::DestinationService)
            .and_then(service_namespace)
    })
}

/// The node a side of a label set stands for.
fn node_for(k: &EdgeKey, source: bool, gt: GraphType) -> Node {
    let (wl, ns, app, ver, canon) = if source {
        (
            k.known(Label::SourceWorkload),
            k.known(Label::SourceWorkloadNamespace),
            k.known(Label::SourceApp),
            k.known(Label::SourceVersion),
            k.known(Label::SourceCanonicalService),
        )
    } else {
        (
            k.known(Label::DestinationWorkload),
            k.known(Label::DestinationWorkloadNamespace),
            k.known(Label::DestinationApp),
            k.known(Label::DestinationVersion),
            k.known(Label::DestinationCanonicalService),
        )
    };
    let svc_name = k.known(Label::DestinationServiceName);
    let svc_ns = ns_of_service(k).or(ns);
    let mk = |id: String, kind: &'static str| Node {
        id,
        kind,
        namespace: None,
        workload: None,
        app: None,
        version: None,
        service: None,
        health: Health::Idle,
        requests_in: 0,
        requests_out: 0,
        errors_in: 0,
        rank: 0,
        in_5xx: 0,
        in_4xx: 0,
        out_requests_5xx: (0, 0, 0),
    };
    let service_node = || {
        let name = svc_name.or(k.known(Label::DestinationService));
        match name {
            Some(name) => {
                let mut n = mk(
                    format!("service:{}/{}", svc_ns.unwrap_or("unknown"), name),
                    "service",
                );
                n.namespace = svc_ns.map(str::to_string);
                n.service = Some(name.to_string());
                n
            }
            None => mk("unknown".into(), "unknown"),
        }
    };
    let unknown = || mk("unknown".into(), "unknown");
    let nsv = ns.unwrap_or("unknown");
    let mut n = match gt {
        GraphType::Workload => match wl {
            Some(w) => {
                let mut n = mk(format!("workload:{nsv}/{w}"), "workload");
                n.workload = Some(w.to_string());
                n
            }
            None if source => return unknown(),
            None => return service_node(),
        },
        GraphType::App | GraphType::VersionedApp => match app.or(canon) {
            Some(a) => {
                let versioned = gt == GraphType::VersionedApp;
                let id = match (versioned, ver) {
                    (true, Some(v)) => format!("app:{nsv}/{a}/{v}"),
                    _ => format!("app:{nsv}/{a}"),
                };
                let mut n = mk(id, "app");
                n.app = Some(a.to_string());
                if versioned {
                    n.version = ver.map(str::to_string);
                }
                if wl.is_some() && versioned {
                    n.workload = wl.map(str::to_string);
                }
                n
            }
            None if source => return unknown(),
            None => return service_node(),
        },
        GraphType::Service => {
            if source {
                match canon.or(app).or(wl) {
                    Some(s) => {
                        let mut n = mk(format!("service:{nsv}/{s}"), "service");
                        n.service = Some(s.to_string());
                        n
                    }
                    None => return unknown(),
                }
            } else {
                return service_node();
            }
        }
    };
    n.namespace = ns.map(str::to_string);
    if n.app.is_none() {
        n.app = app.map(str::to_string);
    }
    if n.version.is_none() && gt == GraphType::Workload {
        n.version = ver.map(str::to_string);
    }
    if !source && n.service.is_none() {
        n.service = svc_name.map(str::to_string);
    }
    n
}

/// The label sets with traffic in the `cover` buckets whose id is `part` modulo `parts`,
/// merged over the buckets, in the order first seen. Label set ids are dense, so a slot table
/// finds each one's entry without hashing.
fn window_part<'a>(
    key_count: usize,
    cover: &[&'a crate::rollup::edges::Bucket],
    part: u32,
    parts: u32,
) -> Vec<(KeyId, KeyWindow<'a>)> {
    let mut slot = vec![u32::MAX; key_count.div_ceil(parts as usize)];
    let mut out: Vec<(KeyId, KeyWindow<'a>)> = Vec::new();
    let mut entry = |id: KeyId, out: &mut Vec<(KeyId, KeyWindow<'a>)>| {
        let s = &mut slot[(id / parts) as usize];
        if *s == u32::MAX {
            *s = out.len() as u32;
            out.push((id, KeyWindow::default()));
        }
        *s as usize
    };
    for bucket in cover {
        for (id, a) in bucket.iter() {
            if id % parts == part {
                let i = entry(*id, &mut out);
                out[i].1.add(a);
            }
        }
        // A group's sketch is kept under its leader, which has traffic in the bucket or
        // gets an entry of no requests here.
        for (id, s) in &bucket.latency {
            if id % parts == part {
                let i = entry(*id, &mut out);
                out[i].1.add_sketch(s);
            }
        }
    }
    out
}

/// The duration sketches of an edge's label sets in the window, each with the latencies it
/// feeds, into `out`.
fn sketches_of<'a>(
    window: &[(KeyId, KeyWindow<'a>)],
    parts: &[(u32, u8)],
    out: &mut Vec<(&'a LatencySketch, u8)>,
) {
    out.clear();
    for &(i, feeds) in parts {
        out.extend(window[i as usize].1.sketches.iter().map(|s| (*s, feeds)));
    }
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

/// [`build`], with the two-thread paths for big graphs allowed or not (tests compare both).
fn build_with<'st>(
    st: &'st RollupState,
    resolution_secs: i64,
    q: &GraphQuery,
    threads: bool,
    phases: &mut Phases,
) -> Graph {
    let mut clock = std::time::Instant::now();
    let mut lap = |d: &mut Duration| {
        let now = std::time::Instant::now();
        *d = now - clock;
        clock = now;
    };
    let res = resolution_secs.max(1);
    let from_s = q.from_ns.div_euclid(1_000_000_000);
    let to_s = (q.to_ns + 999_999_999).div_euclid(1_000_000_000);
    let b_from = from_s - from_s.rem_euclid(res);
    let b_to = to_s + (res - to_s.rem_euclid(res)) % res;
    // 1. the window's label sets, merged over buckets (pre-merged ones where they fit)
    let key = |id: &KeyId| st.keys.get(*id);
    let cover = st.edges.cover(b_from, b_to);
    let entries: usize = cover.iter().map(|b| b.len()).sum();
    let mut window = if threads && entries >= PARALLEL_LABEL_SETS {
        let (mut first, second) = on_two_threads(
            || window_part(st.keys.len(), &cover, 0, 2),
            || window_part(st.keys.len(), &cover, 1, 2),
        );
        first.extend(second);
        first
    } else {
        window_part(st.keys.len(), &cover, 0, 1)
    };
    // Span-derived calls fill in pairs (caller service, destination service) that no access
    // log covers in this window.
    let logged: FastSet<(&str, &str)> = window
        .iter()
        .map(|(id, _)| key(id))
        .map(|k| {
            (
                k.get(Label::SourceCanonicalService),
                k.get(Label::DestinationServiceName),
            )
        })
        .collect();
    let mut from_spans: FastMap<KeyId, KeyWindow<'_>> = FastMap::default();
    let unlogged = |id: &KeyId| {
        let k = key(id);
        !logged.contains(&(
            k.get(Label::SourceCanonicalService),
            k.get(Label::DestinationServiceName),
        ))
    };
    for bucket in st.span_edges.cover(b_from, b_to) {
        for (id, a) in bucket.iter().filter(|(id, _)| unlogged(id)) {
            from_spans.entry(*id).or_default().add(a);
        }
        for (id, sketch) in bucket.latency.iter().filter(|(id, _)| unlogged(id)) {
            from_spans.entry(*id).or_default().add_sketch(sketch);
        }
    }
    window.extend(from_spans);
    let mut idle_keys: BTreeSet<KeyId> = BTreeSet::new();
    if q.include_idle {
        let in_window: FastSet<KeyId> = window.iter().map(|(id, _)| *id).collect();
        for bucket in st.edges.coarsest() {
            for id in bucket.keys() {
                if !in_window.contains(id) {
                    idle_keys.insert(*id);
                }
            }
        }
    }
    // 2. pairs some destination proxy reported
    fn pair(k: &EdgeKey) -> (&str, &str, &str, &str) {
        (
            k.get(Label::SourceWorkloadNamespace),
            k.get(Label::SourceWorkload),
            k.get(Label::DestinationServiceName),
            ns_of_service(k).unwrap_or("unknown"),
        )
    }
    let dest_reported: FastSet<(&str, &str, &str, &str)> = window
        .iter()
        .map(|(id, _)| key(id))
        .filter(|k| k.get(Label::Reporter) == "destination")
        .map(pair)
        .collect();
    let ns_ok = |n: &Node| {
        q.namespaces.is_empty()
            || n.namespace
                .as_ref()
                .is_some_and(|ns| q.namespaces.iter().any(|x| x == ns))
    };
    lap(&mut phases.window);
    // 3. fold label sets into edges
    // Edges refer to label sets by their place in `window`.
    let window = window;
    // Label sets of one destination service go to the same part, so the caller → service
    // and service → workload edges of a part are its own; parts are merged after.
    let fold = |part: u64, parts: u64| {
        let mut b = Builder::new(q.graph_type);
        for (wi, (id, a)) in window.iter().enumerate() {
            let wi = wi as u32;
            let k = key(id);
            if parts > 1 {
                let svc = k
                    .known(Label::DestinationServiceName)
                    .or(k.known(Label::DestinationService))
                    .unwrap_or("");
                if rustc_hash::FxBuildHasher.hash_one(svc) % parts != part {
                    continue;
                }
            }
            let (hops, n) = b.hops(k, q);
            let (src, dst) = (hops[0].0, hops[n - 1].1);
            if !ns_ok(&b.nodes[src]) && !ns_ok(&b.nodes[dst]) {
                continue;
            }
            let reporter = k.get(Label::Reporter);
            let counted =
                reporter != "source" || k.local_reply() || !dest_reported.contains(&pair(k));
            for &(from, to) in &hops[..n] {
                let caller = b.nodes[from].kind != "service" || q.graph_type == GraphType::Service;
                let acc = b.acc(from, to);
                acc.from_caller |= caller;
                let mut feeds = 0;
                if let Some(i) = REPORTERS.iter().position(|r| *r == reporter) {
                    feeds |= REPORTED_BY << i;
                    *acc.reporter_sums[i].get_or_insert(0.0) += a.totals.duration_ms_sum;
                }
                if counted {
                    feeds |= COUNTED;
                    // A leader with durations only (no requests of its own in the window)
                    // adds no counts.
                    if a.totals.requests > 0 {
                        acc.add(k, a);
                    }
                }
                if feeds != 0 {
                    acc.parts.push((wi, feeds));
                }
            }
        }
        b
    };
    let mut b = if threads && window.len() >= PARALLEL_LABEL_SETS {
        let (mut first, second) = on_two_threads(|| fold(0, 2), || fold(1, 2));
        first.absorb(second);
        first
    } else {
        fold(0, 1)
    };
    for id in &idle_keys {
        let k = key(id);
        let (hops, n) = b.hops(k, q);
        let (src, dst) = (hops[0].0, hops[n - 1].1);
        if !ns_ok(&b.nodes[src]) && !ns_ok(&b.nodes[dst]) {
            continue;
        }
        for &(from, to) in &hops[..n] {
            let acc = b.acc(from, to);
            if let Some(s) = k.known(Label::DestinationService) {
                acc.services.add(s, 0);
            }
            acc.protocols.add(k.get(Label::RequestProtocol), 0);
        }
    }
    let Builder {
        mut nodes,
        mut accs,
        ..
    } = b;
    lap(&mut phases.fold);
    // 4. shares: per (source node, destination service)
    let mut per_service: FastMap<(usize, &str), u64> = FastMap::default();
    for acc in &accs {
        for (svc, n) in acc.services.iter() {
            *per_service.entry((acc.source, svc)).or_default() += n;
        }
    }
    let secs = ((q.to_ns - q.from_ns) as f64 / 1e9).max(1e-9);
    let breakers = breaker_index(st);
    // Edges come grouped by the service node they touch (else by target), then by source and
    // target: caller → service and service → workload read the same label sets' sketches,
    // so working on them one after the other finds the second read in cache.
    let group = |a: &Acc<'_>| {
        if nodes[a.source].kind == "service" {
            a.source
        } else {
            a.target
        }
    };
    // Nodes ranked by id once, so edges sort by integers.
    let mut by_id: Vec<usize> = (0..nodes.len()).collect();
    by_id.sort_unstable_by(|a, b| nodes[*a].id.cmp(&nodes[*b].id));
    let mut ord = vec![0usize; nodes.len()];
    for (o, i) in by_id.into_iter().enumerate() {
        ord[i] = o;
    }
    accs.sort_unstable_by_key(|a| (ord[group(a)], ord[a.source], ord[a.target]));
    accs.retain(|acc| acc.totals.requests > 0 || q.include_idle);
    for acc in &accs {
        let requests = acc.totals.requests;
        let n = &mut nodes[acc.target];
        n.requests_in += requests;
        n.in_5xx += acc.e5;
        n.in_4xx += acc.e4;
        n.errors_in += acc.e5 + acc.e4;
        let n = &mut nodes[acc.source];
        n.requests_out += requests;
        n.out_requests_5xx.0 += requests;
        n.out_requests_5xx.1 += acc.e5;
        n.out_requests_5xx.2 += acc.e4;
    }
    let nodes_ro = &nodes;
    let window = &window;
    let finish = |acc: &Acc<'_>,
                  union: &mut UnionQuantiles,
                  sketches: &mut Vec<(&'st LatencySketch, u8)>|
     -> Edge {
        let nodes = nodes_ro;
        let service = acc
            .services
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(s, n)| (*s, *n));
        let share = service
            .and_then(|(svc, n)| Some((per_service.get(&(acc.source, svc))?, n)))
            .filter(|(d, _)| **d > 0)
            .map_or(0.0, |(d, n)| n as f64 / *d as f64);
        let requests = acc.totals.requests;
        let errors = acc.e5 + acc.e4;
        let mut cb = breaker_for(st, &breakers, acc, q);
        cb.uo_responses = acc.flags.get(&"UO").unwrap_or(0);
        cb.uh_responses = acc.flags.get(&"UH").unwrap_or(0);
        cb.tripped = cb.uo_responses > 0 || cb.overflow > 0.0 || cb.cx_overflow > 0.0 || cb.open;
        let health = q.health.health(requests, acc.e5, acc.e4);
        let (s, t) = (nodes[acc.source].id.clone(), nodes[acc.target].id.clone());
        sketches_of(window, &acc.parts, sketches);
        let [own, by_dest, by_source] = union.quantiles_rows::<3, 3>(sketches, [0.5, 0.95, 0.99]);
        Edge {
            id: format!("{s}->{t}"),
            protocol: acc
                .protocols
                .iter()
                .max_by_key(|(_, n)| **n)
                .map_or_else(|| "http".into(), |(p, _)| p.to_string()),
            destination_service: service.map(|(s, _)| s.to_string()),
            requests,
            rps: round3(requests as f64 / secs),
            errors,
            errors_5xx: acc.e5,
            errors_4xx: acc.e4,
            error_rate: if requests > 0 {
                round3(errors as f64 / requests as f64)
            } else {
                0.0
            },
            traffic_share: round3(share),
            latency_ms: Latency::of(own, acc.totals.duration_ms_sum),
            latency_ms_by_reporter: REPORTERS
                .iter()
                .zip([by_dest, by_source])
                .zip(acc.reporter_sums)
                .filter_map(|((r, q), sum)| Some((r.to_string(), Latency::of(q, sum?))))
                .collect(),
            response_codes: acc.codes.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            response_flags: acc
                .flags
                .iter()
                .map(|(f, n)| {
                    (
                        f.to_string(),
                        FlagCount {
                            count: *n,
                            meaning: response_flag_meaning(f).unwrap_or("not an Envoy flag"),
                        },
                    )
                })
                .collect(),
            codes_by_flags: acc
                .code_flags
                .iter()
                .map(|((code, flags), count)| CodeFlags {
                    code: *code,
                    flags: flags.to_string(),
                    count: *count,
                })
                .collect(),
            bytes_sent: acc.totals.request_bytes,
            bytes_received: acc.totals.response_bytes,
            circuit_breaker: cb,
            fault_injection: FaultInjection {
                aborted: acc.flags.get(&"FI").unwrap_or(0),
                delayed: acc.flags.get(&"DI").unwrap_or(0),
            },
            health,
            source: s,
            target: t,
        }
    };
    // The per-edge work (percentiles, breaker state) is most of a big graph: two threads.
    let run = |part: &[Acc<'_>]| {
        let mut union = UnionQuantiles::default();
        let mut sketches = Vec::new();
        part.iter()
            .map(|a| finish(a, &mut union, &mut sketches))
            .collect::<Vec<_>>()
    };
    let edges = if threads && accs.len() >= PARALLEL_EDGES {
        // Halves of equal work: an edge costs about its number of sketches, plus a little.
        let cost = |a: &Acc<'_>| {
            8 + a
                .parts
                .iter()
                .map(|(wi, _)| window[*wi as usize].1.sketches.len())
                .sum::<usize>()
        };
        let total: usize = accs.iter().map(cost).sum();
        let mut seen = 0;
        let half = accs
            .iter()
            .position(|a| {
                seen += cost(a);
                seen * 2 >= total
            })
            .map_or(accs.len() / 2, |i| i + 1);
        let (a, b) = accs.split_at(half);
        let (mut edges, second) = on_two_threads(|| run(a), || run(b));
        edges.extend(second);
        edges
    } else {
        run(&accs)
    };
    drop(accs);
    lap(&mut phases.edges);
    // 5. node health: from inbound traffic, else outbound
    for n in nodes.iter_mut() {
        n.health = if n.requests_in > 0 {
            q.health.health(n.requests_in, n.in_5xx, n.in_4xx)
        } else {
            let (r, e5, e4) = n.out_requests_5xx;
            q.health.health(r, e5, e4)
        };
    }
    let used: FastSet<&str> = edges
        .iter()
        .flat_map(|e| [e.source.as_str(), e.target.as_str()])
        .collect();
    let mut nodes: Vec<Node> = nodes
        .into_iter()
        .filter(|n| used.contains(n.id.as_str()))
        .collect();
    nodes.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    assign_ranks(&mut nodes, &edges);
    lap(&mut phases.rest);
    Graph {
        graph_type: q.graph_type,
        from: q.from_ns as f64 / 1e9,
        to: q.to_ns as f64 / 1e9,
        buckets_from: b_from,
        buckets_to: b_to,
        resolution_seconds: res,
        nodes,
        edges,
    }
}

/// Runs `first` here and `second` on another thread; a panic in either is raised here.
fn on_two_threads<A, B: Send>(
    first: impl FnOnce() -> A,
    second: impl FnOnce() -> B + Send,
) -> (A, B) {
    std::thread::scope(|sc| {
        let second = sc.spawn(second);
        let first = first();
        (
            first,
            second
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        )
    })
}

/// The graph as JSON, exactly `serde_json::to_vec(g)`, in pieces to send one after the
/// other: a big graph's edges are rendered on two threads, each into a buffer sized for its
/// half up front, and not copied again into one (27 MB at 10k edges: growing and joining the
/// buffers faulted in and copied about twice that per request).
pub fn to_json_chunks(g: &Graph) -> serde_json::Result<Vec<Vec<u8>>> {
    if g.edges.len() < PARALLEL_EDGES {
        return Ok(vec![serde_json::to_vec(g)?]);
    }
    /// The graph with its edges left out; `edges` is the last field of both, so the
    /// rendering ends in `"edges":[]}` and the edges go in before `]}`.
    #[derive(Serialize)]
    struct Head<'a> {
        graph_type: GraphType,
        from: f64,
        to: f64,
        buckets_from: i64,
        buckets_to: i64,
        resolution_seconds: i64,
        nodes: &'a [Node],
        edges: [Edge; 0],
    }
    /// Edges `[a, b, …]` without the brackets. An edge takes about 1.5 KB; room for 2 KB
    /// each costs nothing where it stays unused (pages are only faulted in when written).
    fn edges_json(edges: &[Edge]) -> serde_json::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(edges.len() * 2048);
        for (i, e) in edges.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, e)?;
        }
        Ok(out)
    }
    let (a, b) = g.edges.split_at(g.edges.len() / 2);
    let (first, second) = on_two_threads(|| edges_json(a), || edges_json(b));
    let (first, second) = (first?, second?);
    let mut head = serde_json::to_vec(&Head {
        graph_type: g.graph_type,
        from: g.from,
        to: g.to,
        buckets_from: g.buckets_from,
        buckets_to: g.buckets_to,
        resolution_seconds: g.resolution_seconds,
        nodes: &g.nodes,
        edges: [],
    })?;
    debug_assert!(head.ends_with(b"[]}"));
    head.truncate(head.len() - 2);
    Ok(vec![head, first, b",".to_vec(), second, b"]}".to_vec()])
}

/// Breaker state of one edge from its source proxies' stats for the destination service.
/// The breaker series of each proxy workload `(namespace, workload)`, with the service host
/// its cluster points at: built once per graph, so an edge looks up only its own callers.
type BreakerIndex<'a> =
    HashMap<(&'a str, &'a str), Vec<(String, &'a SeriesKey, &'a BreakerSeries)>>;

fn breaker_index(st: &RollupState) -> BreakerIndex<'_> {
    let mut index: BreakerIndex<'_> = HashMap::new();
    for (key, series) in &st.breaker.series {
        if let Some(host) = IstioCluster::parse(&key.cluster_name).and_then(|c| c.host) {
            index
                .entry((&*key.proxy_namespace, &*key.proxy_workload))
                .or_default()
                .push((host, key, series));
        }
    }
    index
}

fn breaker_for(
    st: &RollupState,
    index: &BreakerIndex<'_>,
    acc: &Acc<'_>,
    q: &GraphQuery,
) -> CircuitBreaker {
    let mut cb = CircuitBreaker::default();
    if !acc.from_caller || acc.sources.is_empty() || acc.services.is_empty() {
        return cb;
    }
    let mut clusters = BTreeSet::new();
    let mut open = BTreeSet::new();
    let mine = acc
        .sources
        .iter()
        .filter_map(|(ns, wl)| index.get(&(*ns, *wl)))
        .flatten();
    for (host, key, series) in mine {
        if acc.services.get(&host.as_str()).is_none() {
            continue;
        }
        let m = &*key.metric;
        if OVERFLOW_COUNTERS.contains(&m) {
            let started = st.breaker.proxy_started_ns(
                &key.proxy,
                series.samples.keys().next().copied().unwrap_or(q.from_ns),
            );
            let inc = series.increase(q.from_ns, q.to_ns, started);
            if m == CX_OVERFLOW {
                cb.cx_overflow += inc;
            } else {
                cb.overflow += inc;
            }
            if m == PENDING_OVERFLOW {
                cb.pending_overflow += inc;
            }
        } else if m == EJECTIONS_ENFORCED {
            let started = st.breaker.proxy_started_ns(
                &key.proxy,
                series.samples.keys().next().copied().unwrap_or(q.from_ns),
            );
            cb.ejections += series.increase(q.from_ns, q.to_ns, started);
        } else if m == EJECTIONS_ACTIVE {
            cb.ejections_active_max = cb
                .ejections_active_max
                .max(series.max(q.from_ns, q.to_ns).unwrap_or(0.0));
        } else if is_open_gauge(m) && series.max(q.from_ns, q.to_ns).unwrap_or(0.0) >= 1.0 {
            open.insert(
                m.trim_start_matches("envoy_cluster_circuit_breakers_")
                    .to_string(),
            );
        }
        clusters.insert(key.cluster_name.to_string());
    }
    cb.open = !open.is_empty();
    cb.open_gauges = open.into_iter().collect();
    cb.clusters = clusters.into_iter().collect();
    cb
}

/// Layers for a left-to-right drawing: a node's rank is the longest path to it from a node
/// nothing calls, over the graph with cycles condensed (petgraph's SCCs), so it is stable
/// between refreshes as long as the topology is.
fn assign_ranks(nodes: &mut [Node], edges: &[Edge]) {
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let idx: FastMap<&str, NodeIndex> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), g.add_node(i)))
        .collect();
    for e in edges {
        if let (Some(a), Some(b)) = (idx.get(e.source.as_str()), idx.get(e.target.as_str()))
            && a != b
        {
            g.update_edge(*a, *b, ());
        }
    }
    let cond = petgraph::algo::condensation(g, true);
    let order = petgraph::algo::toposort(&cond, None).unwrap_or_default();
    let mut rank = vec![0usize; cond.node_count()];
    for c in order {
        for next in cond.neighbors(c) {
            rank[next.index()] = rank[next.index()].max(rank[c.index()] + 1);
        }
    }
    for c in cond.node_indices() {
        for &i in &cond[c] {
            nodes[i].rank = rank[c.index()];
        }
    }
}

#[cfg(test)]
mod tests;
