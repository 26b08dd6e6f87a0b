use meshscope_schemas::Table;
use meshscope_schemas::rows::{
    RequestRow, StatSampleRow, Text, requests_batch, stat_samples_batch,
};

use super::*;
use crate::rollup::sketch::nearest_rank;
use crate::rollup::{RollupConfig, Rollups};

const T0: i64 = 1_700_000_040 * 1_000_000_000; // a minute boundary
const S: i64 = 1_000_000_000;

fn row(
    reporter: &str,
    src: &str,
    dst: Option<(&str, &str)>,
    code: i32,
    flags: Option<&str>,
    ms: i64,
) -> RequestRow {
    let (dst_wl, dst_ver) = dst.map_or((None, None), |(w, v)| {
        (Some(Text::from(w)), Some(Text::from(v)))
    });
    RequestRow {
        start_time_unix_nano: T0 + 10 * S,
        response_code: code,
        response_flags: flags.map(Text::from),
        duration_ms: ms,
        bytes_received: 10,
        bytes_sent: 100,
        reporter: Some(reporter.into()),
        request_protocol: Some("http".into()),
        source_namespace: Some("default".into()),
        source_workload: Some(src.into()),
        source_app: Some(src.trim_end_matches("-v1").into()),
        source_version: Some("v1".into()),
        destination_namespace: dst.map(|_| "default".into()),
        destination_workload: dst_wl.clone(),
        destination_app: dst_wl
            .as_ref()
            .map(|w| w.split('-').next().unwrap_or(w).into()),
        destination_version: dst_ver,
        destination_service: Some("reviews.default.svc.cluster.local".into()),
        destination_service_name: Some("reviews".into()),
        ..Default::default()
    }
}

fn query(gt: GraphType) -> GraphQuery {
    GraphQuery {
        from_ns: T0,
        to_ns: T0 + 60 * S,
        graph_type: gt,
        namespaces: vec![],
        include_idle: false,
        inject_service_nodes: false,
        health: HealthConfig::default(),
    }
}

fn rollups(rows: &[RequestRow]) -> Rollups {
    let r = Rollups::start(RollupConfig {
        retention: std::time::Duration::from_secs(u32::MAX as u64),
        ..RollupConfig::default()
    });
    r.fold(Table::Requests, &requests_batch(rows).unwrap());
    r
}

fn edge<'a>(g: &'a Graph, s: &str, t: &str) -> &'a Edge {
    g.edges
        .iter()
        .find(|e| e.source == s && e.target == t)
        .unwrap_or_else(|| {
            panic!(
                "no edge {s} -> {t} in {:#?}",
                g.edges.iter().map(|e| &e.id).collect::<Vec<_>>()
            )
        })
}

#[test]
fn destination_reports_win_and_local_replies_come_from_the_source() {
    let mut rows = Vec::new();
    // 60 to v1, 40 to v2: each seen by both proxies
    for (wl, n) in [("reviews-v1", 60), ("reviews-v2", 40)] {
        for i in 0..n {
            let code = if wl == "reviews-v2" && i < 10 {
                503
            } else {
                200
            };
            rows.push(row(
                "source",
                "productpage-v1",
                Some((wl, &wl[8..])),
                code,
                None,
                12,
            ));
            rows.push(row(
                "destination",
                "productpage-v1",
                Some((wl, &wl[8..])),
                code,
                None,
                10,
            ));
        }
    }
    // 7 overflowed at the source: never reached a workload
    for _ in 0..7 {
        rows.push(row("source", "productpage-v1", None, 503, Some("UO"), 0));
    }
    let r = rollups(&rows);
    let g = build(&r.read(), 60, &query(GraphType::Workload));
    let v1 = edge(
        &g,
        "workload:default/productpage-v1",
        "workload:default/reviews-v1",
    );
    let v2 = edge(
        &g,
        "workload:default/productpage-v1",
        "workload:default/reviews-v2",
    );
    let uo = edge(
        &g,
        "workload:default/productpage-v1",
        "service:default/reviews",
    );
    assert_eq!((v1.requests, v2.requests, uo.requests), (60, 40, 7));
    assert_eq!(v2.errors, 10);
    assert_eq!(v2.response_codes["503"], 10);
    // the split counts every request productpage sent to the reviews service
    assert_eq!(v1.traffic_share, round3(60.0 / 107.0));
    assert_eq!(uo.traffic_share, round3(7.0 / 107.0));
    // destination-measured latency is the edge's; the source's is shown beside it
    assert_eq!(
        v1.latency_ms.p50,
        v1.latency_ms_by_reporter["destination"].p50
    );
    assert!(v1.latency_ms_by_reporter["source"].p50.unwrap() > v1.latency_ms.p50.unwrap());
    assert_eq!(uo.circuit_breaker.uo_responses, 7);
    assert!(uo.circuit_breaker.tripped);
    assert!(!v1.circuit_breaker.tripped);
    assert_eq!(uo.response_flags["UO"].count, 7);
    assert!(uo.response_flags["UO"].meaning.contains("overflow"));
    assert_eq!(v1.health, Health::Healthy);
    assert_eq!(v2.health, Health::Failure); // 25% 5xx
    assert_eq!(uo.health, Health::Failure);
    let rev = g
        .nodes
        .iter()
        .find(|n| n.id == "workload:default/reviews-v1")
        .unwrap();
    assert_eq!(rev.rank, 1);
    assert_eq!(rev.service.as_deref(), Some("reviews"));
    // rps over the 60 s window
    assert_eq!(v1.rps, 1.0);
}

