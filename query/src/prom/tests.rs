//! The Prometheus API over rollups: numbers checked against the raw rows they came from.

use std::collections::HashMap;

use meshscope_schemas::Table;
use meshscope_schemas::rows::{RequestRow, requests_batch};

use super::eval::{Evaluator, Value, selector_key, selectors};
use super::series::rollup_series;
use crate::rollup::edges::DURATION_BUCKETS_MS;
use crate::rollup::{RollupConfig, Rollups};

const T0: i64 = 1_700_000_040; // a minute boundary, unix seconds

fn rows() -> Vec<RequestRow> {
    let mut out = Vec::new();
    let mut x = 99u64;
    for i in 0..1800i64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let dest = if i % 3 == 0 { "reviews" } else { "ratings" };
        let code = if (x >> 40).is_multiple_of(10) {
            503
        } else {
            200
        };
        out.push(RequestRow {
            start_time_unix_nano: (T0 + i / 6) * 1_000_000_000, // 5 minutes
            response_code: code,
            duration_ms: ((x >> 33) % 300) as i64,
            bytes_received: 10,
            bytes_sent: 100,
            reporter: Some("destination".into()),
            request_protocol: Some("http".into()),
            source_namespace: Some("default".into()),
            source_workload: Some("productpage-v1".into()),
            destination_namespace: Some("default".into()),
            destination_workload: Some(format!("{dest}-v1").into()),
            destination_service: Some(format!("{dest}.default.svc.cluster.local").into()),
            destination_service_name: Some(dest.into()),
            ..Default::default()
        });
    }
    out
}

fn eval(r: &Rollups, q: &str, t_ms: i64) -> Value {
    let expr = promql_parser::parser::parse(q).unwrap();
    let mut sels = Vec::new();
    selectors(&expr, &mut sels).unwrap();
    let st = r.read();
    let mut map = HashMap::new();
    for (vs, _) in sels {
        let name = vs.name.clone().unwrap();
        map.insert(
            selector_key(&vs),
            rollup_series(&st, 60, &name, &vs.matchers).unwrap(),
        );
    }
    Evaluator {
        series: map,
        now_ms: (T0 + 3600) * 1000,
        deadline: None,
    }
    .eval(&expr, t_ms)
    .unwrap()
}

