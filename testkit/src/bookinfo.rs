//! Istio's bookinfo sample as one mesh: its pods plus the ingress gateway and a fortio load
//! client, each with a stable pod name and fake pod IP (10.244.x.y), and the services with
//! their cluster IPs, Istio cluster names and SNIs. The demo simulates this mesh; tests use
//! its names for real sidecars (with loopback addresses instead of the pod IPs).

/// One pod with an Istio sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pod {
    pub name: &'static str,
    pub namespace: &'static str,
    pub app: &'static str,
    pub version: Option<&'static str>,
    pub ip: &'static str,
}

impl Pod {
    /// The Deployment: the pod name without its template hash and suffix.
    pub fn workload(&self) -> &'static str {
        meshscope_schemas::envoy::workload_from_pod_name(self.name)
    }

    /// What Envoy's tracer names the proxy's service: `<app>.<namespace>`.
    pub fn trace_service(&self) -> String {
        format!("{}.{}", self.app, self.namespace)
    }

    /// Istio's node id, `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        let kind = if self.app == "istio-ingressgateway" {
            "router"
        } else {
            "sidecar"
        };
        format!(
            "{kind}~{}~{}.{}~{}.svc.cluster.local",
            self.ip, self.name, self.namespace, self.namespace
        )
    }
}

pub const GATEWAY: usize = 0;
pub const PRODUCTPAGE: usize = 1;
pub const DETAILS: usize = 2;
pub const REVIEWS_V1: usize = 3;
pub const REVIEWS_V2: usize = 4;
pub const REVIEWS_V3: usize = 5;
pub const RATINGS: usize = 6;
pub const FORTIO: usize = 7;

/// Every pod, indexed by the constants above.
pub const PODS: [Pod; 8] = [
    Pod {
        name: "istio-ingressgateway-6d8f5c9b7d-q8z2p",
        namespace: "istio-system",
        app: "istio-ingressgateway",
        version: None,
        ip: "10.244.0.10",
    },
    Pod {
        name: "productpage-v1-6b746f74dc-9stp6",
        namespace: "default",
        app: "productpage",
        version: Some("v1"),
        ip: "10.244.1.11",
    },
    Pod {
        name: "details-v1-79f774bdb9-kq7xz",
        namespace: "default",
        app: "details",
        version: Some("v1"),
        ip: "10.244.1.12",
    },
    Pod {
        name: "reviews-v1-545db77b95-j4mtn",
        namespace: "default",
        app: "reviews",
        version: Some("v1"),
        ip: "10.244.1.13",
    },
    Pod {
        name: "reviews-v2-7bf8c9648f-x5wgr",
        namespace: "default",
        app: "reviews",
        version: Some("v2"),
        ip: "10.244.1.14",
    },
    Pod {
        name: "reviews-v3-84779c7bbc-l2ccb",
        namespace: "default",
        app: "reviews",
        version: Some("v3"),
        ip: "10.244.1.15",
    },
    Pod {
        name: "ratings-v1-b6994bb9-gd5mx",
        namespace: "default",
        app: "ratings",
        version: Some("v1"),
        ip: "10.244.1.16",
    },
    Pod {
        name: "fortio-deploy-687945c6dc-6qnh4",
        namespace: "default",
        app: "fortio",
        version: None,
        ip: "10.244.2.20",
    },
];

/// A Kubernetes service of bookinfo (all on port 9080).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    pub name: &'static str,
    pub cluster_ip: &'static str,
}

pub const PORT: u16 = 9080;

pub const SVC_PRODUCTPAGE: Service = Service {
    name: "productpage",
    cluster_ip: "10.96.12.40",
};
pub const SVC_DETAILS: Service = Service {
    name: "details",
    cluster_ip: "10.96.88.10",
};
pub const SVC_REVIEWS: Service = Service {
    name: "reviews",
    cluster_ip: "10.96.57.3",
};
pub const SVC_RATINGS: Service = Service {
    name: "ratings",
    cluster_ip: "10.96.201.7",
};

impl Service {
    pub fn fqdn(&self) -> String {
        format!("{}.default.svc.cluster.local", self.name)
    }

    /// The caller's cluster: `outbound|9080|<subset>|<fqdn>`.
    pub fn outbound_cluster(&self, subset: Option<&str>) -> String {
        format!("outbound|{PORT}|{}|{}", subset.unwrap_or(""), self.fqdn())
    }

    /// The SNI the caller's sidecar sends (what the callee logs as requested server name).
    pub fn sni(&self, subset: Option<&str>) -> String {
        format!(
            "outbound_.{PORT}_.{}_.{}",
            subset.unwrap_or("_"),
            self.fqdn()
        )
    }
}
