//! The HTTP API on the API port (default 127.0.0.1:20001): status, read-only SQL, generic
//! row ingest, and the UI. `router` is a plain function so tests drive it with `oneshot`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use meshscope_collector::{Store, StoreError};
use meshscope_schemas::Table;
use serde::Deserialize;
use serde_json::json;

use crate::ingest::decode_json_rows;
use crate::sql::{QueryEngine, SqlError, SqlLimits};

/// Which parts of the API a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    AllInOne,
    Collector,
    Query,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::AllInOne => "all-in-one",
            Role::Collector => "collector",
            Role::Query => "query",
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub role: Role,
    pub store: Store,
    pub engine: Option<QueryEngine>,
    pub sql_limits: SqlLimits,
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut r = Router::new()
        .route("/api/v1/status", get(status))
        .route("/healthz", get(|| async { "ok" }));
    if state.role != Role::Collector {
        r = r.route("/", get(index)).route("/api/v1/sql", post(sql));
    }
    if state.role != Role::Query {
        r = r.route("/api/v1/ingest/rows/{table}", post(ingest_rows));
    }
    r.layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(Arc::new(state))
}

/// A JSON error body `{"error": ..., "error_type": ...}` with a status code.
pub fn error_response(
    status: StatusCode,
    error_type: &str,
    msg: impl std::fmt::Display,
) -> Response {
    (
        status,
        Json(json!({"error": msg.to_string(), "error_type": error_type})),
    )
        .into_response()
}

/// How a storage error reaches an HTTP client: back-pressure is 429 with Retry-After.
pub fn store_error_response(e: &StoreError) -> Response {
    match e {
        StoreError::Overloaded(_, retry) => {
            let mut r = error_response(StatusCode::TOO_MANY_REQUESTS, "overloaded", e);
            let secs = retry.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        StoreError::Schema(_) => error_response(StatusCode::BAD_REQUEST, "bad_data", e),
        StoreError::Closed => error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
        StoreError::ReadOnly => error_response(StatusCode::FORBIDDEN, "read_only", e),
        _ => error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../../ui/index.html"))
}

async fn status(State(s): State<Arc<AppState>>) -> Response {
    if let Err(e) = s.store.refresh().await {
        return store_error_response(&e);
    }
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "role": s.role.as_str(),
        "storage": s.store.status(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct SqlRequest {
    sql: String,
}

async fn sql(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body must be {{\"sql\": \"...\"}}: {e}"),
            );
        }
    };
    let Some(engine) = &s.engine else {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "this process does not serve queries",
        );
    };
    match engine.query_json(&req.sql, s.sql_limits).await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            let (status, kind) = match &e {
                SqlError::NotReadOnly(_) => (StatusCode::FORBIDDEN, "read_only"),
                SqlError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_query"),
                SqlError::Timeout(_) => (StatusCode::BAD_REQUEST, "timeout"),
                SqlError::TooManyRows(_) => (StatusCode::BAD_REQUEST, "too_many_rows"),
                SqlError::Execution(_) => (StatusCode::INTERNAL_SERVER_ERROR, "execution"),
            };
            error_response(status, kind, e)
        }
    }
}

async fn ingest_rows(
    State(s): State<Arc<AppState>>,
    Path(table): Path<String>,
    body: Bytes,
) -> Response {
    let table = match Table::from_name(&table) {
        Ok(t) => t,
        Err(e) => return error_response(StatusCode::NOT_FOUND, "not_found", e),
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error_response(StatusCode::BAD_REQUEST, "bad_data", "body is not UTF-8");
    };
    let Ok((batch, rejected)) =
        tokio::task::spawn_blocking(move || decode_json_rows(table, &text)).await
    else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "decoder task failed",
        );
    };
    let stored = match batch {
        Some(b) => match s.store.append(table, b).await {
            Ok(r) => r.rows,
            Err(e) => return store_error_response(&e),
        },
        None => 0,
    };
    let status = if stored == 0 && !rejected.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({"stored": stored, "rejected": rejected})),
    )
        .into_response()
}
