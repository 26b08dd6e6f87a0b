//! `ExportLogsServiceRequest` from Envoy's OpenTelemetry access logger
//! (`envoy.access_loggers.open_telemetry`, Istio's `envoyOtelAls` provider) → `requests` rows.
//!
//! Envoy sends one log record per request. What it holds depends on the logger's config:
//! - `body`: usually the formatted text line (Istio's default format). That text is parsed by
//!   the access-log module's parser, passed in as `body_parser`; this module does not parse
//!   access-log text itself. A key/value-list body is read like attributes.
//! - `attributes`: typed fields, typically named as in Istio's JSON access-log format
//!   (`start_time`, `method`, `path`, `response_code`, `response_flags`, `duration`,
//!   `upstream_cluster`, `request_id`, …; see `FIELDS`). They override what the body gave.
//! - `time_unix_nano`: Envoy sets it to the request's start time; used when no `start_time`
//!   field says otherwise. The record's `trace_id` (set when the request was traced) wins over
//!   a `traceparent` field.
//! - resource attributes: Envoy adds `node_name` (the node id), used as `proxy`.
//!
//! A record with neither known fields nor a body the parser accepts is rejected (partial
//! success), as is one without any time. Unknown attributes are not stored: `requests` has a
//! fixed set of columns. Derived columns (reporter, source/destination identity) are left to
//! the `RowEnricher` the ingest path runs.

use meshscope_schemas::TraceId;
use meshscope_schemas::rows::{RequestRow, Text};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;

use super::value;

/// What `requests.log_source` says for rows that came in as OTLP logs.
pub const LOG_SOURCE: &str = "otlp";

/// The field names (attribute keys) this module understands, Istio's JSON access-log names
/// first, then the header-style aliases some `log_format`s use.
pub const FIELDS: &[&str] = &[
    "start_time",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "upstream_transport_failure_reason",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "route_name",
    "traceparent",
    ":method",
    ":authority",
    "x-request-id",
    "x_request_id",
    "x-forwarded-for",
    "user-agent",
    "x-envoy-upstream-service-time",
];

/// Converts a logs export into rows and one message per rejected record. `body_parser`
/// parses a string body (Envoy's formatted access-log line); pass `&|_| None` when there is
/// none.
pub fn requests_from_request(
    req: ExportLogsServiceRequest,
    body_parser: &dyn Fn(&str) -> Option<RequestRow>,
) -> (Vec<RequestRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    for (ri, rl) in req.resource_logs.into_iter().enumerate() {
        let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
        let proxy = ["node_name", "k8s.pod.name"].iter().find_map(|k| {
            resource
                .iter()
                .find(|kv| kv.key == *k)
                .map(|kv| value::text(kv.value.as_ref()))
                .filter(|s| !s.is_empty())
                .map(Text::from)
        });
        for (si, sl) in rl.scope_logs.into_iter().enumerate() {
            for (li, record) in sl.log_records.into_iter().enumerate() {
                match request_row(record, body_parser) {
                    Ok(mut row) => {
                        if row.proxy.is_none() {
                            row.proxy.clone_from(&proxy);
                        }
                        rows.push(row);
                    }
                    Err(why) => rejected.push(format!(
                        "resource_logs[{ri}].scope_logs[{si}].log_records[{li}]: {why}"
                    )),
                }
            }
        }
    }
    (rows, rejected)
}

