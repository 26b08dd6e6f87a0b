//! An edge's circuit-breaker state, from its source proxies' Envoy stats for the destination
//! service: overflow counters over the window, open gauges, outlier ejections.

use super::*;

/// The breaker series of each proxy workload `(namespace, workload)`, with the service host
/// its cluster points at: built once per graph, so an edge looks up only its own callers.
pub(crate) type BreakerIndex<'a> =
    HashMap<(&'a str, &'a str), Vec<(String, &'a SeriesKey, &'a BreakerSeries)>>;

pub(crate) fn breaker_index(st: &RollupState) -> BreakerIndex<'_> {
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

/// Breaker state of one edge from its source proxies' stats for the destination service.
pub(crate) fn breaker_for(
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
