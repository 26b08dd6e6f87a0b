//! Edge rollups from `requests` rows, keyed by Istio's standard metric labels.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampNanosecondType};
use meshscope_schemas::table::requests as rq;

use super::RollupState;
use super::sketch::LatencySketch;
use meshscope_schemas::envoy::LOCAL_REPLY_FLAGS;

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

    /// The requests never reached a workload: the source proxy answered itself (`UO`, `NR`,
    /// `FI`…, Envoy's local replies) or delayed them by fault injection (`DI`).
    pub fn local_reply(&self) -> bool {
        self.flags()
            .any(|f| LOCAL_REPLY_FLAGS.contains(&f) || f == "DI")
    }

    /// The label set's latency group: every label but the response code and flags, and
    /// whether it is a local reply. Label sets of one group end up on the same graph edges
    /// with the same role, so their durations share one sketch per bucket (see [`Bucket`]).
    fn latency_group(&self) -> EdgeKey {
        let mut g = self.clone();
        g.0[Label::ResponseCode as usize] = Arc::from("");
        g.0[Label::ResponseFlags as usize] =
            Arc::from(if self.local_reply() { "local" } else { "" });
        g
    }
}

/// Counts of one label set in one bucket.
#[derive(Debug, Clone, Default)]
pub struct EdgeAgg {
    pub requests: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms_sum: f64,
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
        self.duration_buckets[bucket_index(&DURATION_BUCKETS_MS, duration_ms)] += 1;
        self.request_size_buckets[bucket_index(&SIZE_BUCKETS, req_bytes as f64)] += 1;
        self.response_size_buckets[bucket_index(&SIZE_BUCKETS, resp_bytes as f64)] += 1;
    }

    pub fn merge(&mut self, o: &EdgeAgg) {
        self.requests += o.requests;
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
        self.duration_ms_sum += o.duration_ms_sum;
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

/// A fast hasher for the rollups' small integer and interned-string keys (not for input an
/// attacker picks freely: keys are label sets already admitted by the collector).
pub type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

pub type FastSet<K> = HashSet<K, rustc_hash::FxBuildHasher>;

/// A label set's number in the [`KeyTable`]: buckets hold these, not the 17 strings.
pub type KeyId = u32;

/// Counts of one label set in one bucket, and the durations as a sketch.
#[derive(Debug, Clone, Default)]
pub struct Sketched {
    pub agg: EdgeAgg,
    pub duration: LatencySketch,
}

impl Sketched {
    pub fn add(&mut self, duration_ms: f64, req_bytes: u64, resp_bytes: u64) {
        self.agg.add(duration_ms, req_bytes, resp_bytes);
        self.duration.add(duration_ms);
    }
}

/// One bucket: label set → counts, and per latency group the durations.
///
/// A graph edge's percentiles merge the duration sketches of its label sets over the window.
/// Label sets that differ only in response code and flags (and are all local replies or all
/// not) always land on the same edges in the same role, so they share one sketch, kept under
/// the group's first label set (its leader, [`KeyTable::leader`]). An edge called with a few
/// codes and flags then reads a third of the sketches, the graph's costliest part.
#[derive(Debug, Default)]
pub struct Bucket {
    pub aggs: FastMap<KeyId, EdgeAgg>,
    /// Latency group leader → durations of the group's requests.
    pub latency: FastMap<KeyId, LatencySketch>,
}

impl Bucket {
    pub fn iter(&self) -> std::collections::hash_map::Iter<'_, KeyId, EdgeAgg> {
        self.aggs.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyId> {
        self.aggs.keys()
    }

    pub fn len(&self) -> usize {
        self.aggs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.aggs.is_empty()
    }
}

/// Every label set seen, numbered once, so a bucket entry is a `u32` and a query that meets
/// the same label set in sixty buckets works out its node, edge and matchers once.
#[derive(Default)]
pub struct KeyTable {
    keys: Vec<EdgeKey>,
    ids: FastMap<EdgeKey, KeyId>,
    /// Per label set: its latency group's leader (the group's first label set).
    leaders: Vec<KeyId>,
    groups: FastMap<EdgeKey, KeyId>,
}

impl KeyTable {
    pub fn id(&mut self, key: EdgeKey) -> KeyId {
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let id = self.keys.len() as KeyId;
        let leader = *self.groups.entry(key.latency_group()).or_insert(id);
        self.keys.push(key.clone());
        self.leaders.push(leader);
        self.ids.insert(key, id);
        id
    }

    pub fn get(&self, id: KeyId) -> &EdgeKey {
        &self.keys[id as usize]
    }

    /// The label set under which `id`'s latency group keeps its durations.
    pub fn leader(&self, id: KeyId) -> KeyId {
        self.leaders[id as usize]
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keeps only the label sets `live` holds; returns old id → new id.
    /// A leader referenced by a bucket is live and comes before the rest of its group, so it
    /// stays its group's leader.
    pub fn retain(&mut self, live: &[bool]) -> Vec<Option<KeyId>> {
        let mut remap = vec![None; self.keys.len()];
        let old = std::mem::take(&mut self.keys);
        self.ids.clear();
        self.leaders.clear();
        self.groups.clear();
        for (i, k) in old.into_iter().enumerate() {
            if live.get(i).copied().unwrap_or(false) {
                remap[i] = Some(self.id(k));
            }
        }
        remap
    }
}

/// Buckets at the rollup resolution plus pre-merged 10-minute and 1-hour buckets, so a graph
/// over an hour merges a dozen buckets instead of sixty, and over a day ~30 instead of 1,440.
#[derive(Default)]
pub struct Tiered {
    /// (width in seconds, bucket start → bucket), finest first.
    levels: Vec<(i64, BTreeMap<i64, Bucket>)>,
}

/// Widths of the pre-merged levels above the resolution.
pub const COARSE_WIDTHS: [i64; 2] = [600, 3600];

impl Tiered {
    pub fn new(resolution_secs: i64) -> Tiered {
        let res = resolution_secs.max(1);
        let mut levels = vec![(res, BTreeMap::new())];
        for w in COARSE_WIDTHS {
            if w > res && w % res == 0 {
                levels.push((w, BTreeMap::new()));
            }
        }
        Tiered { levels }
    }

    fn ensure(&mut self, resolution_secs: i64) {
        if self.levels.is_empty() {
            *self = Tiered::new(resolution_secs);
        }
    }

    /// Adds `s` for label set `id` (whose latency group's leader is `leader`) to the bucket
    /// starting at `bucket` (a multiple of the resolution) and to the coarser buckets around
    /// it.
    pub fn add(
        &mut self,
        resolution_secs: i64,
        bucket: i64,
        id: KeyId,
        leader: KeyId,
        s: &Sketched,
    ) {
        self.ensure(resolution_secs);
        for (w, level) in &mut self.levels {
            let start = bucket - bucket.rem_euclid(*w);
            let b = level.entry(start).or_default();
            b.aggs.entry(id).or_default().merge(&s.agg);
            if s.duration.count() > 0 {
                b.latency.entry(leader).or_default().merge(&s.duration);
            }
        }
    }

    /// The buckets at the rollup resolution.
    pub fn fine(&self) -> impl DoubleEndedIterator<Item = (&i64, &Bucket)> + Clone {
        self.levels.first().into_iter().flat_map(|(_, l)| l.iter())
    }

    /// Buckets covering `[from, to)` (multiples of the resolution) exactly once each, the
    /// coarsest that fit.
    pub fn cover(&self, from: i64, to: i64) -> Vec<&Bucket> {
        let mut out = Vec::new();
        let Some((res, fine)) = self.levels.first() else {
            return out;
        };
        let mut t = from;
        while t < to {
            let level = self
                .levels
                .iter()
                .rev()
                .find(|(w, _)| t.rem_euclid(*w) == 0 && t + *w <= to);
            match level {
                Some((w, l)) => {
                    out.extend(l.get(&t));
                    t += *w;
                }
                None => {
                    // `from` is not on the resolution grid: take the fine buckets as they are.
                    let next = t - t.rem_euclid(*res) + *res;
                    out.extend(fine.range(t..next).map(|(_, b)| b));
                    t = next;
                }
            }
        }
        out
    }

    /// The coarsest level: every label set of the retention in the fewest buckets.
    pub fn coarsest(&self) -> impl Iterator<Item = &Bucket> {
        self.levels.last().into_iter().flat_map(|(_, l)| l.values())
    }

    /// Drops buckets that end at or before `oldest`.
    pub fn prune(&mut self, oldest: i64) {
        for (w, level) in &mut self.levels {
            let keep = level.split_off(&(oldest - *w + 1));
            *level = keep;
        }
    }

    /// Marks the label sets still referenced. Every entry of a finer bucket is also in the
    /// coarsest bucket around it, which is kept at least as long, so that level suffices
    /// (an hour's buckets, not sixty minutes' of them, under the write lock).
    pub fn mark_live(&self, live: &mut [bool]) {
        for b in self.coarsest() {
            for id in b.aggs.keys().chain(b.latency.keys()) {
                live[*id as usize] = true;
            }
        }
    }

    /// Renumbers label sets after [`KeyTable::retain`].
    pub fn remap(&mut self, remap: &[Option<KeyId>]) {
        for (_, level) in &mut self.levels {
            for b in level.values_mut() {
                b.aggs = std::mem::take(&mut b.aggs)
                    .into_iter()
                    .filter_map(|(id, a)| Some((remap[id as usize]?, a)))
                    .collect();
                b.latency = std::mem::take(&mut b.latency)
                    .into_iter()
                    .filter_map(|(id, a)| Some((remap[id as usize]?, a)))
                    .collect();
            }
        }
    }

    /// Fine buckets held.
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, |(_, l)| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Label sets summed over the fine buckets.
    pub fn label_sets(&self) -> usize {
        self.fine().map(|(_, b)| b.len()).sum()
    }
}

/// Interns label values so a million rows of one edge share one allocation per value.
/// Each value is also numbered, so a fold can group rows on numbers before it builds keys.
#[derive(Default)]
pub struct Interner {
    ids: FastMap<Arc<str>, u32>,
    values: Vec<Arc<str>>,
}

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        let id = self.id(s);
        self.value(id).clone()
    }

    /// The number of `s`, interning it if new.
    pub fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.values.len() as u32;
        let a: Arc<str> = Arc::from(s);
        self.values.push(a.clone());
        self.ids.insert(a, id);
        id
    }

    pub fn value(&self, id: u32) -> &Arc<str> {
        &self.values[id as usize]
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
    let mut groups: HashMap<(i64, [&str; LABEL_COUNT]), Sketched> = HashMap::new();
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
    for ((bucket, labels), s) in groups {
        let id = st.keys.id(EdgeKey(labels.map(|l| st.interner.get(l))));
        st.edges
            .add(resolution_secs, bucket, id, st.keys.leader(id), &s);
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(n: u64, ms: f64) -> Sketched {
        let mut a = Sketched::default();
        for _ in 0..n {
            a.add(ms, 1, 2);
        }
        a
    }

    #[test]
    fn cover_uses_each_request_once_whatever_the_window() {
        let mut t = Tiered::new(60);
        // three hours of minutes, two label sets, counts that differ per minute
        let start = 1_700_000_000 - 1_700_000_000 % 3600 - 600;
        let mut minutes = Vec::new();
        for m in 0..180i64 {
            let b = start + m * 60;
            let n = (m as u64 * 7) % 5 + 1;
            t.add(60, b, (m % 2) as KeyId, 0, &agg(n, m as f64 + 1.0));
            minutes.push((b, n));
        }
        let mut rng = 7u64;
        for _ in 0..500 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let from = start - 120 + (rng % 200) as i64 * 60;
            let to = from + ((rng >> 20) % 190) as i64 * 60;
            let want: u64 = minutes
                .iter()
                .filter(|(b, _)| *b >= from && *b < to)
                .map(|(_, n)| n)
                .sum();
            let cover = t.cover(from, to);
            let got: u64 = cover
                .iter()
                .flat_map(|b| b.aggs.values())
                .map(|a| a.requests)
                .sum();
            assert_eq!(got, want, "window {from}..{to}");
            let sketched: u64 = cover
                .iter()
                .flat_map(|b| b.latency.values())
                .map(|s| s.count())
                .sum();
            assert_eq!(sketched, want);
            if to - from >= 2 * 3600 {
                assert!(
                    cover.len() < 40,
                    "{} buckets for {}",
                    cover.len(),
                    to - from
                );
            }
        }
    }

    #[test]
    fn pruning_and_renumbering_keep_the_live_label_sets() {
        let mut keys = KeyTable::default();
        let mut interner = Interner::default();
        let key = |i: usize, interner: &mut Interner| {
            EdgeKey(std::array::from_fn(|l| interner.get(&format!("{l}-{i}"))))
        };
        let mut t = Tiered::new(60);
        for i in 0..10 {
            let id = keys.id(key(i, &mut interner));
            t.add(60, 3600 * i as i64, id, keys.leader(id), &agg(1, 5.0));
        }
        assert_eq!(
            keys.id(key(3, &mut interner)),
            3,
            "a label set keeps its number"
        );
        t.prune(3600 * 8);
        let mut live = vec![false; keys.len()];
        t.mark_live(&mut live);
        assert_eq!(live.iter().filter(|l| **l).count(), 2);
        let remap = keys.retain(&live);
        t.remap(&remap);
        assert_eq!(keys.len(), 2);
        let ids: Vec<KeyId> = t.fine().flat_map(|(_, b)| b.keys().copied()).collect();
        let names: Vec<&str> = ids
            .iter()
            .map(|i| keys.get(*i).get(Label::Reporter))
            .collect();
        assert_eq!(names, ["0-8", "0-9"]);
    }
}
