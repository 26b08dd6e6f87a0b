//! Who called whom: the derived columns of a `requests` row (`reporter`, `source_*`,
//! `destination_*`, `request_protocol`), from the line itself plus what the caller knows
//! about the proxy that wrote it ([`ProxyIdentity`]) and about the mesh's addresses
//! ([`AddressBook`]).
//!
//! An Istio sidecar logs each request twice: the caller's proxy on an `outbound|…` cluster
//! (reporter `source`) and the callee's on an `inbound|…` cluster (reporter `destination`).
//! The writing proxy is one end; the peer address in the line is the other end, resolved
//! through the address book: `upstream_host` on outbound lines (the destination pod),
//! `downstream_remote_address` on inbound lines (the source pod). Fields already set on the
//! row are never overwritten, so a receiver can fill what it knows better first.

pub use meshscope_schemas::envoy::workload_from_pod_name;
use std::collections::HashMap;
use std::net::IpAddr;

use meshscope_schemas::envoy::{IstioCluster, IstioNodeId, Reporter};
use meshscope_schemas::rows::{RequestRow, Text};

/// The proxy (or the workload behind an address). All parts are optional: a receiver fills
/// what it learned from the log file path, the node id or the Kubernetes API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyIdentity {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// The owning workload (Deployment, StatefulSet, …); derived from the pod name when
    /// unset, see [`workload_from_pod_name`].
    pub workload: Option<String>,
    /// The `app` label; Istio's canonical service when set.
    pub app: Option<String>,
    /// The `version` label; Istio's canonical revision.
    pub version: Option<String>,
    pub ip: Option<String>,
}

impl ProxyIdentity {
    /// A pod known by name and namespace; the workload is derived from the pod name.
    pub fn from_pod(pod: &str, namespace: &str) -> ProxyIdentity {
        ProxyIdentity {
            pod: Some(pod.to_string()),
            namespace: Some(namespace.to_string()),
            workload: Some(workload_from_pod_name(pod).to_string()),
            ..ProxyIdentity::default()
        }
    }

    /// From an Istio node id, `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub fn from_node_id(node_id: &str) -> Option<ProxyIdentity> {
        let n = IstioNodeId::parse(node_id)?;
        Some(ProxyIdentity {
            ip: Some(n.ip),
            ..ProxyIdentity::from_pod(&n.pod, &n.namespace)
        })
    }

    /// The workload, or one derived from the pod name.
    pub fn workload_name(&self) -> Option<&str> {
        self.workload
            .as_deref()
            .or_else(|| self.pod.as_deref().map(workload_from_pod_name))
    }

    /// Istio's canonical service: the `app` label, else the workload name.
    pub fn canonical_service(&self) -> Option<&str> {
        self.app.as_deref().or_else(|| self.workload_name())
    }
}

/// The host part of an Envoy address: `10.1.2.3:8080` → `10.1.2.3`, `[::1]:80` → `::1`;
/// a bare IPv6 address or a name without port is returned as is.
pub fn address_host(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match address.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => address,
    }
}

/// Mesh addresses and who is behind them: the seam through which a receiver tells the
/// parser about the other end of a call (pod IPs from the Kubernetes API, node ids from
/// Envoy admin, or the loopback addresses of a local demo).
#[derive(Debug, Clone, Default)]
pub struct AddressBook {
    by_ip: HashMap<String, ProxyIdentity>,
    /// Addresses whose identity came from a source the operator configured (an Envoy admin
    /// scrape, a kubelet log path), which a self-declared push may not rewrite.
    trusted: std::collections::HashSet<String>,
}

/// Addresses the book holds at most: a push naming a new address beyond it is not learned
/// (each entry is a few hundred bytes; a mesh has far fewer pods).
pub const MAX_ADDRESSES: usize = 100_000;

impl AddressBook {
    pub fn new() -> AddressBook {
        AddressBook::default()
    }

