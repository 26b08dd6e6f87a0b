//! Edges from spans, for pairs no access log describes (meshes without access logging, or
//! services instrumented with an OpenTelemetry SDK only). Like Tempo's service-graph
//! processor: a CLIENT span and the SERVER span whose parent it is make one call; each side
//! becomes a row of the same edge rollups as access logs (`source` reporter with the
//! client-measured duration, `destination` with the server's), so the graph merges them by
//! the same rules. A client span left unpaired for `PAIR_WAIT` becomes a source-reported call
//! to the service its `upstream_cluster` names; an unpaired server span a call from `unknown`.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampNanosecondType};
use meshscope_schemas::envoy::IstioCluster;
use meshscope_schemas::table::spans as sp;

use super::RollupState;
use super::edges::{EdgeAgg, EdgeKey, FastMap, LABEL_COUNT, Sketched, UNKNOWN};

/// How long a span waits for its other half.
pub const PAIR_WAIT: Duration = Duration::from_secs(10);
/// At most this many spans wait; beyond it the oldest are settled unpaired.
pub const MAX_PENDING: usize = 200_000;

#[derive(Debug, Clone)]
pub struct Side {
    service: String,
    namespace: Option<String>,
    time_ns: i64,
    duration_ms: f64,
    code: i32,
    error: bool,
    flags: Option<String>,
    /// The destination service host a client span names (its `upstream_cluster`).
    host: Option<String>,
    protocol: &'static str,
}

type Key = ([u8; 16], [u8; 8]);

/// Tempo span-metrics labels: `service`, `span_name`, `span_kind`, `status_code`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpanMetricKey(pub [std::sync::Arc<str>; 4]);

pub const SPAN_METRIC_LABELS: [&str; 4] = ["service", "span_name", "span_kind", "status_code"];

#[derive(Default)]
pub struct SpanPairer {
    clients: FastMap<Key, (Instant, Side)>,
    servers: FastMap<Key, (Instant, Side)>,
}

impl SpanPairer {
    pub fn pending(&self) -> usize {
        self.clients.len() + self.servers.len()
    }
}

fn fixed<const N: usize>(
    a: Option<&arrow::array::FixedSizeBinaryArray>,
    row: usize,
) -> Option<[u8; N]> {
    a.filter(|a| a.is_valid(row))
        .and_then(|a| a.value(row).try_into().ok())
}

