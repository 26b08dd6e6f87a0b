//! What a build accumulates: a label set's counts over the window (`KeyWindow`), each edge's
//! counts while label sets are folded in (`Acc`), and the nodes and edges made once however
//! many label sets lead to them (`Builder`), with the node a side of a label set stands for.

use super::*;

/// A few counters by key in key order (an edge has a handful of codes, flags and services):
/// a sorted vector, so an edge allocates once per kind of counter, not once per tree node,
/// and iterates in the order a `BTreeMap` would.
#[derive(Debug)]
pub(crate) struct Counts<K>(Vec<(K, u64)>);

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts(Vec::new())
    }
}

impl<K: Ord> Counts<K> {
    pub(crate) fn add(&mut self, k: K, n: u64) {
        match self.0.binary_search_by(|(x, _)| x.cmp(&k)) {
            Ok(i) => self.0[i].1 += n,
            Err(i) => self.0.insert(i, (k, n)),
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<u64> {
        self.0
            .binary_search_by(|(x, _)| x.cmp(k))
            .ok()
            .map(|i| self.0[i].1)
    }

    pub(crate) fn merge(&mut self, other: Counts<K>) {
        for (k, n) in other.0 {
            self.add(k, n);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &u64)> {
        self.0.iter().map(|(k, n)| (k, n))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Per-edge accumulation while building (label values borrowed from the rollups).
#[derive(Default)]
pub(crate) struct Acc<'a> {
    pub(crate) source: usize,
    pub(crate) target: usize,
    /// Counted requests.
    pub(crate) totals: Totals,
    /// The edge's label sets (indices in the window) and the latencies their duration
    /// sketches feed: `COUNTED` (the edge's own) and `REPORTED_BY` each Istio reporter.
    pub(crate) parts: Vec<(u32, u8)>,
    /// Duration sums of every request (counted or not) each reporter in `REPORTERS` saw;
    /// `None` when it saw none.
    pub(crate) reporter_sums: [Option<f64>; 2],
    pub(crate) codes: Counts<u16>,
    pub(crate) code_flags: Counts<(u16, &'a str)>,
    pub(crate) flags: Counts<&'a str>,
    pub(crate) services: Counts<&'a str>,
    pub(crate) protocols: Counts<&'a str>,
    pub(crate) sources: FastSet<(&'a str, &'a str)>,
    /// The edge starts at a caller (not an injected service node): its proxy's breaker stats
    /// describe it.
    pub(crate) from_caller: bool,
    pub(crate) e5: u64,
    pub(crate) e4: u64,
}

/// A label set's counts over the window, with its per-bucket duration sketches (merged only
/// per edge, when the percentiles are read).
#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) requests: u64,
    pub(crate) request_bytes: u64,
    pub(crate) response_bytes: u64,
    pub(crate) duration_ms_sum: f64,
}

impl Totals {
    pub(crate) fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
        self.duration_ms_sum += o.duration_ms_sum;
    }
}

#[derive(Default)]
pub(crate) struct KeyWindow<'a> {
    pub(crate) totals: Totals,
    pub(crate) sketches: Vec<&'a LatencySketch>,
}

impl<'a> KeyWindow<'a> {
    pub(crate) fn add(&mut self, a: &EdgeAgg) {
        self.totals.add(&Totals {
            requests: a.requests,
            request_bytes: a.request_bytes,
            response_bytes: a.response_bytes,
            duration_ms_sum: a.duration_ms_sum,
        });
    }

    /// The durations of the latency group this label set leads, in one bucket.
    pub(crate) fn add_sketch(&mut self, s: &'a LatencySketch) {
        if s.count() > 0 {
            if self.sketches.capacity() == 0 {
                self.sketches.reserve(16);
            }
            self.sketches.push(s);
        }
    }
}

impl<'a> Acc<'a> {
    /// Adds another accumulation of the same edge.
    pub(crate) fn merge(&mut self, o: Acc<'a>) {
        self.totals.add(&o.totals);
        self.parts.extend(o.parts);
        for (mine, theirs) in self.reporter_sums.iter_mut().zip(o.reporter_sums) {
            if let Some(t) = theirs {
                *mine.get_or_insert(0.0) += t;
            }
        }
        self.codes.merge(o.codes);
        self.code_flags.merge(o.code_flags);
        self.flags.merge(o.flags);
        self.services.merge(o.services);
        self.protocols.merge(o.protocols);
        self.sources.extend(o.sources);
        self.from_caller |= o.from_caller;
        self.e5 += o.e5;
        self.e4 += o.e4;
    }

    pub(crate) fn add(&mut self, k: &'a EdgeKey, w: &KeyWindow<'a>) {
        let a = &w.totals;
        self.totals.add(a);
        let code = k.response_code();
        self.codes.add(code, a.requests);
        self.code_flags
            .add((code, k.get(Label::ResponseFlags)), a.requests);
        for f in k.flags() {
            self.flags.add(f, a.requests);
        }
        if let Some(s) = k.known(Label::DestinationService) {
            self.services.add(s, a.requests);
        }
        self.protocols
            .add(k.get(Label::RequestProtocol), a.requests);
        if let (Some(ns), Some(wl)) = (
            k.known(Label::SourceWorkloadNamespace),
            k.known(Label::SourceWorkload),
        ) {
            self.sources.insert((ns, wl));
        }
        if is_5xx(code) {
            self.e5 += a.requests;
        } else if is_4xx(code) {
            self.e4 += a.requests;
        }
    }
}

/// Nodes and edges while building: each node and edge is made once, however many label sets
/// and buckets lead to it.
pub(crate) struct Builder<'a> {
    pub(crate) gt: GraphType,
    /// (side, the labels `node_for` reads) → index in `nodes`. Label values are interned,
    /// so their addresses stand for them.
    pub(crate) node_of: FastMap<(u8, [usize; 8]), usize>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) node_by_id: FastMap<String, usize>,
    pub(crate) acc_of: FastMap<(usize, usize), usize>,
    pub(crate) accs: Vec<Acc<'a>>,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(gt: GraphType) -> Builder<'a> {
        Builder {
            gt,
            node_of: FastMap::default(),
            nodes: Vec::new(),
            node_by_id: FastMap::default(),
            acc_of: FastMap::default(),
            accs: Vec::new(),
        }
    }

