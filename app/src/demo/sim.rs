//! The simulator proper, without I/O: `advance(to)` plays every request whose start time is
//! before `to` and returns what the proxies would have written (access-log lines per pod,
//! spans per pod); `stats_text` gives each proxy's Envoy stats at a moment.
//!
//! Arrivals are Poisson processes in simulated time drawn from one seeded `StdRng`, and every
//! decision (routing, faults, overflows, status codes, durations) is drawn from it in arrival
//! order, so the requests depend only on the seed, the speed and the start time, not on how
//! the caller slices time into steps.

use std::collections::BTreeMap;
use std::fmt::Write;

use opentelemetry_proto::tonic::trace::v1::Span;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::emit::{Entry, span};
use super::timeline::{FAULT_DELAY_MS, Fault, Reviews, Slot, Timeline};
use meshscope_testkit::bookinfo::{
    DETAILS, FORTIO, GATEWAY, PODS, PRODUCTPAGE, RATINGS, REVIEWS_V1, REVIEWS_V2, REVIEWS_V3,
    SVC_DETAILS, SVC_PRODUCTPAGE, SVC_RATINGS, SVC_REVIEWS, Service,
};

const MS: i64 = 1_000_000;
const SEC: i64 = 1_000_000_000;

/// Share of page views by the logged-in user `jason`.
const JASON_SHARE: f64 = 0.25;
/// Outlier detection: consecutive 5xx before the host is ejected.
const CONSECUTIVE_5XX: u32 = 3;

/// Requests per second of simulated time: page views (each 3–4 calls inside the mesh) and
/// fortio's calls in the breaker phases. Bounded so that all hops stay under ~200/s.
pub fn rates(speed: f64) -> (f64, f64) {
    ((5.0 * speed).min(35.0), (10.0 * speed).min(50.0))
}

/// A caller's Envoy stats for one upstream cluster.
#[derive(Debug, Clone, Default)]
struct ClusterStats {
    rq_total: u64,
    pending_overflow: u64,
    last_overflow_ns: Option<i64>,
    ejections_enforced: u64,
    ejected_until_ns: i64,
    consecutive_5xx: u32,
}

/// Fault decisions of one caller's sidecar: in each block of 10 requests exactly
/// `share × 10` are hit, in random order, so the injected share is what the phase says over
/// any window of a few dozen requests.
#[derive(Debug, Clone, Copy, Default)]
struct Block {
    left: u32,
    hits_left: u32,
}

impl Block {
    fn draw(&mut self, rng: &mut StdRng, share: f64) -> bool {
        if self.left == 0 {
            self.left = 10;
            self.hits_left = (share * 10.0).round().clamp(0.0, 10.0) as u32;
        }
        let hit = rng.random_range(0..self.left) < self.hits_left;
        self.left -= 1;
        if hit {
            self.hits_left -= 1;
        }
        hit
    }
}

/// The simulator's own counts for one occurrence of a phase: what the stored data must show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseRun {
    pub cycle: u64,
    /// Unix seconds, `[from, to)`.
    pub from: i64,
    pub to: i64,
    pub complete: bool,
    pub page_views: u64,
    pub jason_page_views: u64,
    pub fortio_requests: u64,
    /// Requests per edge, `<source workload> -> <destination workload>` (or the destination
    /// service when the caller's sidecar answered itself).
    pub requests: BTreeMap<String, u64>,
    /// Ratings calls aborted with 503 `FI`.
    pub fault_aborts: u64,
    /// Ratings calls delayed 5 s (`DI`).
    pub fault_delays: u64,
    /// Requests refused by a circuit breaker (503 `UO`); each adds 1 to the caller's
    /// `upstream_rq_pending_overflow`.
    pub overflows: u64,
    /// Requests answered 503 `UH` while the only host was ejected.
    pub no_healthy_upstream: u64,
    /// Outlier ejections enforced (`outlier_detection_ejections_enforced_total`).
    pub ejections: u64,
    /// 503s details answered itself.
    pub upstream_503: u64,
    pub access_log_lines: u64,
    pub spans: u64,
}