#[test]
fn injected_service_nodes_carry_the_split_and_the_local_replies() {
    let mut rows = Vec::new();
    for (wl, n) in [("reviews-v1", 30), ("reviews-v2", 70)] {
        for _ in 0..n {
            rows.push(row(
                "destination",
                "productpage-v1",
                Some((wl, &wl[8..])),
                200,
                None,
                10,
            ));
        }
    }
    for _ in 0..25 {
        rows.push(row("source", "productpage-v1", None, 503, Some("FI"), 0));
    }
    let r = rollups(&rows);
    let mut q = query(GraphType::Workload);
    q.inject_service_nodes = true;
    let g = build(&r.read(), 60, &q);
    let into = edge(
        &g,
        "workload:default/productpage-v1",
        "service:default/reviews",
    );
    assert_eq!((into.requests, into.errors), (125, 25));
    assert_eq!(into.error_rate, 0.2);
    assert_eq!(into.fault_injection.aborted, 25);
    assert_eq!(into.traffic_share, 1.0);
    let v1 = edge(&g, "service:default/reviews", "workload:default/reviews-v1");
    let v2 = edge(&g, "service:default/reviews", "workload:default/reviews-v2");
    assert_eq!((v1.traffic_share, v2.traffic_share), (0.3, 0.7));
    assert_eq!(g.edges.len(), 3);
    let ranks: BTreeMap<_, _> = g.nodes.iter().map(|n| (n.id.as_str(), n.rank)).collect();
    assert_eq!(ranks["service:default/reviews"], 1);
    assert_eq!(ranks["workload:default/reviews-v2"], 2);
}

#[test]
fn graph_types_group_nodes_like_kiali() {
    let rows: Vec<_> = (0..10)
        .flat_map(|_| {
            [
                row(
                    "destination",
                    "productpage-v1",
                    Some(("reviews-v1", "v1")),
                    200,
                    None,
                    5,
                ),
                row(
                    "destination",
                    "productpage-v1",
                    Some(("reviews-v2", "v2")),
                    200,
                    None,
                    5,
                ),
            ]
        })
        .collect();
    let r = rollups(&rows);
    let st = r.read();
    let app = build(&st, 60, &query(GraphType::App));
    assert_eq!(app.edges.len(), 1);
    assert_eq!(app.edges[0].target, "app:default/reviews");
    assert_eq!(app.edges[0].requests, 20);
    let va = build(&st, 60, &query(GraphType::VersionedApp));
    assert_eq!(va.edges.len(), 2);
    assert!(va.nodes.iter().any(|n| n.id == "app:default/reviews/v2"));
    let svc = build(&st, 60, &query(GraphType::Service));
    assert_eq!(svc.edges.len(), 1);
    assert_eq!(svc.edges[0].target, "service:default/reviews");
    // namespaces outside the filter disappear
    let mut q = query(GraphType::Workload);
    q.namespaces = vec!["other".into()];
    assert!(build(&st, 60, &q).edges.is_empty());
    // outside the window: nothing, unless idle edges are asked for
    let mut q = query(GraphType::Workload);
    q.from_ns += 120 * S;
    q.to_ns += 120 * S;
    assert!(build(&st, 60, &q).edges.is_empty());
    q.include_idle = true;
    let idle = build(&st, 60, &q);
    assert_eq!(idle.edges.len(), 2);
    assert!(
        idle.edges
            .iter()
            .all(|e| e.requests == 0 && e.health == Health::Idle)
    );
}