    /// Takes in the nodes and edges another builder made from other label sets.
    pub(crate) fn absorb(&mut self, other: Builder<'a>) {
        let map: Vec<usize> = other.nodes.into_iter().map(|n| self.add_node(n)).collect();
        for mut acc in other.accs {
            acc.source = map[acc.source];
            acc.target = map[acc.target];
            let next = self.accs.len();
            let i = *self.acc_of.entry((acc.source, acc.target)).or_insert(next);
            if i == next {
                self.accs.push(acc);
            } else {
                self.accs[i].merge(acc);
            }
        }
    }

    /// The node for one side of a label set (0 source, 1 destination, 2 its service).
    pub(crate) fn node(&mut self, k: &'a EdgeKey, side: u8) -> usize {
        let (wl, ns, app, ver, canon) = if side == 0 {
            (
                Label::SourceWorkload,
                Label::SourceWorkloadNamespace,
                Label::SourceApp,
                Label::SourceVersion,
                Label::SourceCanonicalService,
            )
        } else {
            (
                Label::DestinationWorkload,
                Label::DestinationWorkloadNamespace,
                Label::DestinationApp,
                Label::DestinationVersion,
                Label::DestinationCanonicalService,
            )
        };
        let sig = [
            wl,
            ns,
            app,
            ver,
            canon,
            Label::DestinationServiceName,
            Label::DestinationService,
            Label::DestinationServiceNamespace,
        ]
        .map(|l| k.0[l as usize].as_ptr() as usize);
        if let Some(i) = self.node_of.get(&(side, sig)) {
            return *i;
        }
        let n = match side {
            0 => node_for(k, true, self.gt),
            1 => node_for(k, false, self.gt),
            _ => node_for(k, false, GraphType::Service),
        };
        // Signatures differ between a workload calling and being called: the id is what
        // identifies a node.
        let i = self.add_node(n);
        self.node_of.insert((side, sig), i);
        i
    }

