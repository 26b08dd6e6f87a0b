//! One trace as a waterfall: the span tree, depth, offsets, self time, the critical path,
//! the client/server span pairs of each mesh hop, errors and Envoy response flags.

use super::*;

/// One stretch of the critical path: `span_id` was the work the trace waited on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CriticalSegment {
    pub span_id: String,
    pub start_offset_ns: i64,
    pub end_offset_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagMeaning {
    pub flag: String,
    pub meaning: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub time: String,
    pub offset_ns: i64,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkView {
    pub trace_id: String,
    pub span_id: String,
    pub trace_state: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// One span in waterfall order.
#[derive(Debug, Clone, Serialize)]
pub struct SpanView {
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub children: Vec<String>,
    pub depth: usize,
    /// From the trace's first span start.
    pub offset_ns: i64,
    pub start_time: String,
    pub duration_ns: i64,
    /// Duration not covered by any child span.
    pub self_ns: i64,
    /// Time this span contributes to the critical path.
    pub critical_path_ns: i64,
    pub service_name: String,
    pub name: String,
    pub kind: String,
    pub status_code: String,
    pub status_message: Option<String>,
    pub error: bool,
    pub http_method: Option<String>,
    pub http_status_code: Option<i32>,
    pub http_url: Option<String>,
    pub upstream_cluster: Option<String>,
    pub response_flags: Option<String>,
    pub response_flag_meanings: Vec<FlagMeaning>,
    pub request_id: Option<String>,
    pub node_id: Option<String>,
    /// The other half of this span's mesh hop: the inbound sidecar's SERVER span for an
    /// outbound CLIENT span, and the reverse.
    pub pair_span_id: Option<String>,
    /// Every span attribute, including those stored in dedicated columns.
    pub attributes: BTreeMap<String, String>,
    pub resource_attributes: BTreeMap<String, String>,
    pub events: Vec<EventView>,
    pub links: Vec<LinkView>,
}

/// One mesh hop: the caller's outbound CLIENT span and, when the request reached the callee's
/// sidecar, its inbound SERVER span.
#[derive(Debug, Clone, Serialize)]
pub struct HopView {
    pub client_span_id: String,
    pub server_span_id: Option<String>,
    pub source_service: String,
    pub destination_service: Option<String>,
    pub upstream_cluster: Option<String>,
    pub http_status_code: Option<i32>,
    pub response_flags: Option<String>,
    pub client_duration_ns: i64,
    pub server_duration_ns: Option<i64>,
    /// Client minus server duration: the network and both sidecars.
    pub outside_server_ns: Option<i64>,
    /// The caller's sidecar answered itself (e.g. `UO` from a circuit breaker): no server span.
    pub answered_by_client_sidecar: bool,
    pub error: bool,
}

/// A whole trace, as a waterfall.
#[derive(Debug, Clone, Serialize)]
pub struct TraceView {
    pub trace_id: String,
    pub start_time: String,
    pub start_unix_nano: i64,
    pub duration_ns: i64,
    pub span_count: usize,
    pub error_count: usize,
    pub services: Vec<String>,
    pub request_ids: Vec<String>,
    pub root_span_ids: Vec<String>,
    /// From the first root's start to its end, in time order.
    pub critical_path: Vec<CriticalSegment>,
    pub hops: Vec<HopView>,
    pub warnings: Vec<String>,
    /// Depth-first, children in start order.
    pub spans: Vec<SpanView>,
}

pub(crate) fn attr_map(a: &[(String, String)]) -> BTreeMap<String, String> {
    a.iter().cloned().collect()
}

pub(crate) fn flag_meanings(flags: Option<&str>) -> Vec<FlagMeaning> {
    flags
        .into_iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty() && *f != "-")
        .map(|f| FlagMeaning {
            flag: f.to_string(),
            meaning: response_flag_meaning(f),
        })
        .collect()
}

/// The tree of a trace's spans: depth-first order, depths, children.
pub struct Tree {
    /// Span indexes in waterfall order.
    pub order: Vec<usize>,
    pub depth: Vec<usize>,
    pub children: Vec<Vec<usize>>,
    pub parent: Vec<Option<usize>>,
    pub roots: Vec<usize>,
    pub warnings: Vec<String>,
}

impl Tree {
    /// Spans whose parent is not stored become roots (with a warning); duplicates of a span
    /// id are ignored after the first.
    pub fn build(spans: &[SpanRow]) -> Tree {
        let n = spans.len();
        let mut warnings = Vec::new();
        let mut index: HashMap<SpanId, usize> = HashMap::with_capacity(n);
        let mut dup = vec![false; n];
        for (i, s) in spans.iter().enumerate() {
            if index.insert(s.span_id, i).is_some() {
                dup[i] = true;
            }
        }
        // keep the first occurrence
        for (i, s) in spans.iter().enumerate().rev() {
            if !dup[i] {
                index.insert(s.span_id, i);
            }
        }
        let mut seen_dup = HashSet::new();
        for (i, s) in spans.iter().enumerate() {
            if index.get(&s.span_id) != Some(&i) && seen_dup.insert(s.span_id) {
                warnings.push(format!(
                    "span {} is stored more than once; the first copy is shown",
                    s.span_id
                ));
            }
        }
        let mut parent = vec![None; n];
        let mut children = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            if index.get(&s.span_id) != Some(&i) {
                continue;
            }
            match s.parent_span_id.and_then(|p| index.get(&p).copied()) {
                Some(p) if p != i => {
                    parent[i] = Some(p);
                    children[p].push(i);
                }
                _ => {
                    if let Some(p) = s.parent_span_id {
                        warnings.push(format!(
                            "span {} has parent {p}, which is not stored; shown as a root",
                            s.span_id
                        ));
                    }
                    roots.push(i);
                }
            }
        }
        let by_start = |a: &usize, b: &usize| {
            (spans[*a].start_time_unix_nano, spans[*a].span_id)
                .cmp(&(spans[*b].start_time_unix_nano, spans[*b].span_id))
        };
        for c in &mut children {
            c.sort_by(by_start);
        }
        roots.sort_by(by_start);
        let mut order = Vec::with_capacity(n);
        let mut depth = vec![0usize; n];
        let mut visited = vec![false; n];
        fn walk(
            root: usize,
            children: &[Vec<usize>],
            order: &mut Vec<usize>,
            depth: &mut [usize],
            visited: &mut [bool],
        ) {
            let mut stack = vec![(root, 0usize)];
            while let Some((i, d)) = stack.pop() {
                if visited[i] {
                    continue;
                }
                visited[i] = true;
                depth[i] = d;
                order.push(i);
                for &c in children[i].iter().rev() {
                    stack.push((c, d + 1));
                }
            }
        }
        for &r in &roots {
            walk(r, &children, &mut order, &mut depth, &mut visited);
        }
        // Spans on a parent cycle are unreachable from any root: show them as roots.
        for i in 0..n {
            if !visited[i] && index.get(&spans[i].span_id) == Some(&i) {
                warnings.push(format!(
                    "span {} is part of a parent cycle; shown as a root",
                    spans[i].span_id
                ));
                if let Some(p) = parent[i].take() {
                    children[p].retain(|&c| c != i);
                }
                roots.push(i);
                walk(i, &children, &mut order, &mut depth, &mut visited);
            }
        }
        Tree {
            order,
            depth,
            children,
            parent,
            roots,
            warnings,
        }
    }
}

