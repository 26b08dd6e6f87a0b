//! The ingest API on the API port: the Envoy push receivers (`envoy::push`), generic row
//! ingest (`POST /api/v1/ingest/rows/{table}`, see [`crate::rows`]), and the answers every
//! ingest endpoint gives: the JSON error envelope, back-pressure as 429 with Retry-After, and
//! "stored N, rejected these lines".

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use meshscope_schemas::Table;
use meshscope_storage::StoreError;
use serde::Serialize;
use serde_json::json;

use crate::envoy::push::EnvoyIngest;
use crate::rows::decode_json_rows;

/// Every ingest endpoint of the API port, writing through `ingest`'s store.
pub fn routes(ingest: Arc<EnvoyIngest>) -> Router {
    Router::new()
        .route("/api/v1/ingest/rows/{table}", post(ingest_rows))
        .with_state(ingest.clone())
        .merge(crate::envoy::push::routes(ingest))
}

/// A JSON error body `{"error": ..., "error_type": ...}` with a status code.
pub fn error(status: StatusCode, kind: &str, msg: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"error": msg.to_string(), "error_type": kind})),
    )
        .into_response()
}

/// How a storage error reaches a pushing client: back-pressure is 429 with Retry-After.
pub fn store_error(e: &StoreError) -> Response {
    match e {
        StoreError::Overloaded(_, retry) => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "overloaded", e);
            if let Ok(v) = HeaderValue::from_str(&retry.as_secs().max(1).to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        StoreError::Schema(_) => error(StatusCode::BAD_REQUEST, "bad_data", e),
        StoreError::Closed => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
        StoreError::ReadOnly => error(StatusCode::FORBIDDEN, "read_only", e),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

/// The answer of every ingest endpoint: rows stored and the rejected lines; 400 when
/// nothing could be stored.
pub fn ingest_response<T: Serialize>(stored: usize, rejected: &[T]) -> Response {
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

async fn ingest_rows(
    State(s): State<Arc<EnvoyIngest>>,
    Path(table): Path<String>,
    body: Bytes,
) -> Response {
    let table = match Table::from_name(&table) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::NOT_FOUND, "not_found", e),
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(StatusCode::BAD_REQUEST, "bad_data", "body is not UTF-8");
    };
    let Ok((batch, rejected)) =
        tokio::task::spawn_blocking(move || decode_json_rows(table, &text)).await
    else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "decoder task failed",
        );
    };
    let stored = match batch {
        Some(b) => match s.store.append(table, b).await {
            Ok(r) => r.rows,
            Err(e) => return store_error(&e),
        },
        None => 0,
    };
    ingest_response(stored, &rejected)
}