fn request_row(
    record: LogRecord,
    body_parser: &dyn Fn(&str) -> Option<RequestRow>,
) -> Result<RequestRow, String> {
    let mut fields: Vec<KeyValue> = record.attributes;
    let mut body_text = None;
    match record.body.and_then(|b| b.value) {
        Some(Value::StringValue(s)) => body_text = Some(s),
        // A structured body is read like attributes; attributes win on a clash.
        Some(Value::KvlistValue(kv)) => {
            let attrs = std::mem::take(&mut fields);
            fields = kv.values;
            fields.extend(attrs);
        }
        _ => {}
    }
    let parsed = body_text.as_deref().and_then(body_parser);
    let from_body = parsed.is_some();
    let mut row = parsed.unwrap_or_default();
    let mut start_from_field = None;
    let mut traceparent = None;
    let mut known = 0usize;
    for kv in &fields {
        match apply_field(&mut row, &kv.key, kv.value.as_ref()) {
            Applied::Column => known += 1,
            Applied::StartTime(t) => start_from_field = t.or(start_from_field),
            Applied::TraceParent(t) => traceparent = t,
            Applied::Unknown => {}
        }
    }
    if !from_body && known == 0 {
        let keys: Vec<&str> = fields.iter().take(8).map(|kv| kv.key.as_str()).collect();
        return Err(match (&body_text, keys.is_empty()) {
            (Some(_), _) => format!(
                "the body is not an access-log line the configured parser accepts, and no attribute is a known access-log field (attributes: {keys:?})"
            ),
            (None, true) => "no body and no attributes: not an access-log record".to_string(),
            (None, false) => format!(
                "no attribute is a known access-log field (attributes: {keys:?}); known fields are Istio's JSON access-log names such as response_code, upstream_cluster, request_id"
            ),
        });
    }
    let record_time = [record.time_unix_nano, record.observed_time_unix_nano]
        .into_iter()
        .find(|&t| t != 0)
        .and_then(|t| i64::try_from(t).ok());
    row.start_time_unix_nano = match start_from_field {
        Some(t) => t,
        None if row.start_time_unix_nano != 0 => row.start_time_unix_nano,
        None => record_time.ok_or_else(|| {
            "no start time: no start_time field, and time_unix_nano and observed_time_unix_nano are 0"
                .to_string()
        })?,
    };
    if let Ok(t) = TraceId::from_bytes(&record.trace_id) {
        row.trace_id = Some(t);
    } else if traceparent.is_some() {
        row.trace_id = traceparent;
    }
    row.log_source = Some(Text::const_new(LOG_SOURCE));
    Ok(row)
}

enum Applied {
    Column,
    StartTime(Option<i64>),
    TraceParent(Option<TraceId>),
    Unknown,
}

/// Sets the column a field names. `-` and empty strings are null (Envoy prints `-` for
/// "not available"); numbers that do not parse leave the column as it was.
fn apply_field(row: &mut RequestRow, key: &str, v: Option<&AnyValue>) -> Applied {
    let text = || {
        let t = value::text(v);
        (!t.is_empty() && t != "-").then(|| Text::from(t))
    };
    let int = || value::int(v);
    match key {
        "start_time" => return Applied::StartTime(text().and_then(|t| parse_time(&t))),
        "traceparent" => return Applied::TraceParent(text().and_then(|t| traceparent(&t))),
        "method" | ":method" => row.method = text(),
        "path" => row.path = text(),
        "protocol" => row.protocol = text(),
        "response_code" => {
            if let Some(c) = int().and_then(|c| i32::try_from(c).ok()) {
                row.response_code = c;
            }
        }
        "response_flags" => row.response_flags = text(),
        "response_code_details" => row.response_code_details = text(),
        "connection_termination_details" => row.connection_termination_details = text(),
        "upstream_transport_failure_reason" => row.upstream_transport_failure_reason = text(),
        "bytes_received" => row.bytes_received = int().unwrap_or(row.bytes_received),
        "bytes_sent" => row.bytes_sent = int().unwrap_or(row.bytes_sent),
        "duration" => row.duration_ms = int().unwrap_or(row.duration_ms),
        "upstream_service_time" | "x-envoy-upstream-service-time" => {
            row.upstream_service_time_ms = int()
        }
        "x_forwarded_for" | "x-forwarded-for" => row.x_forwarded_for = text(),
        "user_agent" | "user-agent" => row.user_agent = text(),
        "request_id" | "x-request-id" | "x_request_id" => row.request_id = text(),
        "authority" | ":authority" => row.authority = text(),
        "upstream_host" => row.upstream_host = text(),
        "upstream_cluster" => row.upstream_cluster = text(),
        "upstream_local_address" => row.upstream_local_address = text(),
        "downstream_local_address" => row.downstream_local_address = text(),
        "downstream_remote_address" => row.downstream_remote_address = text(),
        "requested_server_name" => row.requested_server_name = text(),
        "route_name" => row.route_name = text(),
        _ => return Applied::Unknown,
    }
    Applied::Column
}

