//! Realistic bookinfo spans, as Istio sidecars report them through Envoy's OpenTelemetry
//! tracer: the ingress gateway → productpage → details, productpage → reviews (v1, v2, v3) →
//! ratings, one CLIENT/SERVER pair per hop, every replica with its own pod name, IP, node id
//! and zone, and the attributes Istio puts on every span. Seeded: every run generates the
//! same spans, only the wall-clock base differs. `bench storage`, `bench lookup` and
//! `bench otlp` store and send these.

use std::time::Duration;

use arrow_array::RecordBatch;
use meshscope_schemas::rows::{SpanRow, spans_batch};
use meshscope_schemas::{SpanId, TraceId};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// The generator's seed.
pub const SEED: u64 = 0x6d65_7368_7363_6f70;
/// Spans start within this window before the run.
pub const WINDOW: Duration = Duration::from_secs(50 * 60);
const MS: i64 = 1_000_000;

/// What the generator remembers of a trace, to check lookups against.
#[derive(Debug, Clone, Copy)]
pub struct TraceInfo {
    pub id: TraceId,
    /// Spans stored (the last trace may be cut short to hit the span count exactly).
    pub spans: usize,
    pub start_ns: i64,
    pub end_ns: i64,
}

/// Generated spans in batches, and what was generated of each trace.
pub struct Dataset {
    pub batches: Vec<RecordBatch>,
    pub traces: Vec<TraceInfo>,
    pub spans: usize,
}

/// A workload's Envoy: what it stamps on every span it reports.
struct Proxy {
    service_name: String,
    canonical_service: &'static str,
    revision: &'static str,
    namespace: &'static str,
    ip: String,
    node_id: String,
    zone: &'static str,
}

struct Mesh {
    gateways: Vec<Proxy>,
    productpage: Vec<Proxy>,
    details: Vec<Proxy>,
    reviews: [Vec<Proxy>; 3],
    ratings: Vec<Proxy>,
    /// End users' addresses as the gateway sees them.
    clients: Vec<String>,
}

const ZONES: [&str; 3] = ["us-central1-a", "us-central1-b", "us-central1-c"];
const BROWSERS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
    "fortio.org/fortio-1.63.7",
];
/// Envoy's OpenTelemetry tracer sets these resource attributes besides `service.name`.
const SDK_VERSION: &str = "6d9d6c2f6b0e1c9a4ab0b2f5f0c3b6a1d1e5c7a8/1.31.2/Clean/RELEASE/BoringSSL";

impl Mesh {
    fn new(rng: &mut StdRng) -> Mesh {
        let mut node = 0u8;
        let mut pods = |rng: &mut StdRng,
                        app: &'static str,
                        version: &'static str,
                        ns: &'static str,
                        replicas: usize| {
            (0..replicas)
                .map(|_| {
                    node = node.wrapping_add(1);
                    let ip = format!("10.244.{}.{}", node % 3, rng.random_range(2..250));
                    let (kind, pod, revision) = if ns == "istio-system" {
                        (
                            "router",
                            format!("{app}-{}-{}", k8s_suffix(rng, 10), k8s_suffix(rng, 5)),
                            "latest",
                        )
                    } else {
                        (
                            "sidecar",
                            format!(
                                "{app}-{version}-{}-{}",
                                k8s_suffix(rng, 10),
                                k8s_suffix(rng, 5)
                            ),
                            version,
                        )
                    };
                    Proxy {
                        service_name: format!("{app}.{ns}"),
                        canonical_service: app,
                        revision,
                        namespace: ns,
                        node_id: format!("{kind}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
                        ip,
                        zone: ZONES[(node % 3) as usize],
                    }
                })
                .collect::<Vec<_>>()
        };
        Mesh {
            gateways: pods(rng, "istio-ingressgateway", "", "istio-system", 2),
            productpage: pods(rng, "productpage", "v1", "default", 3),
            details: pods(rng, "details", "v1", "default", 2),
            reviews: [
                pods(rng, "reviews", "v1", "default", 2),
                pods(rng, "reviews", "v2", "default", 2),
                pods(rng, "reviews", "v3", "default", 2),
            ],
            ratings: pods(rng, "ratings", "v1", "default", 2),
            clients: (0..300)
                .map(|_| {
                    format!(
                        "10.128.{}.{}",
                        rng.random_range(0..16),
                        rng.random_range(1..255)
                    )
                })
                .collect(),
        }
    }
}

/// Kubernetes' pod-name alphabet.
fn k8s_suffix(rng: &mut StdRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// One HTTP request as one proxy reports it.
struct Request<'a> {
    name: &'a str,
    url: &'a str,
    user_agent: &'a str,
    upstream_cluster: String,
    upstream_address: Option<String>,
    peer_address: &'a str,
    status: i32,
    response_flags: Option<&'static str>,
    response_size: u32,
}

/// Builds the spans of one trace.
struct TraceBuilder<'r> {
    rng: &'r mut StdRng,
    trace_id: TraceId,
    request_id: String,
    spans: Vec<SpanRow>,
}

