//! The series the Prometheus API serves, derived from stored data:
//!
//! - Istio's standard metrics from the edge rollups (`requests` rows): each label set's
//!   counters are cumulative over the rollup buckets, so they are monotone and `rate()` over a
//!   window of whole buckets is exactly the stored count over that window. Between bucket
//!   boundaries a counter is interpolated linearly (requests spread evenly in a bucket).
//! - Tempo's service-graph metrics from the span-pair rollups.
//! - Envoy's own stats (`stat_samples`), sample by sample, as scraped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, TimestampNanosecondType};
use datafusion::prelude::{col, lit};
use meshscope_schemas::table::stat_samples as ss;
use promql_parser::label::{MatchOp, Matcher, Matchers};

use crate::rollup::RollupState;
use crate::rollup::edges::{DURATION_BUCKETS_MS, EdgeAgg, EdgeKey, FastMap, Label, SIZE_BUCKETS};
use crate::sql::QueryEngine;

pub type Labels = BTreeMap<String, String>;

/// One series: samples (unix ms, value) in time order.
#[derive(Debug, Clone)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
    /// A cumulative rollup counter: interpolate between points, hold the last value until now.
    pub interpolated: bool,
}

impl Series {
    /// The value at `t` (ms): interpolated series at any time within their life; sampled
    /// series the last sample within `lookback`.
    pub fn value_at(&self, t: i64, lookback_ms: i64, _now_ms: i64) -> Option<f64> {
        let first = self.points.first()?;
        if self.interpolated {
            // a rollup counter exists from its first bucket on; past its last point it holds
            if t < first.0 {
                return None;
            }
            let i = self.points.partition_point(|p| p.0 <= t);
            let a = self.points[i - 1];
            return Some(match self.points.get(i) {
                Some(b) if b.0 > a.0 => a.1 + (b.1 - a.1) * (t - a.0) as f64 / (b.0 - a.0) as f64,
                _ => a.1,
            });
        }
        let i = self.points.partition_point(|p| p.0 <= t);
        let p = self.points.get(i.checked_sub(1)?)?;
        (t - p.0 <= lookback_ms).then_some(p.1)
    }

    /// Samples in the range (t - range, t]; interpolated series also get exact boundary
    /// samples, so rates over them need no extrapolation.
    pub fn range(&self, t: i64, range_ms: i64, now_ms: i64) -> Vec<(i64, f64)> {
        let from = t - range_ms;
        if self.interpolated {
            let mut out = Vec::new();
            let start = self.points.first().map_or(i64::MAX, |p| p.0);
            let lo = from.max(start);
            if lo > t {
                return out;
            }
            if let Some(v) = self.value_at(lo, 0, now_ms) {
                out.push((lo, v));
            }
            let a = self.points.partition_point(|p| p.0 <= lo);
            let b = self.points.partition_point(|p| p.0 < t);
            if a < b {
                out.extend_from_slice(&self.points[a..b]);
            }
            let hi = t;
            if hi > lo
                && let Some(v) = self.value_at(hi, 0, now_ms)
            {
                out.push((hi, v));
            }
            return out;
        }
        let a = self.points.partition_point(|p| p.0 <= from);
        let b = self.points.partition_point(|p| p.0 <= t);
        self.points[a..b.max(a)].to_vec()
    }
}

/// Does a label set satisfy the matchers?
pub fn matches(labels: &Labels, matchers: &Matchers) -> bool {
    let one = |m: &Matcher| {
        let v = labels.get(&m.name).map_or("", String::as_str);
        m.is_match(v)
    };
    matchers.matchers.iter().all(one)
        && (matchers.or_matchers.is_empty()
            || matchers
                .or_matchers
                .iter()
                .any(|group| group.iter().all(one)))
}

/// The metric name a selector asks for, from `name` or a `__name__="…"` matcher.
pub fn metric_name(name: &Option<String>, matchers: &Matchers) -> Option<String> {
    name.clone().or_else(|| {
        matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.clone())
    })
}