    /// Adds a node, or reconciles it with the node of the same id made from other label sets.
    /// A workload behind several services is reached through label sets naming each of them;
    /// it shows the least name, whatever order the label sets came in.
    pub(crate) fn add_node(&mut self, n: Node) -> usize {
        let next = self.nodes.len();
        let i = *self.node_by_id.entry(n.id.clone()).or_insert(next);
        if i == next {
            self.nodes.push(n);
        } else {
            let have = &mut self.nodes[i];
            for (have, new) in [
                (&mut have.namespace, n.namespace),
                (&mut have.workload, n.workload),
                (&mut have.app, n.app),
                (&mut have.version, n.version),
                (&mut have.service, n.service),
            ] {
                if let Some(new) = new
                    && have.as_ref().is_none_or(|h| new < *h)
                {
                    *have = Some(new);
                }
            }
        }
        i
    }

    pub(crate) fn acc(&mut self, from: usize, to: usize) -> &mut Acc<'a> {
        let next = self.accs.len();
        let i = *self.acc_of.entry((from, to)).or_insert(next);
        if i == next {
            self.accs.push(Acc {
                source: from,
                target: to,
                ..Acc::default()
            });
        }
        &mut self.accs[i]
    }

    /// The edges one label set adds to: caller → destination, or with service nodes
    /// injected, caller → service (→ workload when the request reached one).
    pub(crate) fn hops(&mut self, k: &'a EdgeKey, q: &GraphQuery) -> ([(usize, usize); 2], usize) {
        let src = self.node(k, 0);
        let dst = self.node(k, 1);
        if !q.inject_service_nodes
            || q.graph_type == GraphType::Service
            || self.nodes[dst].kind == "service"
        {
            return ([(src, dst), (0, 0)], 1);
        }
        let svc = self.node(k, 2);
        if self.nodes[svc].kind != "service" {
            return ([(src, dst), (0, 0)], 1);
        }
        ([(src, svc), (svc, dst)], 2)
    }
}

pub(crate) fn is_5xx(code: u16) -> bool {
    code >= 500 || code == 0
}

pub(crate) fn is_4xx(code: u16) -> bool {
    (400..500).contains(&code)
}

pub(crate) fn ns_of_service(k: &EdgeKey) -> Option<&str> {
    k.known(Label::DestinationServiceNamespace).or_else(|| {
        k.known(Label::DestinationService)
            .and_then(service_namespace)
    })
}

