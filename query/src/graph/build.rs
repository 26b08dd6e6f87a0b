//! Building a graph from the rollups, step by step: the window's label sets, folded into nodes
//! and edges by Kiali's reporter rules, each edge's numbers, the nodes' health and ranks.

use super::*;

/// [`build`], with the two-thread paths for big graphs allowed or not (tests compare both).
/// The steps: the window's label sets, folded into nodes and edges, each edge's numbers, the
/// nodes' health and ranks.
pub(crate) fn build_with(
    st: &RollupState,
    resolution_secs: i64,
    q: &GraphQuery,
    threads: bool,
    phases: &mut Phases,
) -> Graph {
    let mut clock = std::time::Instant::now();
    let mut lap = |d: &mut Duration| {
        let now = std::time::Instant::now();
        *d = now - clock;
        clock = now;
    };
    let res = resolution_secs.max(1);
    let from_s = q.from_ns.div_euclid(1_000_000_000);
    let to_s = (q.to_ns + 999_999_999).div_euclid(1_000_000_000);
    let b_from = from_s - from_s.rem_euclid(res);
    let b_to = to_s + (res - to_s.rem_euclid(res)) % res;
    let (window, idle_keys) = window_label_sets(st, b_from, b_to, q, threads);
    lap(&mut phases.window);
    let Builder {
        mut nodes,
        mut accs,
        ..
    } = fold_into_edges(st, &window, &idle_keys, q, threads);
    lap(&mut phases.fold);
    count_on_nodes(&mut nodes, &mut accs, q);
    let edges = EdgeContext::new(st, q, &nodes, &window, &accs).edges(&accs, threads);
    drop(accs);
    lap(&mut phases.edges);
    let nodes = finish_nodes(nodes, &edges, q);
    lap(&mut phases.rest);
    Graph {
        graph_type: q.graph_type,
        from: q.from_ns as f64 / 1e9,
        to: q.to_ns as f64 / 1e9,
        buckets_from: b_from,
        buckets_to: b_to,
        resolution_seconds: res,
        nodes,
        edges,
    }
}

/// Label sets of the window with their counts and sketches.
type Window<'st> = Vec<(KeyId, KeyWindow<'st>)>;

/// Step 1: the window's label sets, merged over the buckets `[b_from, b_to)` (pre-merged ones
/// where they fit), span-derived calls for the pairs no access log covers, and (with
/// `include_idle`) the label sets with no traffic in the window.
fn window_label_sets<'st>(
    st: &'st RollupState,
    b_from: i64,
    b_to: i64,
    q: &GraphQuery,
    threads: bool,
) -> (Window<'st>, BTreeSet<KeyId>) {
    let key = |id: &KeyId| st.keys.get(*id);
    let cover = st.edges.cover(b_from, b_to);
    let entries: usize = cover.iter().map(|b| b.len()).sum();
    let mut window = if threads && entries >= PARALLEL_LABEL_SETS {
        let (mut first, second) = on_two_threads(
            || window_part(st.keys.len(), &cover, 0, 2),
            || window_part(st.keys.len(), &cover, 1, 2),
        );
        first.extend(second);
        first
    } else {
        window_part(st.keys.len(), &cover, 0, 1)
    };
    // Span-derived calls fill in pairs (caller service, destination service) that no access
    // log covers in this window.
    let logged: FastSet<(&str, &str)> = window
        .iter()
        .map(|(id, _)| key(id))
        .map(|k| {
            (
                k.get(Label::SourceCanonicalService),
                k.get(Label::DestinationServiceName),
            )
        })
        .collect();
    let mut from_spans: FastMap<KeyId, KeyWindow<'_>> = FastMap::default();
    let unlogged = |id: &KeyId| {
        let k = key(id);
        !logged.contains(&(
            k.get(Label::SourceCanonicalService),
            k.get(Label::DestinationServiceName),
        ))
    };
    for bucket in st.span_edges.cover(b_from, b_to) {
        for (id, a) in bucket.iter().filter(|(id, _)| unlogged(id)) {
            from_spans.entry(*id).or_default().add(a);
        }
        for (id, sketch) in bucket.latency.iter().filter(|(id, _)| unlogged(id)) {
            from_spans.entry(*id).or_default().add_sketch(sketch);
        }
    }
    window.extend(from_spans);
    let mut idle_keys: BTreeSet<KeyId> = BTreeSet::new();
    if q.include_idle {
        let in_window: FastSet<KeyId> = window.iter().map(|(id, _)| *id).collect();
        for bucket in st.edges.coarsest() {
            for id in bucket.keys() {
                if !in_window.contains(id) {
                    idle_keys.insert(*id);
                }
            }
        }
    }
    (window, idle_keys)
}

