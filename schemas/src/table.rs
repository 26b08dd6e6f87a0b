//! The three tables meshscope stores, their columns and Arrow schemas.
//!
//! Column names are constants in the `spans`, `requests` and `stat_samples` modules; every
//! other crate refers to them through these constants. Each column's doc comment is the
//! documentation users see through `meshscope sql` (`Table::column_docs`).

use std::sync::{Arc, OnceLock};

use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// The tables of the store. Each is partitioned by the hour of its time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Spans,
    Requests,
    StatSamples,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("unknown table {0:?}; tables are spans, requests, stat_samples")]
    UnknownTable(String),
    #[error("table {table}: column `{column}` is missing")]
    MissingColumn { table: &'static str, column: String },
    #[error("table {table}: column `{column}` is not part of the schema")]
    ExtraColumn { table: &'static str, column: String },
    #[error("table {table}: column `{column}` has type {got}, expected {expected}")]
    WrongType {
        table: &'static str,
        column: String,
        got: String,
        expected: String,
    },
    #[error("table {table}: column `{column}` must not be null ({nulls} null values)")]
    NullInRequired {
        table: &'static str,
        column: String,
        nulls: usize,
    },
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Spans, Table::Requests, Table::StatSamples];

    pub fn name(self) -> &'static str {
        match self {
            Table::Spans => "spans",
            Table::Requests => "requests",
            Table::StatSamples => "stat_samples",
        }
    }

    /// A stable one-byte tag used in the write-ahead log.
    pub fn tag(self) -> u8 {
        match self {
            Table::Spans => 1,
            Table::Requests => 2,
            Table::StatSamples => 3,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.tag() == tag)
    }

    pub fn from_name(name: &str) -> Result<Table, SchemaError> {
        Table::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| SchemaError::UnknownTable(name.to_string()))
    }

    /// The Timestamp(ns, UTC) column that partitions the table by hour.
    pub fn time_column(self) -> &'static str {
        match self {
            Table::Spans => spans::START_TIME,
            Table::Requests => requests::START_TIME,
            Table::StatSamples => stat_samples::TIME,
        }
    }

    /// The column compacted Parquet segments are sorted by (trace lookups read few pages).
    /// Flushed segments of tables with bloom filters keep arrival order (see
    /// `meshscope_storage::segment::encode_segment`).
    pub fn sort_column(self) -> &'static str {
        match self {
            Table::Spans => spans::TRACE_ID,
            Table::Requests => requests::START_TIME,
            Table::StatSamples => stat_samples::METRIC,
        }
    }

    /// Columns that get a Parquet bloom filter.
    pub fn bloom_filter_columns(self) -> &'static [&'static str] {
        match self {
            Table::Spans => &[spans::TRACE_ID, spans::REQUEST_ID],
            Table::Requests => &[requests::REQUEST_ID, requests::TRACE_ID],
            Table::StatSamples => &[],
        }
    }

    /// The trace-id column, if any, whose min/max the hour manifests record.
    pub fn trace_id_column(self) -> Option<&'static str> {
        match self {
            Table::Spans => Some(spans::TRACE_ID),
            Table::Requests => Some(requests::TRACE_ID),
            Table::StatSamples => None,
        }
    }

    pub fn schema(self) -> SchemaRef {
        static S: OnceLock<[SchemaRef; 3]> = OnceLock::new();
        let all = S.get_or_init(|| {
            [
                Arc::new(Schema::new(
                    columns(Table::Spans)
                        .iter()
                        .map(|c| c.field())
                        .collect::<Vec<_>>(),
                )),
                Arc::new(Schema::new(
                    columns(Table::Requests)
                        .iter()
                        .map(|c| c.field())
                        .collect::<Vec<_>>(),
                )),
                Arc::new(Schema::new(
                    columns(Table::StatSamples)
                        .iter()
                        .map(|c| c.field())
                        .collect::<Vec<_>>(),
                )),
            ]
        });
        all[(self.tag() - 1) as usize].clone()
    }

    /// (column, type, documentation) for every column, in schema order.
    pub fn column_docs(self) -> Vec<(&'static str, String, &'static str)> {
        columns(self)
            .iter()
            .map(|c| (c.name, format!("{}", c.ty()), c.doc))
            .collect()
    }
}

