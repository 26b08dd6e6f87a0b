//! Edge rollups from `requests` rows, keyed by Istio's standard metric labels.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampNanosecondType};
use meshscope_schemas::table::requests as rq;

use super::RollupState;
use super::sketch::LatencySketch;

/// Istio's default buckets of `istio_request_duration_milliseconds` (upper bounds; +Inf last).
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's default buckets of `istio_request_bytes` / `istio_response_bytes`.
pub const SIZE_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// The labels of one edge rollup: Istio's standard metric labels, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
pub enum Label {
    Reporter,
    SourceWorkload,
    SourceWorkloadNamespace,
    SourceApp,
    SourceVersion,
    SourceCanonicalService,
    DestinationWorkload,
    DestinationWorkloadNamespace,
    DestinationApp,
    DestinationVersion,
    DestinationCanonicalService,
    DestinationService,
    DestinationServiceName,
    DestinationServiceNamespace,
    RequestProtocol,
    ResponseCode,
    ResponseFlags,
}

pub const LABEL_COUNT: usize = 17;

impl Label {
    pub const ALL: [Label; LABEL_COUNT] = [
        Label::Reporter,
        Label::SourceWorkload,
        Label::SourceWorkloadNamespace,
        Label::SourceApp,
        Label::SourceVersion,
        Label::SourceCanonicalService,
        Label::DestinationWorkload,
        Label::DestinationWorkloadNamespace,
        Label::DestinationApp,
        Label::DestinationVersion,
        Label::DestinationCanonicalService,
        Label::DestinationService,
        Label::DestinationServiceName,
        Label::DestinationServiceNamespace,
        Label::RequestProtocol,
        Label::ResponseCode,
        Label::ResponseFlags,
    ];

    /// Istio's label name.
    pub fn name(self) -> &'static str {
        match self {
            Label::Reporter => "reporter",
            Label::SourceWorkload => "source_workload",
            Label::SourceWorkloadNamespace => "source_workload_namespace",
            Label::SourceApp => "source_app",
            Label::SourceVersion => "source_version",
            Label::SourceCanonicalService => "source_canonical_service",
            Label::DestinationWorkload => "destination_workload",
            Label::DestinationWorkloadNamespace => "destination_workload_namespace",
            Label::DestinationApp => "destination_app",
            Label::DestinationVersion => "destination_version",
            Label::DestinationCanonicalService => "destination_canonical_service",
            Label::DestinationService => "destination_service",
            Label::DestinationServiceName => "destination_service_name",
            Label::DestinationServiceNamespace => "destination_service_namespace",
            Label::RequestProtocol => "request_protocol",
            Label::ResponseCode => "response_code",
            Label::ResponseFlags => "response_flags",
        }
    }
}

/// What Istio writes for a label it cannot fill.
pub const UNKNOWN: &str = "unknown";

/// One label set. Strings are interned, so keys are cheap to clone and compare.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EdgeKey(pub [Arc<str>; LABEL_COUNT]);

impl EdgeKey {
    pub fn get(&self, l: Label) -> &str {
        &self.0[l as usize]
    }

    /// The label, or `None` when Istio would say `unknown`.
    pub fn known(&self, l: Label) -> Option<&str> {
        let v = self.get(l);
        (v != UNKNOWN && !v.is_empty()).then_some(v)
    }

    pub fn response_code(&self) -> u16 {
        self.get(Label::ResponseCode).parse().unwrap_or(0)
    }

    /// The Envoy response flags, split (`-` gives none).
    pub fn flags(&self) -> impl Iterator<Item = &str> {
        self.get(Label::ResponseFlags)
            .split(',')
            .filter(|f| !f.is_empty() && *f != "-")
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags().any(|f| f == flag)
    }
}

/// Counts of one label set in one bucket.
#[derive(Debug, Clone, Default)]
pub struct EdgeAgg {
    pub requests: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms_sum: f64,
    pub duration: LatencySketch,
    /// Per bucket of `DURATION_BUCKETS_MS` plus +Inf: requests that fell in it (not cumulative).
    pub duration_buckets: [u64; DURATION_BUCKETS_MS.len() + 1],
    pub request_size_buckets: [u64; SIZE_BUCKETS.len() + 1],
    pub response_size_buckets: [u64; SIZE_BUCKETS.len() + 1],
}

fn bucket_index(bounds: &[f64], v: f64) -> usize {
    bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len())
}

impl EdgeAgg {
    pub fn add(&mut self, duration_ms: f64, req_bytes: u64, resp_bytes: u64) {
        self.requests += 1;
        self.request_bytes += req_bytes;
        self.response_bytes += resp_bytes;
        self.duration_ms_sum += duration_ms;
        self.duration.add(duration_ms);
        self.duration_buckets[bucket_index(&DURATION_BUCKETS_MS, duration_ms)] += 1;
        self.request_size_buckets[bucket_index(&SIZE_BUCKETS, req_bytes as f64)] += 1;
        self.response_size_buckets[bucket_index(&SIZE_BUCKETS, resp_bytes as f64)] += 1;
    }