#[test]
fn percentiles_agree_with_the_raw_durations_across_buckets() {
    let mut rows = Vec::new();
    let mut durations = Vec::new();
    let mut x = 7u64;
    for i in 0..3000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ms = ((x >> 33) % 400) as i64 + if i % 50 == 0 { 2000 } else { 0 };
        let mut r = row(
            "destination",
            "productpage-v1",
            Some(("reviews-v1", "v1")),
            200,
            None,
            ms,
        );
        r.start_time_unix_nano = T0 + (i as i64 % 300) * S; // five one-minute buckets
        durations.push(ms as f64);
        rows.push(r);
    }
    let r = rollups(&rows);
    let mut q = query(GraphType::Workload);
    q.to_ns = T0 + 300 * S;
    let g = build(&r.read(), 60, &q);
    assert_latency_matches("edge", &g.edges[0].latency_ms, &mut durations);
}

/// p50/p95/p99 within 1% of the raw durations' nearest-rank values; the average exact.
fn assert_latency_matches(what: &str, l: &Latency, raw: &mut [f64]) {
    raw.sort_by(f64::total_cmp);
    for (q, got) in [(0.5, l.p50), (0.95, l.p95), (0.99, l.p99)] {
        let want = raw[nearest_rank(q, raw.len() as u64) as usize - 1];
        let got = got.unwrap();
        assert!(
            (got - want).abs() <= 0.01 * want,
            "{what} p{q}: sketch {got}, raw {want}"
        );
    }
    let avg = raw.iter().sum::<f64>() / raw.len() as f64;
    assert!((l.avg.unwrap() - avg).abs() < 1e-3, "{what} avg");
}

#[test]
fn breaker_stats_of_the_source_proxy_trip_the_edge() {
    let rows: Vec<_> = (0..5)
        .map(|_| {
            row(
                "destination",
                "productpage-v1",
                Some(("reviews-v1", "v1")),
                200,
                None,
                5,
            )
        })
        .collect();
    let r = rollups(&rows);
    let stat = |t: i64, metric: &str, v: f64| StatSampleRow {
        time_unix_nano: T0 + t * S,
        proxy: "productpage-v1-abc".into(),
        proxy_namespace: Some("default".into()),
        proxy_workload: Some("productpage-v1".into()),
        metric: metric.into(),
        cluster_name: Some("outbound|9080||reviews.default.svc.cluster.local".into()),
        value: v,
        kind: "counter".into(),
        ..Default::default()
    };
    let pend = "envoy_cluster_upstream_rq_pending_overflow";
    let open = "envoy_cluster_circuit_breakers_default_rq_pending_open";
    let stats = vec![
        stat(-30, pend, 4.0), // before the window: the baseline
        stat(5, pend, 10.0),
        stat(20, pend, 30.0),
        stat(30, pend, 2.0), // proxy restarted
        stat(50, pend, 9.0),
        stat(20, open, 1.0),
        stat(40, open, 0.0),
        // another proxy's cluster for another service: not this edge's
        stat(20, "envoy_cluster_upstream_cx_overflow", 100.0),
    ];
    let mut stats = stats;
    stats[7].cluster_name = Some("outbound|9080||ratings.default.svc.cluster.local".into());
    r.fold(Table::StatSamples, &stat_samples_batch(&stats).unwrap());
    let g = build(&r.read(), 60, &query(GraphType::Workload));
    let cb = &g.edges[0].circuit_breaker;
    assert_eq!(cb.pending_overflow, 6.0 + 20.0 + 2.0 + 7.0);
    assert_eq!(cb.overflow, cb.pending_overflow);
    assert!(cb.open && cb.tripped);
    assert_eq!(cb.open_gauges, ["default_rq_pending_open"]);
    assert_eq!(cb.uo_responses, 0);
}