/// Checks that a batch has exactly this table's columns, with this table's types, and no
/// nulls in required columns. Errors name the column.
pub fn check_batch(table: Table, batch: &RecordBatch) -> Result<(), SchemaError> {
    let want = table.schema();
    let got = batch.schema();
    for f in got.fields() {
        if want.field_with_name(f.name()).is_err() {
            return Err(SchemaError::ExtraColumn {
                table: table.name(),
                column: f.name().clone(),
            });
        }
    }
    for (i, wf) in want.fields().iter().enumerate() {
        let Some((gi, gf)) = got.column_with_name(wf.name()) else {
            return Err(SchemaError::MissingColumn {
                table: table.name(),
                column: wf.name().clone(),
            });
        };
        if gi != i || !types_match(gf.data_type(), wf.data_type()) {
            return Err(SchemaError::WrongType {
                table: table.name(),
                column: wf.name().clone(),
                got: gf.data_type().to_string(),
                expected: wf.data_type().to_string(),
            });
        }
        let col = batch.column(gi);
        if !wf.is_nullable() && col.null_count() > 0 {
            return Err(SchemaError::NullInRequired {
                table: table.name(),
                column: wf.name().clone(),
                nulls: col.null_count(),
            });
        }
    }
    Ok(())
}

/// Type equality that ignores nested field nullability and child names the builders choose.
fn types_match(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) => types_match(x.data_type(), y.data_type()),
        (DataType::Map(x, _), DataType::Map(y, _)) => types_match(x.data_type(), y.data_type()),
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(p, q)| p.name() == q.name() && types_match(p.data_type(), q.data_type()))
        }
        _ => a == b,
    }
}

/// The Arrow type of every timestamp column: nanoseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// `Map<Utf8, Utf8>` with the field names `arrow`'s `MapBuilder` produces.
pub fn string_map_type() -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(Fields::from(vec![
                Field::new("keys", DataType::Utf8, false),
                Field::new("values", DataType::Utf8, true),
            ])),
            false,
        )),
        false,
    )
}

pub fn span_event_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(span_event_fields()),
        true,
    )))
}

pub fn span_event_fields() -> Fields {
    Fields::from(vec![
        Field::new("time", timestamp_type(), false),
        Field::new("name", DataType::Utf8, false),
        Field::new("attributes", string_map_type(), true),
    ])
}

pub fn span_link_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(span_link_fields()),
        true,
    )))
}

pub fn span_link_fields() -> Fields {
    Fields::from(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("trace_state", DataType::Utf8, true),
        Field::new("attributes", string_map_type(), true),
    ])
}

#[derive(Clone, Copy)]
enum Ty {
    Utf8,
    Int32,
    Int64,
    Float64,
    Timestamp,
    TraceId,
    SpanId,
    StringMap,
    Events,
    Links,
}

struct Column {
    name: &'static str,
    ty: Ty,
    nullable: bool,
    doc: &'static str,
}

impl Column {
    fn ty(&self) -> DataType {
        match self.ty {
            Ty::Utf8 => DataType::Utf8,
            Ty::Int32 => DataType::Int32,
            Ty::Int64 => DataType::Int64,
            Ty::Float64 => DataType::Float64,
            Ty::Timestamp => timestamp_type(),
            Ty::TraceId => DataType::FixedSizeBinary(16),
            Ty::SpanId => DataType::FixedSizeBinary(8),
            Ty::StringMap => string_map_type(),
            Ty::Events => span_event_type(),
            Ty::Links => span_link_type(),
        }
    }

    fn field(&self) -> Field {
        Field::new(self.name, self.ty(), self.nullable)
    }
}

const fn req(name: &'static str, ty: Ty, doc: &'static str) -> Column {
    Column {
        name,
        ty,
        nullable: false,
        doc,
    }
}

const fn opt(name: &'static str, ty: Ty, doc: &'static str) -> Column {
    Column {
        name,
        ty,
        nullable: true,
        doc,
    }
}