/// The (source workload, destination service) pair of a label set: Kiali counts a
/// source-reported row only for pairs no destination proxy reported.
fn pair(k: &EdgeKey) -> (&str, &str, &str, &str) {
    (
        k.get(Label::SourceWorkloadNamespace),
        k.get(Label::SourceWorkload),
        k.get(Label::DestinationServiceName),
        ns_of_service(k).unwrap_or("unknown"),
    )
}

/// Whether a node is in the namespaces asked for (all when none are).
fn in_namespaces(q: &GraphQuery, n: &Node) -> bool {
    q.namespaces.is_empty()
        || n.namespace
            .as_ref()
            .is_some_and(|ns| q.namespaces.iter().any(|x| x == ns))
}

/// Steps 2 and 3: the label sets folded into nodes and edges by Kiali's reporter rules; idle label
/// sets add their edges with no traffic.
fn fold_into_edges<'st>(
    st: &'st RollupState,
    window: &Window<'st>,
    idle_keys: &BTreeSet<KeyId>,
    q: &GraphQuery,
    threads: bool,
) -> Builder<'st> {
    let key = |id: &KeyId| st.keys.get(*id);
    // Pairs some destination proxy reported.
    let dest_reported: FastSet<(&str, &str, &str, &str)> = window
        .iter()
        .map(|(id, _)| key(id))
        .filter(|k| k.get(Label::Reporter) == "destination")
        .map(pair)
        .collect();
    // Edges refer to label sets by their place in `window`. Label sets of one destination
    // service go to the same part, so the caller → service and service → workload edges of
    // a part are its own; parts are merged after.
    let fold = |part: u64, parts: u64| {
        let mut b = Builder::new(q.graph_type);
        for (wi, (id, a)) in window.iter().enumerate() {
            let wi = wi as u32;
            let k = key(id);
            if parts > 1 {
                let svc = k
                    .known(Label::DestinationServiceName)
                    .or(k.known(Label::DestinationService))
                    .unwrap_or("");
                if rustc_hash::FxBuildHasher.hash_one(svc) % parts != part {
                    continue;
                }
            }
            let (hops, n) = b.hops(k, q);
            let (src, dst) = (hops[0].0, hops[n - 1].1);
            if !in_namespaces(q, &b.nodes[src]) && !in_namespaces(q, &b.nodes[dst]) {
                continue;
            }
            let reporter = k.get(Label::Reporter);
            let counted =
                reporter != "source" || k.local_reply() || !dest_reported.contains(&pair(k));
            for &(from, to) in &hops[..n] {
                let caller = b.nodes[from].kind != "service" || q.graph_type == GraphType::Service;
                let acc = b.acc(from, to);
                acc.from_caller |= caller;
                let mut feeds = 0;
                if let Some(i) = REPORTERS.iter().position(|r| *r == reporter) {
                    feeds |= REPORTED_BY << i;
                    *acc.reporter_sums[i].get_or_insert(0.0) += a.totals.duration_ms_sum;
                }
                if counted {
                    feeds |= COUNTED;
                    // A leader with durations only (no requests of its own in the window)
                    // adds no counts.
                    if a.totals.requests > 0 {
                        acc.add(k, a);
                    }
                }
                if feeds != 0 {
                    acc.parts.push((wi, feeds));
                }
            }
        }
        b
    };
    let mut b = if threads && window.len() >= PARALLEL_LABEL_SETS {
        let (mut first, second) = on_two_threads(|| fold(0, 2), || fold(1, 2));
        first.absorb(second);
        first
    } else {
        fold(0, 1)
    };
    for id in idle_keys {
        let k = key(id);
        let (hops, n) = b.hops(k, q);
        let (src, dst) = (hops[0].0, hops[n - 1].1);
        if !in_namespaces(q, &b.nodes[src]) && !in_namespaces(q, &b.nodes[dst]) {
            continue;
        }
        for &(from, to) in &hops[..n] {
            let acc = b.acc(from, to);
            if let Some(s) = k.known(Label::DestinationService) {
                acc.services.add(s, 0);
            }
            acc.protocols.add(k.get(Label::RequestProtocol), 0);
        }
    }
    b
}