/// `%START_TIME%` as Envoy prints it by default: RFC 3339 (`2025-11-26T00:00:00.123Z`).
fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()?
        .timestamp_nanos_opt()
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn traceparent(s: &str) -> Option<TraceId> {
    let mut parts = s.trim().split('-');
    let _version = parts.next()?;
    let id = parts.next()?;
    if id.len() != 32 {
        return None;
    }
    TraceId::from_hex(id).ok().filter(|t| t.0 != [0; 16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::KeyValueList;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn s(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn i(k: &str, v: i64) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(v)),
            }),
            ..Default::default()
        }
    }

    fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![s(
                        "node_name",
                        "sidecar~10.0.0.5~productpage-v1-x.default~default.svc.cluster.local",
                    )],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    const T0: u64 = 1_764_118_800_123_000_000;

    #[test]
    fn istio_attributes_map_to_columns() {
        let rec = LogRecord {
            time_unix_nano: T0,
            trace_id: vec![7; 16],
            attributes: vec![
                s("start_time", "2025-11-26T01:00:00.500Z"),
                s("method", "GET"),
                s("path", "/reviews/0"),
                s("protocol", "HTTP/1.1"),
                i("response_code", 503),
                s("response_flags", "UO"),
                s(
                    "response_code_details",
                    "upstream_reset_before_response_started{overflow}",
                ),
                s("bytes_received", "0"),
                i("bytes_sent", 81),
                i("duration", 3),
                s("upstream_service_time", "-"),
                s("x-request-id", "b7a0-11"),
                s(
                    "upstream_cluster",
                    "outbound|9080|v1|reviews.default.svc.cluster.local",
                ),
                s("route_name", "default"),
                s("custom", "ignored"),
            ],
            ..Default::default()
        };
        let (rows, rejected) = requests_from_request(request(vec![rec]), &|_| None);
        assert!(rejected.is_empty(), "{rejected:?}");
        let r = &rows[0];
        assert_eq!(r.start_time_unix_nano, 1_764_118_800_500_000_000);
        assert_eq!(r.response_code, 503);
        assert_eq!(r.response_flags.as_deref(), Some("UO"));
        assert_eq!((r.bytes_received, r.bytes_sent, r.duration_ms), (0, 81, 3));
        assert_eq!(r.upstream_service_time_ms, None);
        assert_eq!(r.request_id.as_deref(), Some("b7a0-11"));
        assert_eq!(r.trace_id, Some(TraceId([7; 16])));
        assert_eq!(r.log_source.as_deref(), Some("otlp"));
        assert!(r.proxy.as_deref().unwrap().starts_with("sidecar~"));
    }

    #[test]
    fn string_body_goes_to_the_parser_and_attributes_override() {
        let parser = |line: &str| {
            line.starts_with('[').then(|| RequestRow {
                start_time_unix_nano: 42,
                method: Some("POST".into()),
                response_code: 200,
                ..Default::default()
            })
        };
        let body = |s: &str| {
            Some(AnyValue {
                value: Some(Value::StringValue(s.into())),
            })
        };
        let records = vec![
            LogRecord {
                time_unix_nano: T0,
                body: body("[2025-11-26T01:00:00.000Z] \"POST /x HTTP/1.1\" 200 - ..."),
                attributes: vec![
                    i("response_code", 201),
                    s(
                        "traceparent",
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    ),
                ],
                ..Default::default()
            },
            LogRecord {
                time_unix_nano: T0,
                body: body("hello"),
                ..Default::default()
            },
            LogRecord {
                body: Some(AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList {
                        values: vec![i("response_code", 404), s("path", "/p")],
                    })),
                }),
                observed_time_unix_nano: T0,
                ..Default::default()
            },
            LogRecord {
                attributes: vec![i("response_code", 200)],
                ..Default::default()
            },
        ];
        let (rows, rejected) = requests_from_request(request(records), &parser);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].method.as_deref(), Some("POST"));
        assert_eq!(rows[0].response_code, 201);
        assert_eq!(
            rows[0].start_time_unix_nano, 42,
            "the parsed line's time wins over time_unix_nano"
        );
        assert_eq!(
            rows[0].trace_id.map(|t| t.to_hex()).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(rows[1].response_code, 404);
        assert_eq!(rows[1].start_time_unix_nano, T0 as i64);
        assert_eq!(rejected.len(), 2);
        assert!(rejected[0].starts_with("resource_logs[0].scope_logs[0].log_records[1]: the body"));
        assert!(rejected[1].contains("log_records[3]: no start time"));
    }
}