impl TraceBuilder<'_> {
    fn span(
        &mut self,
        reporter: &Proxy,
        kind: &str,
        parent: Option<SpanId>,
        start: i64,
        duration: i64,
        r: &Request,
    ) -> SpanId {
        let span_id = SpanId(self.rng.random::<u64>().max(1).to_be_bytes());
        let error = r.status >= 500;
        self.spans.push(SpanRow {
            trace_id: self.trace_id,
            span_id,
            parent_span_id: parent,
            start_time_unix_nano: start,
            duration_ns: duration,
            service_name: reporter.service_name.clone(),
            name: r.name.to_string(),
            kind: kind.to_string(),
            status_code: if error { "error" } else { "unset" }.to_string(),
            request_id: Some(self.request_id.clone()),
            http_method: Some("GET".into()),
            http_status_code: Some(r.status),
            http_url: Some(r.url.to_string()),
            http_protocol: Some("HTTP/1.1".into()),
            user_agent: Some(r.user_agent.to_string()),
            upstream_cluster: Some(r.upstream_cluster.clone()),
            upstream_address: r.upstream_address.clone(),
            response_flags: r.response_flags.map(str::to_string),
            peer_address: Some(r.peer_address.to_string()),
            downstream_cluster: Some("-".into()),
            node_id: Some(reporter.node_id.clone()),
            component: Some("proxy".into()),
            istio_canonical_service: Some(reporter.canonical_service.into()),
            istio_canonical_revision: Some(reporter.revision.into()),
            istio_namespace: Some(reporter.namespace.into()),
            istio_mesh_id: Some("cluster.local".into()),
            attributes: vec![
                ("zone".into(), reporter.zone.into()),
                ("request_size".into(), "0".into()),
                ("response_size".into(), r.response_size.to_string()),
            ],
            resource_attributes: vec![
                ("telemetry.sdk.language".into(), "cpp".into()),
                ("telemetry.sdk.name".into(), "envoy".into()),
                ("telemetry.sdk.version".into(), SDK_VERSION.into()),
            ],
            ..Default::default()
        });
        span_id
    }

    /// One mesh hop `from` → `to`: the caller's CLIENT span and, unless the caller's proxy
    /// answered itself (`UO`), the callee's SERVER span inside it. Returns the server span.
    #[allow(clippy::too_many_arguments)]
    fn hop(
        &mut self,
        from: &Proxy,
        to: &Proxy,
        parent: Option<SpanId>,
        (client_start, client_ns): (i64, i64),
        server_ns: Option<i64>,
        url: &str,
        user_agent: &str,
        app_address: &str,
        response_size: u32,
    ) -> Option<(SpanId, i64)> {
        let host = to.canonical_service;
        let fqdn = format!("{host}.{}.svc.cluster.local", to.namespace);
        let name = format!("{fqdn}:9080/*");
        let overflow = server_ns.is_none();
        let client = Request {
            name: &name,
            url,
            user_agent,
            upstream_cluster: format!("outbound|9080|{}|{fqdn}", to.revision),
            upstream_address: (!overflow).then(|| format!("{}:9080", to.ip)),
            peer_address: app_address,
            status: if overflow { 503 } else { 200 },
            response_flags: overflow.then_some("UO"),
            response_size: if overflow { 81 } else { response_size },
        };
        let client_id = self.span(from, "client", parent, client_start, client_ns, &client);
        let server_ns = server_ns?;
        let server_start = client_start + (client_ns - server_ns) / 2;
        let server = Request {
            upstream_cluster: "inbound|9080||".into(),
            upstream_address: Some(format!("{}:9080", to.ip)),
            peer_address: &from.ip,
            ..client
        };
        Some((
            self.span(
                to,
                "server",
                Some(client_id),
                server_start,
                server_ns,
                &server,
            ),
            server_start,
        ))
    }
}

/// A duration between `lo` and `hi` ms, skewed towards `lo`, with a 1% slow tail.
fn dur(rng: &mut StdRng, lo: f64, hi: f64) -> i64 {
    let u: f64 = rng.random();
    let tail = if rng.random_bool(0.01) {
        rng.random_range(2.0..6.0)
    } else {
        1.0
    };
    ((lo + (hi - lo) * u * u) * tail * MS as f64) as i64
}