/// Total length of the union of intervals.
pub(crate) fn covered(mut iv: Vec<(i64, i64)>) -> i64 {
    iv.retain(|(a, b)| b > a);
    iv.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(i64, i64)> = None;
    for (a, b) in iv {
        match &mut cur {
            Some((_, ce)) if a <= *ce => *ce = (*ce).max(b),
            _ => {
                if let Some((s, e)) = cur {
                    total += e - s;
                }
                cur = Some((a, b));
            }
        }
    }
    if let Some((s, e)) = cur {
        total += e - s;
    }
    total
}

/// The critical path under `root`: walking back from the root's end, the work the trace was
/// waiting on is the child that finished last before that point; inside it the same rule
/// applies; once it starts, the parent is waited on again until the next earlier-finishing
/// child. Children are clipped to their parent's interval. Segments come out in time order.
pub fn critical_path(spans: &[SpanRow], tree: &Tree, root: usize) -> Vec<(usize, i64, i64)> {
    let n = spans.len();
    let end = |i: usize| spans[i].start_time_unix_nano + spans[i].duration_ns.max(0);
    // Clipped intervals, parents before children (tree order).
    let mut clip: Vec<(i64, i64)> = (0..n)
        .map(|i| (spans[i].start_time_unix_nano, end(i)))
        .collect();
    for &i in &tree.order {
        if let Some(p) = tree.parent[i] {
            let (ps, pe) = clip[p];
            let (s, e) = clip[i];
            let s = s.clamp(ps, pe);
            clip[i] = (s, e.clamp(s, pe));
        }
    }
    // Children by clipped end, latest first; a cursor per frame only moves forward because
    // the point we walk back from only moves earlier.
    let sorted: Vec<Vec<usize>> = tree
        .children
        .iter()
        .map(|c| {
            let mut c: Vec<usize> = c
                .iter()
                .copied()
                .filter(|&j| clip[j].1 > clip[j].0)
                .collect();
            c.sort_by_key(|&j| std::cmp::Reverse((clip[j].1, clip[j].0)));
            c
        })
        .collect();
    let mut segments = Vec::new();
    // (span, point we walk back from, cursor into sorted children)
    let mut frames = vec![(root, clip[root].1, 0usize)];
    while let Some((s, t, cursor)) = frames.last_mut() {
        let s = *s;
        let kids = &sorted[s];
        while *cursor < kids.len() && clip[kids[*cursor]].1 > *t {
            *cursor += 1;
        }
        if *cursor < kids.len() {
            let c = kids[*cursor];
            *cursor += 1;
            let (cs, ce) = clip[c];
            if ce < *t {
                segments.push((s, ce, *t));
            }
            *t = cs;
            frames.push((c, ce, 0));
        } else {
            let (ss, _) = clip[s];
            if ss < *t {
                segments.push((s, ss, *t));
            }
            frames.pop();
        }
    }
    segments.reverse();
    segments
}