fn columns(table: Table) -> &'static [Column] {
    match table {
        Table::Spans => spans::COLUMNS,
        Table::Requests => requests::COLUMNS,
        Table::StatSamples => stat_samples::COLUMNS,
    }
}

/// `spans`: one row per OTLP span (Envoy's `envoy.tracers.opentelemetry` or any SDK).
pub mod spans {
    use super::{Column, Ty::*, opt, req};

    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const PARENT_SPAN_ID: &str = "parent_span_id";
    pub const TRACE_STATE: &str = "trace_state";
    pub const START_TIME: &str = "start_time";
    pub const DURATION_NS: &str = "duration_ns";
    pub const SERVICE_NAME: &str = "service_name";
    pub const NAME: &str = "name";
    pub const KIND: &str = "kind";
    pub const STATUS_CODE: &str = "status_code";
    pub const STATUS_MESSAGE: &str = "status_message";
    pub const REQUEST_ID: &str = "request_id";
    pub const HTTP_METHOD: &str = "http_method";
    pub const HTTP_STATUS_CODE: &str = "http_status_code";
    pub const HTTP_URL: &str = "http_url";
    pub const HTTP_PROTOCOL: &str = "http_protocol";
    pub const USER_AGENT: &str = "user_agent";
    pub const UPSTREAM_CLUSTER: &str = "upstream_cluster";
    pub const UPSTREAM_ADDRESS: &str = "upstream_address";
    pub const RESPONSE_FLAGS: &str = "response_flags";
    pub const PEER_ADDRESS: &str = "peer_address";
    pub const DOWNSTREAM_CLUSTER: &str = "downstream_cluster";
    pub const NODE_ID: &str = "node_id";
    pub const COMPONENT: &str = "component";
    pub const ISTIO_CANONICAL_SERVICE: &str = "istio_canonical_service";
    pub const ISTIO_CANONICAL_REVISION: &str = "istio_canonical_revision";
    pub const ISTIO_NAMESPACE: &str = "istio_namespace";
    pub const ISTIO_MESH_ID: &str = "istio_mesh_id";
    pub const SCOPE_NAME: &str = "scope_name";
    pub const ATTRIBUTES: &str = "attributes";
    pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
    pub const EVENTS: &str = "events";
    pub const LINKS: &str = "links";

    pub(super) const COLUMNS: &[Column] = &[
        req(
            TRACE_ID,
            TraceId,
            "16-byte trace id (hex in SQL output via encode(trace_id, 'hex'))",
        ),
        req(SPAN_ID, SpanId, "8-byte span id"),
        opt(
            PARENT_SPAN_ID,
            SpanId,
            "parent span id; null for a root span",
        ),
        opt(TRACE_STATE, Utf8, "W3C tracestate"),
        req(
            START_TIME,
            Timestamp,
            "span start, UTC nanoseconds; partitions the table by hour",
        ),
        req(DURATION_NS, Int64, "end minus start, nanoseconds"),
        req(
            SERVICE_NAME,
            Utf8,
            "resource attribute service.name (Envoy: the proxy's service cluster)",
        ),
        req(
            NAME,
            Utf8,
            "span name (Envoy: the route or host, e.g. `reviews.default.svc.cluster.local:9080/*`)",
        ),
        req(
            KIND,
            Utf8,
            "unspecified, internal, server, client, producer or consumer",
        ),
        req(STATUS_CODE, Utf8, "unset, ok or error"),
        opt(
            STATUS_MESSAGE,
            Utf8,
            "status message, when the status is error",
        ),
        opt(
            REQUEST_ID,
            Utf8,
            "Envoy's `guid:x-request-id`: joins spans to access-log lines",
        ),
        opt(HTTP_METHOD, Utf8, "http.method / http.request.method"),
        opt(
            HTTP_STATUS_CODE,
            Int32,
            "http.status_code / http.response.status_code",
        ),
        opt(HTTP_URL, Utf8, "http.url / url.full"),
        opt(HTTP_PROTOCOL, Utf8, "http.protocol (HTTP/1.1, HTTP/2)"),
        opt(USER_AGENT, Utf8, "user_agent / user_agent.original"),
        opt(
            UPSTREAM_CLUSTER,
            Utf8,
            "Envoy upstream_cluster (e.g. outbound|9080|v1|reviews.default.svc.cluster.local)",
        ),
        opt(
            UPSTREAM_ADDRESS,
            Utf8,
            "Envoy upstream_address: the host that served the request",
        ),
        opt(
            RESPONSE_FLAGS,
            Utf8,
            "Envoy response_flags (UO, UH, FI, …); null when `-`",
        ),
        opt(
            PEER_ADDRESS,
            Utf8,
            "peer.address: the downstream address as Envoy saw it",
        ),
        opt(DOWNSTREAM_CLUSTER, Utf8, "Envoy downstream_cluster"),
        opt(
            NODE_ID,
            Utf8,
            "Envoy node_id (sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local)",
        ),
        opt(COMPONENT, Utf8, "component (Envoy sets `proxy`)"),
        opt(ISTIO_CANONICAL_SERVICE, Utf8, "istio.canonical_service"),
        opt(ISTIO_CANONICAL_REVISION, Utf8, "istio.canonical_revision"),
        opt(ISTIO_NAMESPACE, Utf8, "istio.namespace"),
        opt(ISTIO_MESH_ID, Utf8, "istio.mesh_id"),
        opt(SCOPE_NAME, Utf8, "instrumentation scope name"),
        opt(
            ATTRIBUTES,
            StringMap,
            "remaining span attributes, values as text (arrays and maps as JSON)",
        ),
        opt(
            RESOURCE_ATTRIBUTES,
            StringMap,
            "resource attributes other than service.name",
        ),
        opt(EVENTS, Events, "span events: time, name, attributes"),
        opt(
            LINKS,
            Links,
            "span links: trace_id, span_id, trace_state, attributes",
        ),
    ];
}

