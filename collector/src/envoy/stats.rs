//! Envoy stats → `stat_samples` rows: Prometheus text (admin `/stats/prometheus`, parsed
//! with the `prometheus-parse` crate) and Envoy's plain `/stats` text (`name: value`).
//!
//! Cluster stats keep their full cluster name whichever tagging the proxy uses:
//! - Istio's `stats_config` tags give `envoy_cluster_upstream_rq_pending_overflow{cluster_name=
//!   "outbound|8000||httpbin.default.svc.cluster.local"}`: taken as is;
//! - Envoy's default tags cut the cluster name at its first dot and glue the rest into the metric
//!   name: `envoy_cluster_default_svc_cluster_local_upstream_rq_pending_overflow{envoy_cluster_name=
//!   "outbound|8000||httpbin"}`. We put the name back together (`<host>.<ns>.svc.cluster.local`)
//!   and strip the glued part from the metric, so both spellings land in the same series;
//! - plain `/stats` names (`cluster.outbound|8000||httpbin.default.svc.cluster.local.upstream_rq_
//!   pending_overflow: 3`) are split at the end of the Istio cluster name.
//!
//! Counters are stored as the proxy reports them (cumulative); resets (a proxy restart) are
//! handled where rates are computed, as Prometheus does.

use meshscope_schemas::rows::StatSampleRow;

use super::access_log::ProxyIdentity;

/// A line of a stats body that could not be used.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RejectedStat {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct StatsOutcome {
    pub rows: Vec<StatSampleRow>,
    pub rejected: Vec<RejectedStat>,
}

/// Which of Envoy's two text formats a body is in.
pub fn looks_like_prometheus(body: &str) -> bool {
    body.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.starts_with('#') || !l.contains(": "))
}

/// The name the proxy is stored under: pod name, else IP, else `unknown`.
pub fn proxy_name(p: &ProxyIdentity) -> String {
    p.pod
        .clone()
        .or_else(|| p.ip.clone())
        .unwrap_or_else(|| "unknown".to_string())
}

fn base_row(p: &ProxyIdentity, time_ns: i64) -> StatSampleRow {
    StatSampleRow {
        time_unix_nano: time_ns,
        proxy: proxy_name(p),
        proxy_namespace: p.namespace.clone(),
        proxy_workload: p.workload.clone(),
        proxy_app: p.app.clone(),
        proxy_version: p.version.clone(),
        ..Default::default()
    }
}

/// Parses Prometheus exposition text into rows.
pub fn parse_prometheus(body: &str, proxy: &ProxyIdentity, time_ns: i64) -> StatsOutcome {
    let mut out = StatsOutcome::default();
    // prometheus-parse fails a whole body on one bad sample; check lines first so one bad
    // line is reported and the rest kept.
    let mut good = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            good.push(Ok(line.to_string()));
            continue;
        }
        match check_sample_line(t) {
            // Envoy writes untagged stats as `envoy_server_uptime{} 12`; prometheus-parse
            // skips an empty label set without a word, so drop the braces.
            Ok(()) => good.push(Ok(match t.split_once("{}") {
                Some((name, rest)) if !name.contains(['{', ' ']) => format!("{name}{rest}"),
                _ => line.to_string(),
            })),
            Err(reason) => out.rejected.push(RejectedStat {
                line: i + 1,
                reason,
            }),
        }
    }
    let scrape = match prometheus_parse::Scrape::parse(good.into_iter()) {
        Ok(s) => s,
        Err(e) => {
            out.rejected.push(RejectedStat {
                line: 0,
                reason: format!("Prometheus text does not parse: {e}"),
            });
            return out;
        }
    };
    for s in scrape.samples {
        let mut tags: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tags.sort();
        let (metric, cluster) = normalize_cluster(&s.metric, &mut tags);
        let push = |out: &mut StatsOutcome,
                    metric: String,
                    extra: Option<(String, String)>,
                    value: f64,
                    kind: &str| {
            let mut row = base_row(proxy, time_ns);
            row.metric = metric;
            row.cluster_name = cluster.clone();
            row.tags = tags.clone();
            if let Some(e) = extra {
                row.tags.push(e);
            }
            row.value = value;
            row.kind = kind.to_string();
            out.rows.push(row);
        };
        match s.value {
            prometheus_parse::Value::Counter(v) => push(&mut out, metric, None, v, "counter"),
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => {
                push(&mut out, metric, None, v, "gauge")
            }
            prometheus_parse::Value::Histogram(buckets) => {
                for b in buckets {
                    let le = if b.less_than.is_infinite() {
                        "+Inf".to_string()
                    } else {
                        b.less_than.to_string()
                    };
                    push(
                        &mut out,
                        format!("{metric}_bucket"),
                        Some(("le".into(), le)),
                        b.count,
                        "histogram",
                    );
                }
            }
            prometheus_parse::Value::Summary(qs) => {
                for q in qs {
                    push(
                        &mut out,
                        metric.clone(),
                        Some(("quantile".into(), q.quantile.to_string())),
                        q.count,
                        "gauge",
                    );
                }
            }
        }
    }
    out
}

