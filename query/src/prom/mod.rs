//! The Prometheus HTTP API under `/prometheus`, so Grafana's built-in Prometheus datasource
//! (and Istio's dashboards) read meshscope with no Prometheus server: Istio's standard
//! metrics and Tempo's service-graph metrics from the rollups, Envoy's stats as scraped.

pub mod eval;
pub mod series;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};

use crate::api::limits::{Dialect, check_query_shape};
use crate::api::time::{self, Epoch, now_ns};
use crate::rollup::Rollups;
use crate::sql::QueryEngine;
use eval::{Evaluator, Value, selector_key, selectors};
use series::{
    ISTIO_METRICS, Series, matches, metric_name, rollup_metric_names, rollup_series, stat_series,
};

#[derive(Clone)]
pub struct PromState {
    pub rollups: Rollups,
    pub engine: QueryEngine,
    pub timeout: Duration,
}

pub fn routes(state: PromState) -> Router {
    Router::new()
        .route("/prometheus/api/v1/query", get(query).post(query))
        .route(
            "/prometheus/api/v1/query_range",
            get(query_range).post(query_range),
        )
        .route("/prometheus/api/v1/labels", get(labels).post(labels))
        .route("/prometheus/api/v1/label/{name}/values", get(label_values))
        .route(
            "/prometheus/api/v1/series",
            get(series_api).post(series_api),
        )
        .route("/prometheus/api/v1/metadata", get(metadata))
        .route("/prometheus/api/v1/status/buildinfo", get(buildinfo))
        .route(
            "/prometheus/api/v1/rules",
            get(|| async { ok(json!({"groups": []})) }),
        )
        .route(
            "/prometheus/api/v1/query_exemplars",
            get(exemplars).post(exemplars),
        )
        .with_state(state)
}

fn ok(data: Json) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// A Prometheus API error: its `errorType` and message.
#[derive(Debug)]
pub struct PromError {
    kind: &'static str,
    msg: String,
}

fn fail(kind: &'static str, msg: impl std::fmt::Display) -> PromError {
    PromError {
        kind,
        msg: msg.to_string(),
    }
}

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        fail_response(self.kind, &self.msg)
    }
}

/// Prometheus's error shape and status codes.
fn fail_response(kind: &str, msg: &str) -> Response {
    let status = match kind {
        "bad_data" => StatusCode::BAD_REQUEST,
        "timeout" => StatusCode::SERVICE_UNAVAILABLE,
        "execution" => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(json!({"status": "error", "errorType": kind, "error": msg})),
    )
        .into_response()
}

/// Query-string and form parameters together (Grafana POSTs forms).
fn params(
    method: &Method,
    headers: &HeaderMap,
    raw: Option<String>,
    body: &Bytes,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let form = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if *method == Method::POST && (form || !body.is_empty()) {
        out.extend(url::form_urlencoded::parse(body).into_owned());
    }
    out
}

fn one<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter()
        .rev()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
}

fn now_ms() -> i64 {
    now_ns() / 1_000_000
}

/// Prometheus time: unix seconds (fractions allowed) or RFC 3339.
fn parse_time(name: &str, v: &str) -> Result<i64, PromError> {
    time::parse_time(v, Epoch::Seconds)
        .map(|ns| ns / 1_000_000)
        .map_err(|e| fail("bad_data", format!("invalid parameter \"{name}\": {e}")))
}