/// `requests`: one row per Envoy access-log entry (text, JSON or OTLP log), typed.
pub mod requests {
    use super::{Column, Ty::*, opt, req};

    pub const START_TIME: &str = "start_time";
    pub const METHOD: &str = "method";
    pub const PATH: &str = "path";
    pub const PROTOCOL: &str = "protocol";
    pub const RESPONSE_CODE: &str = "response_code";
    pub const RESPONSE_FLAGS: &str = "response_flags";
    pub const RESPONSE_CODE_DETAILS: &str = "response_code_details";
    pub const CONNECTION_TERMINATION_DETAILS: &str = "connection_termination_details";
    pub const UPSTREAM_TRANSPORT_FAILURE_REASON: &str = "upstream_transport_failure_reason";
    pub const BYTES_RECEIVED: &str = "bytes_received";
    pub const BYTES_SENT: &str = "bytes_sent";
    pub const DURATION_MS: &str = "duration_ms";
    pub const UPSTREAM_SERVICE_TIME_MS: &str = "upstream_service_time_ms";
    pub const X_FORWARDED_FOR: &str = "x_forwarded_for";
    pub const USER_AGENT: &str = "user_agent";
    pub const REQUEST_ID: &str = "request_id";
    pub const AUTHORITY: &str = "authority";
    pub const UPSTREAM_HOST: &str = "upstream_host";
    pub const UPSTREAM_CLUSTER: &str = "upstream_cluster";
    pub const UPSTREAM_LOCAL_ADDRESS: &str = "upstream_local_address";
    pub const DOWNSTREAM_LOCAL_ADDRESS: &str = "downstream_local_address";
    pub const DOWNSTREAM_REMOTE_ADDRESS: &str = "downstream_remote_address";
    pub const REQUESTED_SERVER_NAME: &str = "requested_server_name";
    pub const ROUTE_NAME: &str = "route_name";
    pub const REPORTER: &str = "reporter";
    pub const REQUEST_PROTOCOL: &str = "request_protocol";
    pub const PROXY: &str = "proxy";
    pub const SOURCE_NAMESPACE: &str = "source_namespace";
    pub const SOURCE_WORKLOAD: &str = "source_workload";
    pub const SOURCE_APP: &str = "source_app";
    pub const SOURCE_VERSION: &str = "source_version";
    pub const SOURCE_SERVICE: &str = "source_service";
    pub const DESTINATION_NAMESPACE: &str = "destination_namespace";
    pub const DESTINATION_WORKLOAD: &str = "destination_workload";
    pub const DESTINATION_APP: &str = "destination_app";
    pub const DESTINATION_VERSION: &str = "destination_version";
    pub const DESTINATION_SERVICE: &str = "destination_service";
    pub const DESTINATION_SERVICE_NAME: &str = "destination_service_name";
    pub const DESTINATION_SUBSET: &str = "destination_subset";
    pub const DESTINATION_PORT: &str = "destination_port";
    pub const TRACE_ID: &str = "trace_id";
    pub const LOG_SOURCE: &str = "log_source";