/// Folds a `spans` batch in; returns the spans that took part.
// Long on purpose: one pass over a batch's columns, resolved once above the loop; the loop
// pairs client and server halves and folds each call, and splitting it would hand the dozen
// column readers to every piece.
pub(super) fn fold_spans(
    st: &mut RollupState,
    batch: &RecordBatch,
    res: i64,
    oldest: i64,
) -> usize {
    let s = |n: &str| {
        batch
            .column_by_name(n)
            .and_then(|c| c.as_string_opt::<i32>())
    };
    let fsb = |n: &str| {
        batch
            .column_by_name(n)
            .and_then(|c| c.as_fixed_size_binary_opt())
    };
    let (Some(kind), Some(service), Some(time), Some(dur)) = (
        s(sp::KIND),
        s(sp::SERVICE_NAME),
        batch
            .column_by_name(sp::START_TIME)
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>()),
        batch
            .column_by_name(sp::DURATION_NS)
            .and_then(|c| c.as_primitive_opt::<Int64Type>()),
    ) else {
        return 0;
    };
    let (trace, span, parent) = (fsb(sp::TRACE_ID), fsb(sp::SPAN_ID), fsb(sp::PARENT_SPAN_ID));
    let status = s(sp::STATUS_CODE);
    let http = batch
        .column_by_name(sp::HTTP_STATUS_CODE)
        .and_then(|c| c.as_primitive_opt::<Int32Type>());
    let (flags, cluster, canon, ns, proto) = (
        s(sp::RESPONSE_FLAGS),
        s(sp::UPSTREAM_CLUSTER),
        s(sp::ISTIO_CANONICAL_SERVICE),
        s(sp::ISTIO_NAMESPACE),
        s(sp::HTTP_PROTOCOL),
    );
    fn opt(a: Option<&arrow::array::StringArray>, row: usize) -> Option<&str> {
        a.filter(|a| a.is_valid(row))
            .map(|a| a.value(row))
            .filter(|v| !v.is_empty() && *v != "-")
    }
    let now = Instant::now();
    let mut n = 0;
    let name_col = s(sp::NAME);
    // The batch's span metrics, grouped on borrowed strings; interned once per group below.
    let mut metrics: FastMap<(i64, [&str; 4]), EdgeAgg> = FastMap::default();
    let mut emitted = Emitted::default();
    for row in 0..batch.num_rows() {
        let k = kind.value(row);
        // Tempo-style span metrics: every span, by service, name, kind and status.
        let t_ns = time.value(row);
        if t_ns >= oldest.saturating_mul(1_000_000_000) {
            let secs = t_ns.div_euclid(1_000_000_000);
            let bucket = secs - secs.rem_euclid(res.max(1));
            let status = match opt(status, row) {
                Some("error") => "STATUS_CODE_ERROR",
                Some("ok") => "STATUS_CODE_OK",
                _ => "STATUS_CODE_UNSET",
            };
            let span_kind = match k {
                "client" => "SPAN_KIND_CLIENT",
                "server" => "SPAN_KIND_SERVER",
                "producer" => "SPAN_KIND_PRODUCER",
                "consumer" => "SPAN_KIND_CONSUMER",
                "internal" => "SPAN_KIND_INTERNAL",
                _ => "SPAN_KIND_UNSPECIFIED",
            };
            let labels = [
                service.value(row),
                name_col.map_or("", |c| c.value(row)),
                span_kind,
                status,
            ];
            metrics.entry((bucket, labels)).or_default().add(
                dur.value(row).max(0) as f64 / 1e6,
                0,
                0,
            );
        }
        if k != "client" && k != "server" {
            continue;
        }
        let Some(tid) = fixed::<16>(trace, row) else {
            continue;
        };
        // Envoy names its service `<app>.<namespace>`; Istio's attributes say it exactly.
        let full = service.value(row);
        let (short, ns_from_name) = match full.split_once('.') {
            Some((a, b)) if !b.contains('.') => (a, Some(b)),
            _ => (full, None),
        };
        let side = Side {
            service: opt(canon, row).unwrap_or(short).to_string(),
            namespace: opt(ns, row).or(ns_from_name).map(str::to_string),
            time_ns: time.value(row),
            duration_ms: dur.value(row).max(0) as f64 / 1e6,
            code: http.filter(|h| h.is_valid(row)).map_or(0, |h| h.value(row)),
            error: opt(status, row) == Some("error"),
            flags: opt(flags, row).map(str::to_string),
            host: opt(cluster, row)
                .and_then(IstioCluster::parse)
                .and_then(|c| c.host),
            protocol: if opt(proto, row).is_some_and(|p| p.contains("gRPC") || p == "grpc") {
                "grpc"
            } else {
                "http"
            },
        };
        if side.time_ns < oldest.saturating_mul(1_000_000_000) {
            continue;
        }
        n += 1;
        if k == "client" {
            let Some(sid) = fixed::<8>(span, row) else {
                continue;
            };
            match st.spans.servers.remove(&(tid, sid)) {
                Some((_, server)) => emit_pair(st, &mut emitted, &side, &server, res),
                None => {
                    st.spans.clients.insert((tid, sid), (now, side));
                }
            }
        } else {
            match fixed::<8>(parent, row) {
                Some(pid) => match st.spans.clients.remove(&(tid, pid)) {
                    Some((_, client)) => emit_pair(st, &mut emitted, &client, &side, res),
                    None => {
                        st.spans.servers.insert((tid, pid), (now, side));
                    }
                },
                // A root server span: the caller has no tracer (ingress, a test client).
                None => emit(
                    st,
                    &mut emitted,
                    None,
                    Some(&side),
                    &side,
                    "destination",
                    res,
                ),
            }
        }
    }
    for ((bucket, labels), agg) in metrics {
        let key = SpanMetricKey(labels.map(|l| st.interner.get(l)));
        st.span_metrics
            .entry(bucket)
            .or_default()
            .entry(key)
            .or_default()
            .merge(&agg);
    }
    emitted.commit(st, res);
    settle(st, res, now, false);
    n
}

/// Edge rows emitted by one fold, grouped by bucket and label set (interned label numbers),
/// so the rollups take one merge per group instead of one per span.
#[derive(Default)]
struct Emitted(FastMap<(i64, [u32; LABEL_COUNT]), Sketched>);

