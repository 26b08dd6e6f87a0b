//! The ingest API on the API port: the Envoy push receivers (`envoy::push`) and generic row
//! ingest (`POST /api/v1/ingest/rows/{table}`, see [`crate::rows`]), answering as
//! [`crate::reply`] says.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use meshscope_schemas::Table;

use crate::envoy::push::EnvoyIngest;
use crate::reply::{error, store_error};
use crate::rows::decode_json_rows;

/// Every ingest endpoint of the API port, writing through `ingest`'s store. While storage is
/// over its buffer limit a request is answered 429 before its body is read.
pub fn routes(ingest: Arc<EnvoyIngest>) -> Router {
    Router::new()
        .route("/api/v1/ingest/rows/{table}", post(ingest_rows))
        .with_state(ingest.clone())
        .merge(crate::envoy::push::routes(ingest.clone()))
        .layer(axum::middleware::from_fn_with_state(ingest, admit_first))
}

/// Refuses a request while storage is overloaded, before its body is buffered.
async fn admit_first(
    State(s): State<Arc<EnvoyIngest>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(e) = s.store.admit() {
        return store_error(&e);
    }
    next.run(req).await
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
    let (stored, refused) = match batch {
        Some(b) => match s.store.append(table, b).await {
            Ok(r) => (r.rows, r.refused),
            Err(e) => return store_error(&e),
        },
        None => (0, None),
    };
    crate::reply::ingest_response_refused(stored, &rejected, refused.as_ref())
}
