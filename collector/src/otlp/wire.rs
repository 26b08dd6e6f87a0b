//! OTLP/protobuf trace exports read straight into a `spans` Arrow batch.
//!
//! The general path decodes a request with prost (a `String` per attribute key and value),
//! moves it into `SpanRow`s and builds the batch from those. Here the protobuf bytes are
//! walked once and every string is validated and copied once, from the request into the
//! Arrow buffers, so a span costs no allocation. The result (batch, stored count, rejection
//! messages) is the one `traces::spans_from_request` + `spans_batch` give for the same bytes;
//! the `otlp_wire` fuzz target checks that on every input it accepts.
//!
//! Anything this reader is not sure to treat as prost does (a malformed message, groups, a
//! field repeated where prost would merge, entity refs, deep nesting) makes it give up
//! ([`GiveUp`]); the caller then decodes with prost, so errors and odd inputs are answered
//! exactly as before.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::builder::{
    FixedSizeBinaryBuilder, Int32Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampNanosecondBuilder,
};
use arrow::array::{ArrayRef, RecordBatch};
use arrow::error::ArrowError;
use meshscope_schemas::rows::list_of;
use meshscope_schemas::table::{span_event_fields, span_link_fields};
use meshscope_schemas::{SpanId, Table, TraceId};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValueList};
use prost::Message;

use super::traces::UNKNOWN_SERVICE;
use super::value;

/// The reader met something it leaves to prost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiveUp;

type R<T> = Result<T, GiveUp>;

/// Nesting of array/kvlist attribute values beyond which the reader gives up (prost's own
/// limit is 100 levels from the top of the request).
const MAX_VALUE_DEPTH: usize = 32;

/// What a trace export turned into.
pub struct DecodedSpans {
    pub batch: RecordBatch,
    /// Spans in the batch.
    pub rows: usize,
    /// One message per rejected span, as `spans_from_request` words them.
    pub rejected: Vec<String>,
}

/// Reads an `ExportTraceServiceRequest` into a `spans` batch, or gives up.
pub fn spans_from_protobuf(body: &[u8]) -> R<Result<DecodedSpans, ArrowError>> {
    let mut b = SpansBuilder::default();
    let mut rejected = Vec::new();
    let mut scratch = Scratch::default();
    let mut r = Reader(body);
    let mut ri = 0;
    while let Some((field, v)) = r.next()? {
        if field == 1 {
            resource_spans(v.len()?, ri, &mut b, &mut rejected, &mut scratch)?;
            ri += 1;
        }
    }
    let rows = b.rows;
    Ok(b.finish().map(|batch| DecodedSpans {
        batch,
        rows,
        rejected,
    }))
}

// ---- the wire format ---------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    I64(u64),
    Len(&'a [u8]),
    I32,
}

impl<'a> Wire<'a> {
    fn len(self) -> R<&'a [u8]> {
        match self {
            Wire::Len(b) => Ok(b),
            _ => Err(GiveUp),
        }
    }
    fn varint(self) -> R<u64> {
        match self {
            Wire::Varint(v) => Ok(v),
            _ => Err(GiveUp),
        }
    }
    fn fixed64(self) -> R<u64> {
        match self {
            Wire::I64(v) => Ok(v),
            _ => Err(GiveUp),
        }
    }
    fn fixed32(self) -> R<()> {
        match self {
            Wire::I32 => Ok(()),
            _ => Err(GiveUp),
        }
    }
    #[inline]
    fn str(self) -> R<&'a str> {
        utf8(self.len()?)
    }
}

