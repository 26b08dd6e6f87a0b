//! Istio's JSON access-log encoding (`meshConfig.accessLogEncoding: JSON`): one object per
//! line, keyed `start_time`, `method`, `path`, `response_code`, … (see [`target_of_key`]).
//!
//! Envoy types values in JSON (`"response_code": 200`, `null` for unset), but configs that
//! quote every operator produce strings (`"200"`, `"-"`); both are accepted, and so is a
//! string `upstream_service_time` (it is a header). Keys meshscope has no column for are kept
//! in `ParsedLine::extra`, nested values rendered as JSON.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserializer as _, MapAccess, SeqAccess, Visitor};

use super::format::Target;
use super::values::apply;
use super::{LineError, Location, ParsedLine, Sink, snippet};

/// The `RequestRow` column of a key of Istio's JSON format.
pub fn target_of_key(key: &str) -> Target {
    match key {
        "start_time" => Target::StartTime,
        "method" => Target::Method,
        "path" => Target::Path,
        "protocol" => Target::Protocol,
        "response_code" => Target::ResponseCode,
        "response_flags" => Target::ResponseFlags,
        "response_code_details" => Target::ResponseCodeDetails,
        "connection_termination_details" => Target::ConnectionTerminationDetails,
        "upstream_transport_failure_reason" => Target::UpstreamTransportFailureReason,
        "bytes_received" => Target::BytesReceived,
        "bytes_sent" => Target::BytesSent,
        "duration" => Target::Duration,
        "upstream_service_time" => Target::UpstreamServiceTime,
        "x_forwarded_for" => Target::XForwardedFor,
        "user_agent" => Target::UserAgent,
        "request_id" => Target::RequestId,
        "authority" => Target::Authority,
        "upstream_host" => Target::UpstreamHost,
        "upstream_cluster" => Target::UpstreamCluster,
        "upstream_local_address" => Target::UpstreamLocalAddress,
        "downstream_local_address" => Target::DownstreamLocalAddress,
        "downstream_remote_address" => Target::DownstreamRemoteAddress,
        "requested_server_name" => Target::RequestedServerName,
        "route_name" => Target::RouteName,
        "traceparent" => Target::Traceparent,
        "trace_id" => Target::TraceId,
        _ => Target::Extra,
    }
}

/// Parses one JSON access-log line.
pub fn parse_json_line(line: &str) -> Result<ParsedLine, LineError> {
    ParsedLine::fill(|sink| parse_json_into(line, sink))
}

pub(crate) fn parse_json_into(line: &str, sink: &mut Sink) -> Result<(), LineError> {
    let mut de = serde_json::Deserializer::from_str(line);
    let parsed = de
        .deserialize_map(LineVisitor { sink })
        .and_then(|typed| de.end().map(|()| typed));
    match parsed {
        Ok(typed) => typed,
        Err(e) => Err(LineError::Json {
            message: e.to_string(),
        }),
    }
}

/// Fills the row while serde walks the object, so values borrow from the line. The typing
/// result is nested inside serde's so that a bad value does not look like bad JSON.
struct LineVisitor<'s, 'r> {
    sink: &'s mut Sink<'r>,
}

impl<'de> Visitor<'de> for LineVisitor<'_, '_> {
    type Value = Result<(), LineError>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an Envoy JSON access-log object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut first_error = None;
        while let Some(Key(key)) = map.next_key()? {
            let value: Scalar = map.next_value()?;
            if first_error.is_none() {
                first_error = store(self.sink, &key, value).err();
            }
        }
        Ok(match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        })
    }
}

fn store(sink: &mut Sink, key: &str, value: Scalar) -> Result<(), LineError> {
    let target = target_of_key(key);
    if target == Target::Extra {
        sink.push_extra(|| key.to_string(), value.render().as_deref());
        return Ok(());
    }
    let text = match &value {
        Scalar::Null => return Ok(()),
        Scalar::Bool(_) | Scalar::Nested(_) => None,
        _ => value.render(),
    };
    let result = match &text {
        Some(t) => apply(sink, target, t),
        None => Err("a string or a number"),
    };
    result.map_err(|expected| LineError::Value {
        at: Location::Key(key.to_string()),
        value: snippet(&value.render().unwrap_or(Cow::Borrowed("null"))),
        expected,
    })
}

/// A JSON object key, borrowed from the line unless it contains escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor).map(Key)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A JSON value as an access log holds it.
enum Scalar<'de> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'de, str>),
    Nested(serde_json::Value),
}

impl<'de> Scalar<'de> {
    /// The value as text; `None` for null.
    fn render(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Scalar::Null => return None,
            Scalar::Bool(b) => Cow::Owned(b.to_string()),
            Scalar::I64(n) => Cow::Owned(n.to_string()),
            Scalar::U64(n) => Cow::Owned(n.to_string()),
            // Display prints 35.0 as "35", so integral floats type as integers.
            Scalar::F64(n) => Cow::Owned(n.to_string()),
            Scalar::Str(s) => Cow::Borrowed(s.as_ref()),
            Scalar::Nested(v) => Cow::Owned(v.to_string()),
        })
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        serde_json::Value::deserialize(MapAccessDeserializer::new(map)).map(Scalar::Nested)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        serde_json::Value::deserialize(SeqAccessDeserializer::new(seq)).map(Scalar::Nested)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ExtraField;
    use super::*;

    #[test]
    fn typed_and_quoted_values() {
        let p = parse_json_line(
            r#"{"start_time":"2026-11-26T01:02:03.456Z","method":"GET","path":"/p\"q","response_code":"503","bytes_sent":81,"duration":0.0,"upstream_service_time":null,"response_flags":"-","x":{"a":[1]},"y":null,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#,
        )
        .unwrap();
        assert!(p.has_start_time);
        assert_eq!(p.row.path.as_deref(), Some("/p\"q"));
        assert_eq!(p.row.response_code, 503);
        assert_eq!(p.row.bytes_sent, 81);
        assert_eq!(p.row.upstream_service_time_ms, None);
        assert_eq!(p.row.response_flags, None);
        assert!(p.row.trace_id.is_some());
        assert_eq!(
            p.extra,
            vec![
                ExtraField {
                    name: "x".into(),
                    value: Some(r#"{"a":[1]}"#.into())
                },
                ExtraField {
                    name: "y".into(),
                    value: None
                },
            ]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse_json_line(r#"{"method":"GET","duration":"fast"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"key "duration" is "fast", expected a number"#
        );
        let e = parse_json_line(r#"{"response_code":true}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"key "response_code" is "true", expected a string or a number"#
        );
        let e = parse_json_line(r#"{"method":"GET""#).unwrap_err();
        assert!(matches!(e, LineError::Json { .. }), "{e}");
        assert!(e.to_string().contains("column"), "{e}");
        assert!(parse_json_line("[1,2]").is_err());
        assert!(parse_json_line(r#"{"a":1} trailing"#).is_err());
    }
}