/// Builds the waterfall of one trace from its spans (any order).
pub fn trace_view(trace_id: TraceId, spans: &[SpanRow]) -> TraceView {
    let tree = Tree::build(spans);
    let start = spans
        .iter()
        .map(|s| s.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.start_time_unix_nano + s.duration_ns.max(0))
        .max()
        .unwrap_or(start);
    let self_ns = self_times(spans, &tree);
    let mut critical_ns = vec![0i64; spans.len()];
    let mut critical = Vec::new();
    if let Some(&root) = tree.roots.first() {
        for (i, a, b) in critical_path(spans, &tree, root) {
            critical_ns[i] += b - a;
            critical.push(CriticalSegment {
                span_id: spans[i].span_id.to_hex(),
                start_offset_ns: a - start,
                end_offset_ns: b - start,
            });
        }
    }
    let pair = client_server_pairs(spans, &tree);
    let hops = hops(spans, &tree, &pair);
    let views: Vec<SpanView> = tree
        .order
        .iter()
        .map(|&i| {
            let mut v = span_view(spans, &tree, i, start);
            v.self_ns = self_ns[i];
            v.critical_path_ns = critical_ns[i];
            v.pair_span_id = pair[i].map(|j| spans[j].span_id.to_hex());
            v
        })
        .collect();
    let services: BTreeSet<String> = spans.iter().map(|s| s.service_name.clone()).collect();
    let request_ids: BTreeSet<String> = spans.iter().filter_map(|s| s.request_id.clone()).collect();
    TraceView {
        trace_id: trace_id.to_hex(),
        start_time: rfc3339(start),
        start_unix_nano: start,
        duration_ns: end - start,
        span_count: views.len(),
        error_count: views.iter().filter(|v| v.error).count(),
        services: services.into_iter().collect(),
        request_ids: request_ids.into_iter().collect(),
        root_span_ids: tree
            .roots
            .iter()
            .map(|&r| spans[r].span_id.to_hex())
            .collect(),
        critical_path: critical,
        hops,
        warnings: tree.warnings,
        spans: views,
    }
}

/// Each span's self time: its duration less the time its children cover (clamped to it).
fn self_times(spans: &[SpanRow], tree: &Tree) -> Vec<i64> {
    let end_of = |i: usize| spans[i].start_time_unix_nano + spans[i].duration_ns.max(0);
    (0..spans.len())
        .map(|i| {
            let (s, e) = (spans[i].start_time_unix_nano, end_of(i));
            let kids = tree.children[i]
                .iter()
                .map(|&c| {
                    (
                        spans[c].start_time_unix_nano.clamp(s, e),
                        end_of(c).clamp(s, e),
                    )
                })
                .collect();
            (e - s) - covered(kids)
        })
        .collect()
}

/// Envoy hops: a SERVER span whose parent is a CLIENT span; each side points at the other.
fn client_server_pairs(spans: &[SpanRow], tree: &Tree) -> Vec<Option<usize>> {
    let mut pair: Vec<Option<usize>> = vec![None; spans.len()];
    for &i in &tree.order {
        if spans[i].kind == "server"
            && let Some(p) = tree.parent[i]
            && spans[p].kind == "client"
            && pair[p].is_none()
        {
            pair[p] = Some(i);
            pair[i] = Some(p);
        }
    }
    pair
}