fn parse_step(v: &str) -> Result<i64, PromError> {
    let ms = match v.parse::<f64>() {
        Ok(s) => (s * 1000.0) as i64,
        Err(_) => promql_parser::util::parse_duration(v)
            .map(|d| d.as_millis() as i64)
            .map_err(|e| fail("bad_data", format!("invalid parameter \"step\": {e}")))?,
    };
    if ms <= 0 {
        return Err(fail(
            "bad_data",
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    Ok(ms)
}

/// Prometheus's number formatting (`strconv.FormatFloat(v, 'f', -1, 64)`).
pub fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        let s = format!("{v}");
        if s.contains('e') { format!("{v:.}") } else { s }
    }
}

fn ts(t: i64) -> Json {
    let secs = t as f64 / 1000.0;
    serde_json::Number::from_f64(secs).map_or(Json::Null, Json::Number)
}

/// Fetches every selector's series over [from, to] (ms) and builds the evaluator.
async fn prepare(
    s: &PromState,
    expr: &promql_parser::parser::Expr,
    from: i64,
    to: i64,
    deadline: Instant,
) -> Result<Evaluator, PromError> {
    let mut sels = Vec::new();
    selectors(expr, &mut sels).map_err(|e| fail("bad_data", e))?;
    s.rollups.caught_up(Duration::from_secs(5)).await;
    let res = s.rollups.config().resolution.as_secs() as i64;
    let mut map: HashMap<String, Vec<Series>> = HashMap::new();
    for (vs, reach) in sels {
        let key = selector_key(&vs);
        if map.contains_key(&key) {
            continue;
        }
        let Some(name) = metric_name(&vs.name, &vs.matchers) else {
            return Err(fail(
                "bad_data",
                format!("selector {vs}: a metric name is required"),
            ));
        };
        let found = {
            let st = s.rollups.read();
            rollup_series(&st, res, &name, &vs.matchers)
        };
        let series = match found {
            Some(v) => v,
            None if name.starts_with("envoy_") => {
                let lo = (from - reach - eval::LOOKBACK_MS) * 1_000_000;
                stat_series(&s.engine, &name, &vs.matchers, lo, to * 1_000_000)
                    .await
                    .map_err(|e| fail("execution", e))?
            }
            None => Vec::new(),
        };
        map.insert(key, series);
    }
    Ok(Evaluator {
        series: map,
        now_ms: now_ms(),
        deadline: Some(deadline),
    })
}

fn parse_query(p: &[(String, String)]) -> Result<promql_parser::parser::Expr, PromError> {
    let q = one(p, "query")
        .ok_or_else(|| fail("bad_data", "invalid parameter \"query\": query is empty"))?;
    check_query_shape(q, Dialect::PromQl)
        .map_err(|e| fail("bad_data", format!("invalid parameter \"query\": {e}")))?;
    promql_parser::parser::parse(q)
        .map_err(|e| fail("bad_data", format!("invalid parameter \"query\": {e}")))
}

fn labels_json(l: &series::Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect(),
    )
}