/// `str::from_utf8` with a fast path for ASCII, which nearly every attribute is: the
/// general validator costs about 100 instructions even on a short string.
#[inline]
fn utf8(b: &[u8]) -> R<&str> {
    if b.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(b) });
    }
    std::str::from_utf8(b).map_err(|_| GiveUp)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    #[inline(always)]
    fn varint(&mut self) -> R<u64> {
        // Tags and lengths of attributes are one byte.
        if let Some((&b, rest)) = self.0.split_first()
            && b < 0x80
        {
            self.0 = rest;
            return Ok(u64::from(b));
        }
        self.varint_slow()
    }

    fn varint_slow(&mut self) -> R<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.0.get(i).ok_or(GiveUp)?;
            if i == 9 && b > 1 {
                return Err(GiveUp);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err(GiveUp)
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.0.len() {
            return Err(GiveUp);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next field number and value; `None` at the end. Groups and invalid wire types
    /// give up.
    #[inline]
    fn next(&mut self) -> R<Option<(u32, Wire<'a>)>> {
        if self.0.is_empty() {
            return Ok(None);
        }
        // prost refuses a key above u32::MAX even where the field number would fit.
        let key = u32::try_from(self.varint()?).map_err(|_| GiveUp)?;
        let field = key >> 3;
        if field == 0 {
            return Err(GiveUp);
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Wire::I64(u64::from_le_bytes(b.try_into().map_err(|_| GiveUp)?))
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| GiveUp)?;
                Wire::Len(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::I32
            }
            _ => return Err(GiveUp),
        };
        Ok(Some((field, wire)))
    }
}

// ---- attribute values ---------------------------------------------------------------------

/// An `AnyValue`, borrowed from the request where it is text.
#[derive(Clone, Debug)]
enum Val<'a> {
    /// No value, or a string-table index (profiles only), both rendered as "".
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// An array or key/value list, already rendered as compact JSON.
    Json(String),
}

impl<'a> Val<'a> {
    /// The text `value::into_text` gives.
    fn text(&self) -> Cow<'a, str> {
        match self {
            Val::Empty => Cow::Borrowed(""),
            Val::Str(s) => Cow::Borrowed(s),
            Val::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Val::Int(i) => Cow::Owned(i.to_string()),
            Val::Double(d) => Cow::Owned(d.to_string()),
            Val::Bytes(b) => Cow::Owned(value::text(Some(&AnyValue {
                value: Some(Value::BytesValue(b.to_vec())),
            }))),
            Val::Json(s) => Cow::Owned(s.clone()),
        }
    }

    /// The integer `value::int` gives.
    fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
            Val::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// An `AnyValue` message. More than one member of its oneof gives up (prost would merge).
fn any_value(bytes: &[u8]) -> R<Val<'_>> {
    let mut r = Reader(bytes);
    let mut out = None;
    while let Some((field, v)) = r.next()? {
        let val = match field {
            1 => Val::Str(v.str()?),
            2 => Val::Bool(v.varint()? != 0),
            3 => Val::Int(v.varint()? as i64),
            4 => Val::Double(f64::from_bits(v.fixed64()?)),
            5 => {
                let a = ArrayValue::decode(v.len()?).map_err(|_| GiveUp)?;
                let value = Value::ArrayValue(a);
                if depth(&value) > MAX_VALUE_DEPTH {
                    return Err(GiveUp);
                }
                Val::Json(value::text(Some(&AnyValue { value: Some(value) })))
            }
            6 => {
                let kv = KeyValueList::decode(v.len()?).map_err(|_| GiveUp)?;
                let value = Value::KvlistValue(kv);
                if depth(&value) > MAX_VALUE_DEPTH {
                    return Err(GiveUp);
                }
                Val::Json(value::text(Some(&AnyValue { value: Some(value) })))
            }
            7 => Val::Bytes(v.len()?),
            8 => {
                v.varint()?;
                Val::Empty
            }
            _ => continue,
        };
        if out.replace(val).is_some() {
            return Err(GiveUp);
        }
    }
    Ok(out.unwrap_or(Val::Empty))
}

fn depth(v: &Value) -> usize {
    let inner = |v: &Option<AnyValue>| v.as_ref().and_then(|a| a.value.as_ref()).map_or(0, depth);
    match v {
        Value::ArrayValue(a) => {
            1 + a
                .values
                .iter()
                .map(|x| x.value.as_ref().map_or(0, depth))
                .max()
                .unwrap_or(0)
        }
        Value::KvlistValue(kv) => 1 + kv.values.iter().map(|x| inner(&x.value)).max().unwrap_or(0),
        _ => 0,
    }
}

