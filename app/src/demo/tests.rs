//! The timeline, determinism, and that what the simulator writes parses into the rows and
//! counters its own counts promise.

use meshscope_collector::envoy::access_log::{
    AccessLogFormat, AddressBook, ProxyIdentity, parse_lines,
};
use meshscope_collector::envoy::stats::parse_stats;

use super::sim::Simulator;
use super::timeline::{Phase, Timeline};
use meshscope_testkit::bookinfo::{self, PODS};

const SEC: i64 = 1_000_000_000;
const START: i64 = 1_790_000_000;

fn identity(i: usize) -> ProxyIdentity {
    let p = PODS[i];
    ProxyIdentity {
        app: Some(p.app.into()),
        version: p.version.map(str::to_string),
        ip: Some(p.ip.into()),
        ..ProxyIdentity::from_pod(p.name, p.namespace)
    }
}

fn book() -> AddressBook {
    let mut b = AddressBook::new();
    for (i, pod) in PODS.iter().enumerate() {
        b.insert(pod.ip, identity(i));
    }
    b
}

/// Plays `[START, until)` in steps of `step_ms`; returns every line with its pod.
fn play(seed: u64, speed: f64, until_s: i64, step_ms: i64) -> (Simulator, Vec<(usize, String)>) {
    let mut sim = Simulator::new(seed, speed, START);
    let mut out = Vec::new();
    let mut t = START * SEC;
    while t < until_s * SEC {
        t = (t + step_ms * 1_000_000).min(until_s * SEC);
        for (pod, lines) in sim.advance(t).lines {
            out.extend(lines.into_iter().map(|l| (pod, l)));
        }
    }
    out.sort();
    (sim, out)
}

#[test]
fn timeline_phases_are_whole_seconds_and_repeat() {
    let t = Timeline::new(1.0, START);
    assert_eq!((t.phase_secs, t.cycle_secs()), (60, 540));
    assert_eq!(Timeline::new(20.0, START).phase_secs, 3);
    assert_eq!(Timeline::new(7.0, START).phase_secs, 9);
    assert_eq!(Timeline::new(500.0, START).phase_secs, 1);
    let t = Timeline::new(20.0, START);
    let s = t.at(START * SEC);
    assert_eq!((s.cycle, s.index, s.phase), (0, 0, Phase::ReviewsV1));
    assert_eq!((s.from_s, s.to_s), (START, START + 3));
    let s = t.at((START + 3) * SEC - 1);
    assert_eq!(s.index, 0);
    let s = t.at((START + 3) * SEC);
    assert_eq!((s.index, s.phase), (1, Phase::Canary90_10));
    let s = t.at((START + 7 * 3) * SEC + 500_000_000);
    assert_eq!((s.phase, s.from_s), (Phase::CircuitBreaker, START + 21));
    let s = t.at((START + 27 + 16) * SEC);
    assert_eq!((s.cycle, s.phase), (1, Phase::RatingsAbort));
    assert_eq!(Phase::ALL.len(), 9);
    assert!(Phase::ALL.iter().enumerate().all(|(i, p)| p.index() == i));
}

#[test]
fn routing_follows_the_phase() {
    use super::timeline::Reviews::*;
    assert_eq!(Phase::ReviewsV1.reviews(true, 0.99), V1);
    assert_eq!(Phase::Canary90_10.reviews(false, 0.89), V1);
    assert_eq!(Phase::Canary90_10.reviews(false, 0.91), V2);
    assert_eq!(Phase::ReviewsV2V3.reviews(false, 0.2), V2);
    assert_eq!(Phase::ReviewsV2V3.reviews(false, 0.7), V3);
    assert_eq!(Phase::JasonToV2.reviews(true, 0.99), V2);
    assert_eq!(Phase::JasonToV2.reviews(false, 0.0), V1);
}

#[test]
fn same_seed_same_lines_whatever_the_steps() {
    let (_, a) = play(7, 20.0, START + 27, 250);
    let (_, b) = play(7, 20.0, START + 27, 1000);
    let (_, c) = play(7, 20.0, START + 27, 37);
    assert!(a.len() > 1000, "{}", a.len());
    assert_eq!(a, b);
    assert_eq!(a, c);
    let (_, d) = play(8, 20.0, START + 27, 250);
    assert_ne!(a, d);
}

#[test]
fn pods_have_their_workloads() {
    let w: Vec<&str> = PODS.iter().map(|p| p.workload()).collect();
    assert_eq!(
        w,
        [
            "istio-ingressgateway",
            "productpage-v1",
            "details-v1",
            "reviews-v1",
            "reviews-v2",
            "reviews-v3",
            "ratings-v1",
            "fortio-deploy"
        ]
    );
}