impl Emitted {
    fn commit(self, st: &mut RollupState, res: i64) {
        for ((bucket, labels), s) in self.0 {
            let key = EdgeKey(labels.map(|l| st.interner.value(l).clone()));
            let id = st.keys.id(key);
            st.span_edges
                .add(res.max(1), bucket, id, st.keys.leader(id), &s);
        }
    }
}

/// Settles spans that waited too long (or all of them, `all`), unpaired.
pub(super) fn settle(st: &mut RollupState, res: i64, now: Instant, all: bool) {
    let over = st.spans.pending().saturating_sub(MAX_PENDING);
    let expired = |at: &Instant| all || now.duration_since(*at) >= PAIR_WAIT;
    let mut late_clients: Vec<Side> = Vec::new();
    let mut late_servers: Vec<Side> = Vec::new();
    st.spans.clients.retain(|_, (at, side)| {
        let go = expired(at);
        if go {
            late_clients.push(side.clone());
        }
        !go
    });
    st.spans.servers.retain(|_, (at, side)| {
        let go = expired(at);
        if go {
            late_servers.push(side.clone());
        }
        !go
    });
    if over > 0 {
        // Still too many: settle the oldest clients first (bounded memory beats pairing).
        let mut by_age: Vec<(Instant, Key)> = st
            .spans
            .clients
            .iter()
            .map(|(k, (at, _))| (*at, *k))
            .collect();
        by_age.sort();
        for (_, k) in by_age.into_iter().take(over) {
            if let Some((_, side)) = st.spans.clients.remove(&k) {
                late_clients.push(side);
            }
        }
    }
    let mut emitted = Emitted::default();
    for c in late_clients {
        emit(st, &mut emitted, Some(&c), None, &c, "source", res);
    }
    for s in late_servers {
        emit(st, &mut emitted, None, Some(&s), &s, "destination", res);
    }
    emitted.commit(st, res);
}

fn emit_pair(st: &mut RollupState, out: &mut Emitted, client: &Side, server: &Side, res: i64) {
    emit(st, out, Some(client), Some(server), client, "source", res);
    emit(
        st,
        out,
        Some(client),
        Some(server),
        server,
        "destination",
        res,
    );
}

/// One side's row of the call `client → server` (either may be unknown).
fn emit(
    st: &mut RollupState,
    out: &mut Emitted,
    client: Option<&Side>,
    server: Option<&Side>,
    measured: &Side,
    reporter: &str,
    res: i64,
) {
    fn u(o: Option<&str>) -> &str {
        o.unwrap_or(UNKNOWN)
    }
    let src = client.map(|c| c.service.as_str());
    let src_ns = client.and_then(|c| c.namespace.as_deref());
    let dst = server.map(|s| s.service.as_str());
    let dst_ns = server.and_then(|s| s.namespace.as_deref());
    let host: Cow<str> = match (client.and_then(|c| c.host.as_deref()), dst) {
        (Some(h), _) => Cow::Borrowed(h),
        (None, Some(d)) => match dst_ns {
            Some(ns) => Cow::Owned(format!("{d}.{ns}.svc.cluster.local")),
            None => Cow::Borrowed(d),
        },
        (None, None) => return,
    };
    let host = host.as_ref();
    let host_name = host.split('.').next().unwrap_or(host);
    let host_ns = super::edges::service_namespace(host)
        .filter(|_| host.contains(".svc."))
        .or(dst_ns);
    let code = if measured.code != 0 {
        measured.code
    } else if measured.error {
        500
    } else {
        200
    };
    let flags = client
        .and_then(|c| c.flags.as_deref())
        .or_else(|| server.and_then(|s| s.flags.as_deref()))
        .unwrap_or("-");
    let code = code.to_string();
    let labels: [&str; LABEL_COUNT] = [
        reporter,
        u(src),
        u(src_ns),
        u(src),
        UNKNOWN,
        u(src),
        u(dst),
        u(dst_ns),
        u(dst),
        UNKNOWN,
        u(dst),
        host,
        host_name,
        u(host_ns),
        measured.protocol,
        &code,
        flags,
    ];
    let secs = measured.time_ns.div_euclid(1_000_000_000);
    let bucket = secs - secs.rem_euclid(res.max(1));
    let labels = labels.map(|l| st.interner.id(l));
    out.0
        .entry((bucket, labels))
        .or_default()
        .add(measured.duration_ms, 0, 0);
}