/// A `KeyValue` message: key and value. A repeated `value` gives up (prost would merge).
#[inline]
fn key_value(bytes: &[u8]) -> R<(&str, Val<'_>)> {
    // What every encoder writes for a string attribute: key (field 1), then a value (field
    // 2) holding only a string (field 1), each length below 128.
    if let [0x0a, klen, rest @ ..] = bytes
        && let Some((key, rest)) = rest.split_at_checked(usize::from(*klen))
        && let [0x12, vlen, 0x0a, slen, text @ ..] = rest
        && usize::from(*vlen) == usize::from(*slen) + 2
        && usize::from(*slen) == text.len()
        && *klen < 0x80
        && *slen < 0x80
    {
        return Ok((utf8(key)?, Val::Str(utf8(text)?)));
    }
    key_value_general(bytes)
}

fn key_value_general(bytes: &[u8]) -> R<(&str, Val<'_>)> {
    let mut r = Reader(bytes);
    let (mut key, mut val) = ("", None);
    while let Some((field, v)) = r.next()? {
        match field {
            1 => key = v.str()?,
            // A second value: prost would merge the two.
            2 if val.is_some() => return Err(GiveUp),
            2 => val = Some(any_value(v.len()?)?),
            3 => {
                v.varint()?;
            }
            _ => {}
        }
    }
    Ok((key, val.unwrap_or(Val::Empty)))
}

/// Appends the key/value pairs of a repeated `KeyValue` field, as text.
fn push_attrs<'a>(kvs: &[&'a [u8]], out: &mut Vec<(&'a str, Cow<'a, str>)>) -> R<()> {
    for kv in kvs {
        let (k, v) = key_value(kv)?;
        out.push((k, v.text()));
    }
    Ok(())
}

// ---- messages -----------------------------------------------------------------------------

/// Buffers reused across the spans of one request (everything borrows from its bytes), so
/// that a plain span allocates nothing of its own.
#[derive(Default)]
struct Scratch<'a> {
    attrs: Vec<(&'a str, Val<'a>)>,
    map: Vec<(&'a str, Cow<'a, str>)>,
    events: Vec<(i64, &'a str, Attrs<'a>)>,
    links: Vec<LinkParts<'a>>,
    status: Vec<&'a [u8]>,
}

fn resource_spans<'a>(
    bytes: &'a [u8],
    ri: usize,
    b: &mut SpansBuilder,
    rejected: &mut Vec<String>,
    scratch: &mut Scratch<'a>,
) -> R<()> {
    // Resource attributes first, wherever they are in the message.
    let mut resource_kvs: Vec<&[u8]> = Vec::new();
    let mut r = Reader(bytes);
    while let Some((field, v)) = r.next()? {
        match field {
            1 => {
                let mut res = Reader(v.len()?);
                while let Some((f, rv)) = res.next()? {
                    match f {
                        1 => resource_kvs.push(rv.len()?),
                        2 => {
                            rv.varint()?;
                        }
                        // Entity refs: rare; prost validates them.
                        3 => return Err(GiveUp),
                        _ => {}
                    }
                }
            }
            2 => {
                v.len()?;
            }
            3 => {
                v.str()?;
            }
            _ => {}
        }
    }
    let mut service_name: Option<Cow<str>> = None;
    let mut resource_attrs = Vec::new();
    for kv in &resource_kvs {
        let (k, v) = key_value(kv)?;
        if k == "service.name" && service_name.is_none() {
            service_name = Some(v.text()).filter(|s| !s.is_empty());
        } else {
            resource_attrs.push((k, v.text()));
        }
    }
    let service_name = service_name.unwrap_or(Cow::Borrowed(UNKNOWN_SERVICE));
    let resource = Resource {
        service_name: &service_name,
        attrs: &resource_attrs,
    };
    let mut r = Reader(bytes);
    let mut si = 0;
    while let Some((field, v)) = r.next()? {
        if field == 2 {
            scope_spans(v.len()?, (ri, si), &resource, b, rejected, scratch)?;
            si += 1;
        }
    }
    Ok(())
}

/// What every span of one `ResourceSpans` shares.
struct Resource<'r> {
    service_name: &'r str,
    attrs: &'r [(&'r str, Cow<'r, str>)],
}

