//! `GET /api/v1/graph` (JSON, `format=kiali`, `format=dot`) and `GET /api/v1/graph/stream`
//! (Server-Sent Events: the graph again every `interval`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{GraphQuery, GraphType, HealthConfig, build, render};
use crate::api::time::{self, Epoch, now_ns};
use crate::rollup::Rollups;

#[derive(Clone)]
pub struct GraphState {
    pub rollups: Rollups,
    pub health: HealthConfig,
    /// Query permits (a stream's refreshes take one each) and stream places.
    pub admission: crate::api::admission::Admission,
}

pub fn routes(state: GraphState) -> Router {
    Router::new()
        .route("/api/v1/graph", get(graph))
        .route("/api/v1/graph/stream", get(stream))
        .with_state(state)
}

/// A 400 naming the parameter.
#[derive(Debug)]
pub struct BadParam {
    pub param: String,
    pub message: String,
}

impl IntoResponse for BadParam {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": "bad_parameter",
                "parameter": self.param,
                "message": format!("{}: {}", self.param, self.message),
            })),
        )
            .into_response()
    }
}

fn bad(param: &str, msg: impl std::fmt::Display) -> BadParam {
    BadParam {
        param: param.to_string(),
        message: msg.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Kiali,
    Dot,
}

#[derive(Debug)]
struct Params {
    /// Either a sliding window (re-evaluated against now) or a fixed [from, to].
    window: Option<Duration>,
    from_ns: Option<i64>,
    to_ns: Option<i64>,
    graph_type: GraphType,
    namespaces: Vec<String>,
    include_idle: bool,
    inject_service_nodes: bool,
    format: Format,
    interval: Duration,
}

/// A time parameter of the graph API: RFC 3339 or unix seconds (fractions allowed) → ns.
pub fn parse_time(v: &str) -> Result<i64, String> {
    time::parse_time(v, Epoch::Seconds)
}

fn parse_params(raw: Option<&str>, stream: bool) -> Result<Params, BadParam> {
    let mut p = Params {
        window: None,
        from_ns: None,
        to_ns: None,
        graph_type: GraphType::Workload,
        namespaces: Vec::new(),
        include_idle: false,
        inject_service_nodes: true,
        format: Format::Json,
        interval: Duration::from_secs(5),
    };
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let v = v.trim();
        match &*k {
            "window" | "duration" => {
                let d = humantime::parse_duration(v).map_err(|e| bad(&k, e))?;
                if d.is_zero() || d > Duration::from_secs(31 * 24 * 3600) {
                    return Err(bad(&k, "must be between 1s and 31d"));
                }
                p.window = Some(d);
            }
            "from" => p.from_ns = Some(parse_time(v).map_err(|e| bad("from", e))?),
            "to" => p.to_ns = Some(parse_time(v).map_err(|e| bad("to", e))?),
            "graph_type" | "graphType" => {
                p.graph_type = GraphType::parse(v).ok_or_else(|| {
                    bad(
                        "graph_type",
                        format!("`{v}`: expected workload, app, versioned_app or service"),
                    )
                })?
            }
            "namespace" | "namespaces" => p.namespaces.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            ),
            "idle" | "include_idle" => {
                p.include_idle = match v {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(&k, format!("`{v}`: expected true or false"))),
                }
            }
            "inject_service_nodes" | "injectServiceNodes" => {
                p.inject_service_nodes = match v {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(&k, format!("`{v}`: expected true or false"))),
                }
            }
            "format" if !stream => {
                p.format = match v {
                    "json" | "" => Format::Json,
                    "kiali" | "cytoscape" => Format::Kiali,
                    "dot" => Format::Dot,
                    _ => return Err(bad("format", format!("`{v}`: expected json, kiali or dot"))),
                }
            }
            "interval" if stream => {
                let d = humantime::parse_duration(v).map_err(|e| bad("interval", e))?;
                if d < Duration::from_millis(500) || d > Duration::from_secs(3600) {
                    return Err(bad("interval", "must be between 500ms and 1h"));
                }
                p.interval = d;
            }
            _ => return Err(bad(&k, "unknown parameter")),
        }
    }
    for ns in &p.namespaces {
        if ns.len() > 253
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(bad(
                "namespace",
                format!("`{ns}` is not a Kubernetes namespace name"),
            ));
        }
    }
    if p.window.is_some() && p.from_ns.is_some() && p.to_ns.is_some() {
        return Err(bad("window", "give window, or from and to, not all three"));
    }
    Ok(p)
}

fn window_of(p: &Params) -> Result<(i64, i64), BadParam> {
    let now = now_ns();
    let default = Duration::from_secs(300);
    let (from, to) = match (p.from_ns, p.to_ns, p.window) {
        (Some(f), Some(t), _) => (f, t),
        (Some(f), None, Some(w)) => (f, f + w.as_nanos() as i64),
        (Some(f), None, None) => (f, now),
        (None, Some(t), w) => (t - w.unwrap_or(default).as_nanos() as i64, t),
        (None, None, w) => (now - w.unwrap_or(default).as_nanos() as i64, now),
    };
    if from >= to {
        return Err(bad("from", "must be before `to`"));
    }
    Ok((from, to))
}

async fn compute(s: &GraphState, p: &Params) -> Result<super::Graph, BadParam> {
    let (from_ns, to_ns) = window_of(p)?;
    // Read-your-writes: rows acknowledged before this request are in the answer.
    s.rollups.caught_up(Duration::from_secs(5)).await;
    let q = GraphQuery {
        from_ns,
        to_ns,
        graph_type: p.graph_type,
        namespaces: p.namespaces.clone(),
        include_idle: p.include_idle,
        inject_service_nodes: p.inject_service_nodes,
        health: s.health,
    };
    let res = s.rollups.config().resolution.as_secs() as i64;
    // A big graph takes a few hundred milliseconds: off the async workers.
    let rollups = s.rollups.clone();
    tokio::task::spawn_blocking(move || {
        let st = rollups.read();
        build(&st, res, &q)
    })
    .await
    .map_err(|e| std::panic::resume_unwind(e.into_panic()))
}

