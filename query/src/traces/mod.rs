//! Traces: one trace as a waterfall (tree, depth, offsets, self time, critical path, the
//! client/server span pairs of each mesh hop, errors and Envoy response flags), everything
//! known for one `x-request-id`, and trace search — by span fields, or by a graph edge's
//! access-log rows.
//!
//! Every query is a DataFusion `DataFrame` built from `col(..).eq(lit(..))` expressions, never
//! SQL text, so that `StoreTable` sees the time range and trace id and prunes files before
//! opening them (bloom filters on `trace_id` and `request_id` prune inside files). Each
//! request runs within `SqlLimits`: one time limit for the whole answer and a row limit per
//! query.
//!
//! Routes: `GET /api/v1/traces/{trace_id}`, `GET /api/v1/traces?…`,
//! `GET /api/v1/requests/{request_id}`. The Jaeger API (`jaeger.rs`) reuses [`TraceService`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::physical_plan::metrics::MetricValue;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::{StreamExt, TryStreamExt};
use meshscope_schemas::envoy::{LOCAL_REPLY_FLAGS, response_flag_meaning};
use meshscope_schemas::rows::decode::{ints32, ints64, strings, timestamps, trace_ids};
use meshscope_schemas::rows::{SpanRow, spans_from_batches};
use meshscope_schemas::table::{requests as rq, spans as sp};
use meshscope_schemas::{SpanId, Table, TraceId};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::time::{self, Epoch, now_ns, rfc3339};
use crate::sql::{QueryEngine, SqlLimits, batches_to_json};

mod attrs;
mod http;
mod params;
mod search;
mod waterfall;

pub use attrs::*;
pub use http::*;
pub use params::*;
pub use search::*;
pub use waterfall::*;

/// Traces fetched at most per search or per request id; more is refused with a 400.
pub const MAX_SEARCH_LIMIT: usize = 1000;
/// Search results when `limit` is not given.
pub const DEFAULT_SEARCH_LIMIT: usize = 20;
/// Traces shown for one request id (a request id reused by many traces is a client bug).
const MAX_TRACES_PER_REQUEST: usize = 10;
/// Search window when `from` is not given.
const DEFAULT_LOOKBACK_NS: i64 = 3_600 * NS_PER_S;
/// Lookups of many traces run this many at a time.
const LOOKUP_CONCURRENCY: usize = 8;
const NS_PER_S: i64 = 1_000_000_000;
/// Spans of a found trace are read this far around the search window.
const TRACE_SLACK_NS: i64 = 3_600 * NS_PER_S;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("parameter `{param}`: {message}")]
    BadParameter { param: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error(
        "the lookup ran longer than the time limit of {0:?} (--sql-timeout); narrow the time range or add filters"
    )]
    Timeout(Duration),
    #[error(
        "a query matched more than {0} rows, the row limit (--sql-max-rows); narrow the time range or add filters"
    )]
    TooManyRows(usize),
    #[error("query failed: {0}")]
    Execution(String),
}

impl TraceError {
    pub fn bad(param: &str, message: impl std::fmt::Display) -> TraceError {
        TraceError::BadParameter {
            param: param.to_string(),
            message: message.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            TraceError::BadParameter { .. } | TraceError::TooManyRows(_) => StatusCode::BAD_REQUEST,
            TraceError::Timeout(_) => StatusCode::BAD_REQUEST,
            TraceError::NotFound(_) => StatusCode::NOT_FOUND,
            TraceError::Execution(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TraceError::BadParameter { .. } => "bad_parameter",
            TraceError::NotFound(_) => "not_found",
            TraceError::Timeout(_) => "timeout",
            TraceError::TooManyRows(_) => "too_many_rows",
            TraceError::Execution(_) => "execution",
        }
    }
}

impl IntoResponse for TraceError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.to_string(), "error_type": self.kind()});
        if let TraceError::BadParameter { param, .. } = &self {
            body["parameter"] = json!(param);
        }
        (self.status(), Json(body)).into_response()
    }
}

fn exec(e: impl std::fmt::Display) -> TraceError {
    TraceError::Execution(e.to_string())
}

#[cfg(test)]
pub(crate) mod tests;