fn scope_spans<'a>(
    bytes: &'a [u8],
    (ri, si): (usize, usize),
    resource: &Resource,
    b: &mut SpansBuilder,
    rejected: &mut Vec<String>,
    scratch: &mut Scratch<'a>,
) -> R<()> {
    let mut scope_name = "";
    let mut r = Reader(bytes);
    while let Some((field, v)) = r.next()? {
        match field {
            1 => {
                let mut s = Reader(v.len()?);
                while let Some((f, sv)) = s.next()? {
                    match f {
                        1 => scope_name = sv.str()?,
                        2 => {
                            sv.str()?;
                        }
                        3 => {
                            key_value(sv.len()?)?;
                        }
                        4 => {
                            sv.varint()?;
                        }
                        _ => {}
                    }
                }
            }
            2 => {
                v.len()?;
            }
            3 => {
                v.str()?;
            }
            _ => {}
        }
    }
    let scope_name = Some(scope_name).filter(|n| !n.is_empty());
    let mut r = Reader(bytes);
    let mut pi = 0;
    while let Some((field, v)) = r.next()? {
        if field == 2 {
            let outcome = span(v.len()?, resource, scope_name, b, scratch);
            if let Err((name, why)) = outcome? {
                rejected.push(format!(
                    "resource_spans[{ri}].scope_spans[{si}].spans[{pi}] (name {name:?}): {why}"
                ));
            }
            pi += 1;
        }
    }
    Ok(())
}

/// One span into the builder; `Ok(Err((name, why)))` when the span is rejected.
// Long on purpose: the hottest loop of OTLP ingest, one pass over a span's wire fields into
// a dozen borrowed locals, then the checks and the appends; split, the locals would travel
// through a struct on every span.
fn span<'a>(
    bytes: &'a [u8],
    resource: &Resource,
    scope_name: Option<&str>,
    b: &mut SpansBuilder,
    s: &mut Scratch<'a>,
) -> R<Result<(), (String, String)>> {
    let (mut trace_id, mut span_id, mut parent): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let (mut trace_state, mut name) = ("", "");
    let (mut kind, mut start, mut end) = (0i32, 0u64, 0u64);
    s.attrs.clear();
    s.map.clear();
    s.events.clear();
    s.links.clear();
    s.status.clear();
    // Everything prost would decode is read (and so checked) before the span is judged.
    let mut r = Reader(bytes);
    while let Some((field, v)) = r.next()? {
        match field {
            1 => trace_id = v.len()?,
            2 => span_id = v.len()?,
            3 => trace_state = v.str()?,
            4 => parent = v.len()?,
            5 => name = v.str()?,
            6 => kind = v.varint()? as i32,
            7 => start = v.fixed64()?,
            8 => end = v.fixed64()?,
            9 => s.attrs.push(key_value(v.len()?)?),
            11 => s.events.push(event(v.len()?)?),
            13 => s.links.push(link(v.len()?)?),
            15 => s.status.push(v.len()?),
            10 | 12 | 14 => {
                v.varint()?;
            }
            16 => v.fixed32()?,
            _ => {}
        }
    }
    // Status: merged field by field, as prost merges a repeated singular message.
    let (mut status_code, mut status_message, mut has_status) = (0i32, "", false);
    for st in &s.status {
        has_status = true;
        let mut r = Reader(st);
        while let Some((field, v)) = r.next()? {
            match field {
                2 => status_message = v.str()?,
                3 => status_code = v.varint()? as i32,
                _ => {}
            }
        }
    }

    let fail = |why: String| Ok(Err((name.to_string(), why)));
    let trace_id = match TraceId::from_bytes(trace_id) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let span_id = match SpanId::from_bytes(span_id) {
        Ok(x) => x,
        Err(e) => return fail(e.to_string()),
    };
    let parent = if parent.is_empty() || parent.iter().all(|&x| x == 0) {
        None
    } else {
        match SpanId::from_bytes(parent) {
            Ok(p) => Some(p),
            Err(e) => return fail(format!("parent {e}")),
        }
    };
    if start == 0 {
        return fail("start_time_unix_nano is missing (0)".into());
    }
    let Ok(start_ns) = i64::try_from(start) else {
        return fail(format!("start_time_unix_nano {start} is out of range"));
    };
    let Ok(end_ns) = i64::try_from(end) else {
        return fail(format!("end_time_unix_nano {end} is out of range"));
    };
    if end_ns < start_ns {
        return fail(format!(
            "end_time_unix_nano {end_ns} is before start_time_unix_nano {start_ns}"
        ));
    }
    let kind = match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    };
    let (status_code, status_message) = if has_status {
        let code = match status_code {
            1 => "ok",
            2 => "error",
            _ => "unset",
        };
        (code, Some(status_message).filter(|m| !m.is_empty()))
    } else {
        ("unset", None)
    };

    // Dedicated columns, then what is left for the map (see `traces::put_attribute`).
    let mut cols: [Option<Cow<str>>; COLUMNS] = Default::default();
    let mut http_status_code: Option<i32> = None;
    let map = &mut s.map;
    for (key, val) in &s.attrs {
        let key = *key;
        let Some(col) = column_for(key) else {
            map.push((key, val.text()));
            continue;
        };
        if col == HTTP_STATUS_CODE {
            match val.int().and_then(|c| i32::try_from(c).ok()) {
                Some(code) if http_status_code.is_none() => http_status_code = Some(code),
                _ => map.push((key, val.text())),
            }
            continue;
        }
        let text = val.text();
        if DASH_IS_NULL.contains(&col) && text == "-" {
            continue;
        }
        let slot = &mut cols[col];
        if slot.is_none() {
            *slot = Some(text);
        } else {
            map.push((key, text));
        }
    }

    b.trace_id.append_value(trace_id.0).map_err(|_| GiveUp)?;
    b.span_id.append_value(span_id.0).map_err(|_| GiveUp)?;
    match parent {
        Some(p) => b.parent_span_id.append_value(p.0).map_err(|_| GiveUp)?,
        None => b.parent_span_id.append_null(),
    }
    b.trace_state
        .append_option(Some(trace_state).filter(|t| !t.is_empty()));
    b.start.append_value(start_ns);
    b.duration.append_value(end_ns - start_ns);
    b.service_name.append_value(resource.service_name);
    b.name.append_value(name);
    b.kind.append_value(kind);
    b.status_code.append_value(status_code);
    b.status_message.append_option(status_message);
    b.http_status_code.append_option(http_status_code);
    for (builder, v) in b.columns.iter_mut().zip(&cols) {
        builder.append_option(v.as_deref());
    }
    b.scope_name.append_option(scope_name);
    append_map(&mut b.attributes, map)?;
    append_map(&mut b.resource_attributes, resource.attrs)?;
    for (time, name, attrs) in &s.events {
        b.event_time.append_value(*time);
        b.event_name.append_value(name);
        append_map(&mut b.event_attributes, attrs)?;
    }
    b.event_lens.push(s.events.len());
    let mut kept = 0;
    for (trace_id, span_id, trace_state, attrs) in &s.links {
        let (Ok(t), Ok(sp)) = (TraceId::from_bytes(trace_id), SpanId::from_bytes(span_id)) else {
            continue;
        };
        b.link_trace_id.append_value(t.0).map_err(|_| GiveUp)?;
        b.link_span_id.append_value(sp.0).map_err(|_| GiveUp)?;
        b.link_trace_state
            .append_option(Some(*trace_state).filter(|t| !t.is_empty()));
        append_map(&mut b.link_attributes, attrs)?;
        kept += 1;
    }
    b.link_lens.push(kept);
    b.rows += 1;
    Ok(Ok(()))
}

