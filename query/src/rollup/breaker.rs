//! Circuit-breaker and outlier-detection series of each proxy's upstream clusters, from
//! `stat_samples`: every sample kept (a scrape every few seconds is a few hundred samples an
//! hour per series), so increases are exact across counter resets (a restarted proxy).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampNanosecondType};
use meshscope_schemas::table::stat_samples as ss;

/// Overflow counters: a request refused by a breaker.
pub const OVERFLOW_COUNTERS: [&str; 3] = [
    "envoy_cluster_upstream_rq_pending_overflow",
    "envoy_cluster_upstream_cx_overflow",
    "envoy_cluster_upstream_rq_retry_overflow",
];
pub const PENDING_OVERFLOW: &str = "envoy_cluster_upstream_rq_pending_overflow";
pub const CX_OVERFLOW: &str = "envoy_cluster_upstream_cx_overflow";
/// Outlier ejections actually enforced (a counter).
pub const EJECTIONS_ENFORCED: &str = "envoy_cluster_outlier_detection_ejections_enforced_total";
/// Hosts ejected right now (a gauge).
pub const EJECTIONS_ACTIVE: &str = "envoy_cluster_outlier_detection_ejections_active";

/// The proxy's uptime in seconds: tells whether a counter first seen in a window started
/// from zero inside it.
pub const SERVER_UPTIME: &str = "envoy_server_uptime";

/// Whether a metric belongs in the breaker series.
pub fn is_breaker_metric(metric: &str) -> bool {
    metric == SERVER_UPTIME
        || metric.starts_with("envoy_cluster_")
            && (metric.ends_with("_overflow")
                || metric.contains("circuit_breakers_")
                || metric.contains("outlier_detection_"))
}

/// `…_open` gauges: 1 while a breaker is open (cx_open, rq_pending_open, rq_open, rq_retry_open).
pub fn is_open_gauge(metric: &str) -> bool {
    metric.contains("circuit_breakers_") && metric.ends_with("_open")
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub proxy: Arc<str>,
    pub proxy_namespace: Arc<str>,
    pub proxy_workload: Arc<str>,
    pub cluster_name: Arc<str>,
    pub metric: Arc<str>,
}

#[derive(Debug, Clone, Default)]
pub struct BreakerSeries {
    /// time (unix ns) → value.
    pub samples: BTreeMap<i64, f64>,
}

impl BreakerSeries {
    /// Increase of a counter over [from, to] (unix ns): the sum of the rises between
    /// consecutive samples, starting from the last sample before `from` when there is one; a
    /// drop is a reset, after which the new value counts whole.
    ///
    /// `started_ns`: when the proxy started, if known. A series with no sample before `from`
    /// whose proxy started inside the window counted from zero, so its first sample counts
    /// whole (Prometheus would lose it; Envoy's own counter has it).
    pub fn increase(&self, from_ns: i64, to_ns: i64, started_ns: Option<i64>) -> f64 {
        let mut prev = self.samples.range(..from_ns).next_back().map(|(_, v)| *v);
        if prev.is_none() && started_ns.is_some_and(|s| s >= from_ns) {
            prev = Some(0.0);
        }
        let mut total = 0.0;
        for (_, &v) in self.samples.range(from_ns..=to_ns) {
            if let Some(p) = prev {
                total += if v >= p { v - p } else { v };
            }
            prev = Some(v);
        }
        total
    }

    /// Largest value of a gauge over [from, to], counting the value in force at `from`.
    pub fn max(&self, from_ns: i64, to_ns: i64) -> Option<f64> {
        let before = self.samples.range(..from_ns).next_back().map(|(_, v)| *v);
        self.samples
            .range(from_ns..=to_ns)
            .map(|(_, v)| *v)
            .chain(before)
            .reduce(f64::max)
    }

    pub fn last(&self, to_ns: i64) -> Option<f64> {
        self.samples.range(..=to_ns).next_back().map(|(_, v)| *v)
    }
}

#[derive(Default)]
pub struct BreakerStore {
    pub series: HashMap<SeriesKey, BreakerSeries>,
    /// `envoy_server_uptime` per proxy, apart: it is looked up by proxy alone.
    pub uptime: HashMap<Arc<str>, BreakerSeries>,
}