/// Istio's metrics and their Prometheus types, for `/api/v1/metadata` and `__name__` values.
pub const ISTIO_METRICS: &[(&str, &str, &str)] = &[
    (
        "istio_requests_total",
        "counter",
        "Requests, by Istio's standard labels (from access logs).",
    ),
    (
        "istio_request_duration_milliseconds",
        "histogram",
        "Request duration in milliseconds.",
    ),
    (
        "istio_request_bytes",
        "histogram",
        "Request body size in bytes.",
    ),
    (
        "istio_response_bytes",
        "histogram",
        "Response body size in bytes.",
    ),
    (
        "istio_tcp_sent_bytes_total",
        "counter",
        "Bytes sent on TCP connections (response direction).",
    ),
    (
        "istio_tcp_received_bytes_total",
        "counter",
        "Bytes received on TCP connections (request direction).",
    ),
    (
        "traces_service_graph_request_total",
        "counter",
        "Calls between services, from client/server span pairs.",
    ),
    (
        "traces_service_graph_request_failed_total",
        "counter",
        "Failed calls between services, from span pairs.",
    ),
    (
        "traces_service_graph_request_server_seconds",
        "histogram",
        "Server-measured call duration, from span pairs.",
    ),
    (
        "traces_service_graph_request_client_seconds",
        "histogram",
        "Client-measured call duration, from span pairs.",
    ),
    (
        "traces_spanmetrics_calls_total",
        "counter",
        "Spans, by service, span name, kind and status.",
    ),
    (
        "traces_spanmetrics_latency",
        "histogram",
        "Span duration in seconds, by service, span name, kind and status.",
    ),
];

/// Every concrete series name the rollups can produce.
pub fn rollup_metric_names() -> Vec<String> {
    let mut out = Vec::new();
    for (name, kind, _) in ISTIO_METRICS {
        if *kind == "histogram" {
            for s in ["_bucket", "_sum", "_count"] {
                out.push(format!("{name}{s}"));
            }
        } else {
            out.push(name.to_string());
        }
    }
    out
}

/// What one series takes from an aggregate.
#[derive(Clone, Copy)]
enum Extract {
    Requests,
    DurationBucket(usize),
    DurationSum,
    RequestBytesBucket(usize),
    RequestBytesSum,
    ResponseBytesBucket(usize),
    ResponseBytesSum,
    RequestBytes,
    ResponseBytes,
}

fn extract(a: &EdgeAgg, e: Extract) -> f64 {
    match e {
        Extract::Requests => a.requests as f64,
        Extract::DurationBucket(i) => a.duration_buckets[..=i].iter().sum::<u64>() as f64,
        Extract::DurationSum => a.duration_ms_sum,
        Extract::RequestBytesBucket(i) => a.request_size_buckets[..=i].iter().sum::<u64>() as f64,
        Extract::RequestBytesSum | Extract::RequestBytes => a.request_bytes as f64,
        Extract::ResponseBytesBucket(i) => a.response_size_buckets[..=i].iter().sum::<u64>() as f64,
        Extract::ResponseBytesSum | Extract::ResponseBytes => a.response_bytes as f64,
    }
}

fn le(bounds: &[f64], i: usize) -> String {
    bounds
        .get(i)
        .map_or_else(|| "+Inf".to_string(), |b| fmt_le(*b))
}