/// A cheap syntax check of one sample line: `name{labels} value [timestamp]`.
fn check_sample_line(line: &str) -> Result<(), String> {
    let (name_labels, rest) = match line.rfind('}') {
        Some(i) => (&line[..=i], line[i + 1..].trim()),
        None => match line.split_once(char::is_whitespace) {
            Some((n, r)) => (n, r.trim()),
            None => return Err(format!("no value in {:?}", truncate(line))),
        },
    };
    let name = name_labels.split('{').next().unwrap_or("");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("invalid metric name in {:?}", truncate(line)));
    }
    if name_labels.contains('{') != name_labels.ends_with('}') {
        return Err(format!("unbalanced labels in {:?}", truncate(line)));
    }
    let value = rest.split_whitespace().next().unwrap_or("");
    if value.parse::<f64>().is_err() && !matches!(value, "NaN" | "+Inf" | "-Inf") {
        return Err(format!("value {value:?} is not a number"));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Takes the cluster name out of the tags (either spelling) and undoes Envoy's default
/// tag extraction cutting it at the first dot. Returns the metric name and the cluster name.
fn normalize_cluster(metric: &str, tags: &mut Vec<(String, String)>) -> (String, Option<String>) {
    let take = |tags: &mut Vec<(String, String)>, key: &str| -> Option<String> {
        let i = tags.iter().position(|(k, _)| k == key)?;
        Some(tags.remove(i).1)
    };
    if let Some(c) = take(tags, "cluster_name") {
        return (metric.to_string(), Some(c));
    }
    let Some(short) = take(tags, "envoy_cluster_name") else {
        return (metric.to_string(), None);
    };
    // envoy_cluster_<ns>_svc_cluster_local_<stat> with envoy_cluster_name = `…||<host>`
    if short.contains('|')
        && let Some(rest) = metric.strip_prefix("envoy_cluster_")
        && let Some(idx) = rest.find("_svc_cluster_local_")
    {
        let ns = &rest[..idx];
        let stat = &rest[idx + "_svc_cluster_local_".len()..];
        if !ns.is_empty() && !ns.contains('_') && !short.ends_with('|') {
            return (
                format!("envoy_cluster_{stat}"),
                Some(format!("{short}.{ns}.svc.cluster.local")),
            );
        }
    }
    (metric.to_string(), Some(short))
}

/// Gauges among Envoy's plain `/stats` names (everything else there is a counter;
/// histograms print quantiles and are skipped).
fn plain_is_gauge(stat: &str) -> bool {
    const GAUGE_PARTS: [&str; 9] = [
        "_active",
        "remaining_",
        "_open",
        "membership_",
        "ejections_active",
        "_connections",
        "concurrency",
        "uptime",
        "version",
    ];
    GAUGE_PARTS.iter().any(|p| stat.contains(p))
}

/// Splits `cluster.<name>.<stat>` where `<name>` may contain dots (Istio FQDNs).
fn split_cluster_stat(rest: &str) -> Option<(&str, &str)> {
    if let Some(pipe) = rest.rfind('|') {
        let after = &rest[pipe + 1..];
        let host_len = if let Some(i) = after.find(".svc.cluster.local.") {
            i + ".svc.cluster.local".len()
        } else {
            after.find('.')?
        };
        let end = pipe + 1 + host_len;
        return Some((&rest[..end], &rest[end + 1..]));
    }
    rest.split_once('.')
}

/// Parses Envoy's plain `/stats` text (`name: value` per line).
pub fn parse_plain(body: &str, proxy: &ProxyIdentity, time_ns: i64) -> StatsOutcome {
    let mut out = StatsOutcome::default();
    for (i, line) in body.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let Some((name, value)) = t.rsplit_once(": ") else {
            out.rejected.push(RejectedStat {
                line: i + 1,
                reason: format!("expected `name: value`, got {:?}", truncate(t)),
            });
            continue;
        };
        if value.starts_with('P') || value.contains("No recorded values") {
            continue; // histogram quantile summary lines
        }
        let Ok(v) = value.trim().parse::<f64>() else {
            out.rejected.push(RejectedStat {
                line: i + 1,
                reason: format!("value {:?} is not a number", truncate(value)),
            });
            continue;
        };
        let mut row = base_row(proxy, time_ns);
        let stat_name = if let Some(rest) = name.strip_prefix("cluster.")
            && let Some((cluster, stat)) = split_cluster_stat(rest)
        {
            row.cluster_name = Some(cluster.to_string());
            row.metric = format!("envoy_cluster_{}", stat.replace(['.', '-'], "_"));
            stat
        } else {
            row.metric = format!("envoy_{}", name.replace(['.', '-', '|', ':'], "_"));
            name
        };
        row.kind = if plain_is_gauge(stat_name) {
            "gauge"
        } else {
            "counter"
        }
        .to_string();
        row.value = v;
        out.rows.push(row);
    }
    out
}