/// What one step produced.
#[derive(Default)]
pub struct Batch {
    /// Access-log lines per pod (index into `PODS`), in Istio's default text format.
    pub lines: BTreeMap<usize, Vec<String>>,
    /// Envoy spans per pod.
    pub spans: BTreeMap<usize, Vec<Span>>,
    /// Phases entered during the step.
    pub entered: Vec<Slot>,
}

impl Batch {
    /// One sidecar's record of a call: its access-log line and its span (CLIENT for the
    /// caller's sidecar, SERVER for the callee's).
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        pod: usize,
        tr: &TraceCtx,
        span_id: [u8; 8],
        parent: [u8; 8],
        client: bool,
        e: &Entry,
        duration_ns: i64,
    ) {
        self.lines.entry(pod).or_default().push(e.line());
        let s = span(
            tr.trace_id,
            span_id,
            parent,
            client,
            &PODS[pod],
            e,
            duration_ns,
        );
        self.spans.entry(pod).or_default().push(s);
    }
}

/// One request's trace context: bookinfo propagates x-request-id and the trace headers.
struct TraceCtx {
    trace_id: [u8; 16],
    request_id: String,
    user_agent: &'static str,
}

/// The server side of a call, filled in by the callee.
type Inner<'a> = &'a mut dyn FnMut(&mut Simulator, &mut Batch, [u8; 8], i64) -> i64;

pub struct Simulator {
    rng: StdRng,
    pub timeline: Timeline,
    page_view_rate: f64,
    fortio_rate: f64,
    next_page_view_ns: i64,
    next_fortio_ns: i64,
    cursor_ns: i64,
    conn_seq: u32,
    /// (caller pod, cluster name) → stats.
    clusters: BTreeMap<(usize, String), ClusterStats>,
    /// Requests each pod's inbound listener served.
    inbound_rq: [u64; PODS.len()],
    blocks: [Block; PODS.len()],
    current: Option<Slot>,
    /// The latest occurrence of each phase, by index.
    pub runs: BTreeMap<usize, PhaseRun>,
}

impl Simulator {
    /// A simulator whose timeline starts at `start_s` (unix seconds).
    pub fn new(seed: u64, speed: f64, start_s: i64) -> Simulator {
        let (page_view_rate, fortio_rate) = rates(speed);
        let start_ns = start_s * SEC;
        let mut s = Simulator {
            rng: StdRng::seed_from_u64(seed),
            timeline: Timeline::new(speed, start_s),
            page_view_rate,
            fortio_rate,
            next_page_view_ns: start_ns,
            next_fortio_ns: start_ns,
            cursor_ns: start_ns,
            conn_seq: 0,
            clusters: BTreeMap::new(),
            inbound_rq: [0; PODS.len()],
            blocks: [Block::default(); PODS.len()],
            current: None,
            runs: BTreeMap::new(),
        };
        s.next_page_view_ns += s.gap(page_view_rate);
        s.next_fortio_ns += s.gap(fortio_rate);
        // Every cluster exists from the start, so counters have a sample before any phase.
        for (pod, svc, subset) in [
            (GATEWAY, SVC_PRODUCTPAGE, None),
            (PRODUCTPAGE, SVC_DETAILS, None),
            (PRODUCTPAGE, SVC_REVIEWS, Some("v1")),
            (PRODUCTPAGE, SVC_REVIEWS, Some("v2")),
            (PRODUCTPAGE, SVC_REVIEWS, Some("v3")),
            (REVIEWS_V2, SVC_RATINGS, Some("v1")),
            (REVIEWS_V3, SVC_RATINGS, Some("v1")),
            (FORTIO, SVC_DETAILS, None),
        ] {
            s.clusters
                .insert((pod, svc.outbound_cluster(subset)), ClusterStats::default());
        }
        s
    }