    /// Records who is at `ip` (a port, if given, is dropped), as a trusted source says.
    pub fn insert(&mut self, ip: impl Into<String>, identity: ProxyIdentity) {
        let _ = self.learn(ip, identity, true);
    }

    /// Records who is at `ip`. A `trusted` source (configured by the operator) always wins;
    /// a self-declared one (a push's `ip=`) may not rewrite an address a trusted source
    /// named for another pod, nor add one beyond [`MAX_ADDRESSES`]. The refusal says why.
    pub fn learn(
        &mut self,
        ip: impl Into<String>,
        identity: ProxyIdentity,
        trusted: bool,
    ) -> Result<(), String> {
        let ip = ip.into();
        let host = address_host(&ip);
        let key = if host.len() == ip.len() {
            ip
        } else {
            host.to_string()
        };
        if !trusted {
            if let Some(held) = self.by_ip.get(&key)
                && self.trusted.contains(&key)
                && (held.pod != identity.pod || held.namespace != identity.namespace)
            {
                return Err(format!(
                    "{key} belongs to pod {} (learned from its Envoy admin or log path); a push may not rename it",
                    held.pod.as_deref().unwrap_or("?")
                ));
            }
            if !self.by_ip.contains_key(&key) && self.by_ip.len() >= MAX_ADDRESSES {
                return Err(format!(
                    "the address book holds {MAX_ADDRESSES} addresses; {key} is not learned"
                ));
            }
        }
        if trusted {
            self.trusted.insert(key.clone());
        }
        self.by_ip.insert(key, identity);
        Ok(())
    }

    /// Who is at `address`, an IP with or without port (`10.1.2.3:8080`, `[::1]:80`).
    pub fn get(&self, address: &str) -> Option<&ProxyIdentity> {
        self.by_ip.get(address_host(address))
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

/// An Istio cluster name in either spelling:
/// `outbound|9080|v1|reviews.default.svc.cluster.local` (cluster names,
/// `%UPSTREAM_CLUSTER_RAW%`) or `outbound_.9080_.v1_.reviews.default.svc.cluster.local` (the
/// mTLS SNI Istio sends, which is also what `%REQUESTED_SERVER_NAME%` shows on inbound lines,
/// and a cluster's observability name in some setups).
pub fn parse_istio_cluster(name: &str) -> Option<IstioCluster> {
    let c = ClusterRef::parse(name)?;
    Some(IstioCluster {
        reporter: c.reporter,
        port: c.port,
        subset: c.subset.map(str::to_string),
        host: c.host.map(str::to_string),
    })
}

/// [`IstioCluster`] borrowed from the name: `derive_identity` runs once per row, and the
/// owned version costs two allocations that are copied again into the row anyway. Agrees
/// with `IstioCluster::parse` on `|` names (tested).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClusterRef<'a> {
    reporter: Reporter,
    port: Option<i32>,
    subset: Option<&'a str>,
    host: Option<&'a str>,
}

impl<'a> ClusterRef<'a> {
    fn parse(name: &'a str) -> Option<ClusterRef<'a>> {
        let nonempty = |s: &'a str| (!s.is_empty()).then_some(s);
        if let Some((direction, rest)) = name.split_once('|') {
            let mut parts = rest.split('|');
            return Some(ClusterRef {
                reporter: direction_reporter(direction)?,
                port: parts.next()?.parse().ok(),
                subset: parts.next().and_then(nonempty),
                host: parts.next().and_then(nonempty),
            });
        }
        let (direction, rest) = name.split_once("_.")?;
        let (port, rest) = rest.split_once("_.")?;
        let (subset, host) = rest.split_once("_.")?;
        Some(ClusterRef {
            reporter: direction_reporter(direction)?,
            port: port.parse().ok(),
            subset: nonempty(subset).filter(|s| *s != "_"),
            host: nonempty(host),
        })
    }

    /// `reviews` from `reviews.default.svc.cluster.local`.
    fn service_name(&self) -> Option<&'a str> {
        self.host.and_then(|h| h.split('.').next())
    }