/// Either format, detected from the body.
pub fn parse_stats(body: &str, proxy: &ProxyIdentity, time_ns: i64) -> StatsOutcome {
    if looks_like_prometheus(body) {
        parse_prometheus(body, proxy, time_ns)
    } else {
        parse_plain(body, proxy, time_ns)
    }
}

/// Identity from an admin `/server_info` JSON document (node id and node metadata).
pub fn identity_from_server_info(json: &serde_json::Value) -> ProxyIdentity {
    let node = &json["command_line_options"]["service_node"];
    let node_id = json["node"]["id"]
        .as_str()
        .or_else(|| node.as_str())
        .unwrap_or("");
    let meta = &json["node"]["metadata"];
    let parsed = meshscope_schemas::envoy::IstioNodeId::parse(node_id);
    let s = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let pod = s(&meta["NAME"]).or_else(|| parsed.as_ref().map(|p| p.pod.clone()));
    let namespace = s(&meta["NAMESPACE"]).or_else(|| parsed.as_ref().map(|p| p.namespace.clone()));
    let app =
        s(&meta["LABELS"]["app"]).or_else(|| s(&meta["LABELS"]["service.istio.io/canonical-name"]));
    let version = s(&meta["LABELS"]["version"])
        .or_else(|| s(&meta["LABELS"]["service.istio.io/canonical-revision"]));
    let workload = s(&meta["WORKLOAD_NAME"]).or_else(|| {
        pod.as_deref()
            .map(|p| super::access_log::workload_from_pod_name(p).to_string())
    });
    ProxyIdentity {
        pod,
        namespace,
        workload,
        app,
        version,
        ip: parsed.map(|p| p.ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy() -> ProxyIdentity {
        ProxyIdentity {
            pod: Some("fortio-1".into()),
            namespace: Some("default".into()),
            ..Default::default()
        }
    }

    #[test]
    fn istio_and_default_tags_give_the_same_series() {
        let istio = "# TYPE envoy_cluster_upstream_rq_pending_overflow counter\n\
envoy_cluster_upstream_rq_pending_overflow{cluster_name=\"outbound|8000||httpbin.default.svc.cluster.local\"} 86\n";
        let default = "# TYPE envoy_cluster_default_svc_cluster_local_upstream_rq_pending_overflow counter\n\
envoy_cluster_default_svc_cluster_local_upstream_rq_pending_overflow{envoy_cluster_name=\"outbound|8000||httpbin\"} 86\n";
        let plain = "cluster.outbound|8000||httpbin.default.svc.cluster.local.upstream_rq_pending_overflow: 86\n\
cluster.outbound|8000||httpbin.default.svc.cluster.local.circuit_breakers.default.rq_pending_open: 1\n\
cluster.inbound|8000||.upstream_rq_total: 13\n";
        for body in [istio, default] {
            let out = parse_stats(body, &proxy(), 1);
            assert!(out.rejected.is_empty(), "{:?}", out.rejected);
            assert_eq!(out.rows.len(), 1);
            let r = &out.rows[0];
            assert_eq!(r.metric, "envoy_cluster_upstream_rq_pending_overflow");
            assert_eq!(
                r.cluster_name.as_deref(),
                Some("outbound|8000||httpbin.default.svc.cluster.local")
            );
            assert_eq!(
                (r.value, r.kind.as_str(), r.proxy.as_str()),
                (86.0, "counter", "fortio-1")
            );
            assert!(r.tags.is_empty());
        }
        let out = parse_stats(plain, &proxy(), 1);
        assert!(out.rejected.is_empty());
        assert_eq!(
            out.rows[0].metric,
            "envoy_cluster_upstream_rq_pending_overflow"
        );
        assert_eq!(
            out.rows[0].cluster_name.as_deref(),
            Some("outbound|8000||httpbin.default.svc.cluster.local")
        );
        assert_eq!(
            (out.rows[1].metric.as_str(), out.rows[1].kind.as_str()),
            (
                "envoy_cluster_circuit_breakers_default_rq_pending_open",
                "gauge"
            )
        );
        assert_eq!(out.rows[2].cluster_name.as_deref(), Some("inbound|8000||"));
        assert_eq!(out.rows[2].metric, "envoy_cluster_upstream_rq_total");
    }

    #[test]
    fn bad_lines_are_reported_and_the_rest_kept() {
        let body = "# TYPE a counter\na 1\nb{x=\"1\" 2\nc notanumber\nd 4\n";
        let out = parse_prometheus(body, &proxy(), 1);
        assert_eq!(
            out.rows
                .iter()
                .map(|r| r.metric.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "d"]
        );
        assert_eq!(
            out.rejected.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![3, 4]
        );
        let out = parse_plain("a.b: 1\ngarbage\nc: x\n", &proxy(), 1);
        assert_eq!(out.rows.len(), 1);
        assert_eq!(
            out.rejected.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn untagged_stats_with_empty_braces_are_kept() {
        let body = "# TYPE envoy_server_uptime gauge\nenvoy_server_uptime{} 1234\n\
# TYPE envoy_cluster_upstream_rq_pending_overflow counter\n\
envoy_cluster_upstream_rq_pending_overflow{cluster_name=\"c\"} 3\n";
        let out = parse_prometheus(body, &proxy(), 1);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        assert_eq!(out.rows.len(), 2);
        assert_eq!(out.rows[0].metric, "envoy_server_uptime");
        assert_eq!(out.rows[0].value, 1234.0);
    }

    #[test]
    fn histograms_become_buckets() {
        let body = "# TYPE envoy_cluster_upstream_rq_time histogram\n\
envoy_cluster_upstream_rq_time_bucket{cluster_name=\"c\",le=\"0.5\"} 1\n\
envoy_cluster_upstream_rq_time_bucket{cluster_name=\"c\",le=\"+Inf\"} 3\n\
envoy_cluster_upstream_rq_time_sum{cluster_name=\"c\"} 7\n\
envoy_cluster_upstream_rq_time_count{cluster_name=\"c\"} 3\n";
        let out = parse_prometheus(body, &proxy(), 1);
        assert!(out.rejected.is_empty());
        let buckets: Vec<_> = out
            .rows
            .iter()
            .filter(|r| r.metric.ends_with("_bucket"))
            .collect();
        assert_eq!(buckets.len(), 2);
        assert!(
            buckets
                .iter()
                .all(|r| r.kind == "histogram" && r.cluster_name.as_deref() == Some("c"))
        );
    }

    #[test]
    fn server_info_identity() {
        let v = serde_json::json!({"node": {"id": "sidecar~127.0.10.2~fortio-deploy-5d8f7c9b4-abcde.default~default.svc.cluster.local",
            "metadata": {"NAME": "fortio-deploy-5d8f7c9b4-abcde", "NAMESPACE": "default", "LABELS": {"app": "fortio", "version": "v1"}}}});
        let p = identity_from_server_info(&v);
        assert_eq!(p.pod.as_deref(), Some("fortio-deploy-5d8f7c9b4-abcde"));
        assert_eq!(p.workload.as_deref(), Some("fortio-deploy"));
        assert_eq!(
            (p.app.as_deref(), p.version.as_deref(), p.ip.as_deref()),
            (Some("fortio"), Some("v1"), Some("127.0.10.2"))
        );
    }
}
