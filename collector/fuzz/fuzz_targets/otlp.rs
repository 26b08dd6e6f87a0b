//! Bytes as an OTLP export body, protobuf and JSON, traces and logs: decoded, turned into
//! rows and into the Arrow batch that would be stored.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use meshscope_collector::envoy::access_log::AccessLogFormat;
use meshscope_collector::otlp::{json, logs, traces};
use meshscope_schemas::rows::{requests_batch, spans_batch};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

static ISTIO: LazyLock<AccessLogFormat> = LazyLock::new(AccessLogFormat::istio);

fn store_traces(req: ExportTraceServiceRequest) {
    let (rows, _) = traces::spans_from_request(req);
    spans_batch(&rows).expect("rows from any request build a spans batch");
}

fn store_logs(req: ExportLogsServiceRequest) {
    let (rows, _) = logs::requests_from_request(req, &|line: &str| {
        ISTIO.parse_line(line).ok().map(|p| p.row)
    });
    requests_batch(&rows).expect("rows from any request build a requests batch");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = ExportTraceServiceRequest::decode(data) {
        store_traces(req);
    }
    if let Ok(req) = ExportLogsServiceRequest::decode(data) {
        store_logs(req);
    }
    if let Ok(req) = json::decode::<ExportTraceServiceRequest>(data) {
        store_traces(req);
    }
    if let Ok(req) = json::decode::<ExportLogsServiceRequest>(data) {
        store_logs(req);
    }
});