type Attrs<'a> = Vec<(&'a str, Cow<'a, str>)>;

fn event(bytes: &[u8]) -> R<(i64, &str, Attrs<'_>)> {
    let (mut time, mut name, mut kvs) = (0u64, "", Vec::new());
    let mut r = Reader(bytes);
    while let Some((field, v)) = r.next()? {
        match field {
            1 => time = v.fixed64()?,
            2 => name = v.str()?,
            3 => kvs.push(v.len()?),
            4 => {
                v.varint()?;
            }
            _ => {}
        }
    }
    let mut attrs = Vec::with_capacity(kvs.len());
    push_attrs(&kvs, &mut attrs)?;
    Ok((i64::try_from(time).unwrap_or(i64::MAX), name, attrs))
}

type LinkParts<'a> = (&'a [u8], &'a [u8], &'a str, Attrs<'a>);

fn link(bytes: &[u8]) -> R<LinkParts<'_>> {
    let (mut trace_id, mut span_id, mut trace_state): (&[u8], &[u8], &str) = (&[], &[], "");
    let mut kvs = Vec::new();
    let mut r = Reader(bytes);
    while let Some((field, v)) = r.next()? {
        match field {
            1 => trace_id = v.len()?,
            2 => span_id = v.len()?,
            3 => trace_state = v.str()?,
            4 => kvs.push(v.len()?),
            5 => {
                v.varint()?;
            }
            6 => v.fixed32()?,
            _ => {}
        }
    }
    let mut attrs = Vec::with_capacity(kvs.len());
    push_attrs(&kvs, &mut attrs)?;
    Ok((trace_id, span_id, trace_state, attrs))
}

