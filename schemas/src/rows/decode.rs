//! Arrow → rows: whole `spans` batches (as a query reads them from the buffer or Parquet)
//! back into [`SpanRow`]s, the other half of the contract `spans_batch` writes. Columns are
//! found by name and cast from the view and dictionary types a Parquet reader may produce.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampNanosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::cast;
use arrow_schema::{ArrowError, DataType};

use super::{Attrs, SpanEvent, SpanLink, SpanRow};
use crate::ids::{SpanId, TraceId};
use crate::table::spans as sp;

/// A column by name.
pub fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ArrowError> {
    b.column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("column {name} missing from the result")))
}

/// A column as `want`, casting views and dictionaries the Parquet reader may produce.
pub fn as_type(b: &RecordBatch, name: &str, want: &DataType) -> Result<ArrayRef, ArrowError> {
    let a = column(b, name)?;
    if a.data_type() == want {
        Ok(a.clone())
    } else {
        cast(a, want)
    }
}

/// A text column as owned strings.
pub fn strings(b: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, ArrowError> {
    let a = as_type(b, name, &DataType::Utf8)?;
    Ok(a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

/// An Int64 column.
pub fn ints64(b: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>, ArrowError> {
    let a = as_type(b, name, &DataType::Int64)?;
    Ok(a.as_primitive::<Int64Type>().iter().collect())
}

/// An Int32 column.
pub fn ints32(b: &RecordBatch, name: &str) -> Result<Vec<Option<i32>>, ArrowError> {
    let a = as_type(b, name, &DataType::Int32)?;
    Ok(a.as_primitive::<Int32Type>().iter().collect())
}

/// A timestamp column as unix nanoseconds.
pub fn timestamps(b: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>, ArrowError> {
    let a = column(b, name)?;
    let a = match a.data_type() {
        DataType::Timestamp(arrow_schema::TimeUnit::Nanosecond, _) => a.clone(),
        _ => cast(a, &crate::table::timestamp_type())?,
    };
    Ok(a.as_primitive::<TimestampNanosecondType>().iter().collect())
}

/// A fixed-size binary column as arrays of `N` bytes.
pub fn fixed<const N: usize>(
    b: &RecordBatch,
    name: &str,
) -> Result<Vec<Option<[u8; N]>>, ArrowError> {
    let a = column(b, name)?;
    let a = a.as_fixed_size_binary_opt().ok_or_else(|| {
        ArrowError::SchemaError(format!(
            "column {name} is {}, expected fixed-size binary",
            a.data_type()
        ))
    })?;
    Ok(a.iter()
        .map(|v| v.and_then(|v| <[u8; N]>::try_from(v).ok()))
        .collect())
}

/// A trace-id column.
pub fn trace_ids(b: &RecordBatch, name: &str) -> Result<Vec<Option<TraceId>>, ArrowError> {
    Ok(fixed::<16>(b, name)?
        .into_iter()
        .map(|v| v.map(TraceId))
        .collect())
}

fn map_at(a: &ArrayRef, i: usize) -> Attrs {
    let Some(m) = a.as_map_opt() else {
        return Vec::new();
    };
    if m.is_null(i) {
        return Vec::new();
    }
    let entries = m.value(i);
    let (Some(k), Some(v)) = (
        cast(entries.column(0), &DataType::Utf8).ok(),
        cast(entries.column(1), &DataType::Utf8).ok(),
    ) else {
        return Vec::new();
    };
    let (k, v) = (k.as_string::<i32>().clone(), v.as_string::<i32>().clone());
    (0..k.len())
        .map(|j| {
            (
                k.value(j).to_string(),
                if v.is_null(j) {
                    String::new()
                } else {
                    v.value(j).to_string()
                },
            )
        })
        .collect()
}

fn events_at(a: &ArrayRef, i: usize) -> Vec<SpanEvent> {
    let Some(l) = a.as_list_opt::<i32>() else {
        return Vec::new();
    };
    if l.is_null(i) {
        return Vec::new();
    }
    let s = l.value(i);
    let s = s.as_struct();
    let times = s.column(0).as_primitive_opt::<TimestampNanosecondType>();
    let names = cast(s.column(1), &DataType::Utf8).ok();
    let attrs = s.column(2);
    (0..s.len())
        .map(|j| SpanEvent {
            time_unix_nano: times.map_or(0, |t| t.value(j)),
            name: names
                .as_ref()
                .map(|n| n.as_string::<i32>().value(j).to_string())
                .unwrap_or_default(),
            attributes: map_at(attrs, j),
        })
        .collect()
}

fn links_at(a: &ArrayRef, i: usize) -> Vec<SpanLink> {
    let Some(l) = a.as_list_opt::<i32>() else {
        return Vec::new();
    };
    if l.is_null(i) {
        return Vec::new();
    }
    let s = l.value(i);
    let s = s.as_struct();
    let (Some(t), Some(sid)) = (
        s.column(0).as_fixed_size_binary_opt(),
        s.column(1).as_fixed_size_binary_opt(),
    ) else {
        return Vec::new();
    };
    let states = cast(s.column(2), &DataType::Utf8).ok();
    (0..s.len())
        .map(|j| SpanLink {
            trace_id: TraceId(t.value(j).try_into().unwrap_or_default()),
            span_id: SpanId(sid.value(j).try_into().unwrap_or_default()),
            trace_state: states.as_ref().and_then(|st| {
                let st = st.as_string::<i32>();
                (!st.is_null(j)).then(|| st.value(j).to_string())
            }),
            attributes: map_at(s.column(3), j),
        })
        .collect()
}

/// Whole `spans` rows back into `SpanRow`s.
pub fn spans_from_batches(batches: &[RecordBatch]) -> Result<Vec<SpanRow>, ArrowError> {
    let mut out = Vec::new();
    for b in batches {
        let n = b.num_rows();
        let tid = trace_ids(b, sp::TRACE_ID)?;
        let sid = fixed::<8>(b, sp::SPAN_ID)?;
        let pid = fixed::<8>(b, sp::PARENT_SPAN_ID)?;
        let start = timestamps(b, sp::START_TIME)?;
        let dur = ints64(b, sp::DURATION_NS)?;
        let st = |c| strings(b, c);
        let (trace_state, service, name, kind, status, status_msg) = (
            st(sp::TRACE_STATE)?,
            st(sp::SERVICE_NAME)?,
            st(sp::NAME)?,
            st(sp::KIND)?,
            st(sp::STATUS_CODE)?,
            st(sp::STATUS_MESSAGE)?,
        );
        let (request_id, method, url, proto, ua) = (
            st(sp::REQUEST_ID)?,
            st(sp::HTTP_METHOD)?,
            st(sp::HTTP_URL)?,
            st(sp::HTTP_PROTOCOL)?,
            st(sp::USER_AGENT)?,
        );
        let code = ints32(b, sp::HTTP_STATUS_CODE)?;
        let (ucluster, uaddr, flags, peer, dcluster, node, component) = (
            st(sp::UPSTREAM_CLUSTER)?,
            st(sp::UPSTREAM_ADDRESS)?,
            st(sp::RESPONSE_FLAGS)?,
            st(sp::PEER_ADDRESS)?,
            st(sp::DOWNSTREAM_CLUSTER)?,
            st(sp::NODE_ID)?,
            st(sp::COMPONENT)?,
        );
        let (csvc, crev, ns, mesh, scope) = (
            st(sp::ISTIO_CANONICAL_SERVICE)?,
            st(sp::ISTIO_CANONICAL_REVISION)?,
            st(sp::ISTIO_NAMESPACE)?,
            st(sp::ISTIO_MESH_ID)?,
            st(sp::SCOPE_NAME)?,
        );
        let attrs = column(b, sp::ATTRIBUTES)?;
        let rattrs = column(b, sp::RESOURCE_ATTRIBUTES)?;
        let events = column(b, sp::EVENTS)?;
        let links = column(b, sp::LINKS)?;
        for i in 0..n {
            let (Some(trace_id), Some(span_id)) = (tid[i], sid[i]) else {
                continue;
            };
            out.push(SpanRow {
                trace_id,
                span_id: SpanId(span_id),
                parent_span_id: pid[i].map(SpanId),
                trace_state: trace_state[i].clone(),
                start_time_unix_nano: start[i].unwrap_or(0),
                duration_ns: dur[i].unwrap_or(0),
                service_name: service[i].clone().unwrap_or_default(),
                name: name[i].clone().unwrap_or_default(),
                kind: kind[i].clone().unwrap_or_default(),
                status_code: status[i].clone().unwrap_or_default(),
                status_message: status_msg[i].clone(),
                request_id: request_id[i].clone(),
                http_method: method[i].clone(),
                http_status_code: code[i],
                http_url: url[i].clone(),
                http_protocol: proto[i].clone(),
                user_agent: ua[i].clone(),
                upstream_cluster: ucluster[i].clone(),
                upstream_address: uaddr[i].clone(),
                response_flags: flags[i].clone(),
                peer_address: peer[i].clone(),
                downstream_cluster: dcluster[i].clone(),
                node_id: node[i].clone(),
                component: component[i].clone(),
                istio_canonical_service: csvc[i].clone(),
                istio_canonical_revision: crev[i].clone(),
                istio_namespace: ns[i].clone(),
                istio_mesh_id: mesh[i].clone(),
                scope_name: scope[i].clone(),
                attributes: map_at(attrs, i),
                resource_attributes: map_at(rattrs, i),
                events: events_at(events, i),
                links: links_at(links, i),
            });
        }
    }
    Ok(out)
}