    /// Simulated time up to which requests were played (unix ns).
    pub fn cursor_ns(&self) -> i64 {
        self.cursor_ns
    }

    /// The end of the phase the cursor is in (unix ns).
    pub fn phase_end_ns(&self) -> i64 {
        self.timeline.at(self.cursor_ns).to_s * SEC
    }

    pub fn current(&self) -> Option<Slot> {
        self.current
    }

    /// Jumps over time nobody played (the process was suspended): no requests in between.
    pub fn skip_to(&mut self, t_ns: i64) {
        if t_ns <= self.cursor_ns {
            return;
        }
        self.cursor_ns = t_ns;
        self.next_page_view_ns = self.next_page_view_ns.max(t_ns);
        self.next_fortio_ns = self.next_fortio_ns.max(t_ns);
    }

    fn gap(&mut self, rate: f64) -> i64 {
        let u: f64 = self.rng.random();
        ((-(1.0 - u).ln() / rate) * SEC as f64).max(1.0) as i64
    }

    fn span_id(&mut self) -> [u8; 8] {
        let mut id: [u8; 8] = self.rng.random();
        id[0] |= 1; // never all zero
        id
    }

    fn ms(&mut self, lo: f64, hi: f64) -> i64 {
        (self.rng.random_range(lo..hi) * MS as f64) as i64
    }

    fn port(&mut self) -> u32 {
        self.conn_seq = self.conn_seq.wrapping_add(1);
        32768 + self.conn_seq % 28000
    }

    /// Plays every request that starts before `to_ns`.
    pub fn advance(&mut self, to_ns: i64) -> Batch {
        let mut b = Batch::default();
        self.enter(self.cursor_ns, &mut b);
        loop {
            let t = self.next_page_view_ns.min(self.next_fortio_ns);
            if t >= to_ns {
                break;
            }
            let slot = self.enter(t, &mut b);
            if t == self.next_page_view_ns {
                self.page_view(t, slot, &mut b);
                self.next_page_view_ns = t + self.gap(self.page_view_rate);
            } else {
                if slot.phase.fortio() {
                    self.fortio(t, slot, &mut b);
                }
                self.next_fortio_ns = t + self.gap(self.fortio_rate);
            }
        }
        if to_ns > self.cursor_ns {
            self.cursor_ns = to_ns;
            self.enter(to_ns - 1, &mut b);
        }
        b
    }

    /// Notes the phase occurrence at `t`, starting its counts when it is new.
    fn enter(&mut self, t: i64, b: &mut Batch) -> Slot {
        let slot = self.timeline.at(t);
        if self.current != Some(slot) {
            if let Some(prev) = self.current
                && let Some(r) = self.runs.get_mut(&prev.index)
            {
                r.complete = true;
            }
            self.runs.insert(
                slot.index,
                PhaseRun {
                    cycle: slot.cycle,
                    from: slot.from_s,
                    to: slot.to_s,
                    ..PhaseRun::default()
                },
            );
            self.blocks = [Block::default(); PODS.len()];
            self.current = Some(slot);
            b.entered.push(slot);
        }
        slot
    }

    fn run(&mut self, slot: Slot) -> &mut PhaseRun {
        self.runs.entry(slot.index).or_default()
    }

