//! Span attributes: which keys live in dedicated columns, and a span's attributes as the
//! APIs show them.

use super::*;

/// Span attribute keys (as Envoy and the OTel conventions write them) that the collector moves
/// into a dedicated `spans` column. Used to show every attribute again, and to turn a tag
/// search into a filter on the column (which is what the bloom filters and statistics cover).
pub const DEDICATED_ATTRIBUTES: &[(&str, &str)] = &[
    ("guid:x-request-id", sp::REQUEST_ID),
    ("http.method", sp::HTTP_METHOD),
    ("http.status_code", sp::HTTP_STATUS_CODE),
    ("http.url", sp::HTTP_URL),
    ("http.protocol", sp::HTTP_PROTOCOL),
    ("user_agent", sp::USER_AGENT),
    ("upstream_cluster", sp::UPSTREAM_CLUSTER),
    ("upstream_address", sp::UPSTREAM_ADDRESS),
    ("response_flags", sp::RESPONSE_FLAGS),
    ("peer.address", sp::PEER_ADDRESS),
    ("downstream_cluster", sp::DOWNSTREAM_CLUSTER),
    ("node_id", sp::NODE_ID),
    ("component", sp::COMPONENT),
    ("istio.canonical_service", sp::ISTIO_CANONICAL_SERVICE),
    ("istio.canonical_revision", sp::ISTIO_CANONICAL_REVISION),
    ("istio.namespace", sp::ISTIO_NAMESPACE),
    ("istio.mesh_id", sp::ISTIO_MESH_ID),
];

/// Aliases a search may use for a dedicated column.
pub(crate) fn dedicated_column(key: &str) -> Option<&'static str> {
    let key = match key {
        "request_id" | "x-request-id" => "guid:x-request-id",
        "http.request.method" => "http.method",
        "http.response.status_code" => "http.status_code",
        "url.full" => "http.url",
        "user_agent.original" => "user_agent",
        "upstream_cluster.name" => "upstream_cluster",
        k => k,
    };
    DEDICATED_ATTRIBUTES
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, c)| *c)
}

/// Every attribute of a span: the dedicated columns under their original keys, then the
/// `attributes` map.
pub fn span_attributes(s: &SpanRow) -> Vec<(String, String)> {
    let dedicated: [Option<String>; 17] = [
        s.request_id.clone(),
        s.http_method.clone(),
        s.http_status_code.map(|c| c.to_string()),
        s.http_url.clone(),
        s.http_protocol.clone(),
        s.user_agent.clone(),
        s.upstream_cluster.clone(),
        s.upstream_address.clone(),
        s.response_flags.clone(),
        s.peer_address.clone(),
        s.downstream_cluster.clone(),
        s.node_id.clone(),
        s.component.clone(),
        s.istio_canonical_service.clone(),
        s.istio_canonical_revision.clone(),
        s.istio_namespace.clone(),
        s.istio_mesh_id.clone(),
    ];
    let mut out: Vec<(String, String)> = DEDICATED_ATTRIBUTES
        .iter()
        .zip(dedicated)
        .filter_map(|((k, _), v)| v.map(|v| (k.to_string(), v)))
        .collect();
    out.extend(s.attributes.iter().cloned());
    out
}

/// A span is an error when OTLP says so or the HTTP status is 5xx.
pub fn is_error(s: &SpanRow) -> bool {
    s.status_code == "error" || s.http_status_code.is_some_and(|c| c >= 500)
}