fn append_map(
    m: &mut MapBuilder<StringBuilder, StringBuilder>,
    pairs: &[(&str, Cow<str>)],
) -> R<()> {
    for (k, v) in pairs {
        m.keys().append_value(k);
        m.values().append_value(v);
    }
    m.append(true).map_err(|_| GiveUp)
}

// ---- dedicated columns --------------------------------------------------------------------

/// Optional string columns, in schema order (after `http_method` comes `http_status_code`,
/// an integer, kept apart).
const COLUMNS: usize = 16;
const REQUEST_ID: usize = 0;
const HTTP_METHOD: usize = 1;
const HTTP_URL: usize = 2;
const HTTP_PROTOCOL: usize = 3;
const USER_AGENT: usize = 4;
const UPSTREAM_CLUSTER: usize = 5;
const UPSTREAM_ADDRESS: usize = 6;
const RESPONSE_FLAGS: usize = 7;
const PEER_ADDRESS: usize = 8;
const DOWNSTREAM_CLUSTER: usize = 9;
const NODE_ID: usize = 10;
const COMPONENT: usize = 11;
const ISTIO_CANONICAL_SERVICE: usize = 12;
const ISTIO_CANONICAL_REVISION: usize = 13;
const ISTIO_NAMESPACE: usize = 14;
const ISTIO_MESH_ID: usize = 15;
/// Not a string column: `http_status_code`.
const HTTP_STATUS_CODE: usize = usize::MAX;

/// Envoy's own tags use `-` for "no value".
const DASH_IS_NULL: [usize; 5] = [
    UPSTREAM_CLUSTER,
    UPSTREAM_ADDRESS,
    RESPONSE_FLAGS,
    PEER_ADDRESS,
    DOWNSTREAM_CLUSTER,
];

/// The same mapping as `traces::column_for`.
fn column_for(key: &str) -> Option<usize> {
    Some(match key {
        "guid:x-request-id" => REQUEST_ID,
        "http.method" | "http.request.method" => HTTP_METHOD,
        "http.status_code" | "http.response.status_code" => HTTP_STATUS_CODE,
        "http.url" | "url.full" => HTTP_URL,
        "http.protocol" => HTTP_PROTOCOL,
        "user_agent" | "user_agent.original" => USER_AGENT,
        "upstream_cluster" | "upstream_cluster.name" => UPSTREAM_CLUSTER,
        "upstream_address" => UPSTREAM_ADDRESS,
        "response_flags" => RESPONSE_FLAGS,
        "peer.address" => PEER_ADDRESS,
        "downstream_cluster" => DOWNSTREAM_CLUSTER,
        "node_id" => NODE_ID,
        "component" => COMPONENT,
        "istio.canonical_service" => ISTIO_CANONICAL_SERVICE,
        "istio.canonical_revision" => ISTIO_CANONICAL_REVISION,
        "istio.namespace" => ISTIO_NAMESPACE,
        "istio.mesh_id" => ISTIO_MESH_ID,
        _ => return None,
    })
}

// ---- the batch ----------------------------------------------------------------------------

type StringMapBuilder = MapBuilder<StringBuilder, StringBuilder>;