/// The node a side of a label set stands for.
pub(crate) fn node_for(k: &EdgeKey, source: bool, gt: GraphType) -> Node {
    let (wl, ns, app, ver, canon) = if source {
        (
            k.known(Label::SourceWorkload),
            k.known(Label::SourceWorkloadNamespace),
            k.known(Label::SourceApp),
            k.known(Label::SourceVersion),
            k.known(Label::SourceCanonicalService),
        )
    } else {
        (
            k.known(Label::DestinationWorkload),
            k.known(Label::DestinationWorkloadNamespace),
            k.known(Label::DestinationApp),
            k.known(Label::DestinationVersion),
            k.known(Label::DestinationCanonicalService),
        )
    };
    let svc_name = k.known(Label::DestinationServiceName);
    let svc_ns = ns_of_service(k).or(ns);
    let mk = |id: String, kind: &'static str| Node {
        id,
        kind,
        namespace: None,
        workload: None,
        app: None,
        version: None,
        service: None,
        health: Health::Idle,
        requests_in: 0,
        requests_out: 0,
        errors_in: 0,
        rank: 0,
        in_5xx: 0,
        in_4xx: 0,
        out_requests_5xx: (0, 0, 0),
    };
    let service_node = || {
        let name = svc_name.or(k.known(Label::DestinationService));
        match name {
            Some(name) => {
                let mut n = mk(
                    format!("service:{}/{}", svc_ns.unwrap_or("unknown"), name),
                    "service",
                );
                n.namespace = svc_ns.map(str::to_string);
                n.service = Some(name.to_string());
                n
            }
            None => mk("unknown".into(), "unknown"),
        }
    };
    let unknown = || mk("unknown".into(), "unknown");
    let nsv = ns.unwrap_or("unknown");
    let mut n = match gt {
        GraphType::Workload => match wl {
            Some(w) => {
                let mut n = mk(format!("workload:{nsv}/{w}"), "workload");
                n.workload = Some(w.to_string());
                n
            }
            None if source => return unknown(),
            None => return service_node(),
        },
        GraphType::App | GraphType::VersionedApp => match app.or(canon) {
            Some(a) => {
                let versioned = gt == GraphType::VersionedApp;
                let id = match (versioned, ver) {
                    (true, Some(v)) => format!("app:{nsv}/{a}/{v}"),
                    _ => format!("app:{nsv}/{a}"),
                };
                let mut n = mk(id, "app");
                n.app = Some(a.to_string());
                if versioned {
                    n.version = ver.map(str::to_string);
                }
                if wl.is_some() && versioned {
                    n.workload = wl.map(str::to_string);
                }
                n
            }
            None if source => return unknown(),
            None => return service_node(),
        },
        GraphType::Service => {
            if source {
                match canon.or(app).or(wl) {
                    Some(s) => {
                        let mut n = mk(format!("service:{nsv}/{s}"), "service");
                        n.service = Some(s.to_string());
                        n
                    }
                    None => return unknown(),
                }
            } else {
                return service_node();
            }
        }
    };
    n.namespace = ns.map(str::to_string);
    if n.app.is_none() {
        n.app = app.map(str::to_string);
    }
    if n.version.is_none() && gt == GraphType::Workload {
        n.version = ver.map(str::to_string);
    }
    if !source && n.service.is_none() {
        n.service = svc_name.map(str::to_string);
    }
    n
}

/// The label sets with traffic in the `cover` buckets whose id is `part` modulo `parts`,
/// merged over the buckets, in the order first seen. Label set ids are dense, so a slot table
/// finds each one's entry without hashing.
pub(crate) fn window_part<'a>(
    key_count: usize,
    cover: &[&'a crate::rollup::edges::Bucket],
    part: u32,
    parts: u32,
) -> Vec<(KeyId, KeyWindow<'a>)> {
    let mut slot = vec![u32::MAX; key_count.div_ceil(parts as usize)];
    let mut out: Vec<(KeyId, KeyWindow<'a>)> = Vec::new();
    let mut entry = |id: KeyId, out: &mut Vec<(KeyId, KeyWindow<'a>)>| {
        let s = &mut slot[(id / parts) as usize];
        if *s == u32::MAX {
            *s = out.len() as u32;
            out.push((id, KeyWindow::default()));
        }
        *s as usize
    };
    for bucket in cover {
        for (id, a) in bucket.iter() {
            if id % parts == part {
                let i = entry(*id, &mut out);
                out[i].1.add(a);
            }
        }
        // A group's sketch is kept under its leader, which has traffic in the bucket or
        // gets an entry of no requests here.
        for (id, s) in &bucket.latency {
            if id % parts == part {
                let i = entry(*id, &mut out);
                out[i].1.add_sketch(s);
            }
        }
    }
    out
}

/// The duration sketches of an edge's label sets in the window, each with the latencies it
/// feeds, into `out`.
pub(crate) fn sketches_of<'a>(
    window: &[(KeyId, KeyWindow<'a>)],
    parts: &[(u32, u8)],
    out: &mut Vec<(&'a LatencySketch, u8)>,
) {
    out.clear();
    for &(i, feeds) in parts {
        out.extend(window[i as usize].1.sketches.iter().map(|s| (*s, feeds)));
    }
}