    /// `default` from `reviews.default.svc.cluster.local`; none for non-Kubernetes hosts.
    fn namespace(&self) -> Option<&'a str> {
        let host = self.host?;
        host.split('.').nth(1).filter(|_| host.contains(".svc."))
    }
}

fn direction_reporter(direction: &str) -> Option<Reporter> {
    match direction {
        "outbound" => Some(Reporter::Source),
        "inbound" => Some(Reporter::Destination),
        _ => None,
    }
}

/// Fills the derived columns of `row`, written by `proxy`; `book` resolves the peer address.
///
/// - `reporter` comes from the cluster name (`outbound|…` → `source`, `inbound|…` →
///   `destination`; `PassthroughCluster`/`BlackHoleCluster` → `source`,
///   `InboundPassthroughCluster*` → `destination`). Without a usable cluster (`-` on a
///   `NR` line) it is `destination` when `downstream_local_address` is the proxy's own IP
///   (inbound listeners bind it) and `source` otherwise (outbound traffic is captured on the
///   service's address); with neither known, no identity is derived.
/// - Outbound: `source_*` = the proxy; `destination_service`, `_service_name`,
///   `_namespace`, `_subset`, `_port` from the cluster; `destination_workload/app/version`
///   from the address book entry of `upstream_host`.
/// - Inbound: `destination_*` = the proxy, `destination_port` from the cluster; the service
///   from the SNI the caller's sidecar sent
///   (`outbound_.9080_._.productpage.default.svc.cluster.local`), else from the `:authority`
///   host when it is a name (plaintext calls); `source_*` from the address book entry of
///   `downstream_remote_address`.
/// - `request_protocol`: `tcp` when `%PROTOCOL%` is unset; `grpc` for HTTP/2 or HTTP/3 with a
///   path shaped like `/<package.Service>/<Method>` (gRPC's path layout; content-type is not
///   in the log, so `/api.v1/users` over HTTP/2 would count as gRPC too); else `http`.
/// - `proxy`: the proxy's pod name, else its IP.
pub fn derive_identity(row: &mut RequestRow, proxy: &ProxyIdentity, book: &AddressBook) {
    // Moved out while the row is filled from them, so the names are parsed borrowed.
    let cluster_name = row.upstream_cluster.take();
    let sni = row.requested_server_name.take();
    derive(row, cluster_name.as_deref(), sni.as_deref(), proxy, book);
    row.upstream_cluster = cluster_name;
    row.requested_server_name = sni;
}

fn derive(
    row: &mut RequestRow,
    cluster_name: Option<&str>,
    sni: Option<&str>,
    proxy: &ProxyIdentity,
    book: &AddressBook,
) {
    fill(&mut row.proxy, proxy.pod.as_deref().or(proxy.ip.as_deref()));
    if row.request_protocol.is_none() {
        row.request_protocol = Some(Text::const_new(request_protocol(row)));
    }
    let cluster = cluster_name.and_then(ClusterRef::parse);
    let Some(reporter) = cluster
        .map(|c| c.reporter)
        .or_else(|| reporter_without_cluster(row, cluster_name, proxy))
    else {
        return;
    };
    fill(&mut row.reporter, Some(reporter.as_str()));
    match reporter {
        Reporter::Source => {
            fill_source(row, proxy);
            match cluster {
                Some(c) => fill_destination_service(row, c),
                // Istio's metrics name passthrough traffic's destination after the cluster.
                None => fill(&mut row.destination_service_name, cluster_name),
            }
            if let Some(peer) = row.upstream_host.as_deref().and_then(|a| book.get(a)) {
                fill_destination(row, peer);
            }
        }
        Reporter::Destination => {
            fill_destination(row, proxy);
            if row.destination_port.is_none() {
                row.destination_port = cluster.and_then(|c| c.port);
            }
            let from_sni = sni
                .and_then(ClusterRef::parse)
                .filter(|c| c.reporter == Reporter::Source && c.host.is_some());
            match from_sni {
                Some(c) => fill_destination_service(row, c),
                None => fill_destination_service_from_authority(row),
            }
            if let Some(peer) = row
                .downstream_remote_address
                .as_deref()
                .and_then(|a| book.get(a))
            {
                fill_source(row, peer);
            }
        }
    }
}

