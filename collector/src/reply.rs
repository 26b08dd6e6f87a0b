//! The answers every ingest endpoint gives: the JSON error envelope, back-pressure as 429
//! with Retry-After, and "stored N, rejected these lines".

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meshscope_storage::StoreError;
use serde::Serialize;
use serde_json::json;

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
    ingest_response_refused(stored, rejected, None)
}

/// [`ingest_response`] with the rows storage refused (the ingest window): `refused` says how
/// many and why.
pub fn ingest_response_refused<T: Serialize>(
    stored: usize,
    rejected: &[T],
    refused: Option<&meshscope_storage::window::Refused>,
) -> Response {
    let status = if stored == 0 && (!rejected.is_empty() || refused.is_some()) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut body = json!({"stored": stored, "rejected": rejected});
    if let Some(r) = refused {
        body["refused"] = json!({"rows": r.rows, "reason": r.reason});
    }
    (status, Json(body)).into_response()
}
