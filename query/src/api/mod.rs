//! The query service's HTTP API: one router over SQL, traces, Jaeger, the service graph and
//! Prometheus; meshscope's JSON error envelope (Jaeger and Prometheus answer in their own
//! formats, as their clients expect); the time and duration parameters and the clock they
//! all share ([`time`]); the limits on a query's shape ([`limits`]); and how many queries run
//! at once ([`admission`]). `routes` is a plain
//! function, so tests drive it with `oneshot`.

pub mod admission;
#[cfg(test)]
mod fuzz;
pub mod limits;
pub mod time;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use crate::graph::api::GraphState;
use crate::sql::{QueryEngine, SqlError, SqlLimits};

/// What the query endpoints need: the SQL engine over the store's reader, its limits, and the
/// rollups the graph and the Prometheus API read.
#[derive(Clone)]
pub struct QueryApi {
    pub engine: QueryEngine,
    pub sql_limits: SqlLimits,
    pub graph: GraphState,
    /// How many queries run at once, and how many wait.
    pub admission: admission::Admission,
}

/// Every query endpoint: `/api/v1/sql`, traces and requests, Jaeger, the graph, Prometheus.
pub fn routes(api: QueryApi) -> Router {
    let prom = crate::prom::PromState {
        rollups: api.graph.rollups.clone(),
        engine: api.engine.clone(),
        timeout: api.sql_limits.timeout,
    };
    let admission = api.admission.clone();
    let r = Router::new()
        .route("/api/v1/sql", post(sql))
        .with_state(api.clone())
        .merge(crate::traces::routes(api.engine.clone(), api.sql_limits))
        .merge(crate::jaeger::routes(api.engine, api.sql_limits))
        .merge(crate::graph::api::routes(api.graph))
        .merge(crate::prom::routes(prom));
    admission.apply(r)
}

/// A JSON error body `{"error": ..., "error_type": ...}` with a status code.
pub fn error(status: StatusCode, kind: &str, msg: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"error": msg.to_string(), "error_type": kind})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SqlRequest {
    sql: String,
}

async fn sql(State(s): State<QueryApi>, body: Bytes) -> Response {
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body must be {{\"sql\": \"...\"}}: {e}"),
            );
        }
    };
    match s.engine.query_json(&req.sql, s.sql_limits).await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            let (status, kind) = match &e {
                SqlError::NotReadOnly(_) => (StatusCode::FORBIDDEN, "read_only"),
                SqlError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_query"),
                SqlError::TooLarge(_) => (StatusCode::BAD_REQUEST, "query_too_large"),
                SqlError::Timeout(_) => (StatusCode::BAD_REQUEST, "timeout"),
                SqlError::TooManyRows(_) => (StatusCode::BAD_REQUEST, "too_many_rows"),
                SqlError::MemoryLimit(_) => (StatusCode::BAD_REQUEST, "query_memory_limit"),
                SqlError::Execution(_) => (StatusCode::INTERNAL_SERVER_ERROR, "execution"),
            };
            error(status, kind, e)
        }
    }
}
