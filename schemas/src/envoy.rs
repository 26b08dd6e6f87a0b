//! Envoy and Istio vocabulary: response flags with their meaning, Istio cluster names, and
//! Kubernetes workload names.

/// Envoy's short response flags (`%RESPONSE_FLAGS%`) and what each one means.
pub const RESPONSE_FLAGS: &[(&str, &str)] = &[
    (
        "UH",
        "no healthy upstream hosts (e.g. all ejected by outlier detection)",
    ),
    ("UF", "upstream connection failure"),
    (
        "UO",
        "upstream overflow: circuit breaker open (max connections/pending/requests)",
    ),
    ("NR", "no route configured for the request"),
    (
        "URX",
        "rejected: upstream retry limit or max connect attempts reached",
    ),
    ("NC", "upstream cluster not found"),
    ("DT", "request or connection exceeded max duration"),
    ("DC", "downstream connection termination"),
    ("LH", "local service failed health check"),
    ("UT", "upstream request timeout"),
    ("LR", "connection local reset"),
    ("UR", "upstream remote reset"),
    ("UC", "upstream connection termination"),
    ("DI", "request delayed by fault injection"),
    ("FI", "request aborted by fault injection"),
    ("RL", "rate limited locally"),
    ("UAEX", "denied by the external authorization service"),
    ("RLSE", "rate limit service error"),
    ("IH", "rejected: invalid value in a strictly-checked header"),
    ("SI", "stream idle timeout"),
    ("DPE", "downstream protocol error"),
    ("UPE", "upstream protocol error"),
    ("UMSDR", "upstream max stream duration reached"),
    ("OM", "overload manager terminated the request"),
    ("DF", "DNS resolution failed"),
    ("DO", "drop overload: dropped by the drop_overload policy"),
    ("DR", "downstream remote reset"),
    ("UDO", "upstream drop overload"),
];

/// The one-line meaning of an Envoy response flag, if it is one Envoy defines.
pub fn response_flag_meaning(flag: &str) -> Option<&'static str> {
    RESPONSE_FLAGS
        .iter()
        .find(|(f, _)| *f == flag)
        .map(|(_, m)| *m)
}

/// Flags that mean Envoy answered locally: the request never reached a workload, so only the
/// source reporter saw it.
pub const LOCAL_REPLY_FLAGS: &[&str] = &[
    "UO", "UH", "NR", "NC", "FI", "RL", "UAEX", "DO", "UF", "URX", "DF",
];

/// Which side of a call an Envoy proxy reported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// The caller's sidecar (an `outbound|…` cluster).
    Source,
    /// The callee's sidecar (an `inbound|…` cluster).
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// An Istio cluster name, `<direction>|<port>|<subset>|<host>`, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioCluster {
    pub reporter: Reporter,
    pub port: Option<i32>,
    pub subset: Option<String>,
    /// FQDN such as `reviews.default.svc.cluster.local`; `None` for `inbound|9080||`.
    pub host: Option<String>,
}

impl IstioCluster {
    /// Parses `outbound|9080|v1|reviews.default.svc.cluster.local` or `inbound|9080||`.
    /// Returns `None` for names that are not Istio's (e.g. `PassthroughCluster`).
    pub fn parse(name: &str) -> Option<IstioCluster> {
        let mut parts = name.split('|');
        let reporter = match parts.next()? {
            "outbound" => Reporter::Source,
            "inbound" => Reporter::Destination,
            _ => return None,
        };
        let port = parts.next()?.parse().ok();
        let nonempty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
        let subset = nonempty(parts.next());
        let host = nonempty(parts.next());
        Some(IstioCluster {
            reporter,
            port,
            subset,
            host,
        })
    }

    /// `reviews` from `reviews.default.svc.cluster.local`.
    pub fn service_name(&self) -> Option<&str> {
        self.host
            .as_deref()
            .map(|h| h.split('.').next().unwrap_or(h))
    }

    /// `default` from `reviews.default.svc.cluster.local`.
    pub fn namespace(&self) -> Option<&str> {
        let h = self.host.as_deref()?;
        let mut it = h.split('.');
        it.next();
        it.next().filter(|_| h.contains(".svc."))
    }
}

/// The identity in an Istio node id, `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioNodeId {
    pub ip: String,
    pub pod: String,
    pub namespace: String,
}

impl IstioNodeId {
    pub fn parse(node_id: &str) -> Option<IstioNodeId> {
        let mut parts = node_id.split('~');
        let kind = parts.next()?;
        if kind != "sidecar" && kind != "router" {
            return None;
        }
        let ip = parts.next()?.to_string();
        let pod_ns = parts.next()?;
        let (pod, namespace) = pod_ns.split_once('.')?;
        Some(IstioNodeId {
            ip,
            pod: pod.to_string(),
            namespace: namespace.to_string(),
        })
    }
}

/// The workload of a pod, from its name alone, for when the owner references are not known.
///
/// A Deployment's pods are named `<deployment>-<pod-template-hash>-<5 chars>`
/// (`reviews-v2-5b64f47978-abcde` → `reviews-v2`); Istio and Kiali name the workload after
/// the Deployment, so both segments are stripped when the hash looks like one Kubernetes
/// generates (6–10 characters of its vowel-free alphabet `bcdfghjklmnpqrstvwxz2456789`). A
/// single generated 5-character suffix from that alphabet (DaemonSet and Job pods, e.g.
/// `ztunnel-x7k2p`) is stripped alone. Anything else (StatefulSet pods like `web-0`, bare
/// pods) is its own workload.
pub fn workload_from_pod_name(pod: &str) -> &str {
    let mut parts = pod.rsplitn(3, '-');
    let (Some(suffix), Some(hash)) = (parts.next(), parts.next()) else {
        return pod;
    };
    let is_suffix = suffix.len() == 5
        && suffix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if let Some(deployment) = parts.next()
        && is_suffix
        && (6..=10).contains(&hash.len())
        && hash.bytes().all(is_generated)
        && !deployment.is_empty()
    {
        return deployment;
    }
    if suffix.len() == 5 && suffix.bytes().all(is_generated) {
        return &pod[..pod.len() - suffix.len() - 1];
    }
    pod
}

/// Kubernetes' `rand.SafeEncodeString` alphabet: no vowels, no 0/1/3, so generated names
/// never spell words.
fn is_generated(b: u8) -> bool {
    b"bcdfghjklmnpqrstvwxz2456789".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        let c = IstioCluster::parse("outbound|9080|v1|reviews.default.svc.cluster.local").unwrap();
        assert_eq!(c.reporter, Reporter::Source);
        assert_eq!(c.port, Some(9080));
        assert_eq!(c.subset.as_deref(), Some("v1"));
        assert_eq!(c.service_name(), Some("reviews"));
        assert_eq!(c.namespace(), Some("default"));
        let i = IstioCluster::parse("inbound|9080||").unwrap();
        assert_eq!(i.reporter, Reporter::Destination);
        assert_eq!((i.subset, i.host), (None, None));
        assert_eq!(IstioCluster::parse("PassthroughCluster"), None);
        assert_eq!(
            response_flag_meaning("UO").map(|m| m.contains("circuit breaker")),
            Some(true)
        );
    }

    #[test]
    fn node_ids() {
        let n = IstioNodeId::parse(
            "sidecar~127.0.10.2~reviews-v1-abc.default~default.svc.cluster.local",
        )
        .unwrap();
        assert_eq!(n.ip, "127.0.10.2");
        assert_eq!(n.pod, "reviews-v1-abc");
        assert_eq!(n.namespace, "default");
    }
}
