//! Other shapes of a graph: Kiali's cytoscape JSON and Graphviz DOT.

use serde_json::{Value, json};

use super::{Graph, GraphType};

fn pct(n: u64, of: u64) -> String {
    if of == 0 {
        "0.0".into()
    } else {
        format!("{:.1}", 100.0 * n as f64 / of as f64)
    }
}

/// Kiali's graph JSON (`elements.nodes[].data`, `elements.edges[].data.traffic`), as Kiali's
/// own UI and tools that read it expect.
pub fn kiali(g: &Graph) -> Value {
    let node_type = |kind: &str| match kind {
        "workload" => "workload",
        "app" => "app",
        "service" => "service",
        _ => "unknown",
    };
    let nodes: Vec<Value> = g
        .nodes
        .iter()
        .map(|n| {
            let secs = (g.to - g.from).max(1e-9);
            let mut rates = serde_json::Map::new();
            if n.requests_in > 0 {
                rates.insert(
                    "httpIn".into(),
                    format!("{:.2}", n.requests_in as f64 / secs).into(),
                );
                rates.insert(
                    "httpIn5xx".into(),
                    format!("{:.2}", n.in_5xx as f64 / secs).into(),
                );
                rates.insert(
                    "httpIn4xx".into(),
                    format!("{:.2}", n.in_4xx as f64 / secs).into(),
                );
            }
            if n.requests_out > 0 {
                rates.insert(
                    "httpOut".into(),
                    format!("{:.2}", n.requests_out as f64 / secs).into(),
                );
            }
            let mut data = json!({
                "id": n.id,
                "nodeType": node_type(n.kind),
                "cluster": "Kubernetes",
                "namespace": n.namespace.clone().unwrap_or_else(|| "unknown".into()),
                "healthData": n.health,
                "traffic": [{"protocol": "http", "rates": rates}],
            });
            let obj = data.as_object_mut().expect("object");
            for (k, v) in [
                ("workload", &n.workload),
                ("app", &n.app),
                ("version", &n.version),
                ("service", &n.service),
            ] {
                if let Some(v) = v {
                    obj.insert(k.into(), v.clone().into());
                }
            }
            if n.kind == "service" {
                obj.insert(
                    "destServices".into(),
                    json!([{"namespace": n.namespace, "name": n.service}]),
                );
            }
            if g.graph_type == GraphType::VersionedApp && n.kind == "app" {
                obj.insert(
                    "parent".into(),
                    format!(
                        "box:{}/{}",
                        n.namespace.as_deref().unwrap_or("unknown"),
                        n.app.as_deref().unwrap_or("")
                    )
                    .into(),
                );
            }
            if n.kind == "unknown" {
                obj.insert("isRoot".into(), true.into());
            }
            json!({ "data": data })
        })
        .collect();
    let mut boxes: Vec<Value> = Vec::new();
    if g.graph_type == GraphType::VersionedApp {
        let mut seen = std::collections::BTreeSet::new();
        for n in g.nodes.iter().filter(|n| n.kind == "app") {
            let ns = n.namespace.as_deref().unwrap_or("unknown");
            let app = n.app.as_deref().unwrap_or("");
            if seen.insert((ns.to_string(), app.to_string())) {
                boxes.push(json!({"data": {
                    "id": format!("box:{ns}/{app}"),
                    "nodeType": "box", "isBox": "app",
                    "cluster": "Kubernetes", "namespace": ns, "app": app,
                }}));
            }
        }
    }
    let edges: Vec<Value> = g
        .edges
        .iter()
        .map(|e| {
            let mut responses = serde_json::Map::new();
            for cf in &e.codes_by_flags {
                let entry = responses
                    .entry(cf.code.to_string())
                    .or_insert_with(|| json!({"flags": {}, "hosts": {}}));
                entry["flags"][&cf.flags] = pct(cf.count, e.requests).into();
                if let Some(h) = &e.destination_service {
                    let before = entry["hosts"][h]
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                        .unwrap_or(0.0);
                    entry["hosts"][h] = format!(
                        "{:.1}",
                        before + 100.0 * cf.count as f64 / e.requests.max(1) as f64
                    )
                    .into();
                }
            }
            json!({"data": {
                "id": e.id,
                "source": e.source,
                "target": e.target,
                "traffic": {
                    "protocol": e.protocol,
                    "rates": {
                        "http": format!("{:.2}", e.rps),
                        "httpPercentErr": pct(e.errors, e.requests),
                        "httpPercentReq": format!("{:.1}", 100.0 * e.traffic_share),
                    },
                    "responses": responses,
                },
                "responseTime": e.latency_ms.p95.map(|v| format!("{v:.0}")),
                "healthStatus": e.health,
                "hasCB": e.circuit_breaker.tripped,
                "hasFaultInjection": e.fault_injection.aborted + e.fault_injection.delayed > 0,
            }})
        })
        .collect();
    let mut all_nodes = boxes;
    all_nodes.extend(nodes);
    json!({
        "timestamp": g.to as i64,
        "duration": (g.to - g.from) as i64,
        "graphType": match g.graph_type {
            GraphType::VersionedApp => "versionedApp",
            t => t.as_str(),
        },
        "elements": { "nodes": all_nodes, "edges": edges },
    })
}

/// Escapes a string for a DOT double-quoted id.
fn dot_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Graphviz DOT, left to right, edges coloured by health, tripped breakers marked.
pub fn dot(g: &Graph) -> String {
    use std::fmt::Write;
    let mut out =
        String::from("digraph meshscope {\n  rankdir=LR;\n  node [fontname=\"sans-serif\"];\n");
    for n in &g.nodes {
        let shape = match n.kind {
            "service" => "triangle",
            "app" => "box",
            "unknown" => "diamond",
            _ => "ellipse",
        };
        let mut label = n
            .workload
            .clone()
            .or_else(|| n.app.clone())
            .or_else(|| n.service.clone())
            .unwrap_or_else(|| n.id.clone());
        if let Some(v) = n.version.as_ref().filter(|_| n.kind == "app") {
            label.push_str(&format!(" {v}"));
        }
        let _ = writeln!(
            out,
            "  {} [label={}, shape={shape}];",
            dot_str(&n.id),
            dot_str(&label)
        );
    }
    for e in &g.edges {
        let color = match e.health {
            super::Health::Failure => "red",
            super::Health::Degraded => "orange",
            super::Health::Healthy => "darkgreen",
            super::Health::Idle => "gray",
        };
        let mut label = format!("{:.2} rps, {:.1}% err", e.rps, 100.0 * e.error_rate);
        if e.circuit_breaker.tripped {
            label.push_str(", breaker tripped");
        }
        let _ = writeln!(
            out,
            "  {} -> {} [label={}, color={color}{}];",
            dot_str(&e.source),
            dot_str(&e.target),
            dot_str(&label),
            if e.circuit_breaker.tripped {
                ", style=dashed, penwidth=2"
            } else {
                ""
            }
        );
    }
    out.push_str("}\n");
    out
}