/// Puts the edges in the order their numbers are computed in, drops idle ones unless asked
/// for, and adds each edge's requests and errors to its nodes.
fn count_on_nodes(nodes: &mut [Node], accs: &mut Vec<Acc<'_>>, q: &GraphQuery) {
    // Edges come grouped by the service node they touch (else by target), then by source and
    // target: caller → service and service → workload read the same label sets' sketches,
    // so working on them one after the other finds the second read in cache.
    let group = |a: &Acc<'_>| {
        if nodes[a.source].kind == "service" {
            a.source
        } else {
            a.target
        }
    };
    // Nodes ranked by id once, so edges sort by integers.
    let mut by_id: Vec<usize> = (0..nodes.len()).collect();
    by_id.sort_unstable_by(|a, b| nodes[*a].id.cmp(&nodes[*b].id));
    let mut ord = vec![0usize; nodes.len()];
    for (o, i) in by_id.into_iter().enumerate() {
        ord[i] = o;
    }
    accs.sort_unstable_by_key(|a| (ord[group(a)], ord[a.source], ord[a.target]));
    accs.retain(|acc| acc.totals.requests > 0 || q.include_idle);
    for acc in accs.iter() {
        let requests = acc.totals.requests;
        let n = &mut nodes[acc.target];
        n.requests_in += requests;
        n.in_5xx += acc.e5;
        n.in_4xx += acc.e4;
        n.errors_in += acc.e5 + acc.e4;
        let n = &mut nodes[acc.source];
        n.requests_out += requests;
        n.out_requests_5xx.0 += requests;
        n.out_requests_5xx.1 += acc.e5;
        n.out_requests_5xx.2 += acc.e4;
    }
}