fn vector(v: Value) -> Vec<(String, f64)> {
    let Value::Vector(v) = v else {
        panic!("not a vector: {v:?}")
    };
    let mut out: Vec<_> = v
        .into_iter()
        .map(|s| {
            (
                s.labels
                    .get("destination_service_name")
                    .cloned()
                    .unwrap_or_default(),
                s.value,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn rollups() -> (Rollups, Vec<RequestRow>) {
    let r = Rollups::start(RollupConfig {
        retention: std::time::Duration::from_secs(u32::MAX as u64),
        ..RollupConfig::default()
    });
    let rows = rows();
    r.fold(Table::Requests, &requests_batch(&rows).unwrap());
    (r, rows)
}

#[test]
fn request_rates_equal_the_stored_counts_over_the_window() {
    let (r, rows) = rollups();
    // the window (T0+60, T0+180]: minutes 1 and 2
    let t = (T0 + 180) * 1000;
    let got = vector(eval(
        &r,
        "sum by (destination_service_name) (rate(istio_requests_total{reporter=\"destination\"}[2m]))",
        t,
    ));
    for (svc, rate) in got {
        let n = rows
            .iter()
            .filter(|x| x.destination_service_name.as_deref() == Some(svc.as_str()))
            .filter(|x| (T0 + 60..T0 + 180).contains(&(x.start_time_unix_nano / 1_000_000_000)))
            .count();
        assert!(
            (rate - n as f64 / 120.0).abs() < 1e-9,
            "{svc}: {rate} vs {n}/120"
        );
    }
    // error ratio, as the dashboards compute it
    let got = vector(eval(
        &r,
        "sum by (destination_service_name) (rate(istio_requests_total{response_code=~\"5.*\"}[5m])) / sum by (destination_service_name) (rate(istio_requests_total[5m]))",
        (T0 + 300) * 1000,
    ));
    for (svc, ratio) in got {
        let all: Vec<_> = rows
            .iter()
            .filter(|x| x.destination_service_name.as_deref() == Some(svc.as_str()))
            .collect();
        let bad = all.iter().filter(|x| x.response_code >= 500).count();
        assert!(
            (ratio - bad as f64 / all.len() as f64).abs() < 1e-9,
            "{svc}"
        );
    }
}

#[test]
fn histogram_quantile_over_rollup_buckets_is_prometheus_interpolation() {
    let (r, rows) = rollups();
    let t = (T0 + 300) * 1000;
    let got = vector(eval(
        &r,
        "histogram_quantile(0.95, sum by (le, destination_service_name) (rate(istio_request_duration_milliseconds_bucket[5m])))",
        t,
    ));
    assert_eq!(got.len(), 2);
    for (svc, p95) in got {
        // independently: cumulative counts per Istio bucket from the raw durations
        let d: Vec<f64> = rows
            .iter()
            .filter(|x| x.destination_service_name.as_deref() == Some(svc.as_str()))
            .map(|x| x.duration_ms as f64)
            .collect();
        let rank = 0.95 * d.len() as f64;
        let mut lower = 0.0;
        let mut below = 0.0;
        let mut want = f64::NAN;
        for ub in DURATION_BUCKETS_MS {
            let n = d.iter().filter(|v| **v <= ub).count() as f64;
            if n >= rank {
                want = lower + (ub - lower) * (rank - below) / (n - below);
                break;
            }
            lower = ub;
            below = n;
        }
        assert!((p95 - want).abs() < 1e-9, "{svc}: {p95} vs {want}");
    }
}

#[test]
fn irate_is_the_rate_of_the_latest_bucket_and_series_hold_until_now() {
    let (r, rows) = rollups();
    // inside minute 3, irate is minute 3's rate
    let got = vector(eval(
        &r,
        "sum by (destination_service_name) (irate(istio_requests_total[1m]))",
        (T0 + 200) * 1000,
    ));
    for (svc, v) in got {
        let n = rows
            .iter()
            .filter(|x| x.destination_service_name.as_deref() == Some(svc.as_str()))
            .filter(|x| (T0 + 180..T0 + 240).contains(&(x.start_time_unix_nano / 1_000_000_000)))
            .count();
        assert!((v - n as f64 / 60.0).abs() < 1e-9, "{svc}");
    }
    // long after the traffic the counter is still there, rate 0
    let got = vector(eval(
        &r,
        "sum(rate(istio_requests_total[1m]))",
        (T0 + 1800) * 1000,
    ));
    assert_eq!(got, vec![(String::new(), 0.0)]);
}

#[test]
fn tempo_span_metrics_and_service_graph_metrics_count_the_spans() {
    use meshscope_schemas::ids::{SpanId, TraceId};
    use meshscope_schemas::rows::{SpanRow, spans_batch};
    let r = Rollups::start(RollupConfig {
        retention: std::time::Duration::from_secs(u32::MAX as u64),
        ..RollupConfig::default()
    });
    let span = |t: u8, id: u8, parent: Option<u8>, svc: &str, kind: &str, status: &str| SpanRow {
        trace_id: TraceId::from_bytes(&[t; 16]).unwrap(),
        span_id: SpanId::from_bytes(&[id; 8]).unwrap(),
        parent_span_id: parent.map(|p| SpanId::from_bytes(&[p; 8]).unwrap()),
        start_time_unix_nano: (T0 + 30) * 1_000_000_000,
        duration_ns: 20_000_000,
        service_name: svc.into(),
        name: "GET /reviews".into(),
        kind: kind.into(),
        status_code: status.into(),
        http_status_code: Some(if status == "error" { 500 } else { 200 }),
        ..Default::default()
    };
    let mut rows = Vec::new();
    for t in 1..=9u8 {
        rows.push(span(t, 1, None, "productpage", "client", "unset"));
        rows.push(span(
            t,
            2,
            Some(1),
            "reviews",
            "server",
            if t <= 3 { "error" } else { "unset" },
        ));
    }
    r.fold(Table::Spans, &spans_batch(&rows).unwrap());
    r.settle_spans();
    let eval_at = |q: &str| {
        let Value::Vector(v) = eval(&r, q, (T0 + 120) * 1000) else {
            panic!("not a vector: {q}")
        };
        v
    };
    let calls = eval_at(
        "sum by (service, span_kind, status_code) (increase(traces_spanmetrics_calls_total[5m]))",
    );
    let get = |svc: &str, status: &str| {
        calls
            .iter()
            .find(|s| s.labels["service"] == svc && s.labels["status_code"] == status)
            .map(|s| s.value)
    };
    assert_eq!(get("productpage", "STATUS_CODE_UNSET"), Some(9.0));
    assert_eq!(get("reviews", "STATUS_CODE_ERROR"), Some(3.0));
    assert_eq!(get("reviews", "STATUS_CODE_UNSET"), Some(6.0));
    let graph =
        eval_at("sum by (client, server) (increase(traces_service_graph_request_total[5m]))");
    assert_eq!(graph.len(), 1);
    assert_eq!(
        (
            graph[0].labels["client"].as_str(),
            graph[0].labels["server"].as_str(),
            graph[0].value
        ),
        ("productpage", "reviews", 9.0)
    );
    let failed = eval_at("sum(increase(traces_service_graph_request_failed_total[5m]))");
    assert_eq!(failed[0].value, 3.0);
    let p50 = eval_at(
        "histogram_quantile(0.5, sum by (le) (increase(traces_spanmetrics_latency_bucket{service=\"reviews\"}[5m])))",
    );
    // 20 ms lies in Istio's (10, 25] ms bucket: linear interpolation at rank 4.5 of 9
    assert!(
        (p50[0].value - (0.010 + 0.015 * 0.5)).abs() < 1e-9,
        "{p50:?}"
    );
}

#[test]
fn a_range_evaluation_stops_at_its_deadline() {
    let expr = promql_parser::parser::parse("vector(1)").unwrap();
    let ev = Evaluator {
        series: HashMap::new(),
        now_ms: 3_600_000,
        deadline: None,
    };
    let all = super::eval_range(&ev, &expr, 0, 3_600_000, 15_000, None).unwrap();
    assert_eq!(all.values().map(Vec::len).sum::<usize>(), 241);
    let past = std::time::Instant::now() - std::time::Duration::from_millis(1);
    let err = super::eval_range(&ev, &expr, 0, 3_600_000, 15_000, Some(past)).unwrap_err();
    assert!(err.0.contains("timed out"), "{}", err.0);
}