fn map_builder() -> StringMapBuilder {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

/// Column builders of one `spans` batch, in schema order.
struct SpansBuilder {
    rows: usize,
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent_span_id: FixedSizeBinaryBuilder,
    trace_state: StringBuilder,
    start: TimestampNanosecondBuilder,
    duration: Int64Builder,
    service_name: StringBuilder,
    name: StringBuilder,
    kind: StringBuilder,
    status_code: StringBuilder,
    status_message: StringBuilder,
    http_status_code: Int32Builder,
    /// The `COLUMNS` optional string columns from `request_id` to `istio_mesh_id`.
    columns: Vec<StringBuilder>,
    scope_name: StringBuilder,
    attributes: StringMapBuilder,
    resource_attributes: StringMapBuilder,
    event_time: TimestampNanosecondBuilder,
    event_name: StringBuilder,
    event_attributes: StringMapBuilder,
    event_lens: Vec<usize>,
    link_trace_id: FixedSizeBinaryBuilder,
    link_span_id: FixedSizeBinaryBuilder,
    link_trace_state: StringBuilder,
    link_attributes: StringMapBuilder,
    link_lens: Vec<usize>,
}

impl Default for SpansBuilder {
    fn default() -> Self {
        SpansBuilder {
            rows: 0,
            trace_id: FixedSizeBinaryBuilder::new(16),
            span_id: FixedSizeBinaryBuilder::new(8),
            parent_span_id: FixedSizeBinaryBuilder::new(8),
            trace_state: StringBuilder::new(),
            start: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            duration: Int64Builder::new(),
            service_name: StringBuilder::new(),
            name: StringBuilder::new(),
            kind: StringBuilder::new(),
            status_code: StringBuilder::new(),
            status_message: StringBuilder::new(),
            http_status_code: Int32Builder::new(),
            columns: (0..COLUMNS).map(|_| StringBuilder::new()).collect(),
            scope_name: StringBuilder::new(),
            attributes: map_builder(),
            resource_attributes: map_builder(),
            event_time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            event_name: StringBuilder::new(),
            event_attributes: map_builder(),
            event_lens: Vec::new(),
            link_trace_id: FixedSizeBinaryBuilder::new(16),
            link_span_id: FixedSizeBinaryBuilder::new(8),
            link_trace_state: StringBuilder::new(),
            link_attributes: map_builder(),
            link_lens: Vec::new(),
        }
    }
}

impl SpansBuilder {
    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let events = list_of(
            span_event_fields(),
            vec![
                Arc::new(self.event_time.finish()),
                Arc::new(self.event_name.finish()),
                Arc::new(self.event_attributes.finish()),
            ],
            &self.event_lens,
        )?;
        let links = list_of(
            span_link_fields(),
            vec![
                Arc::new(self.link_trace_id.finish()),
                Arc::new(self.link_span_id.finish()),
                Arc::new(self.link_trace_state.finish()),
                Arc::new(self.link_attributes.finish()),
            ],
            &self.link_lens,
        )?;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.service_name.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
        ];
        let mut strings = self
            .columns
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef);
        cols.extend(strings.by_ref().take(HTTP_METHOD + 1));
        cols.push(Arc::new(self.http_status_code.finish()));
        cols.extend(strings);
        cols.extend([
            Arc::new(self.scope_name.finish()) as ArrayRef,
            Arc::new(self.attributes.finish()),
            Arc::new(self.resource_attributes.finish()),
            events,
            links,
        ]);
        RecordBatch::try_new(Table::Spans.schema(), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::traces::spans_from_request;
    use meshscope_schemas::rows::spans_batch;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    /// The general path's answer for the same bytes.
    fn via_prost(bytes: &[u8]) -> (RecordBatch, Vec<String>) {
        let req = ExportTraceServiceRequest::decode(bytes).unwrap();
        let (rows, rejected) = spans_from_request(req);
        (spans_batch(&rows).unwrap(), rejected)
    }

    /// The fuzz seeds, found crashes included (`fuzz/seeds/otlp_wire/regression-*`).
    #[test]
    fn agrees_with_the_prost_path_on_the_fuzz_seeds() {
        let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/");
        let paths = ["otlp", "otlp_wire"]
            .iter()
            .flat_map(|d| std::fs::read_dir(format!("{seeds}{d}")).unwrap())
            .map(|e| e.unwrap().path());
        let mut checked = 0;
        for path in paths {
            if path.extension().is_none_or(|e| e != "pb") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            if ExportTraceServiceRequest::decode(&bytes[..]).is_err() {
                assert!(
                    spans_from_protobuf(&bytes).is_err(),
                    "{} is refused by prost but not by the fast path",
                    path.display()
                );
                continue;
            }
            let fast = spans_from_protobuf(&bytes).unwrap().unwrap();
            let (batch, rejected) = via_prost(&bytes);
            assert_eq!(fast.batch, batch, "{}", path.display());
            assert_eq!(fast.rejected, rejected);
            checked += 1;
        }
        assert!(checked > 0);
    }
}