    pub fn merge(&mut self, o: &EdgeAgg) {
        self.requests += o.requests;
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
        self.duration_ms_sum += o.duration_ms_sum;
        self.duration.merge(&o.duration);
        for (a, b) in self.duration_buckets.iter_mut().zip(o.duration_buckets) {
            *a += b;
        }
        for (a, b) in self
            .request_size_buckets
            .iter_mut()
            .zip(o.request_size_buckets)
        {
            *a += b;
        }
        for (a, b) in self
            .response_size_buckets
            .iter_mut()
            .zip(o.response_size_buckets)
        {
            *a += b;
        }
    }
}

pub type Bucket = HashMap<EdgeKey, EdgeAgg>;

/// Interns label values so a million rows of one edge share one allocation per value.
#[derive(Default)]
pub struct Interner(HashSet<Arc<str>>);

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(a.clone());
        a
    }
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a arrow::array::StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
}

/// The namespace in a service host (`reviews.default.svc.cluster.local` → `default`).
pub fn service_namespace(host: &str) -> Option<&str> {
    let mut parts = host.split('.');
    let _name = parts.next()?;
    let ns = parts.next()?;
    (!ns.is_empty()).then_some(ns)
}

/// Folds a `requests` batch in; returns the rows folded.
pub(super) fn fold_requests(
    st: &mut RollupState,
    batch: &RecordBatch,
    resolution_secs: i64,
    oldest_secs: i64,
) -> usize {
    let Some(time) = batch
        .column_by_name(rq::START_TIME)
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
    else {
        return 0;
    };
    let code = batch
        .column_by_name(rq::RESPONSE_CODE)
        .and_then(|c| c.as_primitive_opt::<Int32Type>());
    let i64col = |n: &str| {
        batch
            .column_by_name(n)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
    };
    let (dur, rx, tx) = (
        i64col(rq::DURATION_MS),
        i64col(rq::BYTES_RECEIVED),
        i64col(rq::BYTES_SENT),
    );
    let s = |n| strings(batch, n);
    let cols = [
        s(rq::REPORTER),
        s(rq::SOURCE_WORKLOAD),
        s(rq::SOURCE_NAMESPACE),
        s(rq::SOURCE_APP),
        s(rq::SOURCE_VERSION),
        s(rq::SOURCE_SERVICE),
        s(rq::DESTINATION_WORKLOAD),
        s(rq::DESTINATION_NAMESPACE),
        s(rq::DESTINATION_APP),
        s(rq::DESTINATION_VERSION),
        s(rq::DESTINATION_SERVICE),
        s(rq::DESTINATION_SERVICE_NAME),
        s(rq::REQUEST_PROTOCOL),
        s(rq::RESPONSE_FLAGS),
    ];
    let val = |i: usize, row: usize| -> Option<&str> {
        cols[i]
            .filter(|a| a.is_valid(row))
            .map(|a| a.value(row))
            .filter(|v| !v.is_empty())
    };
    // Group the batch's rows by (bucket, borrowed labels) first; intern once per group.
    let mut groups: HashMap<(i64, [&str; LABEL_COUNT]), EdgeAgg> = HashMap::new();
    let mut code_buf: Vec<String> = Vec::new();
    let codes: Vec<usize> = (0..batch.num_rows())
        .map(|row| {
            let c = code.map_or(0, |c| if c.is_valid(row) { c.value(row) } else { 0 });
            let c = c.to_string();
            match code_buf.iter().position(|x| *x == c) {
                Some(i) => i,
                None => {
                    code_buf.push(c);
                    code_buf.len() - 1
                }
            }
        })
        .collect();
    fn u(o: Option<&str>) -> &str {
        o.unwrap_or(UNKNOWN)
    }
    let mut folded = 0;
    for row in 0..batch.num_rows() {
        let secs = time.value(row).div_euclid(1_000_000_000);
        if secs < oldest_secs {
            continue;
        }
        let bucket = secs - secs.rem_euclid(resolution_secs);
        let src_wl = val(1, row);
        let src_app = val(3, row);
        let dst_wl = val(6, row);
        let dst_app = val(8, row);
        let dst_host = val(10, row);
        let dst_ns = val(7, row);
        let labels: [&str; LABEL_COUNT] = [
            u(val(0, row)),
            u(src_wl),
            u(val(2, row)),
            u(src_app),
            u(val(4, row)),
            u(val(5, row).or(src_app).or(src_wl)),
            u(dst_wl),
            u(dst_ns),
            u(dst_app),
            u(val(9, row)),
            u(dst_app.or(dst_wl)),
            u(dst_host),
            u(val(11, row).or(dst_host)),
            u(dst_host.and_then(service_namespace).or(dst_ns)),
            u(val(12, row)),
            code_buf[codes[row]].as_str(),
            val(13, row).unwrap_or("-"),
        ];
        let get = |c: Option<&arrow::array::PrimitiveArray<Int64Type>>| {
            c.filter(|a| a.is_valid(row))
                .map_or(0, |a| a.value(row).max(0))
        };
        groups.entry((bucket, labels)).or_default().add(
            get(dur) as f64,
            get(rx) as u64,
            get(tx) as u64,
        );
        folded += 1;
    }
    for ((bucket, labels), agg) in groups {
        let key = EdgeKey(labels.map(|l| st.interner.get(l)));
        st.edges
            .entry(bucket)
            .or_default()
            .entry(key)
            .or_default()
            .merge(&agg);
    }
    folded
}
