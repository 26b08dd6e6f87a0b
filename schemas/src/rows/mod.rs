//! Row types for the three tables and their conversion into Arrow batches and back
//! (`decode`).
//!
//! Receivers fill these structs (one per span, access-log line or stat sample) and turn a
//! whole request's worth into one `RecordBatch` with `*_batch`, which always matches
//! `Table::schema` exactly.

pub mod decode;

pub use decode::spans_from_batches;

use std::sync::Arc;

use arrow_array::builder::{
    FixedSizeBinaryBuilder, Float64Builder, Int32Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampNanosecondBuilder,
};
use arrow_array::{ArrayRef, ListArray, RecordBatch, StructArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{ArrowError, Field};

use crate::ids::{SpanId, TraceId};
use crate::table::{Table, span_event_fields, span_link_fields};

/// Text of a `requests` row. Most values of an access-log line (method, flags, addresses,
/// namespaces, workloads) are short, and this type keeps up to 24 bytes inline: a row then
/// costs a handful of allocations instead of thirty, which parsing at a million lines per
/// second per core needs.
pub type Text = compact_str::CompactString;

/// Key/value pairs with values rendered as text; order is kept.
pub type Attrs = Vec<(String, String)>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpanEvent {
    pub time_unix_nano: i64,
    pub name: String,
    pub attributes: Attrs,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub trace_state: Option<String>,
    pub attributes: Attrs,
}

/// One row of `spans`. Field meanings are documented on the columns in `table::spans`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpanRow {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_state: Option<String>,
    pub start_time_unix_nano: i64,
    pub duration_ns: i64,
    pub service_name: String,
    pub name: String,
    pub kind: String,
    pub status_code: String,
    pub status_message: Option<String>,
    pub request_id: Option<String>,
    pub http_method: Option<String>,
    pub http_status_code: Option<i32>,
    pub http_url: Option<String>,
    pub http_protocol: Option<String>,
    pub user_agent: Option<String>,
    pub upstream_cluster: Option<String>,
    pub upstream_address: Option<String>,
    pub response_flags: Option<String>,
    pub peer_address: Option<String>,
    pub downstream_cluster: Option<String>,
    pub node_id: Option<String>,
    pub component: Option<String>,
    pub istio_canonical_service: Option<String>,
    pub istio_canonical_revision: Option<String>,
    pub istio_namespace: Option<String>,
    pub istio_mesh_id: Option<String>,
    pub scope_name: Option<String>,
    pub attributes: Attrs,
    pub resource_attributes: Attrs,
    pub events: Vec<SpanEvent>,
    pub links: Vec<SpanLink>,
}

/// One row of `requests`: an Envoy access-log entry plus derived identity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRow {
    pub start_time_unix_nano: i64,
    pub method: Option<Text>,
    pub path: Option<Text>,
    pub protocol: Option<Text>,
    pub response_code: i32,
    pub response_flags: Option<Text>,
    pub response_code_details: Option<Text>,
    pub connection_termination_details: Option<Text>,
    pub upstream_transport_failure_reason: Option<Text>,
    pub bytes_received: i64,
    pub bytes_sent: i64,
    pub duration_ms: i64,
    pub upstream_service_time_ms: Option<i64>,
    pub x_forwarded_for: Option<Text>,
    pub user_agent: Option<Text>,
    pub request_id: Option<Text>,
    pub authority: Option<Text>,
    pub upstream_host: Option<Text>,
    pub upstream_cluster: Option<Text>,
    pub upstream_local_address: Option<Text>,
    pub downstream_local_address: Option<Text>,
    pub downstream_remote_address: Option<Text>,
    pub requested_server_name: Option<Text>,
    pub route_name: Option<Text>,
    pub reporter: Option<Text>,
    pub request_protocol: Option<Text>,
    pub proxy: Option<Text>,
    pub source_namespace: Option<Text>,
    pub source_workload: Option<Text>,
    pub source_app: Option<Text>,
    pub source_version: Option<Text>,
    pub source_service: Option<Text>,
    pub destination_namespace: Option<Text>,
    pub destination_workload: Option<Text>,
    pub destination_app: Option<Text>,
    pub destination_version: Option<Text>,
    pub destination_service: Option<Text>,
    pub destination_service_name: Option<Text>,
    pub destination_subset: Option<Text>,
    pub destination_port: Option<i32>,
    pub trace_id: Option<TraceId>,
    pub log_source: Option<Text>,
}

/// One row of `stat_samples`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatSampleRow {
    pub time_unix_nano: i64,
    pub proxy: String,
    pub proxy_namespace: Option<String>,
    pub proxy_workload: Option<String>,
    pub proxy_app: Option<String>,
    pub proxy_version: Option<String>,
    pub metric: String,
    pub cluster_name: Option<String>,
    pub tags: Attrs,
    pub value: f64,
    pub kind: String,
}