    fn trace(&mut self, user_agent: &'static str) -> TraceCtx {
        let mut trace_id: [u8; 16] = self.rng.random();
        trace_id[0] |= 1;
        let r: u128 = self.rng.random();
        let request_id = format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            (r >> 96) as u32,
            (r >> 80) as u16,
            (r >> 68) as u16 & 0xfff,
            ((r >> 52) as u16 & 0x3fff) | 0x8000,
            r as u64 & 0xffff_ffff_ffff
        );
        TraceCtx {
            trace_id,
            request_id,
            user_agent,
        }
    }

    /// A browser loads /productpage through the ingress gateway.
    fn page_view(&mut self, t: i64, slot: Slot, b: &mut Batch) {
        let jason = self.rng.random::<f64>() < JASON_SHARE;
        let roll: f64 = self.rng.random();
        let version = slot.phase.reviews(jason, roll);
        let tr = self.trace(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
        );
        let run = self.run(slot);
        run.page_views += 1;
        if jason {
            run.jason_page_views += 1;
        }
        let root = self.span_id();
        let mut productpage = |s: &mut Simulator, b: &mut Batch, server_span: [u8; 8], at: i64| {
            let mut clock = at + s.ms(0.5, 2.0);
            let d = s.call(
                b,
                slot,
                &tr,
                PRODUCTPAGE,
                SVC_DETAILS,
                None,
                DETAILS,
                clock,
                server_span,
                "/details/0",
                &mut |s, _, _, _| s.ms(1.0, 4.0),
            );
            clock += d + s.ms(0.3, 1.0);
            let (subset, pod) = match version {
                Reviews::V1 => ("v1", REVIEWS_V1),
                Reviews::V2 => ("v2", REVIEWS_V2),
                Reviews::V3 => ("v3", REVIEWS_V3),
            };
            let d = s.call(
                b,
                slot,
                &tr,
                PRODUCTPAGE,
                SVC_REVIEWS,
                Some(subset),
                pod,
                clock,
                server_span,
                "/reviews/0",
                &mut |s, b, reviews_span, at| {
                    let own = s.ms(3.0, 12.0);
                    if version == Reviews::V1 {
                        return own;
                    }
                    let start = at + s.ms(1.0, 3.0);
                    let d = s.call(
                        b,
                        slot,
                        &tr,
                        pod,
                        SVC_RATINGS,
                        Some("v1"),
                        RATINGS,
                        start,
                        reviews_span,
                        "/ratings/0",
                        &mut |s, _, _, _| s.ms(1.0, 4.0),
                    );
                    own + d
                },
            );
            clock += d + s.ms(2.0, 10.0);
            clock - at
        };
        self.call(
            b,
            slot,
            &tr,
            GATEWAY,
            SVC_PRODUCTPAGE,
            None,
            PRODUCTPAGE,
            t,
            root,
            "/productpage",
            &mut productpage,
        );
    }

    /// fortio's load against details (3 connections).
    fn fortio(&mut self, t: i64, slot: Slot, b: &mut Batch) {
        let tr = self.trace("fortio.org/fortio-1.69.0");
        self.run(slot).fortio_requests += 1;
        self.call(
            b,
            slot,
            &tr,
            FORTIO,
            SVC_DETAILS,
            None,
            DETAILS,
            t,
            [0; 8],
            "/details/0",
            &mut |s, _, _, _| s.ms(1.0, 4.0),
        );
    }

    /// One call from `client`'s sidecar to `svc` (subset) served by `dst`: the breaker,
    /// outlier detection and fault injection of the caller's sidecar, then the callee. Emits
    /// both sidecars' access-log lines and spans (only the caller's when it answered
    /// itself). Returns the duration the caller saw, in ns.
    // Long on purpose: one call as the sidecars see it, in the order Envoy applies things
    // (breaker, outlier detection, fault injection, then the callee), reads best in one piece.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        b: &mut Batch,
        slot: Slot,
        tr: &TraceCtx,
        client: usize,
        svc: Service,
        subset: Option<&'static str>,
        dst: usize,
        start: i64,
        parent: [u8; 8],
        path: &'static str,
        inner: Inner,
    ) -> i64 {
        let phase = slot.phase;
        let cluster = svc.outbound_cluster(subset);
        let key = (client, cluster.clone());
        let client_span = self.span_id();
        let overflow = client == FORTIO && self.rng.random::<f64>() < phase.overflow_share();
        let fault = if svc == SVC_RATINGS {
            phase.ratings_fault()
        } else {
            None
        };
        let abort =
            matches!(fault, Some(Fault::Abort(p)) if self.blocks[client].draw(&mut self.rng, p));
        let delay =
            matches!(fault, Some(Fault::Delay(p)) if self.blocks[client].draw(&mut self.rng, p));
        let stats = self.clusters.entry(key.clone()).or_default();
        stats.rq_total += 1;
        let ejected = stats.ejected_until_ns > start;
        let local = if overflow {
            stats.pending_overflow += 1;
            stats.last_overflow_ns = Some(start);
            Some(("UO", "upstream_reset_before_response_started{overflow}", 81))
        } else if ejected {
            Some(("UH", "no_healthy_upstream", 19))
        } else if abort {
            Some(("FI", "fault_filter_abort", 18))
        } else {
            None
        };
        let src = PODS[client];
        let authority = format!("{}:9080", svc.name);
        let src_port = self.port();
        let entry = |start_ns,
                     code,
                     flags: Option<&'static str>,
                     details: &'static str,
                     bytes_sent,
                     duration_ns: i64,
                     upstream_ms: Option<i64>| Entry {
            start_ns,
            path,
            code,
            flags,
            details,
            bytes_sent,
            duration_ms: duration_ns / MS,
            upstream_service_ms: upstream_ms,
            x_forwarded_for: (client == GATEWAY).then_some("203.0.113.7"),
            user_agent: tr.user_agent,
            request_id: &tr.request_id,
            authority: authority.clone(),
            upstream_host: None,
            upstream_cluster: cluster.clone(),
            upstream_local_address: None,
            downstream_local_address: format!("{}:9080", svc.cluster_ip),
            downstream_remote_address: if client == GATEWAY {
                format!("203.0.113.7:{src_port}")
            } else {
                format!("{}:{src_port}", src.ip)
            },
            requested_server_name: None,
            route_name: "default",
        };
        if let Some((flag, details, bytes)) = local {
            let duration = self.ms(0.05, 0.5);
            let e = entry(start, 503, Some(flag), details, bytes, duration, None);
            b.record(client, tr, client_span, parent, true, &e, duration);
            let edge = format!("{} -> {}", src.workload(), svc.name);
            let run = self.run(slot);
            *run.requests.entry(edge).or_default() += 1;
            run.access_log_lines += 1;
            run.spans += 1;
            match flag {
                "UO" => run.overflows += 1,
                "UH" => run.no_healthy_upstream += 1,
                _ => run.fault_aborts += 1,
            }
            return duration;
        }
        let delay_ns = if delay { FAULT_DELAY_MS as i64 * MS } else { 0 };
        let server_start = start + delay_ns + self.ms(0.2, 0.6);
        let server_span = self.span_id();
        let server_ns = inner(self, b, server_span, server_start).max(MS / 10);
        let failing = self.rng.random::<f64>() < phase.details_failure_share() && dst == DETAILS;
        let (code, bytes) = if failing {
            (503, 95)
        } else {
            (200, response_bytes(svc))
        };
        let ejection_ns = (self.timeline.phase_secs * SEC / 6).max(SEC / 4);
        let stats = self.clusters.entry(key).or_default();
        let mut ejection = false;
        if code >= 500 {
            stats.consecutive_5xx += 1;
            if stats.consecutive_5xx >= CONSECUTIVE_5XX {
                stats.consecutive_5xx = 0;
                stats.ejections_enforced += 1;
                stats.ejected_until_ns = start + ejection_ns;
                ejection = true;
            }
        } else {
            stats.consecutive_5xx = 0;
        }
        self.inbound_rq[dst] += 1;
        let client_ns = delay_ns + server_ns + self.ms(0.5, 1.5);
        let dst_pod = PODS[dst];
        let upstream_host = format!("{}:9080", dst_pod.ip);
        let mut out = entry(
            start,
            code,
            delay.then_some("DI"),
            "via_upstream",
            bytes,
            client_ns,
            Some(server_ns / MS),
        );
        out.upstream_host = Some(upstream_host.clone());
        out.upstream_local_address = Some(format!("{}:{}", src.ip, self.port()));
        let mut inb = entry(
            server_start,
            code,
            None,
            "via_upstream",
            bytes,
            server_ns,
            Some((server_ns / MS).saturating_sub(1)),
        );
        inb.upstream_host = Some(upstream_host.clone());
        inb.upstream_cluster = "inbound|9080||".into();
        inb.upstream_local_address = Some(format!("127.0.0.6:{}", self.port()));
        inb.downstream_local_address = upstream_host;
        inb.downstream_remote_address = out
            .upstream_local_address
            .clone()
            .unwrap_or_else(|| src.ip.to_string());
        inb.requested_server_name = Some(svc.sni(subset));
        b.record(client, tr, client_span, parent, true, &out, client_ns);
        b.record(dst, tr, server_span, client_span, false, &inb, server_ns);
        let edge = format!("{} -> {}", src.workload(), dst_pod.workload());
        let run = self.run(slot);
        *run.requests.entry(edge).or_default() += 1;
        run.access_log_lines += 2;
        run.spans += 2;
        if delay {
            run.fault_delays += 1;
        }
        if failing {
            run.upstream_503 += 1;
        }
        if ejection {
            run.ejections += 1;
        }
        client_ns
    }

    /// Envoy stats of `pod` at `t_ns` in Prometheus text, as `/stats/prometheus` with Istio's
    /// stats tags gives them (full cluster name in `cluster_name`).
    pub fn stats_text(&self, pod: usize, t_ns: i64) -> String {
        let mut out = String::new();
        let uptime = (t_ns - self.timeline.start_s * SEC).max(0) / SEC;
        let _ = writeln!(
            out,
            "# TYPE envoy_server_uptime gauge\nenvoy_server_uptime {uptime}"
        );
        let mine: Vec<(&String, &ClusterStats)> = self
            .clusters
            .iter()
            .filter(|((p, _), _)| *p == pod)
            .map(|((_, c), s)| (c, s))
            .collect();
        let serves = pod != GATEWAY && pod != FORTIO;
        type Family<'a> = (&'a str, &'a str, &'a dyn Fn(&ClusterStats) -> u64);
        let families: [Family; 5] = [
            ("envoy_cluster_upstream_rq_total", "counter", &|s| {
                s.rq_total
            }),
            (
                "envoy_cluster_upstream_rq_pending_overflow",
                "counter",
                &|s| s.pending_overflow,
            ),
            (
                "envoy_cluster_circuit_breakers_default_rq_pending_open",
                "gauge",
                // open while requests overflow: one within a second of `t_ns`
                &|s| s.last_overflow_ns.is_some_and(|l| (t_ns - l).abs() < SEC) as u64,
            ),
            (
                "envoy_cluster_outlier_detection_ejections_enforced_total",
                "counter",
                &|s| s.ejections_enforced,
            ),
            (
                "envoy_cluster_outlier_detection_ejections_active",
                "gauge",
                &|s| (s.ejected_until_ns > t_ns) as u64,
            ),
        ];
        for (name, kind, value) in families {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (cluster, s) in &mine {
                let _ = writeln!(out, "{name}{{cluster_name=\"{cluster}\"}} {}", value(s));
            }
            if serves && name == "envoy_cluster_upstream_rq_total" {
                let _ = writeln!(
                    out,
                    "{name}{{cluster_name=\"inbound|9080||\"}} {}",
                    self.inbound_rq[pod]
                );
            }
        }
        out
    }
}

fn response_bytes(svc: Service) -> u64 {
    match svc.name {
        "productpage" => 5293,
        "details" => 178,
        "reviews" => 358,
        _ => 48,
    }
}
