//! The protobuf fast path (`otlp::wire`, bytes straight into Arrow) against the general path
//! (prost, `spans_from_request`, `spans_batch`): whatever the fast path accepts, prost must
//! accept too, and both must give the same batch and the same rejection messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshscope_collector::otlp::{traces, wire};
use meshscope_schemas::rows::spans_batch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(fast) = wire::spans_from_protobuf(data) else {
        return; // left to prost
    };
    let fast = fast.expect("the fast path builds a valid spans batch");
    let req = match ExportTraceServiceRequest::decode(data) {
        Ok(r) => r,
        Err(e) => panic!("the fast path accepted a body prost refuses: {e}"),
    };
    let (rows, rejected) = traces::spans_from_request(req);
    let batch = spans_batch(&rows).expect("rows build a spans batch");
    assert_eq!(fast.rows, rows.len());
    assert_eq!(fast.rejected, rejected);
    assert_eq!(fast.batch, batch);
});
