//! OTLP `AnyValue` as the text the `attributes` maps store, and as typed values for the
//! dedicated columns.
//!
//! Scalars render as their plain text (`true`, `42`, `1.5`); arrays and key/value lists as
//! compact JSON; bytes as lowercase hex (the way ids are shown everywhere else).

use meshscope_schemas::rows::Attrs;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

/// The text of a value; an empty value is the empty string.
pub(crate) fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None | Some(Value::StringValueStrindex(_)) => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(v @ (Value::ArrayValue(_) | Value::KvlistValue(_))) => json(Some(v)).to_string(),
    }
}

/// Moves the text out of a value without copying strings.
pub(crate) fn into_text(v: Option<AnyValue>) -> String {
    match v.and_then(|v| v.value) {
        Some(Value::StringValue(s)) => s,
        other => text(Some(&AnyValue { value: other })),
    }
}

/// A whole attribute list as text pairs, order kept.
pub(crate) fn attrs(kvs: Vec<KeyValue>) -> Attrs {
    kvs.into_iter()
        .map(|kv| (kv.key, into_text(kv.value)))
        .collect()
}

/// An integer from an int, an integral double, or a decimal string (Envoy sends
/// `http.status_code` as the string "200").
pub(crate) fn int(v: Option<&AnyValue>) -> Option<i64> {
    match v?.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn json(v: Option<&Value>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        None | Some(Value::StringValueStrindex(_)) => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or_else(|| J::String(d.to_string()), J::Number)
        }
        Some(Value::BytesValue(b)) => J::String(hex(b)),
        Some(Value::ArrayValue(a)) => {
            J::Array(a.values.iter().map(|v| json(v.value.as_ref())).collect())
        }
        Some(Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        json(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                    )
                })
                .collect(),
        ),
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn v(x: Value) -> AnyValue {
        AnyValue { value: Some(x) }
    }

    #[test]
    fn scalars_arrays_and_maps_render_as_text() {
        assert_eq!(text(Some(&v(Value::IntValue(-3)))), "-3");
        assert_eq!(text(Some(&v(Value::DoubleValue(1.5)))), "1.5");
        assert_eq!(text(Some(&v(Value::BoolValue(true)))), "true");
        assert_eq!(text(Some(&v(Value::BytesValue(vec![0xab, 1])))), "ab01");
        assert_eq!(text(None), "");
        let arr = v(Value::ArrayValue(ArrayValue {
            values: vec![
                v(Value::StringValue("a".into())),
                v(Value::IntValue(2)),
                v(Value::DoubleValue(f64::NAN)),
            ],
        }));
        assert_eq!(text(Some(&arr)), r#"["a",2,"NaN"]"#);
        let map = v(Value::KvlistValue(KeyValueList {
            values: vec![KeyValue {
                key: "k".into(),
                value: Some(arr),
                ..Default::default()
            }],
        }));
        assert_eq!(text(Some(&map)), r#"{"k":["a",2,"NaN"]}"#);
        assert_eq!(int(Some(&v(Value::StringValue(" 200".into())))), Some(200));
        assert_eq!(int(Some(&v(Value::DoubleValue(503.0)))), Some(503));
        assert_eq!(int(Some(&v(Value::StringValue("abc".into())))), None);
    }
}