async fn query(
    State(s): State<PromState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = params(&method, &headers, raw, &body);
    let expr = match parse_query(&p) {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    let t = match one(&p, "time") {
        Some(v) => match parse_time("time", v) {
            Ok(t) => t,
            Err(r) => return r.into_response(),
        },
        None => now_ms(),
    };
    // One deadline for fetching the series and evaluating, as for range queries.
    let deadline = Instant::now() + s.timeout;
    let ev = match prepare_by(&s, &expr, t, t, deadline).await {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    let v = match evaluate(left(deadline), move || ev.eval(&expr, t)).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    ok(match v {
        Value::Scalar(x) => json!({"resultType": "scalar", "result": [ts(t), fmt_value(x)]}),
        Value::String(x) => json!({"resultType": "string", "result": [ts(t), x]}),
        Value::Vector(v) => json!({"resultType": "vector", "result": v.iter().map(|s| json!({
            "metric": labels_json(&s.labels), "value": [ts(t), fmt_value(s.value)]
        })).collect::<Vec<_>>()}),
        Value::Matrix(m) => matrix_json(m.into_iter().map(|(mut l, pts)| {
            l.retain(|k, _| !k.starts_with("__meshscope"));
            (l, pts)
        })),
    })
}

/// A range query's matrix: the expression at every step from `start` to `end` (ms).
pub fn eval_range(
    ev: &Evaluator,
    expr: &promql_parser::parser::Expr,
    start: i64,
    end: i64,
    step: i64,
    deadline: Option<Instant>,
) -> Result<BTreeMap<series::Labels, Vec<(i64, f64)>>, eval::EvalError> {
    let mut out: BTreeMap<series::Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut t = start;
    while t <= end {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(eval::EvalError("query timed out".into()));
        }
        match ev.eval(expr, t)? {
            Value::Scalar(x) => out.entry(series::Labels::new()).or_default().push((t, x)),
            Value::Vector(v) => {
                for s in v {
                    out.entry(s.labels).or_default().push((t, s.value));
                }
            }
            _ => {
                return Err(eval::EvalError(
                    "range queries need a scalar or instant-vector expression".into(),
                ));
            }
        }
        t += step;
    }
    Ok(out)
}

/// Prometheus's limit on points per series.
const MAX_POINTS: i64 = 11_000;

async fn query_range(
    State(s): State<PromState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = params(&method, &headers, raw, &body);
    let expr = match parse_query(&p) {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    let get = |k: &str| {
        one(&p, k).ok_or_else(|| fail("bad_data", format!("invalid parameter \"{k}\": missing")))
    };
    let parsed = (|| -> Result<(i64, i64, i64), PromError> {
        let start = parse_time("start", get("start")?)?;
        let end = parse_time("end", get("end")?)?;
        let step = parse_step(get("step")?)?;
        if end < start {
            return Err(fail(
                "bad_data",
                "invalid parameter \"end\": end timestamp must not be before start time",
            ));
        }
        if (end - start) / step > MAX_POINTS {
            return Err(fail(
                "bad_data",
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        Ok((start, end, step))
    })();
    let (start, end, step) = match parsed {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let deadline = Instant::now() + s.timeout;
    let ev = match prepare_by(&s, &expr, start, end, deadline).await {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    // The evaluation stops by itself at the deadline too, so a timed-out query does not keep
    // a blocking thread busy after its 503.
    match evaluate(left(deadline), move || {
        eval_range(&ev, &expr, start, end, step, Some(deadline))
    })
    .await
    {
        Ok(out) => ok(matrix_json(out.into_iter())),
        Err(e) => e.into_response(),
    }
}

/// Time left until `deadline` (zero once it passed).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// `prepare` within the query's deadline: the stat series come from SQL, which can be slow.
async fn prepare_by(
    s: &PromState,
    expr: &promql_parser::parser::Expr,
    from: i64,
    to: i64,
    deadline: Instant,
) -> Result<Evaluator, PromError> {
    let timeout = s.timeout;
    match tokio::time::timeout(left(deadline), prepare(s, expr, from, to, deadline)).await {
        Ok(r) => r,
        Err(_) => Err(fail(
            "timeout",
            format!("query timed out after {timeout:?} while fetching series"),
        )),
    }
}

/// Runs an evaluation on the blocking pool within the query time limit. (A timed-out
/// evaluation finishes in the background; its answer is dropped.)
async fn evaluate<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> Result<T, eval::EvalError> + Send + 'static,
) -> Result<T, PromError> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Err(_) => Err(fail(
            "timeout",
            format!("query timed out after {timeout:?}"),
        )),
        Ok(Err(e)) => Err(fail("internal", e)),
        Ok(Ok(Err(e))) => Err(fail("bad_data", e)),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

/// Prometheus's matrix result.
fn matrix_json(series: impl Iterator<Item = (series::Labels, Vec<(i64, f64)>)>) -> Json {
    json!({"resultType": "matrix", "result": series.map(|(l, pts)| json!({
        "metric": labels_json(&l),
        "values": pts.iter().map(|(t, v)| json!([ts(*t), fmt_value(*v)])).collect::<Vec<_>>(),
    })).collect::<Vec<_>>()})
}

/// Label sets of the rollup series (Istio and span metrics) matching `match[]` selectors.
fn rollup_label_sets(
    s: &PromState,
    matchers: &[promql_parser::parser::VectorSelector],
) -> Vec<series::Labels> {
    let res = s.rollups.config().resolution.as_secs() as i64;
    let st = s.rollups.read();
    let mut out = Vec::new();
    let all = promql_parser::label::Matchers::empty();
    let names = rollup_metric_names();
    if matchers.is_empty() {
        for n in &names {
            if let Some(v) = rollup_series(&st, res, n, &all) {
                out.extend(v.into_iter().map(|s| s.labels));
            }
        }
        return out;
    }
    for vs in matchers {
        for n in &names {
            if metric_name(&vs.name, &vs.matchers).is_some_and(|m| &m != n) {
                continue;
            }
            if let Some(v) = rollup_series(&st, res, n, &vs.matchers) {
                out.extend(
                    v.into_iter()
                        .map(|s| s.labels)
                        .filter(|l| matches(l, &vs.matchers)),
                );
            }
        }
    }
    out
}

fn match_params(
    p: &[(String, String)],
) -> Result<Vec<promql_parser::parser::VectorSelector>, PromError> {
    p.iter()
        .filter(|(k, _)| k == "match[]")
        .map(|(_, v)| {
            match check_query_shape(v, Dialect::PromQl)
                .map_err(|e| e.to_string())
                .and_then(|()| promql_parser::parser::parse(v))
            {
                Ok(promql_parser::parser::Expr::VectorSelector(vs)) => Ok(vs),
                Ok(_) => Err(fail(
                    "bad_data",
                    format!("invalid parameter \"match[]\": {v} is not a series selector"),
                )),
                Err(e) => Err(fail(
                    "bad_data",
                    format!("invalid parameter \"match[]\": {e}"),
                )),
            }
        })
        .collect()
}

async fn labels(
    State(s): State<PromState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = params(&method, &headers, raw, &body);
    let m = match match_params(&p) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let mut names: BTreeSet<String> = rollup_label_sets(&s, &m)
        .into_iter()
        .flat_map(|l| l.into_keys())
        .collect();
    names.insert("__name__".into());
    for l in [
        "pod_name",
        "namespace",
        "workload",
        "app",
        "version",
        "cluster_name",
    ] {
        names.insert(l.into());
    }
    ok(json!(names))
}

async fn label_values(
    State(s): State<PromState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p: Vec<(String, String)> = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let m = match match_params(&p) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let mut vals: BTreeSet<String> = rollup_label_sets(&s, &m)
        .into_iter()
        .filter_map(|mut l| l.remove(&name))
        .collect();
    if name == "__name__" && m.is_empty() {
        vals.extend(envoy_metric_names(&s).await);
    }
    ok(json!(vals))
}

/// Names of Envoy stats stored in the last hour.
async fn envoy_metric_names(s: &PromState) -> Vec<String> {
    use datafusion::prelude::{col, lit};
    let from = now_ns() - 3_600_000_000_000;
    let Ok(df) = s.engine.context().table("stat_samples").await else {
        return vec![];
    };
    let df = df
        .filter(
            col("time").gt_eq(lit(datafusion::scalar::ScalarValue::TimestampNanosecond(
                Some(from),
                Some("UTC".into()),
            ))),
        )
        .and_then(|d| d.aggregate(vec![col("metric")], vec![]));
    let Ok(batches) = (match df {
        Ok(d) => d.collect().await,
        Err(e) => Err(e),
    }) else {
        return vec![];
    };
    let mut out = Vec::new();
    for b in batches {
        if let Some(a) = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
        {
            out.extend(a.iter().flatten().map(str::to_string));
        }
    }
    out
}

async fn series_api(
    State(s): State<PromState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = params(&method, &headers, raw, &body);
    let m = match match_params(&p) {
        Ok(m) if !m.is_empty() => m,
        Ok(_) => return fail("bad_data", "no match[] parameter provided").into_response(),
        Err(r) => return r.into_response(),
    };
    // on the blocking pool, within the deadline: many selectors over many series take time
    let timeout = s.timeout;
    match evaluate(timeout, move || {
        Ok(rollup_label_sets(&s, &m)
            .into_iter()
            .collect::<BTreeSet<series::Labels>>())
    })
    .await
    {
        Ok(sets) => ok(Json::Array(sets.iter().map(labels_json).collect())),
        Err(e) => e.into_response(),
    }
}

async fn metadata() -> Response {
    let mut m = serde_json::Map::new();
    for (name, kind, help) in ISTIO_METRICS {
        m.insert(
            name.to_string(),
            json!([{"type": kind, "help": help, "unit": ""}]),
        );
    }
    ok(Json::Object(m))
}

async fn buildinfo() -> Response {
    ok(json!({
        "version": "2.53.0",
        "revision": concat!("meshscope-", env!("CARGO_PKG_VERSION")),
        "branch": "meshscope",
        "buildUser": "meshscope",
        "buildDate": "",
        "goVersion": "none (meshscope, Rust)",
    }))
}

async fn exemplars(
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = params(&method, &headers, raw, &body);
    if let Err(r) = parse_query(&p) {
        return r.into_response();
    }
    ok(json!([]))
}

#[cfg(test)]
mod promqltest;
#[cfg(test)]
mod tests;