#[test]
fn lines_parse_into_both_ends_of_each_call() {
    let (sim, lines) = play(1, 20.0, START + 27, 250);
    let format = AccessLogFormat::istio();
    let book = book();
    let mut edges = std::collections::BTreeMap::<(String, String, String, String), u64>::new();
    for (pod, line) in &lines {
        let out = parse_lines(&format, line, &identity(*pod), &book, "demo");
        assert_eq!(out.rejected, vec![], "{line}");
        let r = &out.rows[0];
        let key = (
            r.reporter.as_deref().unwrap_or_default().to_string(),
            r.source_workload.as_deref().unwrap_or_default().to_string(),
            r.destination_workload
                .as_deref()
                .unwrap_or_default()
                .to_string(),
            r.response_flags.as_deref().unwrap_or_default().to_string(),
        );
        *edges.entry(key).or_default() += 1;
        assert!(r.request_id.is_some());
        assert_eq!(
            r.destination_namespace.as_deref(),
            Some("default"),
            "{line}"
        );
    }
    let count = |rep: &str, s: &str, d: &str, f: &str| {
        edges
            .get(&(rep.into(), s.into(), d.into(), f.into()))
            .copied()
            .unwrap_or(0)
    };
    // both sidecars of a call name both ends
    for (s, d) in [
        ("istio-ingressgateway", "productpage-v1"),
        ("productpage-v1", "details-v1"),
        ("productpage-v1", "reviews-v1"),
        ("productpage-v1", "reviews-v2"),
        ("productpage-v1", "reviews-v3"),
        ("reviews-v2", "ratings-v1"),
        ("reviews-v3", "ratings-v1"),
        ("fortio-deploy", "details-v1"),
    ] {
        let src = count("source", s, d, "") + count("source", s, d, "DI");
        let dst = count("destination", s, d, "");
        assert!(
            src > 0 && src == dst,
            "{s} -> {d}: {src} vs {dst}: {edges:?}"
        );
    }
    assert_eq!(count("source", "reviews-v1", "ratings-v1", ""), 0);
    // local replies: only the caller's sidecar, no destination workload
    let runs = &sim.runs;
    let abort = &runs[&Phase::RatingsAbort.index()];
    let fi = count("source", "reviews-v2", "", "FI") + count("source", "reviews-v3", "", "FI");
    assert_eq!(fi, abort.fault_aborts);
    let ratings_calls = abort
        .requests
        .iter()
        .filter(|(k, _)| k.contains("ratings"))
        .map(|(_, v)| v)
        .sum::<u64>();
    let share = abort.fault_aborts as f64 / ratings_calls as f64;
    assert!((0.45..=0.55).contains(&share), "{share} of {ratings_calls}");
    let breaker = &runs[&Phase::CircuitBreaker.index()];
    assert!(breaker.overflows > 10, "{breaker:?}");
    assert_eq!(
        count("source", "fortio-deploy", "", "UO"),
        breaker.overflows
    );
    let ejection = &runs[&Phase::OutlierEjection.index()];
    assert!(
        ejection.ejections > 0 && ejection.no_healthy_upstream > 0,
        "{ejection:?}"
    );
    let delay = &runs[&Phase::RatingsDelay.index()];
    assert!(delay.fault_delays > 0);
    assert_eq!(
        count("source", "reviews-v2", "ratings-v1", "DI")
            + count("source", "reviews-v3", "ratings-v1", "DI"),
        delay.fault_delays
    );
}

#[test]
fn stats_counters_match_the_simulators_counts() {
    let (sim, _) = play(3, 20.0, START + 27, 250);
    let stat = |pod: usize, metric: &str, cluster: &str| -> f64 {
        parse_stats(&sim.stats_text(pod, (START + 24) * SEC), &identity(pod), 1)
            .rows
            .iter()
            .find(|r| r.metric == metric && r.cluster_name.as_deref() == Some(cluster))
            .map(|r| r.value)
            .unwrap_or(-1.0)
    };
    let details = bookinfo::SVC_DETAILS.outbound_cluster(None);
    let breaker = &sim.runs[&Phase::CircuitBreaker.index()];
    assert_eq!(
        stat(
            bookinfo::FORTIO,
            "envoy_cluster_upstream_rq_pending_overflow",
            &details
        ),
        breaker.overflows as f64
    );
    // one cycle: every ejection happened in the outlier phase, by fortio or productpage
    let ejections = stat(
        bookinfo::FORTIO,
        "envoy_cluster_outlier_detection_ejections_enforced_total",
        &details,
    ) + stat(
        bookinfo::PRODUCTPAGE,
        "envoy_cluster_outlier_detection_ejections_enforced_total",
        &details,
    );
    assert_eq!(
        ejections,
        sim.runs[&Phase::OutlierEjection.index()].ejections as f64
    );
    let out = parse_stats(
        &sim.stats_text(bookinfo::REVIEWS_V2, START * SEC),
        &identity(4),
        1,
    );
    assert_eq!(out.rejected, vec![]);
    assert!(out.rows.iter().any(|r| r.metric == "envoy_server_uptime"));
}