fn uuid(rng: &mut StdRng) -> String {
    let a: u128 = rng.random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (a >> 96) as u32,
        (a >> 80) as u16,
        (a >> 68) as u16 & 0xfff,
        ((a >> 52) as u16 & 0x3fff) | 0x8000,
        a as u64 & 0xffff_ffff_ffff
    )
}

/// Appends one bookinfo request's spans; returns (start, end) of the trace.
fn bookinfo_trace(mesh: &Mesh, b: &mut TraceBuilder, start: i64) -> (i64, i64) {
    let rng = &mut *b.rng;
    let pp = mesh.productpage.choose(rng).expect("pods");
    let details = mesh.details.choose(rng).expect("pods");
    let version = rng.random_range(0..3);
    let reviews = mesh.reviews[version].choose(rng).expect("pods");
    let ratings = mesh.ratings.choose(rng).expect("pods");
    let via_gateway = rng.random_bool(0.7);
    let overflow = rng.random_bool(0.003);
    let calls_ratings = version > 0 && !overflow;
    let browser = *BROWSERS.choose(rng).expect("agents");
    let client_ip = mesh.clients.choose(rng).expect("clients").as_str();
    let path = match rng.random_range(0..20) {
        0..16 => "/productpage",
        16..19 => "/productpage?u=normal",
        _ => "/productpage?u=test",
    };

    // Durations inside out, so that every server span fits in its client span.
    let det_srv = dur(rng, 0.8, 6.0);
    let det_cli = det_srv + dur(rng, 0.2, 1.5);
    let rat_srv = dur(rng, 0.6, 4.0);
    let rat_cli = rat_srv + dur(rng, 0.2, 1.5);
    let (rev_pre, rev_post) = (dur(rng, 0.5, 3.0), dur(rng, 1.0, 10.0));
    let rev_srv = rev_pre + if calls_ratings { rat_cli } else { 0 } + rev_post;
    let rev_cli = if overflow {
        dur(rng, 0.05, 0.3)
    } else {
        rev_srv + dur(rng, 0.2, 1.5)
    };
    let (pp_pre, pp_gap, pp_post) = (dur(rng, 0.5, 3.0), dur(rng, 0.1, 1.0), dur(rng, 2.0, 15.0));
    let pp_srv = pp_pre + det_cli + pp_gap + rev_cli + pp_post;
    let gw_cli = pp_srv + dur(rng, 0.3, 2.0);
    let size = |v: usize| [295, 358, 375][v];
    let page_size = 4_294 + if version > 0 { 912 } else { 0 } + rng.random_range(0..40);

    let url = format!("http://bookinfo.example.com{path}");
    let (pp_id, pp_start, end) = if via_gateway {
        let gw = mesh.gateways.choose(&mut *b.rng).expect("pods");
        let (id, s) = b
            .hop(
                gw,
                pp,
                None,
                (start, gw_cli),
                Some(pp_srv),
                &url,
                browser,
                client_ip,
                page_size,
            )
            .expect("a server span");
        (id, s, start + gw_cli)
    } else {
        let r = Request {
            name: "productpage.default.svc.cluster.local:9080/*",
            url: &url,
            user_agent: browser,
            upstream_cluster: "inbound|9080||".into(),
            upstream_address: Some(format!("{}:9080", pp.ip)),
            peer_address: client_ip,
            status: 200,
            response_flags: None,
            response_size: page_size,
        };
        (
            b.span(pp, "server", None, start, pp_srv, &r),
            start,
            start + pp_srv,
        )
    };
    let py = "python-requests/2.31.0";
    let det_start = pp_start + pp_pre;
    b.hop(
        pp,
        details,
        Some(pp_id),
        (det_start, det_cli),
        Some(det_srv),
        "http://details:9080/details/0",
        py,
        &pp.ip,
        178,
    );
    let rev_start = det_start + det_cli + pp_gap;
    let rev = b.hop(
        pp,
        reviews,
        Some(pp_id),
        (rev_start, rev_cli),
        (!overflow).then_some(rev_srv),
        "http://reviews:9080/reviews/0",
        py,
        &pp.ip,
        size(version),
    );
    if let Some((rev_id, rev_srv_start)) = rev.filter(|_| calls_ratings) {
        let at = (rev_srv_start + rev_pre, rat_cli);
        let ua = "Apache-CXF/3.1.18";
        b.hop(
            reviews,
            ratings,
            Some(rev_id),
            at,
            Some(rat_srv),
            "http://ratings:9080/ratings/0",
            ua,
            &reviews.ip,
            48,
        );
    }
    (start, end)
}