fn reporter_without_cluster(
    row: &RequestRow,
    cluster_name: Option<&str>,
    proxy: &ProxyIdentity,
) -> Option<Reporter> {
    match cluster_name {
        Some("PassthroughCluster" | "BlackHoleCluster") => return Some(Reporter::Source),
        Some(n) if n.starts_with("InboundPassthroughCluster") => {
            return Some(Reporter::Destination);
        }
        _ => {}
    }
    let local = address_host(row.downstream_local_address.as_deref()?);
    let own = proxy.ip.as_deref()?;
    Some(if local == own {
        Reporter::Destination
    } else {
        Reporter::Source
    })
}

fn request_protocol(row: &RequestRow) -> &'static str {
    match row.protocol.as_deref() {
        None => "tcp",
        Some(p)
            if (p.starts_with("HTTP/2") || p.starts_with("HTTP/3"))
                && row.path.as_deref().is_some_and(is_grpc_path) =>
        {
            "grpc"
        }
        Some(_) => "http",
    }
}

/// `/<package.Service>/<Method>`: a dotted service name of identifier characters, then one
/// identifier.
fn is_grpc_path(path: &str) -> bool {
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let Some((service, method)) = path.strip_prefix('/').and_then(|rest| rest.split_once('/'))
    else {
        return false;
    };
    service.contains('.') && service.split('.').all(ident) && ident(method)
}

fn fill(slot: &mut Option<Text>, value: Option<&str>) {
    if slot.is_none()
        && let Some(v) = value
    {
        *slot = Some(Text::from(v));
    }
}

fn fill_source(row: &mut RequestRow, id: &ProxyIdentity) {
    fill(&mut row.source_namespace, id.namespace.as_deref());
    fill(&mut row.source_workload, id.workload_name());
    fill(&mut row.source_app, id.app.as_deref());
    fill(&mut row.source_version, id.version.as_deref());
    fill(&mut row.source_service, id.canonical_service());
}

fn fill_destination(row: &mut RequestRow, id: &ProxyIdentity) {
    fill(&mut row.destination_namespace, id.namespace.as_deref());
    fill(&mut row.destination_workload, id.workload_name());
    fill(&mut row.destination_app, id.app.as_deref());
    fill(&mut row.destination_version, id.version.as_deref());
}

fn fill_destination_service(row: &mut RequestRow, c: ClusterRef) {
    fill(&mut row.destination_service, c.host);
    fill(&mut row.destination_service_name, c.service_name());
    fill(&mut row.destination_namespace, c.namespace());
    fill(&mut row.destination_subset, c.subset);
    if row.destination_port.is_none() {
        row.destination_port = c.port;
    }
}