/// One hop per CLIENT span, with the SERVER span that answered it if any.
fn hops(spans: &[SpanRow], tree: &Tree, pair: &[Option<usize>]) -> Vec<HopView> {
    let mut hops = Vec::new();
    for &i in &tree.order {
        let c = &spans[i];
        if c.kind != "client" {
            continue;
        }
        let server = pair[i].map(|j| &spans[j]);
        let flags = flag_meanings(c.response_flags.as_deref());
        let destination = server.map(|s| s.service_name.clone()).or_else(|| {
            c.upstream_cluster
                .as_deref()
                .and_then(meshscope_schemas::envoy::IstioCluster::parse)
                .and_then(|cl| cl.host)
        });
        hops.push(HopView {
            client_span_id: c.span_id.to_hex(),
            server_span_id: server.map(|s| s.span_id.to_hex()),
            source_service: c.service_name.clone(),
            destination_service: destination,
            upstream_cluster: c.upstream_cluster.clone(),
            http_status_code: c.http_status_code,
            response_flags: c.response_flags.clone(),
            client_duration_ns: c.duration_ns,
            server_duration_ns: server.map(|s| s.duration_ns),
            outside_server_ns: server.map(|s| c.duration_ns - s.duration_ns),
            answered_by_client_sidecar: server.is_none()
                && flags
                    .iter()
                    .any(|f| LOCAL_REPLY_FLAGS.contains(&f.flag.as_str())),
            error: is_error(c) || server.is_some_and(is_error),
        });
    }
    hops
}

/// Span `i` as the waterfall shows it, offsets from `start`; self time, critical-path time
/// and the paired span are left for the caller.
fn span_view(spans: &[SpanRow], tree: &Tree, i: usize, start: i64) -> SpanView {
    let s = &spans[i];
    SpanView {
        span_id: s.span_id.to_hex(),
        parent_span_id: s.parent_span_id.map(|p| p.to_hex()),
        children: tree.children[i]
            .iter()
            .map(|&c| spans[c].span_id.to_hex())
            .collect(),
        depth: tree.depth[i],
        offset_ns: s.start_time_unix_nano - start,
        start_time: rfc3339(s.start_time_unix_nano),
        duration_ns: s.duration_ns,
        self_ns: 0,
        critical_path_ns: 0,
        service_name: s.service_name.clone(),
        name: s.name.clone(),
        kind: s.kind.clone(),
        status_code: s.status_code.clone(),
        status_message: s.status_message.clone(),
        error: is_error(s),
        http_method: s.http_method.clone(),
        http_status_code: s.http_status_code,
        http_url: s.http_url.clone(),
        upstream_cluster: s.upstream_cluster.clone(),
        response_flags: s.response_flags.clone(),
        response_flag_meanings: flag_meanings(s.response_flags.as_deref()),
        request_id: s.request_id.clone(),
        node_id: s.node_id.clone(),
        pair_span_id: None,
        attributes: attr_map(&span_attributes(s)),
        resource_attributes: {
            let mut m = attr_map(&s.resource_attributes);
            m.insert("service.name".into(), s.service_name.clone());
            m
        },
        events: s
            .events
            .iter()
            .map(|e| EventView {
                time: rfc3339(e.time_unix_nano),
                offset_ns: e.time_unix_nano - start,
                name: e.name.clone(),
                attributes: attr_map(&e.attributes),
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| LinkView {
                trace_id: l.trace_id.to_hex(),
                span_id: l.span_id.to_hex(),
                trace_state: l.trace_state.clone(),
                attributes: attr_map(&l.attributes),
            })
            .collect(),
    }
}

/// A search result line: one trace in brief.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub start_time: String,
    pub start_unix_nano: i64,
    pub duration_ns: i64,
    pub span_count: usize,
    pub error_count: usize,
    pub root_service: Option<String>,
    pub root_name: Option<String>,
    pub services: Vec<String>,
    pub request_ids: Vec<String>,
    pub response_flags: Vec<String>,
}

impl From<&TraceView> for TraceSummary {
    fn from(v: &TraceView) -> TraceSummary {
        let root = v.spans.first();
        let flags: BTreeSet<String> = v
            .spans
            .iter()
            .flat_map(|s| s.response_flag_meanings.iter().map(|f| f.flag.clone()))
            .collect();
        TraceSummary {
            trace_id: v.trace_id.clone(),
            start_time: v.start_time.clone(),
            start_unix_nano: v.start_unix_nano,
            duration_ns: v.duration_ns,
            span_count: v.span_count,
            error_count: v.error_count,
            root_service: root.map(|r| r.service_name.clone()),
            root_name: root.map(|r| r.name.clone()),
            services: v.services.clone(),
            request_ids: v.request_ids.clone(),
            response_flags: flags.into_iter().collect(),
        }
    }
}
