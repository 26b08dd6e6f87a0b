//! OTLP/JSON decoding.
//!
//! `opentelemetry-proto`'s `with-serde` types implement the OTLP/JSON mapping: lowerCamelCase
//! keys, trace and span ids as hex (either case), enums as integers, 64-bit integers as
//! strings or numbers (`"startTimeUnixNano": "1700…"`, `"intValue": "42"`), unknown keys
//! ignored. They refuse a few things protobuf-JSON encoders (Go's `protojson`, for one) write
//! and the OpenTelemetry Collector accepts: enum names (`"kind": "SPAN_KIND_SERVER"`,
//! `"code": "STATUS_CODE_ERROR"`), `null` for a field, and 32-bit integers as strings
//! (`"droppedAttributesCount": "0"`). When the fast path fails on a body of at most
//! `LENIENT_MAX_BYTES`, the body is normalised as a JSON tree and decoded once more; the
//! size cap bounds the tree's memory. The first error is reported if that fails too.
//! Base64 ids (the generic protobuf-JSON mapping) are not accepted: OTLP says hex, as the
//! Collector does.

use opentelemetry_proto::tonic::logs::v1::SeverityNumber;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Bodies up to this size get the lenient second attempt.
pub const LENIENT_MAX_BYTES: usize = 1 << 20;

/// Decodes an OTLP/JSON body; see the module docs for what is accepted.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let first = match serde_json::from_slice(bytes) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if bytes.len() > LENIENT_MAX_BYTES || !first.is_data() {
        return Err(first);
    }
    let Ok(mut tree) = serde_json::from_slice::<Value>(bytes) else {
        return Err(first);
    };
    normalise(&mut tree);
    serde_json::from_value(tree).map_err(|_| first)
}

fn normalise(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            for (k, v) in map.iter_mut() {
                let Value::String(s) = v else {
                    normalise(v);
                    continue;
                };
                let n = match k.as_str() {
                    "kind" => SpanKind::from_str_name(s).map(|e| e as i64),
                    "code" => StatusCode::from_str_name(s).map(|e| e as i64),
                    "severityNumber" => SeverityNumber::from_str_name(s).map(|e| e as i64),
                    "flags"
                    | "droppedAttributesCount"
                    | "droppedEventsCount"
                    | "droppedLinksCount" => s.trim().parse::<u32>().ok().map(i64::from),
                    _ => None,
                };
                if let Some(n) = n {
                    *v = Value::from(n);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    #[test]
    fn protojson_style_bodies_are_accepted() {
        let body = br#"{"resourceSpans":[{"resource":null,"scopeSpans":[{"spans":[{
            "traceId":"0102030405060708090A0B0C0D0E0F10","spanId":"0102030405060708",
            "parentSpanId":null,"kind":"SPAN_KIND_SERVER","startTimeUnixNano":"1",
            "droppedAttributesCount":"0","status":{"code":"STATUS_CODE_ERROR"}}]}]}]}"#;
        let req: ExportTraceServiceRequest = decode(body).expect("lenient decode");
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));
        assert_eq!(span.trace_id.len(), 16);

        let logs = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[
            {"severityNumber":"SEVERITY_NUMBER_INFO","timeUnixNano":"5"}]}]}]}"#;
        let req: ExportLogsServiceRequest = decode(logs).expect("lenient decode");
        assert_eq!(
            req.resource_logs[0].scope_logs[0].log_records[0].severity_number,
            9
        );
    }

    #[test]
    fn real_errors_keep_the_first_message() {
        let e = decode::<ExportTraceServiceRequest>(
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":"SERVER?"}]}]}]}"#,
        )
        .expect_err("not an enum name");
        assert!(e.to_string().contains("SERVER?"), "{e}");
        let e = decode::<ExportTraceServiceRequest>(b"{\"resourceSpans\": [").expect_err("eof");
        assert!(e.is_eof());
    }
}
