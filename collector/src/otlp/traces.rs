//! `ExportTraceServiceRequest` → `spans` rows, following the OTLP spec's partial success: a
//! span with an invalid trace id or span id (wrong length or all zeros), an invalid parent
//! span id, a missing start time, or an end before its start is rejected with a message that
//! names it (`resource_spans[r].scope_spans[s].spans[i]`) and what is wrong; the rest is kept.
//!
//! Attributes with a dedicated column (Envoy's `guid:x-request-id`, `upstream_cluster`,
//! `response_flags`, the HTTP semantic conventions, Istio's `istio.*` tags, …) go to that
//! column and not into the `attributes` map. When two aliases of one column are both present
//! (`http.method` and `http.request.method`), the first fills the column and the second stays
//! in the map, so nothing is lost. Envoy writes `-` for "no value" in its own tags
//! (`response_flags`, `upstream_cluster`, `downstream_cluster`, …): those become null.
//! Links with invalid ids are dropped (the span is kept).

use meshscope_schemas::rows::{SpanEvent, SpanLink, SpanRow};
use meshscope_schemas::{SpanId, TraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::{Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use super::value;

/// `service.name` when the resource has none, as the OTel resource semantic conventions say.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Converts a trace export into rows and one message per rejected span.
pub fn spans_from_request(req: ExportTraceServiceRequest) -> (Vec<SpanRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    for (ri, rs) in req.resource_spans.into_iter().enumerate() {
        let mut service_name = None;
        let mut resource_attributes = Vec::new();
        for kv in rs.resource.map(|r| r.attributes).unwrap_or_default() {
            if kv.key == "service.name" && service_name.is_none() {
                service_name = Some(value::into_text(kv.value)).filter(|s| !s.is_empty());
            } else {
                resource_attributes.push((kv.key, value::into_text(kv.value)));
            }
        }
        let service_name = service_name.unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
        for (si, ss) in rs.scope_spans.into_iter().enumerate() {
            let scope_name = ss.scope.map(|s| s.name).filter(|n| !n.is_empty());
            for (pi, span) in ss.spans.into_iter().enumerate() {
                match span_row(span) {
                    Ok(mut row) => {
                        row.service_name.clone_from(&service_name);
                        row.resource_attributes.clone_from(&resource_attributes);
                        row.scope_name.clone_from(&scope_name);
                        rows.push(row);
                    }
                    Err((name, why)) => rejected.push(format!(
                        "resource_spans[{ri}].scope_spans[{si}].spans[{pi}] (name {name:?}): {why}"
                    )),
                }
            }
        }
    }
    (rows, rejected)
}

/// One span; on rejection, the span's name and why.
fn span_row(span: Span) -> Result<SpanRow, (String, String)> {
    let fail = |why: String| Err((span.name.clone(), why));
    let trace_id = match TraceId::from_bytes(&span.trace_id) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let span_id = match SpanId::from_bytes(&span.span_id) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    // Empty means root; some SDKs send eight zero bytes for "no parent", which is read the same.
    let parent_span_id = if span.parent_span_id.is_empty() || is_zero(&span.parent_span_id) {
        None
    } else {
        match SpanId::from_bytes(&span.parent_span_id) {
            Ok(p) => Some(p),
            Err(e) => return fail(format!("parent {e}")),
        }
    };
    if span.start_time_unix_nano == 0 {
        return fail("start_time_unix_nano is missing (0)".into());
    }
    let Ok(start) = i64::try_from(span.start_time_unix_nano) else {
        return fail(format!(
            "start_time_unix_nano {} is out of range",
            span.start_time_unix_nano
        ));
    };
    let Ok(end) = i64::try_from(span.end_time_unix_nano) else {
        return fail(format!(
            "end_time_unix_nano {} is out of range",
            span.end_time_unix_nano
        ));
    };
    if end < start {
        return fail(format!(
            "end_time_unix_nano {end} is before start_time_unix_nano {start}"
        ));
    }
    let kind = match SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified) {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    };
    let (status_code, status_message) = match span.status {
        None => ("unset", None),
        Some(st) => {
            let code = match StatusCode::try_from(st.code).unwrap_or(StatusCode::Unset) {
                StatusCode::Unset => "unset",
                StatusCode::Ok => "ok",
                StatusCode::Error => "error",
            };
            (code, Some(st.message).filter(|m| !m.is_empty()))
        }
    };
    let mut row = SpanRow {
        trace_id,
        span_id,
        parent_span_id,
        trace_state: Some(span.trace_state).filter(|s| !s.is_empty()),
        start_time_unix_nano: start,
        duration_ns: end - start,
        name: span.name,
        kind: kind.to_string(),
        status_code: status_code.to_string(),
        status_message,
        ..Default::default()
    };
    for kv in span.attributes {
        put_attribute(&mut row, kv);
    }
    row.events = span
        .events
        .into_iter()
        .map(|e| SpanEvent {
            time_unix_nano: i64::try_from(e.time_unix_nano).unwrap_or(i64::MAX),
            name: e.name,
            attributes: value::attrs(e.attributes),
        })
        .collect();
    row.links = span.links.into_iter().filter_map(link).collect();
    Ok(row)
}

fn link(l: Link) -> Option<SpanLink> {
    Some(SpanLink {
        trace_id: TraceId::from_bytes(&l.trace_id).ok()?,
        span_id: SpanId::from_bytes(&l.span_id).ok()?,
        trace_state: Some(l.trace_state).filter(|s| !s.is_empty()),
        attributes: value::attrs(l.attributes),
    })
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// The dedicated `spans` columns an attribute can fill.
#[derive(Clone, Copy)]
enum Column {
    RequestId,
    HttpMethod,
    HttpStatusCode,
    HttpUrl,
    HttpProtocol,
    UserAgent,
    UpstreamCluster,
    UpstreamAddress,
    ResponseFlags,
    PeerAddress,
    DownstreamCluster,
    NodeId,
    Component,
    IstioCanonicalService,
    IstioCanonicalRevision,
    IstioNamespace,
    IstioMeshId,
}

fn column_for(key: &str) -> Option<Column> {
    use Column::*;
    Some(match key {
        "guid:x-request-id" => RequestId,
        "http.method" | "http.request.method" => HttpMethod,
        "http.status_code" | "http.response.status_code" => HttpStatusCode,
        "http.url" | "url.full" => HttpUrl,
        "http.protocol" => HttpProtocol,
        "user_agent" | "user_agent.original" => UserAgent,
        "upstream_cluster" | "upstream_cluster.name" => UpstreamCluster,
        "upstream_address" => UpstreamAddress,
        "response_flags" => ResponseFlags,
        "peer.address" => PeerAddress,
        "downstream_cluster" => DownstreamCluster,
        "node_id" => NodeId,
        "component" => Component,
        "istio.canonical_service" => IstioCanonicalService,
        "istio.canonical_revision" => IstioCanonicalRevision,
        "istio.namespace" => IstioNamespace,
        "istio.mesh_id" => IstioMeshId,
        _ => return None,
    })
}

/// Puts one span attribute into its column, or into the `attributes` map.
fn put_attribute(row: &mut SpanRow, kv: KeyValue) {
    use Column::*;
    let Some(col) = column_for(&kv.key) else {
        row.attributes.push((kv.key, value::into_text(kv.value)));
        return;
    };
    // Envoy's own tags use `-` for "no value".
    let dash_is_null = matches!(
        col,
        UpstreamCluster | UpstreamAddress | ResponseFlags | PeerAddress | DownstreamCluster
    );
    let slot = match col {
        HttpStatusCode => {
            match value::int(kv.value.as_ref()).and_then(|c| i32::try_from(c).ok()) {
                Some(code) if row.http_status_code.is_none() => row.http_status_code = Some(code),
                // A second alias, or a value that is not a number: keep it visible in the map.
                _ => row.attributes.push((kv.key, value::into_text(kv.value))),
            }
            return;
        }
        RequestId => &mut row.request_id,
        HttpMethod => &mut row.http_method,
        HttpUrl => &mut row.http_url,
        HttpProtocol => &mut row.http_protocol,
        UserAgent => &mut row.user_agent,
        UpstreamCluster => &mut row.upstream_cluster,
        UpstreamAddress => &mut row.upstream_address,
        ResponseFlags => &mut row.response_flags,
        PeerAddress => &mut row.peer_address,
        DownstreamCluster => &mut row.downstream_cluster,
        NodeId => &mut row.node_id,
        Component => &mut row.component,
        IstioCanonicalService => &mut row.istio_canonical_service,
        IstioCanonicalRevision => &mut row.istio_canonical_revision,
        IstioNamespace => &mut row.istio_namespace,
        IstioMeshId => &mut row.istio_mesh_id,
    };
    let text = value::into_text(kv.value);
    if dash_is_null && text == "-" {
        return;
    }
    if slot.is_none() {
        *slot = Some(text);
    } else {
        row.attributes.push((kv.key, text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(k: &str, v: &str) -> KeyValue {
        kv(k, Value::StringValue(v.into()))
    }

    fn envoy_span(i: u8) -> Span {
        Span {
            trace_id: vec![i; 16],
            span_id: vec![i; 8],
            parent_span_id: vec![9; 8],
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: 1_764_118_800_000_000_000,
            end_time_unix_nano: 1_764_118_800_004_000_000,
            attributes: vec![
                s("guid:x-request-id", "b7a0-11"),
                s("http.method", "GET"),
                s("http.status_code", "503"),
                s("http.url", "http://reviews:9080/reviews/0"),
                s("http.protocol", "HTTP/1.1"),
                s("user_agent", "curl/8"),
                s(
                    "upstream_cluster",
                    "outbound|9080|v1|reviews.default.svc.cluster.local",
                ),
                s("upstream_address", "10.0.0.7:9080"),
                s("response_flags", "UO"),
                s("peer.address", "10.0.0.5"),
                s("downstream_cluster", "-"),
                s(
                    "node_id",
                    "sidecar~10.0.0.5~productpage-v1-x.default~default.svc.cluster.local",
                ),
                s("component", "proxy"),
                s("istio.canonical_service", "productpage"),
                s("istio.canonical_revision", "v1"),
                s("istio.namespace", "default"),
                s("istio.mesh_id", "cluster.local"),
                s("http.request.method", "HEAD"),
                kv("retry.count", Value::IntValue(2)),
            ],
            events: vec![Event {
                time_unix_nano: 1_764_118_800_001_000_000,
                name: "retry".into(),
                attributes: vec![kv("attempt", Value::IntValue(1))],
                ..Default::default()
            }],
            links: vec![
                Link {
                    trace_id: vec![3; 16],
                    span_id: vec![4; 8],
                    trace_state: "k=v".into(),
                    ..Default::default()
                },
                Link {
                    trace_id: vec![0; 16],
                    span_id: vec![4; 8],
                    ..Default::default()
                },
            ],
            status: Some(Status {
                code: StatusCode::Error as i32,
                message: "upstream overflow".into(),
            }),
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        s("service.name", "productpage.default"),
                        kv("host.cpus", Value::IntValue(2)),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "envoy".into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn envoy_span_fills_dedicated_columns() {
        let (rows, rejected) = spans_from_request(request(vec![envoy_span(1)]));
        assert!(rejected.is_empty(), "{rejected:?}");
        let r = &rows[0];
        assert_eq!(r.service_name, "productpage.default");
        assert_eq!(
            r.resource_attributes,
            vec![("host.cpus".into(), "2".into())]
        );
        assert_eq!(r.scope_name.as_deref(), Some("envoy"));
        assert_eq!(r.kind, "client");
        assert_eq!(
            (r.status_code.as_str(), r.status_message.as_deref()),
            ("error", Some("upstream overflow"))
        );
        assert_eq!(r.duration_ns, 4_000_000);
        assert_eq!(r.parent_span_id, Some(SpanId([9; 8])));
        assert_eq!(r.request_id.as_deref(), Some("b7a0-11"));
        assert_eq!(r.http_method.as_deref(), Some("GET"));
        assert_eq!(r.http_status_code, Some(503));
        assert_eq!(r.response_flags.as_deref(), Some("UO"));
        assert_eq!(r.downstream_cluster, None);
        assert_eq!(r.istio_mesh_id.as_deref(), Some("cluster.local"));
        assert_eq!(r.component.as_deref(), Some("proxy"));
        // Only attributes without a column, and the second alias of http_method, stay in the map.
        assert_eq!(
            r.attributes,
            vec![
                ("http.request.method".into(), "HEAD".into()),
                ("retry.count".into(), "2".into())
            ]
        );
        assert_eq!(r.events[0].attributes, vec![("attempt".into(), "1".into())]);
        assert_eq!(r.links.len(), 1, "the link with a zero trace id is dropped");
        assert_eq!(r.links[0].trace_state.as_deref(), Some("k=v"));
    }

    #[test]
    fn invalid_spans_are_rejected_by_position_and_the_rest_kept() {
        let mut short = envoy_span(2);
        short.trace_id = vec![1, 2, 3, 4, 5];
        let mut zero_span = envoy_span(3);
        zero_span.span_id = vec![0; 8];
        let mut backwards = envoy_span(4);
        backwards.end_time_unix_nano = backwards.start_time_unix_nano - 1;
        let mut root = envoy_span(5);
        root.parent_span_id = vec![];
        root.status = None;
        root.kind = 99;
        root.attributes = vec![kv("http.status_code", Value::IntValue(200))];
        let mut req = request(vec![envoy_span(1), short, zero_span, backwards, root]);
        req.resource_spans[0].resource = None;
        let (rows, rejected) = spans_from_request(req);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].service_name, UNKNOWN_SERVICE);
        assert_eq!(rows[1].parent_span_id, None);
        assert_eq!(rows[1].kind, "unspecified");
        assert_eq!(rows[1].status_code, "unset");
        assert_eq!(rows[1].http_status_code, Some(200));
        assert_eq!(rejected.len(), 3);
        assert!(
            rejected[0].starts_with("resource_spans[0].scope_spans[0].spans[1]")
                && rejected[0].contains("trace id must be 16 bytes, got 5 bytes"),
            "{}",
            rejected[0]
        );
        assert!(rejected[1].contains("spans[2]") && rejected[1].contains("span id is all zeros"));
        assert!(rejected[2].contains("spans[3]") && rejected[2].contains("is before"));
    }
}