/// Bookinfo traces until there are exactly `spans` spans (the last trace cut short), their
/// starts spread evenly over the `WINDOW` before `now_ns` in generation order (as a collector
/// would receive them). Each trace's spans are appended to `rows`; `each` then sees the trace
/// and `rows`.
pub fn bookinfo_traces(
    spans: usize,
    now_ns: i64,
    rows: &mut Vec<SpanRow>,
    mut each: impl FnMut(TraceInfo, &mut Vec<SpanRow>),
) {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mesh = Mesh::new(&mut rng);
    let window = WINDOW.as_nanos() as i64;
    let mut made = 0usize;
    while made < spans {
        let progress = made as f64 / spans as f64;
        let start = now_ns - window
            + (progress * (window - 60_000 * MS) as f64) as i64
            + rng.random_range(0..100 * MS);
        let trace_id = TraceId(rng.random::<u128>().max(1).to_be_bytes());
        let request_id = uuid(&mut rng);
        let mut b = TraceBuilder {
            rng: &mut rng,
            trace_id,
            request_id,
            spans: std::mem::take(rows),
        };
        let before = b.spans.len();
        let (start_ns, end_ns) = bookinfo_trace(&mesh, &mut b, start);
        let keep = (b.spans.len() - before).min(spans - made);
        b.spans.truncate(before + keep);
        *rows = b.spans;
        made += keep;
        let trace = TraceInfo {
            id: trace_id,
            spans: keep,
            start_ns,
            end_ns,
        };
        each(trace, rows);
    }
}

/// Generates exactly `spans` spans in batches of `batch` (see [`bookinfo_traces`]).
pub fn generate(spans: usize, batch: usize, now_ns: i64) -> Dataset {
    let mut traces = Vec::with_capacity(spans / 5);
    let mut batches = Vec::with_capacity(spans.div_ceil(batch));
    let mut to_batch = |rows: Vec<SpanRow>| {
        batches.push(spans_batch(&rows).expect("generated rows match the spans schema"));
    };
    let mut pending: Vec<SpanRow> = Vec::with_capacity(batch + 8);
    bookinfo_traces(spans, now_ns, &mut pending, |trace, pending| {
        traces.push(trace);
        while pending.len() >= batch {
            to_batch(pending.drain(..batch).collect());
        }
    });
    if !pending.is_empty() {
        to_batch(pending);
    }
    Dataset {
        batches,
        traces,
        spans,
    }
}

/// `spans` bookinfo spans in generation order, traces starting over the `WINDOW` before
/// `now_ns`: the rows `bench otlp` sends as OTLP.
pub fn bookinfo_spans(spans: usize, now_ns: i64) -> Vec<SpanRow> {
    let mut out = Vec::with_capacity(spans + 8);
    bookinfo_traces(spans, now_ns, &mut out, |_, _| {});
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn generated_traces_are_bookinfo_shaped() {
        let now = 1_764_120_600_000_000_000;
        let d = generate(10_007, 500, now);
        assert_eq!(d.spans, 10_007);
        assert_eq!(
            d.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            10_007
        );
        assert!(d.batches.iter().all(|b| b.num_rows() <= 500));
        assert_eq!(d.traces.iter().map(|t| t.spans).sum::<usize>(), 10_007);
        let whole = &d.traces[..d.traces.len() - 1];
        assert!(
            whole.iter().all(|t| (4..=8).contains(&t.spans)),
            "4 to 8 spans per trace"
        );
        assert!(
            d.traces
                .iter()
                .all(|t| t.start_ns >= now - WINDOW.as_nanos() as i64 && t.end_ns <= now)
        );

        // Every server span lies inside its parent client span.
        let mut by_id = HashMap::new();
        for b in &d.batches {
            let ids = b
                .column_by_name("span_id")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::FixedSizeBinaryArray>()
                .unwrap();
            let starts = b
                .column_by_name("start_time")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::TimestampNanosecondArray>()
                .unwrap();
            let durs = b
                .column_by_name("duration_ns")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            let parents = b
                .column_by_name("parent_span_id")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::FixedSizeBinaryArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                let parent =
                    arrow::array::Array::is_valid(parents, i).then(|| parents.value(i).to_vec());
                by_id.insert(
                    ids.value(i).to_vec(),
                    (starts.value(i), durs.value(i), parent),
                );
            }
        }
        for (start, dur, parent) in by_id.values() {
            assert!(*dur > 0);
            if let Some((ps, pd, _)) = parent.as_ref().and_then(|p| by_id.get(p)) {
                assert!(
                    *start >= *ps && start + dur <= ps + pd,
                    "a child span lies inside its parent"
                );
            }
        }
    }
}