fn strs<'a, I: Iterator<Item = Option<&'a str>>>(it: I) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in it {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn ts<I: Iterator<Item = i64>>(it: I) -> ArrayRef {
    let mut b = TimestampNanosecondBuilder::new().with_timezone("UTC");
    for v in it {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn i64s<I: Iterator<Item = Option<i64>>>(it: I) -> ArrayRef {
    let mut b = Int64Builder::new();
    for v in it {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn i32s<I: Iterator<Item = Option<i32>>>(it: I) -> ArrayRef {
    let mut b = Int32Builder::new();
    for v in it {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn fixed<'a, I: Iterator<Item = Option<&'a [u8]>>>(
    size: i32,
    it: I,
) -> Result<ArrayRef, ArrowError> {
    let mut b = FixedSizeBinaryBuilder::new(size);
    for v in it {
        match v {
            Some(bytes) => b.append_value(bytes)?,
            None => b.append_null(),
        }
    }
    Ok(Arc::new(b.finish()))
}

fn maps<'a, I: Iterator<Item = &'a Attrs>>(it: I) -> Result<ArrayRef, ArrowError> {
    let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for attrs in it {
        for (k, v) in attrs {
            b.keys().append_value(k);
            b.values().append_value(v);
        }
        b.append(true)?;
    }
    Ok(Arc::new(b.finish()))
}

/// A list column of structs from its children and each row's length.
pub fn list_of(
    fields: arrow_schema::Fields,
    columns: Vec<ArrayRef>,
    lens: &[usize],
) -> Result<ArrayRef, ArrowError> {
    let values = StructArray::try_new(fields.clone(), columns, None)?;
    let offsets = OffsetBuffer::<i32>::from_lengths(lens.iter().copied());
    let field = Arc::new(Field::new(
        "item",
        arrow_schema::DataType::Struct(fields),
        true,
    ));
    Ok(Arc::new(ListArray::try_new(
        field,
        offsets,
        Arc::new(values),
        None,
    )?))
}

macro_rules! s {
    ($rows:expr, $f:ident) => {
        strs($rows.iter().map(|r| r.$f.as_deref()))
    };
}

/// Builds a `spans` batch from rows.
pub fn spans_batch(rows: &[SpanRow]) -> Result<RecordBatch, ArrowError> {
    let events: Vec<&SpanEvent> = rows.iter().flat_map(|r| r.events.iter()).collect();
    let links: Vec<&SpanLink> = rows.iter().flat_map(|r| r.links.iter()).collect();
    let events_col = list_of(
        span_event_fields(),
        vec![
            ts(events.iter().map(|e| e.time_unix_nano)),
            strs(events.iter().map(|e| Some(e.name.as_str()))),
            maps(events.iter().map(|e| &e.attributes))?,
        ],
        &rows.iter().map(|r| r.events.len()).collect::<Vec<_>>(),
    )?;
    let links_col = list_of(
        span_link_fields(),
        vec![
            fixed(16, links.iter().map(|l| Some(&l.trace_id.0[..])))?,
            fixed(8, links.iter().map(|l| Some(&l.span_id.0[..])))?,
            strs(links.iter().map(|l| l.trace_state.as_deref())),
            maps(links.iter().map(|l| &l.attributes))?,
        ],
        &rows.iter().map(|r| r.links.len()).collect::<Vec<_>>(),
    )?;
    let cols: Vec<ArrayRef> = vec![
        fixed(16, rows.iter().map(|r| Some(&r.trace_id.0[..])))?,
        fixed(8, rows.iter().map(|r| Some(&r.span_id.0[..])))?,
        fixed(
            8,
            rows.iter()
                .map(|r| r.parent_span_id.as_ref().map(|p| &p.0[..])),
        )?,
        s!(rows, trace_state),
        ts(rows.iter().map(|r| r.start_time_unix_nano)),
        i64s(rows.iter().map(|r| Some(r.duration_ns))),
        strs(rows.iter().map(|r| Some(r.service_name.as_str()))),
        strs(rows.iter().map(|r| Some(r.name.as_str()))),
        strs(rows.iter().map(|r| Some(r.kind.as_str()))),
        strs(rows.iter().map(|r| Some(r.status_code.as_str()))),
        s!(rows, status_message),
        s!(rows, request_id),
        s!(rows, http_method),
        i32s(rows.iter().map(|r| r.http_status_code)),
        s!(rows, http_url),
        s!(rows, http_protocol),
        s!(rows, user_agent),
        s!(rows, upstream_cluster),
        s!(rows, upstream_address),
        s!(rows, response_flags),
        s!(rows, peer_address),
        s!(rows, downstream_cluster),
        s!(rows, node_id),
        s!(rows, component),
        s!(rows, istio_canonical_service),
        s!(rows, istio_canonical_revision),
        s!(rows, istio_namespace),
        s!(rows, istio_mesh_id),
        s!(rows, scope_name),
        maps(rows.iter().map(|r| &r.attributes))?,
        maps(rows.iter().map(|r| &r.resource_attributes))?,
        events_col,
        links_col,
    ];
    RecordBatch::try_new(Table::Spans.schema(), cols)
}

/// Builds a `requests` batch from rows.
pub fn requests_batch(rows: &[RequestRow]) -> Result<RecordBatch, ArrowError> {
    let cols: Vec<ArrayRef> = vec![
        ts(rows.iter().map(|r| r.start_time_unix_nano)),
        s!(rows, method),
        s!(rows, path),
        s!(rows, protocol),
        i32s(rows.iter().map(|r| Some(r.response_code))),
        s!(rows, response_flags),
        s!(rows, response_code_details),
        s!(rows, connection_termination_details),
        s!(rows, upstream_transport_failure_reason),
        i64s(rows.iter().map(|r| Some(r.bytes_received))),
        i64s(rows.iter().map(|r| Some(r.bytes_sent))),
        i64s(rows.iter().map(|r| Some(r.duration_ms))),
        i64s(rows.iter().map(|r| r.upstream_service_time_ms)),
        s!(rows, x_forwarded_for),
        s!(rows, user_agent),
        s!(rows, request_id),
        s!(rows, authority),
        s!(rows, upstream_host),
        s!(rows, upstream_cluster),
        s!(rows, upstream_local_address),
        s!(rows, downstream_local_address),
        s!(rows, downstream_remote_address),
        s!(rows, requested_server_name),
        s!(rows, route_name),
        s!(rows, reporter),
        s!(rows, request_protocol),
        s!(rows, proxy),
        s!(rows, source_namespace),
        s!(rows, source_workload),
        s!(rows, source_app),
        s!(rows, source_version),
        s!(rows, source_service),
        s!(rows, destination_namespace),
        s!(rows, destination_workload),
        s!(rows, destination_app),
        s!(rows, destination_version),
        s!(rows, destination_service),
        s!(rows, destination_service_name),
        s!(rows, destination_subset),
        i32s(rows.iter().map(|r| r.destination_port)),
        fixed(
            16,
            rows.iter().map(|r| r.trace_id.as_ref().map(|t| &t.0[..])),
        )?,
        s!(rows, log_source),
    ];
    RecordBatch::try_new(Table::Requests.schema(), cols)
}

/// Builds a `stat_samples` batch from rows.
pub fn stat_samples_batch(rows: &[StatSampleRow]) -> Result<RecordBatch, ArrowError> {
    let mut values = Float64Builder::new();
    for r in rows {
        values.append_value(r.value);
    }
    let cols: Vec<ArrayRef> = vec![
        ts(rows.iter().map(|r| r.time_unix_nano)),
        strs(rows.iter().map(|r| Some(r.proxy.as_str()))),
        s!(rows, proxy_namespace),
        s!(rows, proxy_workload),
        s!(rows, proxy_app),
        s!(rows, proxy_version),
        strs(rows.iter().map(|r| Some(r.metric.as_str()))),
        s!(rows, cluster_name),
        maps(rows.iter().map(|r| &r.tags))?,
        Arc::new(values.finish()),
        strs(rows.iter().map(|r| Some(r.kind.as_str()))),
    ];
    RecordBatch::try_new(Table::StatSamples.schema(), cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::check_batch;

    #[test]
    fn builders_match_the_table_schemas() {
        let span = SpanRow {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([1; 8]),
            service_name: "reviews".into(),
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            kind: "server".into(),
            status_code: "unset".into(),
            attributes: vec![("k".into(), "v".into())],
            events: vec![SpanEvent {
                time_unix_nano: 5,
                name: "e".into(),
                attributes: vec![],
            }],
            links: vec![SpanLink {
                trace_id: TraceId([2; 16]),
                span_id: SpanId([3; 8]),
                ..Default::default()
            }],
            ..Default::default()
        };
        let b = spans_batch(&[
            span.clone(),
            SpanRow {
                events: vec![],
                ..span
            },
        ])
        .unwrap();
        check_batch(Table::Spans, &b).unwrap();
        assert_eq!(b.num_rows(), 2);
        let r = requests_batch(&[RequestRow {
            response_code: 503,
            ..Default::default()
        }])
        .unwrap();
        check_batch(Table::Requests, &r).unwrap();
        let st = stat_samples_batch(&[StatSampleRow {
            proxy: "p".into(),
            metric: "m".into(),
            kind: "counter".into(),
            ..Default::default()
        }])
        .unwrap();
        check_batch(Table::StatSamples, &st).unwrap();
    }
}
