//! A graph as JSON, in pieces for a big graph.

use super::*;

/// The graph as JSON, exactly `serde_json::to_vec(g)`, in pieces to send one after the
/// other: a big graph's edges are rendered on two threads, each into a buffer sized for its
/// half up front, and not copied again into one (27 MB at 10k edges: growing and joining the
/// buffers faulted in and copied about twice that per request).
pub fn to_json_chunks(g: &Graph) -> serde_json::Result<Vec<Vec<u8>>> {
    if g.edges.len() < PARALLEL_EDGES {
        return Ok(vec![serde_json::to_vec(g)?]);
    }
    /// The graph with its edges left out; `edges` is the last field of both, so the
    /// rendering ends in `"edges":[]}` and the edges go in before `]}`.
    #[derive(Serialize)]
    struct Head<'a> {
        graph_type: GraphType,
        from: f64,
        to: f64,
        buckets_from: i64,
        buckets_to: i64,
        resolution_seconds: i64,
        nodes: &'a [Node],
        edges: [Edge; 0],
    }
    /// Edges `[a, b, …]` without the brackets. An edge takes about 1.5 KB; room for 2 KB
    /// each costs nothing where it stays unused (pages are only faulted in when written).
    fn edges_json(edges: &[Edge]) -> serde_json::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(edges.len() * 2048);
        for (i, e) in edges.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, e)?;
        }
        Ok(out)
    }
    let (a, b) = g.edges.split_at(g.edges.len() / 2);
    let (first, second) = on_two_threads(|| edges_json(a), || edges_json(b));
    let (first, second) = (first?, second?);
    let mut head = serde_json::to_vec(&Head {
        graph_type: g.graph_type,
        from: g.from,
        to: g.to,
        buckets_from: g.buckets_from,
        buckets_to: g.buckets_to,
        resolution_seconds: g.resolution_seconds,
        nodes: &g.nodes,
        edges: [],
    })?;
    debug_assert!(head.ends_with(b"[]}"));
    head.truncate(head.len() - 2);
    Ok(vec![head, first, b",".to_vec(), second, b"]}".to_vec()])
}
