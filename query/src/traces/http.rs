//! The routes: `GET /api/v1/traces/{trace_id}`, `GET /api/v1/traces?…`,
//! `GET /api/v1/requests/{request_id}`.

use super::*;

/// `/api/v1/traces/{trace_id}`, `/api/v1/traces`, `/api/v1/requests/{request_id}`.
pub fn routes(engine: QueryEngine, limits: SqlLimits) -> Router {
    router(TraceService::new(engine, limits))
}

pub fn router(svc: TraceService) -> Router {
    Router::new()
        .route("/api/v1/traces", get(search_handler))
        .route("/api/v1/traces/{trace_id}", get(trace_handler))
        .route("/api/v1/requests/{request_id}", get(request_handler))
        .with_state(svc)
}

pub(crate) async fn trace_handler(
    State(svc): State<TraceService>,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let id = parse_trace_id("trace_id", &id, true)?;
        let spans = svc.timed(svc.trace_spans(&id)).await?;
        if spans.is_empty() {
            return Err(TraceError::NotFound(format!("trace {id} not found")));
        }
        Ok(trace_view(id, &spans))
    }
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Everything known for one `x-request-id`.
#[derive(Debug, Serialize)]
pub struct RequestView {
    pub request_id: String,
    pub trace_ids: Vec<String>,
    pub traces: Vec<TraceView>,
    /// `requests` rows with this request id, from every proxy, in time order.
    pub access_log: Vec<Value>,
}

pub async fn request_view(svc: &TraceService, request_id: &str) -> Result<RequestView, TraceError> {
    let (rows, (from_spans, span_times)) = tokio::try_join!(
        svc.request_rows(request_id),
        svc.request_trace_ids(request_id)
    )?;
    let mut ids: Vec<TraceId> = Vec::new();
    for id in from_spans.into_iter().chain(rows.trace_ids) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() && rows.rows.is_empty() {
        return Err(TraceError::NotFound(format!(
            "no span and no access-log line has request id {request_id:?}"
        )));
    }
    ids.truncate(MAX_TRACES_PER_REQUEST);
    // The traces are read in the hours around the request, not in every hour stored.
    let window = match (rows.times, span_times) {
        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
        (a, b) => a.or(b),
    };
    let traces = svc.traces(&ids, window).await?;
    Ok(RequestView {
        request_id: request_id.to_string(),
        trace_ids: ids.iter().map(|t| t.to_hex()).collect(),
        traces: traces.iter().map(|(id, s)| trace_view(*id, s)).collect(),
        access_log: rows.rows,
    })
}

pub(crate) async fn request_handler(
    State(svc): State<TraceService>,
    Path(rid): Path<String>,
) -> Response {
    let r = async {
        let rid = parse_request_id("request_id", &rid)?;
        svc.timed(request_view(&svc, &rid)).await
    }
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) const SEARCH_PARAMS: &[&str] = &[
    "service",
    "operation",
    "tags",
    "min_duration",
    "max_duration",
    "from",
    "to",
    "limit",
    "error",
    "source",
    "destination",
    "status",
];

/// `5xx`, `2xx`, … or one code → an inclusive range.
pub(crate) fn parse_status(s: &str) -> Result<(i32, i32), TraceError> {
    let bad = || {
        TraceError::bad(
            "status",
            format!("{s:?} is not a status: write 5xx, 4xx, 2xx, … or a code such as 503"),
        )
    };
    let lower = s.to_ascii_lowercase();
    if let Some(d) = lower.strip_suffix("xx") {
        let d: i32 = d.parse().map_err(|_| bad())?;
        return if (1..=5).contains(&d) {
            Ok((d * 100, d * 100 + 99))
        } else {
            Err(bad())
        };
    }
    match s.parse::<i32>() {
        Ok(c) if (0..=599).contains(&c) => Ok((c, c)),
        _ => Err(bad()),
    }
}

