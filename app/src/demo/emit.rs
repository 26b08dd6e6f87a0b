//! What a sidecar writes about one request: an access-log line in Istio's default text
//! format (`ISTIO_TEXT_FORMAT`) and an Envoy-style OTLP span.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, status};

use meshscope_testkit::bookinfo::Pod;

/// The fields of one access-log entry that vary in the demo.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub start_ns: i64,
    pub path: &'a str,
    pub code: u16,
    pub flags: Option<&'static str>,
    pub details: &'static str,
    pub bytes_sent: u64,
    pub duration_ms: i64,
    pub upstream_service_ms: Option<i64>,
    pub x_forwarded_for: Option<&'static str>,
    pub user_agent: &'a str,
    pub request_id: &'a str,
    pub authority: String,
    pub upstream_host: Option<String>,
    pub upstream_cluster: String,
    pub upstream_local_address: Option<String>,
    pub downstream_local_address: String,
    pub downstream_remote_address: String,
    pub requested_server_name: Option<String>,
    pub route_name: &'static str,
}

fn dash<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `%START_TIME%` as Envoy prints it: RFC 3339 in UTC with milliseconds.
pub fn start_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl Entry<'_> {
    /// The line, field for field in the order of `ISTIO_TEXT_FORMAT` (no trailing newline).
    pub fn line(&self) -> String {
        format!(
            "[{}] \"GET {} HTTP/1.1\" {} {} {} - \"-\" 0 {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {} {}",
            start_time(self.start_ns),
            self.path,
            self.code,
            dash(&self.flags),
            self.details,
            self.bytes_sent,
            self.duration_ms,
            dash(&self.upstream_service_ms),
            dash(&self.x_forwarded_for),
            self.user_agent,
            self.request_id,
            self.authority,
            dash(&self.upstream_host),
            self.upstream_cluster,
            dash(&self.upstream_local_address),
            self.downstream_local_address,
            self.downstream_remote_address,
            dash(&self.requested_server_name),
            self.route_name,
        )
    }
}

fn kv(k: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// The span Envoy's tracer would report for `e`: CLIENT by the caller's sidecar
/// (`client == true`), SERVER by the callee's. An all-zero parent means a root span.
pub fn span(
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: [u8; 8],
    client: bool,
    pod: &Pod,
    e: &Entry,
    duration_ns: i64,
) -> Span {
    let service = e
        .authority
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut attributes = vec![
        kv("node_id", pod.node_id()),
        kv("zone", ""),
        kv("guid:x-request-id", e.request_id),
        kv("http.url", format!("http://{}{}", e.authority, e.path)),
        kv("http.method", "GET"),
        kv("downstream_cluster", "-"),
        kv("user_agent", e.user_agent),
        kv("http.protocol", "HTTP/1.1"),
        kv("peer.address", e.downstream_remote_address.clone()),
        kv("request_size", "0"),
        kv("response_size", e.bytes_sent.to_string()),
        kv("component", "proxy"),
        kv("upstream_cluster", e.upstream_cluster.clone()),
        kv("upstream_cluster.name", e.upstream_cluster.clone()),
        kv("http.status_code", e.code.to_string()),
        kv("response_flags", e.flags.unwrap_or("-")),
        kv("istio.canonical_revision", pod.version.unwrap_or("latest")),
        kv("istio.canonical_service", pod.app),
        kv("istio.mesh_id", "cluster.local"),
        kv("istio.namespace", pod.namespace),
    ];
    if let Some(h) = &e.upstream_host {
        attributes.push(kv("upstream_address", h.clone()));
    }
    let start = e.start_ns.max(0) as u64;
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: if parent == [0; 8] {
            Vec::new()
        } else {
            parent.to_vec()
        },
        name: format!("{service}.default.svc.cluster.local:9080{}", e.path),
        kind: if client {
            SpanKind::Client
        } else {
            SpanKind::Server
        } as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration_ns.max(1) as u64,
        attributes,
        status: Some(Status {
            code: if e.code >= 500 {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}