    pub(super) const COLUMNS: &[Column] = &[
        req(
            START_TIME,
            Timestamp,
            "%START_TIME%: when the request started, UTC nanoseconds; partitions by hour",
        ),
        opt(METHOD, Utf8, "%REQ(:METHOD)%"),
        opt(PATH, Utf8, "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
        opt(
            PROTOCOL,
            Utf8,
            "%PROTOCOL% (HTTP/1.1, HTTP/2); null for TCP",
        ),
        req(
            RESPONSE_CODE,
            Int32,
            "%RESPONSE_CODE%; 0 when no response was sent",
        ),
        opt(
            RESPONSE_FLAGS,
            Utf8,
            "%RESPONSE_FLAGS% (comma-separated, e.g. UO); null when `-`",
        ),
        opt(
            RESPONSE_CODE_DETAILS,
            Utf8,
            "%RESPONSE_CODE_DETAILS% (e.g. upstream_reset_before_response_started{overflow})",
        ),
        opt(
            CONNECTION_TERMINATION_DETAILS,
            Utf8,
            "%CONNECTION_TERMINATION_DETAILS%",
        ),
        opt(
            UPSTREAM_TRANSPORT_FAILURE_REASON,
            Utf8,
            "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        ),
        req(
            BYTES_RECEIVED,
            Int64,
            "%BYTES_RECEIVED%: request body bytes",
        ),
        req(BYTES_SENT, Int64, "%BYTES_SENT%: response body bytes"),
        req(
            DURATION_MS,
            Int64,
            "%DURATION%: total request duration, milliseconds",
        ),
        opt(
            UPSTREAM_SERVICE_TIME_MS,
            Int64,
            "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%, milliseconds",
        ),
        opt(X_FORWARDED_FOR, Utf8, "%REQ(X-FORWARDED-FOR)%"),
        opt(USER_AGENT, Utf8, "%REQ(USER-AGENT)%"),
        opt(
            REQUEST_ID,
            Utf8,
            "%REQ(X-REQUEST-ID)%: joins access-log lines to spans",
        ),
        opt(AUTHORITY, Utf8, "%REQ(:AUTHORITY)%"),
        opt(
            UPSTREAM_HOST,
            Utf8,
            "%UPSTREAM_HOST%: the address the request went to",
        ),
        opt(
            UPSTREAM_CLUSTER,
            Utf8,
            "%UPSTREAM_CLUSTER_RAW% (outbound|9080|v1|reviews.default.svc.cluster.local, inbound|9080||)",
        ),
        opt(UPSTREAM_LOCAL_ADDRESS, Utf8, "%UPSTREAM_LOCAL_ADDRESS%"),
        opt(DOWNSTREAM_LOCAL_ADDRESS, Utf8, "%DOWNSTREAM_LOCAL_ADDRESS%"),
        opt(
            DOWNSTREAM_REMOTE_ADDRESS,
            Utf8,
            "%DOWNSTREAM_REMOTE_ADDRESS%: the caller's address",
        ),
        opt(REQUESTED_SERVER_NAME, Utf8, "%REQUESTED_SERVER_NAME% (SNI)"),
        opt(ROUTE_NAME, Utf8, "%ROUTE_NAME%"),
        opt(
            REPORTER,
            Utf8,
            "derived: `source` (outbound cluster) or `destination` (inbound cluster)",
        ),
        opt(REQUEST_PROTOCOL, Utf8, "derived: http, grpc or tcp"),
        opt(
            PROXY,
            Utf8,
            "derived: the proxy that wrote the line (pod name or node id)",
        ),
        opt(SOURCE_NAMESPACE, Utf8, "derived: the caller's namespace"),
        opt(SOURCE_WORKLOAD, Utf8, "derived: the caller's workload"),
        opt(SOURCE_APP, Utf8, "derived: the caller's app label"),
        opt(SOURCE_VERSION, Utf8, "derived: the caller's version label"),
        opt(
            SOURCE_SERVICE,
            Utf8,
            "derived: the caller's canonical service",
        ),
        opt(
            DESTINATION_NAMESPACE,
            Utf8,
            "derived: the callee's namespace",
        ),
        opt(DESTINATION_WORKLOAD, Utf8, "derived: the callee's workload"),
        opt(DESTINATION_APP, Utf8, "derived: the callee's app label"),
        opt(
            DESTINATION_VERSION,
            Utf8,
            "derived: the callee's version label",
        ),
        opt(
            DESTINATION_SERVICE,
            Utf8,
            "derived: the callee's service host (reviews.default.svc.cluster.local)",
        ),
        opt(
            DESTINATION_SERVICE_NAME,
            Utf8,
            "derived: the callee's service short name (reviews)",
        ),
        opt(
            DESTINATION_SUBSET,
            Utf8,
            "derived: the subset from the cluster name (v1)",
        ),
        opt(
            DESTINATION_PORT,
            Int32,
            "derived: the port from the cluster name (9080)",
        ),
        opt(
            TRACE_ID,
            TraceId,
            "the trace id, when known (traceparent or a span with this request id)",
        ),
        opt(
            LOG_SOURCE,
            Utf8,
            "where the line came from: a file path, `push` or `otlp`",
        ),
    ];
}

/// `stat_samples`: one row per Envoy stat sample (admin `/stats`, `/stats/prometheus`).
pub mod stat_samples {
    use super::{Column, Ty::*, opt, req};

    pub const TIME: &str = "time";
    pub const PROXY: &str = "proxy";
    pub const PROXY_NAMESPACE: &str = "proxy_namespace";
    pub const PROXY_WORKLOAD: &str = "proxy_workload";
    pub const PROXY_APP: &str = "proxy_app";
    pub const PROXY_VERSION: &str = "proxy_version";
    pub const METRIC: &str = "metric";
    pub const CLUSTER_NAME: &str = "cluster_name";
    pub const TAGS: &str = "tags";
    pub const VALUE: &str = "value";
    pub const KIND: &str = "kind";

    pub(super) const COLUMNS: &[Column] = &[
        req(
            TIME,
            Timestamp,
            "when the sample was taken, UTC nanoseconds; partitions by hour",
        ),
        req(
            PROXY,
            Utf8,
            "the proxy: pod name, or node id, or admin address",
        ),
        opt(PROXY_NAMESPACE, Utf8, "the proxy's namespace"),
        opt(PROXY_WORKLOAD, Utf8, "the proxy's workload"),
        opt(PROXY_APP, Utf8, "the proxy's app label"),
        opt(PROXY_VERSION, Utf8, "the proxy's version label"),
        req(
            METRIC,
            Utf8,
            "metric name as Prometheus exposes it (envoy_cluster_upstream_rq_pending_overflow)",
        ),
        opt(
            CLUSTER_NAME,
            Utf8,
            "the cluster_name / envoy_cluster_name tag, when present",
        ),
        opt(TAGS, StringMap, "all other tags (labels) of the sample"),
        req(VALUE, Float64, "the sample value"),
        req(KIND, Utf8, "counter, gauge or histogram"),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_documented_unique_columns_and_a_time_column() {
        for t in Table::ALL {
            let schema = t.schema();
            let docs = t.column_docs();
            assert_eq!(docs.len(), schema.fields().len());
            let mut names: Vec<_> = docs.iter().map(|d| d.0).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), docs.len(), "duplicate column in {}", t.name());
            assert!(docs.iter().all(|d| !d.2.is_empty()));
            assert_eq!(
                schema.field_with_name(t.time_column()).unwrap().data_type(),
                &timestamp_type()
            );
            assert_eq!(Table::from_tag(t.tag()), Some(t));
            assert_eq!(Table::from_name(t.name()).unwrap(), t);
        }
    }
}