fn fmt_le(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The (extra labels, extraction) pairs a rollup metric name stands for.
/// Per series of a metric: its `le` label (histograms) and what it takes from an aggregate.
type Parts = Vec<(Option<String>, Extract)>;

/// The parts of a rollup metric, and whether it counts TCP connections only.
fn plan(name: &str, spans: bool) -> Option<(Parts, bool)> {
    let buckets = |bounds: &[f64], f: fn(usize) -> Extract| {
        (0..=bounds.len())
            .map(|i| (Some(le(bounds, i)), f(i)))
            .collect::<Vec<_>>()
    };
    Some(match (name, spans) {
        ("istio_requests_total", false) => (vec![(None, Extract::Requests)], false),
        ("istio_request_duration_milliseconds_bucket", false) => (
            buckets(&DURATION_BUCKETS_MS, Extract::DurationBucket),
            false,
        ),
        ("istio_request_duration_milliseconds_sum", false) => {
            (vec![(None, Extract::DurationSum)], false)
        }
        ("istio_request_duration_milliseconds_count", false) => {
            (vec![(None, Extract::Requests)], false)
        }
        ("istio_request_bytes_bucket", false) => {
            (buckets(&SIZE_BUCKETS, Extract::RequestBytesBucket), false)
        }
        ("istio_request_bytes_sum", false) => (vec![(None, Extract::RequestBytesSum)], false),
        ("istio_request_bytes_count", false) => (vec![(None, Extract::Requests)], false),
        ("istio_response_bytes_bucket", false) => {
            (buckets(&SIZE_BUCKETS, Extract::ResponseBytesBucket), false)
        }
        ("istio_response_bytes_sum", false) => (vec![(None, Extract::ResponseBytesSum)], false),
        ("istio_response_bytes_count", false) => (vec![(None, Extract::Requests)], false),
        ("istio_tcp_sent_bytes_total", false) => (vec![(None, Extract::ResponseBytes)], true),
        ("istio_tcp_received_bytes_total", false) => (vec![(None, Extract::RequestBytes)], true),
        ("traces_service_graph_request_total", true) => (vec![(None, Extract::Requests)], false),
        ("traces_service_graph_request_failed_total", true) => {
            (vec![(None, Extract::Requests)], false)
        }
        ("traces_service_graph_request_server_seconds_bucket", true)
        | ("traces_service_graph_request_client_seconds_bucket", true) => {
            // the same bucket bounds, in seconds
            (seconds_buckets(), false)
        }
        ("traces_service_graph_request_server_seconds_sum", true)
        | ("traces_service_graph_request_client_seconds_sum", true) => {
            (vec![(None, Extract::DurationSum)], false)
        }
        ("traces_service_graph_request_server_seconds_count", true)
        | ("traces_service_graph_request_client_seconds_count", true) => {
            (vec![(None, Extract::Requests)], false)
        }
        _ => return None,
    })
}

/// Istio's label set of an edge rollup key (plus the constant labels Istio always sets).
pub fn istio_labels(k: &EdgeKey) -> Labels {
    let mut l: Labels = Label::ALL
        .iter()
        .map(|lab| (lab.name().to_string(), k.get(*lab).to_string()))
        .collect();
    l.insert("connection_security_policy".into(), "unknown".into());
    l.insert("grpc_response_status".into(), String::new());
    l.insert("source_cluster".into(), "Kubernetes".into());
    l.insert("destination_cluster".into(), "Kubernetes".into());
    l
}

fn span_labels(k: &EdgeKey, name: &str) -> Option<Labels> {
    let reporter = k.get(Label::Reporter);
    // client-measured durations come from the source side, the rest from the server side
    let want = if name.contains("_client_seconds") {
        "source"
    } else {
        "destination"
    };
    if reporter != want {
        return None;
    }
    let mut l = Labels::new();
    l.insert(
        "client".into(),
        k.get(Label::SourceCanonicalService).to_string(),
    );
    l.insert(
        "server".into(),
        k.get(Label::DestinationServiceName).to_string(),
    );
    l.insert("connection_type".into(), String::new());
    Some(l)
}

/// Folds rollup buckets into per-series bucket sums. Label sets are built and matched once per
/// (rollup key, part); buckets then only add numbers. Several rollup keys may give one label
/// set (labels the series do not show). `base` gives a key's labels (`__name__` included), or
/// `None` to leave it out; with `seconds`, duration sums are converted from milliseconds.
fn slotted<'a, K: Eq + std::hash::Hash + 'a, S: std::hash::BuildHasher + 'a>(
    buckets: impl Iterator<Item = (&'a i64, &'a HashMap<K, EdgeAgg, S>)>,
    parts: &Parts,
    matchers: &Matchers,
    seconds: bool,
    mut base: impl FnMut(&K) -> Option<Labels>,
) -> Vec<(Labels, BTreeMap<i64, f64>)> {
    let mut slots: Vec<Labels> = Vec::new();
    let mut slot_of: HashMap<Labels, usize> = HashMap::new();
    let mut key_slots: FastMap<&K, Vec<Option<usize>>> = FastMap::default();
    let mut acc: Vec<BTreeMap<i64, f64>> = Vec::new();
    for (bucket, b) in buckets {
        for (k, a) in b {
            let per_part = key_slots.entry(k).or_insert_with(|| {
                let Some(base) = base(k) else {
                    return vec![None; parts.len()];
                };
                // Most label sets fail a matcher on a label other than `le`: settle those
                // before building one label set per histogram bucket.
                let possible = matchers
                    .matchers
                    .iter()
                    .filter(|m| m.name != "le")
                    .all(|m| m.is_match(base.get(&m.name).map_or("", String::as_str)));
                if !possible {
                    return vec![None; parts.len()];
                }
                parts
                    .iter()
                    .map(|(le, _)| {
                        let mut l = base.clone();
                        if let Some(le) = le {
                            l.insert("le".into(), le.clone());
                        }
                        matches(&l, matchers).then(|| {
                            *slot_of.entry(l.clone()).or_insert_with(|| {
                                slots.push(l);
                                acc.push(BTreeMap::new());
                                slots.len() - 1
                            })
                        })
                    })
                    .collect()
            });
            for ((_, ex), slot) in parts.iter().zip(per_part.iter()) {
                if let Some(slot) = slot {
                    let mut v = extract(a, *ex);
                    if seconds && matches!(ex, Extract::DurationSum) {
                        v /= 1000.0;
                    }
                    *acc[*slot].entry(*bucket).or_default() += v;
                }
            }
        }
    }
    slots.into_iter().zip(acc).collect()
}