fn fill_destination_service_from_authority(row: &mut RequestRow) {
    let Some(host) = row.authority.as_deref().map(address_host) else {
        return;
    };
    if host.is_empty() || host.parse::<IpAddr>().is_ok() {
        return;
    }
    // Kubernetes short names (`reviews`, `reviews.default`) resolve in the destination's
    // namespace; Istio's destination_service label is the FQDN, as the source side's cluster
    // name has it, so both reporters of one call name the same service.
    let labels: Vec<&str> = host.split('.').collect();
    let proxy_ns = row.destination_namespace.clone();
    let host = match (labels.as_slice(), proxy_ns.as_deref()) {
        ([name], Some(ns)) => format!("{name}.{ns}.svc.cluster.local"),
        ([name, ns], Some(own)) if *ns == own => format!("{name}.{ns}.svc.cluster.local"),
        _ => host.to_string(),
    };
    let mut labels = host.split('.');
    let name = labels.next();
    let namespace = labels.next().filter(|_| host.contains(".svc."));
    fill(&mut row.destination_service_name, name);
    fill(&mut row.destination_namespace, namespace);
    fill(&mut row.destination_service, Some(&host));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_from_pod_names() {
        for (pod, workload) in [
            ("reviews-v2-5b64f47978-abcde", "reviews-v2"),
            ("productpage-v1-6b746f74dc-9stp6", "productpage-v1"),
            ("httpbin-8cb97b8f4-xk2lm", "httpbin"),
            ("ztunnel-x7k2p", "ztunnel"),
            // StatefulSet ordinals are kept: without the owner, `web-0` may be a bare pod.
            ("web-0", "web-0"),
            ("ratings-proxy", "ratings-proxy"),
            ("reviews-v2-abcde", "reviews-v2-abcde"),
            ("standalone", "standalone"),
            ("-5b64f47978-abcde", "-5b64f47978-abcde"),
            ("", ""),
        ] {
            assert_eq!(workload_from_pod_name(pod), workload, "{pod}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(address_host("10.1.2.3:8080"), "10.1.2.3");
        assert_eq!(address_host("[::1]:80"), "::1");
        assert_eq!(address_host("fe80::1"), "fe80::1");
        assert_eq!(address_host("10.1.2.3"), "10.1.2.3");
        assert_eq!(address_host("[::1"), "::1");
        let mut book = AddressBook::new();
        book.insert(
            "127.0.10.2:9080",
            ProxyIdentity::from_pod("p-5b64f47978-abcde", "ns"),
        );
        book.insert("::1", ProxyIdentity::default());
        assert_eq!(book.len(), 2);
        assert_eq!(
            book.get("127.0.10.2:1234")
                .and_then(|p| p.workload.as_deref()),
            Some("p")
        );
        assert!(book.get("[::1]:80").is_some());
        assert!(book.get("127.0.10.3").is_none());
    }

    #[test]
    fn sni_style_cluster_names() {
        let c =
            parse_istio_cluster("outbound_.9080_.v1_.reviews.default.svc.cluster.local").unwrap();
        assert_eq!(c.reporter, Reporter::Source);
        assert_eq!((c.port, c.subset.as_deref()), (Some(9080), Some("v1")));
        assert_eq!(c.host.as_deref(), Some("reviews.default.svc.cluster.local"));
        let c =
            parse_istio_cluster("outbound_.9080_._.productpage.default.svc.cluster.local").unwrap();
        assert_eq!(c.subset, None);
        assert_eq!(c.service_name(), Some("productpage"));
        assert_eq!(parse_istio_cluster("default"), None);
        assert_eq!(parse_istio_cluster("httpbin.org"), None);
    }

    #[test]
    fn borrowed_cluster_names_agree_with_the_schema_crate() {
        for name in [
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local",
            "inbound|9080||",
            "inbound|x||",
            "outbound|8000||httpbin.org",
            "outbound|",
            "outbound",
            "sideways|1||a",
            "PassthroughCluster",
            "",
        ] {
            let ours = ClusterRef::parse(name);
            let theirs = IstioCluster::parse(name);
            assert_eq!(parse_istio_cluster(name), theirs, "{name}");
            assert_eq!(
                ours.and_then(|c| c.service_name()),
                theirs.as_ref().and_then(|c| c.service_name()),
                "{name}"
            );
            assert_eq!(
                ours.and_then(|c| c.namespace()),
                theirs.as_ref().and_then(|c| c.namespace()),
                "{name}"
            );
        }
    }

    #[test]
    fn grpc_paths() {
        assert!(is_grpc_path("/grpc.health.v1.Health/Check"));
        assert!(is_grpc_path("/helloworld.Greeter/SayHello"));
        assert!(!is_grpc_path("/productpage"));
        assert!(!is_grpc_path("/static/app.js"));
        assert!(!is_grpc_path("/a.b/c?x=1"));
        assert!(!is_grpc_path("/a..b/c"));
    }
}