async fn graph(State(s): State<GraphState>, RawQuery(raw): RawQuery) -> Response {
    let p = match parse_params(raw.as_deref(), false) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let g = match compute(&s, &p).await {
        Ok(g) => g,
        Err(r) => return r.into_response(),
    };
    match p.format {
        Format::Json => {
            match tokio::task::spawn_blocking(move || super::to_json_chunks(&g)).await {
                Ok(Ok(chunks)) => {
                    let len: usize = chunks.iter().map(Vec::len).sum();
                    let body = axum::body::Body::from_stream(futures::stream::iter(
                        chunks
                            .into_iter()
                            .map(|c| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(c))),
                    ));
                    (
                        [
                            (header::CONTENT_TYPE, "application/json".to_string()),
                            (header::CONTENT_LENGTH, len.to_string()),
                        ],
                        body,
                    )
                        .into_response()
                }
                Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        Format::Kiali => axum::Json(render::kiali(&g)).into_response(),
        Format::Dot => (
            [(header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")],
            render::dot(&g),
        )
            .into_response(),
    }
}

async fn stream(State(s): State<GraphState>, RawQuery(raw): RawQuery) -> Response {
    let p = match parse_params(raw.as_deref(), true) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = window_of(&p) {
        return r.into_response();
    }
    // A place among the open streams, held while the stream lives.
    let Some(slot) = s.admission.stream_slot() else {
        return s.admission.too_many();
    };
    let interval = p.interval;
    let events =
        futures::stream::unfold((s, p, true, slot), move |(s, p, first, slot)| async move {
            if !first {
                tokio::time::sleep(interval).await;
            }
            // each refresh is a query like any other
            let ev = match s.admission.permit().await {
                None => Event::default()
                    .event("error")
                    .data("too many queries; the next refresh tries again"),
                Some(_permit) => match compute(&s, &p).await {
                    Ok(g) => Event::default()
                        .event("graph")
                        .json_data(&g)
                        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string())),
                    Err(_) => Event::default().event("error").data("bad window"),
                },
            };
            Some((Ok::<_, Infallible>(ev), (s, p, false, slot)))
        });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_validated_by_name() {
        let err = |q: &str| parse_params(Some(q), false).err().map(|r| r.param);
        assert_eq!(err("graph_type=bogus").as_deref(), Some("graph_type"));
        assert_eq!(err("window=5x").as_deref(), Some("window"));
        assert_eq!(err("from=yesterday").as_deref(), Some("from"));
        assert_eq!(err("namespace=a%20b").as_deref(), Some("namespace"));
        assert_eq!(err("nope=1").as_deref(), Some("nope"));
        let p = parse_params(
            Some("window=15m&graph_type=versioned_app&namespace=default&namespace=bookinfo,x&format=kiali"),
            false,
        )
        .unwrap();
        assert_eq!(p.window, Some(Duration::from_secs(900)));
        assert_eq!(p.graph_type, GraphType::VersionedApp);
        assert_eq!(p.namespaces, ["default", "bookinfo", "x"]);
        assert_eq!(p.format, Format::Kiali);
        assert_eq!(
            parse_time("1700000000.5").unwrap(),
            1_700_000_000_500_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000_000_000
        );
    }

    /// A graph big enough to be rendered in pieces goes out whole: one JSON document of the
    /// length the header says.
    #[tokio::test]
    async fn a_big_graph_is_sent_in_pieces_that_make_one_document() {
        use meshscope_schemas::Table;
        use meshscope_schemas::rows::{RequestRow, requests_batch};
        use tower::ServiceExt;
        let rollups = Rollups::start(crate::rollup::RollupConfig::default());
        rollups.mark_loaded();
        let t = now_ns() - 120_000_000_000;
        let rows: Vec<RequestRow> = (0..3000)
            .map(|i| RequestRow {
                start_time_unix_nano: t,
                response_code: 200,
                duration_ms: 5,
                reporter: Some("destination".into()),
                request_protocol: Some("http".into()),
                source_namespace: Some("default".into()),
                source_workload: Some(format!("client-{}", i % 50).into()),
                destination_namespace: Some("default".into()),
                destination_workload: Some(format!("svc-{i}-v1").into()),
                destination_service: Some(format!("svc-{i}.default.svc.cluster.local").into()),
                destination_service_name: Some(format!("svc-{i}").into()),
                ..Default::default()
            })
            .collect();
        rollups.fold(Table::Requests, &requests_batch(&rows).unwrap());
        let app = routes(GraphState {
            rollups,
            health: HealthConfig::default(),
            admission: Default::default(),
        });
        let req = axum::http::Request::get("/api/v1/graph?window=10m")
            .body(axum::body::Body::empty())
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let declared: usize = res.headers()[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body.len(), declared);
        let g: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let edges = g["edges"].as_array().unwrap();
        assert_eq!(
            edges.len(),
            6000,
            "caller → service → workload for 3,000 services"
        );
        assert!(edges.len() >= super::super::PARALLEL_EDGES);
        let requests: u64 = edges.iter().map(|e| e["requests"].as_u64().unwrap()).sum();
        assert_eq!(requests, 6000);
        assert_eq!(g["nodes"].as_array().unwrap().len(), 50 + 3000 + 3000);
    }
}