/// Istio's duration buckets with `le` in seconds (Tempo's metrics are in seconds).
fn seconds_buckets() -> Parts {
    (0..=DURATION_BUCKETS_MS.len())
        .map(|i| {
            let le = DURATION_BUCKETS_MS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| format!("{}", b / 1000.0));
            (Some(le), Extract::DurationBucket(i))
        })
        .collect()
}

/// Tempo's span metrics from the span-metric rollups.
fn span_metric_series(
    st: &RollupState,
    res_secs: i64,
    name: &str,
    matchers: &Matchers,
) -> Option<Vec<Series>> {
    let parts: Parts = match name {
        "traces_spanmetrics_calls_total" | "traces_spanmetrics_latency_count" => {
            vec![(None, Extract::Requests)]
        }
        "traces_spanmetrics_latency_sum" => vec![(None, Extract::DurationSum)],
        "traces_spanmetrics_latency_bucket" => seconds_buckets(),
        _ => return None,
    };
    let acc = slotted(st.span_metrics.iter(), &parts, matchers, true, |k| {
        let mut base: Labels = crate::rollup::spans::SPAN_METRIC_LABELS
            .iter()
            .zip(k.0.iter())
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        base.insert("__name__".into(), name.to_string());
        Some(base)
    });
    Some(cumulative(acc, res_secs))
}

/// Series of a rollup-derived metric matching `matchers`, up to `now_ms`.
pub fn rollup_series(
    st: &RollupState,
    res_secs: i64,
    name: &str,
    matchers: &Matchers,
) -> Option<Vec<Series>> {
    if name.starts_with("traces_spanmetrics_") {
        return span_metric_series(st, res_secs, name, matchers);
    }
    let spans = name.starts_with("traces_service_graph_");
    let (parts, tcp_only) = plan(name, spans)?;
    let source = if spans { &st.span_edges } else { &st.edges };
    let failed_only = name == "traces_service_graph_request_failed_total";
    let acc = slotted(
        source.fine().map(|(t, b)| (t, &b.aggs)),
        &parts,
        matchers,
        spans,
        |id| {
            let k = st.keys.get(*id);
            let is_tcp = k.get(Label::RequestProtocol) == "tcp";
            // HTTP metrics leave TCP connections out; TCP byte counters take only them.
            if !spans && tcp_only != is_tcp {
                return None;
            }
            if failed_only && !(k.response_code() >= 500 || k.response_code() == 0) {
                return None;
            }
            let mut base = if spans {
                span_labels(k, name)?
            } else {
                istio_labels(k)
            };
            base.insert("__name__".into(), name.to_string());
            Some(base)
        },
    );
    Some(cumulative(acc, res_secs))
}