#[test]
fn health_thresholds_follow_kiali_and_parse() {
    let h = HealthConfig::default();
    assert_eq!(h.health(100, 0, 0), Health::Healthy);
    assert_eq!(h.health(100, 1, 0), Health::Degraded);
    assert_eq!(h.health(100, 10, 0), Health::Failure);
    assert_eq!(h.health(100, 0, 9), Health::Healthy);
    assert_eq!(h.health(100, 0, 10), Health::Degraded);
    assert_eq!(h.health(100, 0, 20), Health::Failure);
    assert_eq!(h.health(0, 0, 0), Health::Idle);
    let c = HealthConfig::parse("5xx=1:5, 4xx=30:50").unwrap();
    assert_eq!(c.health(100, 1, 0), Health::Degraded);
    assert_eq!(c.health(1000, 1, 0), Health::Healthy);
    assert!(HealthConfig::parse("5xx=20:10").is_err());
    assert!(HealthConfig::parse("3xx=1:2").is_err());
}

#[test]
fn kiali_and_dot_shapes() {
    let rows = vec![
        row(
            "destination",
            "productpage-v1",
            Some(("reviews-v1", "v1")),
            200,
            None,
            5,
        ),
        row("source", "productpage-v1", None, 503, Some("UO"), 0),
    ];
    let r = rollups(&rows);
    let g = build(&r.read(), 60, &query(GraphType::VersionedApp));
    let k = render::kiali(&g);
    let edges = k["elements"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    let uo = edges
        .iter()
        .find(|e| e["data"]["target"] == "service:default/reviews")
        .unwrap();
    assert_eq!(uo["data"]["traffic"]["protocol"], "http");
    assert_eq!(
        uo["data"]["traffic"]["responses"]["503"]["flags"]["UO"],
        "100.0"
    );
    assert_eq!(uo["data"]["traffic"]["rates"]["httpPercentErr"], "100.0");
    assert_eq!(uo["data"]["hasCB"], true);
    assert!(
        k["elements"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["data"]["isBox"] == "app")
    );
    let d = render::dot(&g);
    assert!(d.starts_with("digraph meshscope {"));
    assert!(d.contains("breaker tripped"));
}

#[test]
fn client_server_span_pairs_fill_in_pairs_without_access_logs() {
    use meshscope_schemas::ids::{SpanId, TraceId};
    use meshscope_schemas::rows::{SpanRow, spans_batch};
    let span =
        |trace: u8, id: u8, parent: Option<u8>, service: &str, kind: &str, code: i32, ms: i64| {
            SpanRow {
                trace_id: TraceId::from_bytes(&[trace; 16]).unwrap(),
                span_id: SpanId::from_bytes(&[id; 8]).unwrap(),
                parent_span_id: parent.map(|p| SpanId::from_bytes(&[p; 8]).unwrap()),
                start_time_unix_nano: T0 + 5 * S,
                duration_ns: ms * 1_000_000,
                service_name: service.into(),
                name: "call".into(),
                kind: kind.into(),
                status_code: "unset".into(),
                http_status_code: Some(code),
                upstream_cluster: (kind == "client")
                    .then(|| "outbound|9080||ratings.default.svc.cluster.local".to_string()),
                ..Default::default()
            }
        };
    let mut rows = Vec::new();
    // 8 calls reviews → ratings seen by both sidecars; 2 more aborted at the client (FI)
    for t in 1..=8u8 {
        rows.push(span(t, 1, None, "reviews.default", "client", 200, 12));
        rows.push(span(t, 2, Some(1), "ratings.default", "server", 200, 10));
    }
    for t in 9..=10u8 {
        let mut c = span(t, 1, None, "reviews.default", "client", 503, 0);
        c.response_flags = Some("FI".into());
        rows.push(c);
    }
    // the server half of a pair may arrive before the client half
    let (first, second) = rows.split_at(4);
    let r = rollups(&[]);
    r.fold(Table::Spans, &spans_batch(second).unwrap());
    r.fold(Table::Spans, &spans_batch(first).unwrap());
    r.settle_spans();
    let mut q = query(GraphType::App);
    q.inject_service_nodes = true;
    let g = build(&r.read(), 60, &q);
    let into = edge(&g, "app:default/reviews", "service:default/ratings");
    assert_eq!((into.requests, into.errors), (10, 2));
    assert_eq!(into.fault_injection.aborted, 2);
    let to_wl = edge(&g, "service:default/ratings", "app:default/ratings");
    assert_eq!(to_wl.requests, 8);
    let near = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() <= want * 0.005;
    assert!(near(to_wl.latency_ms.p50, 10.0));
    assert!(near(to_wl.latency_ms_by_reporter["source"].p50, 12.0));
    // once access logs describe the pair, the spans stand aside
    let logged = row(
        "destination",
        "reviews-v1",
        Some(("ratings-v1", "v1")),
        200,
        None,
        3,
    );
    let mut logged = logged;
    logged.source_app = Some("reviews".into());
    logged.source_service = Some("reviews".into());
    logged.destination_service = Some("ratings.default.svc.cluster.local".into());
    logged.destination_service_name = Some("ratings".into());
    logged.destination_app = Some("ratings".into());
    r.fold(Table::Requests, &requests_batch(&[logged]).unwrap());
    let g = build(&r.read(), 60, &q);
    let into = edge(&g, "app:default/reviews", "service:default/ratings");
    assert_eq!(into.requests, 1);
}

#[test]
fn big_graphs_built_on_two_threads_equal_the_single_thread_build() {
    // 3,000 services × 5 label sets (> PARALLEL_LABEL_SETS), 9,000 edges with service
    // nodes (> PARALLEL_EDGES), and one workload reached through ten service names, so its
    // edge is folded in both halves and merged.
    let mut rows = Vec::new();
    for i in 0..3000 {
        let svc = format!("svc-{i}");
        let src = format!("client-{}-v1", i % 50);
        let mut r = |reporter: &str, dst: Option<(&str, &str)>, code, flags, ms| {
            let mut x = row(reporter, &src, dst, code, flags, ms);
            x.destination_service = Some(format!("{svc}.default.svc.cluster.local").into());
            x.destination_service_name = Some(svc.clone().into());
            rows.push(x);
        };
        let (v1, v2) = (format!("{svc}-v1"), format!("{svc}-v2"));
        r("destination", Some((&v1, "v1")), 200, None, 5 + i % 7);
        r("destination", Some((&v2, "v2")), 200, None, 9 + i % 11);
        r("source", Some((&v1, "v1")), 200, None, 6 + i % 7);
        r("source", None, 503, Some("UO"), 1);
        r("destination", Some((&v1, "v1")), 500, None, 30 + i % 13);
    }
    for a in 0..10 {
        for _ in 0..=a {
            let mut x = row(
                "destination",
                "client-0-v1",
                Some(("shared-v1", "v1")),
                200,
                None,
                4 + a,
            );
            x.destination_service = Some(format!("alias-{a}.default.svc.cluster.local").into());
            x.destination_service_name = Some(format!("alias-{a}").into());
            rows.push(x);
        }
    }
    let halves: BTreeSet<u64> = (0..10)
        .map(|a| rustc_hash::FxBuildHasher.hash_one(format!("alias-{a}").as_str()) % 2)
        .collect();
    assert_eq!(halves.len(), 2, "the aliases land in both halves");
    let r = rollups(&rows);
    let st = r.read();
    assert!(st.keys.len() > PARALLEL_LABEL_SETS);
    for inject in [false, true] {
        let mut q = query(GraphType::Workload);
        q.inject_service_nodes = inject;
        let one = build_with(&st, 60, &q, false, &mut Phases::default());
        let two = build_with(&st, 60, &q, true, &mut Phases::default());
        if inject {
            assert!(
                one.edges.len() > PARALLEL_EDGES,
                "{} edges",
                one.edges.len()
            );
        } else {
            let shared = edge(
                &one,
                "workload:default/client-0-v1",
                "workload:default/shared-v1",
            );
            assert_eq!(shared.requests, 55);
            let node = one
                .nodes
                .iter()
                .find(|n| n.id == "workload:default/shared-v1")
                .unwrap();
            // Reached through ten services, it shows the least name, not whichever came first.
            assert_eq!(node.service.as_deref(), Some("alias-0"));
        }
        assert_eq!(
            serde_json::to_value(&one).unwrap(),
            serde_json::to_value(&two).unwrap(),
            "inject_service_nodes={inject}"
        );
        // The API's JSON (edges rendered on two threads when many) is serde_json's, byte
        // for byte.
        assert_eq!(
            to_json_chunks(&two).unwrap().concat(),
            serde_json::to_vec(&two).unwrap()
        );
    }
}

/// Label sets that differ only in code and flags share one duration sketch per bucket (kept
/// under the group's first label set). An edge's percentiles, overall and per reporter, still
/// equal those of its raw durations, also when that first label set has no requests in the
/// window, and it adds no counts.
#[test]
fn shared_latency_sketches_give_each_edge_its_own_percentiles() {
    let r = Rollups::start(RollupConfig {
        retention: std::time::Duration::from_secs(u32::MAX as u64),
        ..RollupConfig::default()
    });
    let mut x = 11u64;
    let mut ms = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) % 900) as i64 + 1
    };
    // productpage → reviews-v1 as `reporter` saw it, or a local reply (no workload reached).
    let mut at = |minute: i64, i: i64, reporter: &str, reached: bool, code, flags| {
        let dst = reached.then_some(("reviews-v1", "v1"));
        let mut r = row(reporter, "productpage-v1", dst, code, flags, ms());
        r.start_time_unix_nano = T0 + minute * 60 * S + (i % 60) * S;
        r
    };
    // Minute 0: the groups' first label sets (code 200), alone in their batch.
    let mut first = Vec::new();
    for i in 0..40 {
        first.push(at(0, i, "destination", true, 200, None));
        first.push(at(0, i, "source", true, 200, None));
        first.push(at(0, i, "source", false, 503, Some("UO")));
    }
    r.fold(Table::Requests, &requests_batch(&first).unwrap());
    // Minutes 1-4: other codes and flags of the same groups.
    let (mut dest, mut src, mut local) = (Vec::new(), Vec::new(), Vec::new());
    let mut rest = Vec::new();
    for i in 0..1200 {
        let minute = 1 + i % 4;
        let code = [500, 404, 503][i as usize % 3];
        let flags = ["FI", "UO", "NR"][i as usize % 3];
        for (r, into) in [
            (at(minute, i, "destination", true, code, None), &mut dest),
            (at(minute, i, "source", true, code, None), &mut src),
            (at(minute, i, "source", false, 503, Some(flags)), &mut local),
        ] {
            into.push(r.duration_ms as f64);
            rest.push(r);
        }
    }
    r.fold(Table::Requests, &requests_batch(&rest).unwrap());
    let st = r.read();
    let leader_codes: BTreeSet<&str> = st
        .edges
        .fine()
        .flat_map(|(_, b)| b.latency.keys())
        .map(|id| st.keys.get(*id).get(Label::ResponseCode))
        .collect();
    assert_eq!(
        leader_codes,
        BTreeSet::from(["200", "503"]),
        "leaders are the minute-0 label sets"
    );
    // The window leaves minute 0 out.
    let mut q = query(GraphType::Workload);
    q.from_ns = T0 + 60 * S;
    q.to_ns = T0 + 300 * S;
    let g = build(&st, 60, &q);
    let check = assert_latency_matches;
    let e = edge(
        &g,
        "workload:default/productpage-v1",
        "workload:default/reviews-v1",
    );
    assert_eq!(e.requests, 1200);
    assert!(
        !e.response_codes.contains_key("200"),
        "{:?}",
        e.response_codes
    );
    check("own", &e.latency_ms, &mut dest.clone());
    check(
        "by destination",
        &e.latency_ms_by_reporter["destination"],
        &mut dest,
    );
    check("by source", &e.latency_ms_by_reporter["source"], &mut src);
    let e = edge(
        &g,
        "workload:default/productpage-v1",
        "service:default/reviews",
    );
    assert_eq!((e.requests, e.response_codes["503"]), (1200, 1200));
    check("local replies", &e.latency_ms, &mut local);
}