/// The time window of a search: `from`/`to`, defaulting to the last hour.
pub(crate) fn window(p: &Params) -> Result<(i64, i64), TraceError> {
    let to = match p.get("to") {
        Some(s) => parse_time("to", s)?,
        None => now_ns(),
    };
    let from = match p.get("from") {
        Some(s) => parse_time("from", s)?,
        None => to.saturating_sub(DEFAULT_LOOKBACK_NS),
    };
    if from > to {
        return Err(TraceError::bad("from", "must not be after `to`"));
    }
    Ok((from, to))
}

pub(crate) fn opt_duration(p: &Params, name: &str) -> Result<Option<i64>, TraceError> {
    p.get(name).map(|s| parse_duration(name, s)).transpose()
}

pub(crate) async fn search(svc: &TraceService, p: &Params) -> Result<Value, TraceError> {
    p.only(SEARCH_PARAMS)?;
    let (from_ns, to_ns) = window(p)?;
    let limit = parse_limit("limit", p.get("limit"))?;
    let min_duration_ns = opt_duration(p, "min_duration")?;
    let max_duration_ns = opt_duration(p, "max_duration")?;
    let edge = ["source", "destination", "status"]
        .iter()
        .any(|k| p.get(k).is_some());
    if edge {
        if let Some(k) = ["service", "operation", "tags", "error"]
            .into_iter()
            .find(|k| p.get(k).is_some())
        {
            return Err(TraceError::bad(
                k,
                "an edge search (source, destination, status) filters access-log rows and cannot be combined with span filters",
            ));
        }
        let q = EdgeSearch {
            from_ns,
            to_ns,
            source: p.get("source").map(str::to_string),
            destination: p.get("destination").map(str::to_string),
            status: p.get("status").map(parse_status).transpose()?,
            min_duration_ns,
            max_duration_ns,
            limit,
        };
        let samples = svc.edge_samples(&q).await?;
        let mut ids: Vec<TraceId> = Vec::new();
        for s in &samples {
            if let Some(t) = s
                .trace_id
                .as_deref()
                .and_then(|t| TraceId::from_hex(t).ok())
                && !ids.contains(&t)
                && ids.len() < limit
            {
                ids.push(t);
            }
        }
        let traces = svc.traces(&ids, Some((from_ns, to_ns))).await?;
        let summaries: Vec<TraceSummary> = traces
            .iter()
            .map(|(id, s)| TraceSummary::from(&trace_view(*id, s)))
            .collect();
        let samples: Vec<&EdgeSample> = samples
            .iter()
            .filter(|s| {
                s.trace_id
                    .as_deref()
                    .is_some_and(|t| ids.iter().any(|i| i.to_hex() == t))
            })
            .collect();
        return Ok(json!({
            "from": rfc3339(from_ns), "to": rfc3339(to_ns), "limit": limit,
            "traces": summaries, "samples": samples,
        }));
    }
    let tags = p
        .get("tags")
        .map(|t| parse_tags("tags", t))
        .transpose()?
        .unwrap_or_default();
    let q = SpanSearch {
        from_ns,
        to_ns,
        service: p.get("service").map(str::to_string),
        operation: p.get("operation").map(str::to_string),
        span_kind: None,
        tags,
        min_duration_ns,
        max_duration_ns,
        error: p.get("error").map(|e| parse_bool("error", e)).transpose()?,
        limit,
    };
    let ids = svc.search(&q).await?;
    let traces = svc.traces(&ids, Some((from_ns, to_ns))).await?;
    let summaries: Vec<TraceSummary> = traces
        .iter()
        .map(|(id, s)| TraceSummary::from(&trace_view(*id, s)))
        .collect();
    Ok(json!({
        "from": rfc3339(from_ns), "to": rfc3339(to_ns), "limit": limit, "traces": summaries,
    }))
}

pub(crate) async fn search_handler(
    State(svc): State<TraceService>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = Params::parse(q.as_deref());
    match svc.timed(search(&svc, &p)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