/// Step 4: what every edge's numbers are computed from.
struct EdgeContext<'st, 'b> {
    st: &'st RollupState,
    q: &'b GraphQuery,
    nodes: &'b [Node],
    window: &'b Window<'st>,
    /// Requests per (source node, destination service), for traffic shares.
    per_service: FastMap<(usize, &'st str), u64>,
    breakers: BreakerIndex<'st>,
    /// The window's length in seconds, what rates divide by.
    secs: f64,
}

impl<'st, 'b> EdgeContext<'st, 'b> {
    fn new(
        st: &'st RollupState,
        q: &'b GraphQuery,
        nodes: &'b [Node],
        window: &'b Window<'st>,
        accs: &[Acc<'st>],
    ) -> EdgeContext<'st, 'b> {
        let mut per_service: FastMap<(usize, &str), u64> = FastMap::default();
        for acc in accs {
            for (svc, n) in acc.services.iter() {
                *per_service.entry((acc.source, svc)).or_default() += n;
            }
        }
        EdgeContext {
            st,
            q,
            nodes,
            window,
            per_service,
            breakers: breaker_index(st),
            secs: ((q.to_ns - q.from_ns) as f64 / 1e9).max(1e-9),
        }
    }

    /// Every edge's numbers, on two threads for a big graph (the per-edge work, percentiles
    /// and breaker state, is most of its build).
    fn edges(&self, accs: &[Acc<'st>], threads: bool) -> Vec<Edge> {
        let run = |part: &[Acc<'st>]| {
            let mut union = UnionQuantiles::default();
            let mut sketches = Vec::new();
            part.iter()
                .map(|a| self.edge(a, &mut union, &mut sketches))
                .collect::<Vec<_>>()
        };
        if !(threads && accs.len() >= PARALLEL_EDGES) {
            return run(accs);
        }
        // Halves of equal work: an edge costs about its number of sketches, plus a little.
        let cost = |a: &Acc<'_>| {
            8 + a
                .parts
                .iter()
                .map(|(wi, _)| self.window[*wi as usize].1.sketches.len())
                .sum::<usize>()
        };
        let total: usize = accs.iter().map(cost).sum();
        let mut seen = 0;
        let half = accs
            .iter()
            .position(|a| {
                seen += cost(a);
                seen * 2 >= total
            })
            .map_or(accs.len() / 2, |i| i + 1);
        let (a, b) = accs.split_at(half);
        let (mut edges, second) = on_two_threads(|| run(a), || run(b));
        edges.extend(second);
        edges
    }

    /// One edge: rate, errors, share, percentiles, codes × flags, breaker and faults.
    fn edge(
        &self,
        acc: &Acc<'st>,
        union: &mut UnionQuantiles,
        sketches: &mut Vec<(&'st LatencySketch, u8)>,
    ) -> Edge {
        let (nodes, q) = (self.nodes, self.q);
        let service = acc
            .services
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(s, n)| (*s, *n));
        let share = service
            .and_then(|(svc, n)| Some((self.per_service.get(&(acc.source, svc))?, n)))
            .filter(|(d, _)| **d > 0)
            .map_or(0.0, |(d, n)| n as f64 / *d as f64);
        let requests = acc.totals.requests;
        let errors = acc.e5 + acc.e4;
        let mut cb = breaker_for(self.st, &self.breakers, acc, q);
        cb.uo_responses = acc.flags.get(&"UO").unwrap_or(0);
        cb.uh_responses = acc.flags.get(&"UH").unwrap_or(0);
        cb.tripped = cb.uo_responses > 0 || cb.overflow > 0.0 || cb.cx_overflow > 0.0 || cb.open;
        let health = q.health.health(requests, acc.e5, acc.e4);
        let (s, t) = (nodes[acc.source].id.clone(), nodes[acc.target].id.clone());
        sketches_of(self.window, &acc.parts, sketches);
        let [own, by_dest, by_source] = union.quantiles_rows::<3, 3>(sketches, [0.5, 0.95, 0.99]);
        Edge {
            id: format!("{s}->{t}"),
            protocol: acc
                .protocols
                .iter()
                .max_by_key(|(_, n)| **n)
                .map_or_else(|| "http".into(), |(p, _)| p.to_string()),
            destination_service: service.map(|(s, _)| s.to_string()),
            requests,
            rps: round3(requests as f64 / self.secs),
            errors,
            errors_5xx: acc.e5,
            errors_4xx: acc.e4,
            error_rate: if requests > 0 {
                round3(errors as f64 / requests as f64)
            } else {
                0.0
            },
            traffic_share: round3(share),
            latency_ms: Latency::of(own, acc.totals.duration_ms_sum),
            latency_ms_by_reporter: REPORTERS
                .iter()
                .zip([by_dest, by_source])
                .zip(acc.reporter_sums)
                .filter_map(|((r, q), sum)| Some((r.to_string(), Latency::of(q, sum?))))
                .collect(),
            response_codes: acc.codes.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            response_flags: acc
                .flags
                .iter()
                .map(|(f, n)| {
                    (
                        f.to_string(),
                        FlagCount {
                            count: *n,
                            meaning: response_flag_meaning(f).unwrap_or("not an Envoy flag"),
                        },
                    )
                })
                .collect(),
            codes_by_flags: acc
                .code_flags
                .iter()
                .map(|((code, flags), count)| CodeFlags {
                    code: *code,
                    flags: flags.to_string(),
                    count: *count,
                })
                .collect(),
            bytes_sent: acc.totals.request_bytes,
            bytes_received: acc.totals.response_bytes,
            circuit_breaker: cb,
            fault_injection: FaultInjection {
                aborted: acc.flags.get(&"FI").unwrap_or(0),
                delayed: acc.flags.get(&"DI").unwrap_or(0),
            },
            health,
            source: s,
            target: t,
        }
    }
}

/// Step 5: node health (from inbound traffic, else outbound), the nodes some edge touches, sorted
/// by id, with their ranks.
fn finish_nodes(mut nodes: Vec<Node>, edges: &[Edge], q: &GraphQuery) -> Vec<Node> {
    for n in nodes.iter_mut() {
        n.health = if n.requests_in > 0 {
            q.health.health(n.requests_in, n.in_5xx, n.in_4xx)
        } else {
            let (r, e5, e4) = n.out_requests_5xx;
            q.health.health(r, e5, e4)
        };
    }
    let used: FastSet<&str> = edges
        .iter()
        .flat_map(|e| [e.source.as_str(), e.target.as_str()])
        .collect();
    let mut nodes: Vec<Node> = nodes
        .into_iter()
        .filter(|n| used.contains(n.id.as_str()))
        .collect();
    nodes.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    assign_ranks(&mut nodes, edges);
    nodes
}

/// Runs `first` here and `second` on another thread; a panic in either is raised here.
pub(crate) fn on_two_threads<A, B: Send>(
    first: impl FnOnce() -> A,
    second: impl FnOnce() -> B + Send,
) -> (A, B) {
    std::thread::scope(|sc| {
        let second = sc.spawn(second);
        let first = first();
        (
            first,
            second
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        )
    })
}

/// Layers for a left-to-right drawing: a node's rank is the longest path to it from a node
/// nothing calls, over the graph with cycles condensed (petgraph's SCCs), so it is stable
/// between refreshes as long as the topology is.
pub(crate) fn assign_ranks(nodes: &mut [Node], edges: &[Edge]) {
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let idx: FastMap<&str, NodeIndex> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), g.add_node(i)))
        .collect();
    for e in edges {
        if let (Some(a), Some(b)) = (idx.get(e.source.as_str()), idx.get(e.target.as_str()))
            && a != b
        {
            g.update_edge(*a, *b, ());
        }
    }
    let cond = petgraph::algo::condensation(g, true);
    let order = petgraph::algo::toposort(&cond, None).unwrap_or_default();
    let mut rank = vec![0usize; cond.node_count()];
    for c in order {
        for next in cond.neighbors(c) {
            rank[next.index()] = rank[next.index()].max(rank[c.index()] + 1);
        }
    }
    for c in cond.node_indices() {
        for &i in &cond[c] {
            nodes[i].rank = rank[c.index()];
        }
    }
}