impl BreakerStore {
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// When `proxy` started, from its uptime sample nearest to `at_ns`.
    pub fn proxy_started_ns(&self, proxy: &str, at_ns: i64) -> Option<i64> {
        let s = self.uptime.get(proxy)?;
        let after = s.samples.range(at_ns..).next();
        let before = s.samples.range(..at_ns).next_back();
        let (t, up) = match (before, after) {
            (Some(b), Some(a)) => {
                if at_ns - b.0 <= a.0 - at_ns {
                    b
                } else {
                    a
                }
            }
            (b, a) => b.or(a)?,
        };
        Some(t - (*up * 1e9) as i64)
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    pub(super) fn fold(&mut self, batch: &RecordBatch, oldest_secs: i64) -> usize {
        let (Some(metric), Some(time), Some(value), Some(proxy)) = (
            batch
                .column_by_name(ss::METRIC)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(ss::TIME)
                .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>()),
            batch
                .column_by_name(ss::VALUE)
                .and_then(|c| c.as_primitive_opt::<Float64Type>()),
            batch
                .column_by_name(ss::PROXY)
                .and_then(|c| c.as_string_opt::<i32>()),
        ) else {
            return 0;
        };
        let opt = |n: &str| {
            batch
                .column_by_name(n)
                .and_then(|c| c.as_string_opt::<i32>())
        };
        let (ns, wl, cluster) = (
            opt(ss::PROXY_NAMESPACE),
            opt(ss::PROXY_WORKLOAD),
            opt(ss::CLUSTER_NAME),
        );
        let get = |a: Option<&arrow::array::StringArray>, row: usize| -> Arc<str> {
            Arc::from(a.filter(|a| a.is_valid(row)).map_or("", |a| a.value(row)))
        };
        let mut n = 0;
        for row in 0..batch.num_rows() {
            let m = metric.value(row);
            if !is_breaker_metric(m) || time.value(row) < oldest_secs.saturating_mul(1_000_000_000)
            {
                continue;
            }
            if m == SERVER_UPTIME {
                self.uptime
                    .entry(Arc::from(proxy.value(row)))
                    .or_default()
                    .samples
                    .insert(time.value(row), value.value(row));
                n += 1;
                continue;
            }
            let key = SeriesKey {
                proxy: Arc::from(proxy.value(row)),
                proxy_namespace: get(ns, row),
                proxy_workload: get(wl, row),
                cluster_name: get(cluster, row),
                metric: Arc::from(m),
            };
            self.series
                .entry(key)
                .or_default()
                .samples
                .insert(time.value(row), value.value(row));
            n += 1;
        }
        n
    }

    /// Drops samples older than `oldest_secs`, keeping each series' last one before it as the
    /// baseline of later increases.
    pub(super) fn prune(&mut self, oldest_secs: i64) {
        let cut = oldest_secs.saturating_mul(1_000_000_000);
        let keep_recent = |s: &mut BreakerSeries| {
            let mut keep = s.samples.split_off(&cut);
            if let Some((t, v)) = s.samples.iter().next_back() {
                keep.insert(*t, *v);
            }
            s.samples = keep;
            s.samples.len() > 1 || s.samples.keys().next().is_some_and(|t| *t >= cut)
        };
        self.series.retain(|_, s| keep_recent(s));
        self.uptime.retain(|_, s| keep_recent(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(i64, f64)]) -> BreakerSeries {
        BreakerSeries {
            samples: points.iter().copied().collect(),
        }
    }

    #[test]
    fn increase_counts_rises_and_survives_a_counter_reset() {
        // 0 → 10 → 25, proxy restarts (reset to 3), → 7
        let s = series(&[(10, 0.0), (20, 10.0), (30, 25.0), (40, 3.0), (50, 7.0)]);
        assert_eq!(s.increase(0, 100, None), 25.0 + 3.0 + 4.0);
        // baseline is the sample before the window
        assert_eq!(s.increase(25, 35, None), 15.0);
        assert_eq!(s.increase(35, 45, None), 3.0);
        // no sample before: the first sample in the window is the baseline…
        assert_eq!(s.increase(15, 25, None), 10.0);
        assert_eq!(s.increase(60, 70, None), 0.0);
        // …unless the proxy started inside the window: then it counted from zero
        let late = series(&[(20, 10.0), (30, 25.0)]);
        assert_eq!(late.increase(15, 35, None), 15.0);
        assert_eq!(late.increase(15, 35, Some(16)), 25.0);
        assert_eq!(late.increase(15, 35, Some(14)), 15.0);
    }

    #[test]
    fn gauge_max_includes_the_value_in_force_at_the_window_start() {
        let s = series(&[(10, 0.0), (20, 1.0), (30, 0.0)]);
        assert_eq!(s.max(25, 29), Some(1.0));
        assert_eq!(s.max(31, 40), Some(0.0));
        assert_eq!(s.max(0, 5), None);
    }

    #[test]
    fn breaker_metrics_are_recognised() {
        assert!(is_breaker_metric(
            "envoy_cluster_upstream_rq_pending_overflow"
        ));
        assert!(is_breaker_metric(
            "envoy_cluster_circuit_breakers_default_rq_pending_open"
        ));
        assert!(is_open_gauge(
            "envoy_cluster_circuit_breakers_default_rq_pending_open"
        ));
        assert!(!is_open_gauge(
            "envoy_cluster_circuit_breakers_default_remaining_pending"
        ));
        assert!(is_breaker_metric(EJECTIONS_ACTIVE));
        assert!(!is_breaker_metric("envoy_cluster_upstream_rq_total"));
    }
}