/// Cumulative counters over buckets: a zero at each run's start, a point at each bucket end.
fn cumulative(acc: Vec<(Labels, BTreeMap<i64, f64>)>, res_secs: i64) -> Vec<Series> {
    let res_ms = res_secs * 1000;
    acc.into_iter()
        .map(|(labels, buckets)| {
            let mut points = Vec::with_capacity(buckets.len() * 2 + 1);
            let mut cum = 0.0;
            let mut last_end = i64::MIN;
            for (b, v) in buckets {
                let start = b * 1000;
                if start != last_end {
                    points.push((start, cum));
                }
                cum += v;
                points.push((start + res_ms, cum));
                last_end = start + res_ms;
            }
            Series {
                labels,
                points,
                interpolated: true,
            }
        })
        .collect()
}

/// Envoy stats as scraped, read with DataFusion (filters as expressions, never SQL text).
pub async fn stat_series(
    engine: &QueryEngine,
    name: &str,
    matchers: &Matchers,
    from_ns: i64,
    to_ns: i64,
) -> Result<Vec<Series>, String> {
    let ctx = engine.context();
    let ts = |ns: i64| {
        lit(datafusion::scalar::ScalarValue::TimestampNanosecond(
            Some(ns),
            Some(Arc::from("UTC")),
        ))
    };
    let df = ctx
        .table("stat_samples")
        .await
        .map_err(|e| e.to_string())?
        .filter(
            col(ss::METRIC)
                .eq(lit(name))
                .and(col(ss::TIME).gt_eq(ts(from_ns)))
                .and(col(ss::TIME).lt_eq(ts(to_ns))),
        )
        .map_err(|e| e.to_string())?;
    let batches = df.collect().await.map_err(|e| e.to_string())?;
    let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    for b in &batches {
        let time = b
            .column_by_name(ss::TIME)
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>());
        let value = b
            .column_by_name(ss::VALUE)
            .and_then(|c| c.as_primitive_opt::<Float64Type>());
        let (Some(time), Some(value)) = (time, value) else {
            continue;
        };
        let s = |n: &str| b.column_by_name(n).and_then(|c| c.as_string_opt::<i32>());
        let named = [
            ("pod_name", s(ss::PROXY)),
            ("namespace", s(ss::PROXY_NAMESPACE)),
            ("workload", s(ss::PROXY_WORKLOAD)),
            ("app", s(ss::PROXY_APP)),
            ("version", s(ss::PROXY_VERSION)),
            ("cluster_name", s(ss::CLUSTER_NAME)),
        ];
        let tags = b.column_by_name(ss::TAGS).and_then(|c| c.as_map_opt());
        for row in 0..b.num_rows() {
            let mut l = Labels::new();
            l.insert("__name__".into(), name.to_string());
            for (k, a) in &named {
                if let Some(a) = a.filter(|a| a.is_valid(row)) {
                    l.insert(k.to_string(), a.value(row).to_string());
                }
            }
            if let Some(m) = tags.filter(|m| m.is_valid(row)) {
                let entry = m.value(row);
                if let (Some(ks), Some(vs)) = (
                    entry.column(0).as_string_opt::<i32>(),
                    entry.column(1).as_string_opt::<i32>(),
                ) {
                    for i in 0..ks.len() {
                        if vs.is_valid(i) {
                            l.entry(ks.value(i).to_string())
                                .or_insert_with(|| vs.value(i).to_string());
                        }
                    }
                }
            }
            if !matches(&l, matchers) {
                continue;
            }
            out.entry(l)
                .or_default()
                .push((time.value(row).div_euclid(1_000_000), value.value(row)));
        }
    }
    Ok(out
        .into_iter()
        .map(|(labels, mut points)| {
            points.sort_by_key(|p| p.0);
            points.dedup_by_key(|p| p.0);
            Series {
                labels,
                points,
                interpolated: false,
            }
        })
        .collect())
}
