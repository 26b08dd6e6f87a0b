//! The queries: a trace by id, the rows of one `x-request-id`, span search and edge search,
//! each a DataFusion `DataFrame` built from expressions within the request's `SqlLimits`.

use super::*;

pub(crate) fn lit_ts(ns: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(
        Some(ns),
        Some("UTC".into()),
    ))
}

pub(crate) fn lit_trace_id(id: &TraceId) -> Expr {
    lit(ScalarValue::FixedSizeBinary(16, Some(id.0.to_vec())))
}

pub(crate) fn time_range(column: &str, from_ns: i64, to_ns: i64) -> Expr {
    col(column)
        .gt_eq(lit_ts(from_ns))
        .and(col(column).lt_eq(lit_ts(to_ns)))
}

/// Cumulative scan figures of the queries this service ran (for tests and the benchmark).
#[derive(Debug, Default)]
pub struct ScanCounters {
    pub queries: AtomicU64,
    pub bytes_scanned: AtomicU64,
    pub row_groups_pruned_by_bloom_filter: AtomicU64,
    pub row_groups_matched_by_bloom_filter: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanFigures {
    pub queries: u64,
    pub bytes_scanned: u64,
    pub row_groups_pruned_by_bloom_filter: u64,
    pub row_groups_matched_by_bloom_filter: u64,
}

/// What a span search asks for.
#[derive(Debug, Clone, Default)]
pub struct SpanSearch {
    pub from_ns: i64,
    pub to_ns: i64,
    pub service: Option<String>,
    pub operation: Option<String>,
    pub span_kind: Option<String>,
    pub tags: Vec<(String, String)>,
    pub min_duration_ns: Option<i64>,
    pub max_duration_ns: Option<i64>,
    pub error: Option<bool>,
    pub limit: usize,
}

/// What an edge search asks for: access-log rows of one graph edge.
#[derive(Debug, Clone, Default)]
pub struct EdgeSearch {
    pub from_ns: i64,
    pub to_ns: i64,
    /// A workload, app or canonical service of the caller.
    pub source: Option<String>,
    /// A service (short name or host), workload or app of the callee.
    pub destination: Option<String>,
    /// Inclusive response-code range.
    pub status: Option<(i32, i32)>,
    pub min_duration_ns: Option<i64>,
    pub max_duration_ns: Option<i64>,
    pub limit: usize,
}

/// One access-log row that an edge search found, and the trace it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeSample {
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub start_time: String,
    pub response_code: i32,
    pub response_flags: Option<String>,
    pub duration_ms: i64,
    pub reporter: Option<String>,
    pub proxy: Option<String>,
}

/// What the access log holds for one request id.
#[derive(Debug, Default)]
pub struct RequestRows {
    /// `requests` rows as JSON objects, in time order.
    pub rows: Vec<Value>,
    /// Trace ids the rows carry.
    pub trace_ids: Vec<TraceId>,
    /// First and last start time (unix ns).
    pub times: Option<(i64, i64)>,
}

pub(crate) fn widen(span: Option<(i64, i64)>, t: i64) -> (i64, i64) {
    span.map_or((t, t), |(a, b)| (a.min(t), b.max(t)))
}

/// The queries behind the trace APIs (native and Jaeger).
#[derive(Clone)]
pub struct TraceService {
    engine: QueryEngine,
    limits: SqlLimits,
    counters: Arc<ScanCounters>,
}

impl TraceService {
    pub fn new(engine: QueryEngine, limits: SqlLimits) -> TraceService {
        TraceService {
            engine,
            limits,
            counters: Arc::default(),
        }
    }

    pub fn engine(&self) -> &QueryEngine {
        &self.engine
    }

    pub fn scan_figures(&self) -> ScanFigures {
        let c = &self.counters;
        ScanFigures {
            queries: c.queries.load(Ordering::Relaxed),
            bytes_scanned: c.bytes_scanned.load(Ordering::Relaxed),
            row_groups_pruned_by_bloom_filter: c
                .row_groups_pruned_by_bloom_filter
                .load(Ordering::Relaxed),
            row_groups_matched_by_bloom_filter: c
                .row_groups_matched_by_bloom_filter
                .load(Ordering::Relaxed),
        }
    }

    /// Runs `f` within the time limit. An answer (not an error) that came after the limit is a
    /// timeout too: the timer ticks in milliseconds, so a fast query could otherwise outrun a
    /// tiny limit.
    pub async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, TraceError>>,
    ) -> Result<T, TraceError> {
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.limits.timeout, f).await {
            Ok(Ok(_)) if started.elapsed() > self.limits.timeout => {
                Err(TraceError::Timeout(self.limits.timeout))
            }
            Ok(r) => r,
            Err(_) => Err(TraceError::Timeout(self.limits.timeout)),
        }
    }

    async fn table(&self, t: Table) -> Result<DataFrame, TraceError> {
        self.engine.context().table(t.name()).await.map_err(exec)
    }

    /// Executes a DataFrame within the row limit.
    async fn collect(&self, df: DataFrame) -> Result<Vec<RecordBatch>, TraceError> {
        let plan = df.create_physical_plan().await.map_err(exec)?;
        let mut stream =
            execute_stream(plan.clone(), self.engine.context().task_ctx()).map_err(exec)?;
        let mut out = Vec::new();
        let mut rows = 0usize;
        while let Some(b) = stream.next().await {
            let b = b.map_err(exec)?;
            rows += b.num_rows();
            if rows > self.limits.max_rows {
                return Err(TraceError::TooManyRows(self.limits.max_rows));
            }
            out.push(b);
        }
        self.count_scan(plan.as_ref());
        Ok(out)
    }

    fn count_scan(&self, plan: &dyn ExecutionPlan) {
        let c = &self.counters;
        let mut stack = vec![plan];
        while let Some(p) = stack.pop() {
            if let Some(m) = p.metrics() {
                for metric in m.iter() {
                    match metric.value() {
                        MetricValue::Count { name, count } if name == "bytes_scanned" => {
                            c.bytes_scanned
                                .fetch_add(count.value() as u64, Ordering::Relaxed);
                        }
                        MetricValue::PruningMetrics {
                            name,
                            pruning_metrics,
                        } if name == "row_groups_pruned_bloom_filter" => {
                            c.row_groups_pruned_by_bloom_filter
                                .fetch_add(pruning_metrics.pruned() as u64, Ordering::Relaxed);
                            c.row_groups_matched_by_bloom_filter
                                .fetch_add(pruning_metrics.matched() as u64, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }
            stack.extend(p.children().into_iter().map(|c| c.as_ref()));
        }
        c.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// Every stored span of one trace (unordered). Pruned by the trace id: the hour
    /// manifests' trace-id ranges, then the bloom filters and (in compacted, sorted files)
    /// the page index.
    pub async fn trace_spans(&self, id: &TraceId) -> Result<Vec<SpanRow>, TraceError> {
        self.trace_spans_within(id, None).await
    }

    /// Like `trace_spans`, only reading the hours that overlap `window` (unix ns) when given.
    pub async fn trace_spans_within(
        &self,
        id: &TraceId,
        window: Option<(i64, i64)>,
    ) -> Result<Vec<SpanRow>, TraceError> {
        let mut f = col(sp::TRACE_ID).eq(lit_trace_id(id));
        if let Some((from, to)) = window {
            f = f.and(time_range(sp::START_TIME, from, to));
        }
        let df = self.table(Table::Spans).await?.filter(f).map_err(exec)?;
        spans_from_batches(&self.collect(df).await?).map_err(exec)
    }

    /// Traces by id, in the order given; ids with no stored span are left out. A search
    /// passes its window widened by `TRACE_SLACK_NS`, so that it reads a few hours rather
    /// than every hour of the retention for each trace found; whole traces open by id.
    pub async fn traces(
        &self,
        ids: &[TraceId],
        window: Option<(i64, i64)>,
    ) -> Result<Vec<(TraceId, Vec<SpanRow>)>, TraceError> {
        let window = window.map(|(f, t)| {
            (
                f.saturating_sub(TRACE_SLACK_NS),
                t.saturating_add(TRACE_SLACK_NS),
            )
        });
        let found: Vec<(TraceId, Vec<SpanRow>)> = futures::stream::iter(ids.iter().copied())
            .map(|id| async move {
                Ok::<_, TraceError>((id, self.trace_spans_within(&id, window).await?))
            })
            .buffered(LOOKUP_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().filter(|(_, s)| !s.is_empty()).collect())
    }

    /// The filter of a span search (without the limit).
    fn span_filter(&self, q: &SpanSearch) -> Result<Expr, TraceError> {
        let mut f = time_range(sp::START_TIME, q.from_ns, q.to_ns);
        if let Some(s) = &q.service {
            f = f.and(col(sp::SERVICE_NAME).eq(lit(s.clone())));
        }
        if let Some(o) = &q.operation {
            f = f.and(col(sp::NAME).eq(lit(o.clone())));
        }
        if let Some(k) = &q.span_kind {
            f = f.and(col(sp::KIND).eq(lit(k.to_ascii_lowercase())));
        }
        if let Some(d) = q.min_duration_ns {
            f = f.and(col(sp::DURATION_NS).gt_eq(lit(d)));
        }
        if let Some(d) = q.max_duration_ns {
            f = f.and(col(sp::DURATION_NS).lt_eq(lit(d)));
        }
        if let Some(e) = q.error {
            f = f.and(error_filter(e));
        }
        for (k, v) in &q.tags {
            f = f.and(tag_filter(k, v)?);
        }
        Ok(f)
    }

    /// Ids of the traces with a span matching `q`, most recent first.
    pub async fn search(&self, q: &SpanSearch) -> Result<Vec<TraceId>, TraceError> {
        let df = self
            .table(Table::Spans)
            .await?
            .filter(self.span_filter(q)?)
            .and_then(|d| {
                d.aggregate(
                    vec![col(sp::TRACE_ID)],
                    vec![max(col(sp::START_TIME)).alias("last")],
                )
            })
            .and_then(|d| d.sort(vec![col("last").sort(false, false)]))
            .and_then(|d| d.limit(0, Some(q.limit)))
            .map_err(exec)?;
        let batches = self.collect(df).await?;
        let mut ids = Vec::new();
        for b in &batches {
            ids.extend(
                trace_ids(b, sp::TRACE_ID)
                    .map_err(exec)?
                    .into_iter()
                    .flatten(),
            );
        }
        Ok(ids)
    }

    /// Access-log rows of one request id, in time order, as JSON objects; the trace ids
    /// they name; and the time span they cover (unix ns).
    pub async fn request_rows(&self, request_id: &str) -> Result<RequestRows, TraceError> {
        let df = self
            .table(Table::Requests)
            .await?
            .filter(col(rq::REQUEST_ID).eq(lit(request_id.to_string())))
            .and_then(|d| d.sort(vec![col(rq::START_TIME).sort(true, false)]))
            .map_err(exec)?;
        let batches = self.collect(df).await?;
        let mut out = RequestRows::default();
        for b in &batches {
            out.trace_ids.extend(
                trace_ids(b, rq::TRACE_ID)
                    .map_err(exec)?
                    .into_iter()
                    .flatten(),
            );
            for t in timestamps(b, rq::START_TIME)
                .map_err(exec)?
                .into_iter()
                .flatten()
            {
                out.times = Some(widen(out.times, t));
            }
        }
        let json = batches_to_json(&batches).map_err(exec)?;
        out.rows = serde_json::from_slice(&json).map_err(exec)?;
        Ok(out)
    }

    /// Trace ids of the spans that carry this request id (`guid:x-request-id`), and the time
    /// span of those spans (unix ns).
    pub async fn request_trace_ids(
        &self,
        request_id: &str,
    ) -> Result<(Vec<TraceId>, Option<(i64, i64)>), TraceError> {
        let df = self
            .table(Table::Spans)
            .await?
            .filter(col(sp::REQUEST_ID).eq(lit(request_id.to_string())))
            .and_then(|d| d.select_columns(&[sp::TRACE_ID, sp::START_TIME]))
            .map_err(exec)?;
        let mut ids = Vec::new();
        let mut times = None;
        for b in &self.collect(df).await? {
            for id in trace_ids(b, sp::TRACE_ID)
                .map_err(exec)?
                .into_iter()
                .flatten()
            {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            for t in timestamps(b, sp::START_TIME)
                .map_err(exec)?
                .into_iter()
                .flatten()
            {
                times = Some(widen(times, t));
            }
        }
        Ok((ids, times))
    }

    /// Access-log rows of one graph edge, most recent first, each with its trace id: from
    /// the row itself, or from the spans that carry its request id.
    pub async fn edge_samples(&self, q: &EdgeSearch) -> Result<Vec<EdgeSample>, TraceError> {
        let mut f = time_range(rq::START_TIME, q.from_ns, q.to_ns).and(
            col(rq::REQUEST_ID)
                .is_not_null()
                .or(col(rq::TRACE_ID).is_not_null()),
        );
        if let Some(s) = &q.source {
            let s = lit(s.clone());
            f = f.and(
                col(rq::SOURCE_WORKLOAD)
                    .eq(s.clone())
                    .or(col(rq::SOURCE_APP).eq(s.clone()))
                    .or(col(rq::SOURCE_SERVICE).eq(s)),
            );
        }
        if let Some(d) = &q.destination {
            let d = lit(d.clone());
            f = f.and(
                col(rq::DESTINATION_SERVICE_NAME)
                    .eq(d.clone())
                    .or(col(rq::DESTINATION_SERVICE).eq(d.clone()))
                    .or(col(rq::DESTINATION_WORKLOAD).eq(d.clone()))
                    .or(col(rq::DESTINATION_APP).eq(d)),
            );
        }
        if let Some((lo, hi)) = q.status {
            f = f.and(
                col(rq::RESPONSE_CODE)
                    .gt_eq(lit(lo))
                    .and(col(rq::RESPONSE_CODE).lt_eq(lit(hi))),
            );
        }
        // The access log has milliseconds: a request of 9.6 ms is logged as 9 or 10.
        if let Some(d) = q.min_duration_ns {
            f = f.and(col(rq::DURATION_MS).gt_eq(lit(d / 1_000_000)));
        }
        if let Some(d) = q.max_duration_ns {
            f = f.and(col(rq::DURATION_MS).lt_eq(lit((d + 999_999) / 1_000_000)));
        }
        // Both sidecars log a hop; ask for more rows than traces wanted.
        let fetch = (q.limit * 4).min(self.limits.max_rows);
        let df = self
            .table(Table::Requests)
            .await?
            .filter(f)
            .and_then(|d| {
                d.select_columns(&[
                    rq::REQUEST_ID,
                    rq::TRACE_ID,
                    rq::START_TIME,
                    rq::RESPONSE_CODE,
                    rq::RESPONSE_FLAGS,
                    rq::DURATION_MS,
                    rq::REPORTER,
                    rq::PROXY,
                ])
            })
            .and_then(|d| d.sort(vec![col(rq::START_TIME).sort(false, false)]))
            .and_then(|d| d.limit(0, Some(fetch)))
            .map_err(exec)?;
        let mut samples = Vec::new();
        for b in &self.collect(df).await? {
            let rid = strings(b, rq::REQUEST_ID).map_err(exec)?;
            let tid = trace_ids(b, rq::TRACE_ID).map_err(exec)?;
            let start = timestamps(b, rq::START_TIME).map_err(exec)?;
            let code = ints32(b, rq::RESPONSE_CODE).map_err(exec)?;
            let flags = strings(b, rq::RESPONSE_FLAGS).map_err(exec)?;
            let dur = ints64(b, rq::DURATION_MS).map_err(exec)?;
            let rep = strings(b, rq::REPORTER).map_err(exec)?;
            let proxy = strings(b, rq::PROXY).map_err(exec)?;
            for i in 0..b.num_rows() {
                samples.push(EdgeSample {
                    request_id: rid[i].clone(),
                    trace_id: tid[i].map(|t| t.to_hex()),
                    start_time: rfc3339(start[i].unwrap_or(0)),
                    response_code: code[i].unwrap_or(0),
                    response_flags: flags[i].clone(),
                    duration_ms: dur[i].unwrap_or(0),
                    reporter: rep[i].clone(),
                    proxy: proxy[i].clone(),
                });
            }
        }
        // Request ids without a trace id: look them up in `spans` (bloom filter on
        // request_id), within the window widened by the longest plausible request.
        let missing: BTreeSet<String> = samples
            .iter()
            .filter(|s| s.trace_id.is_none())
            .filter_map(|s| s.request_id.clone())
            .collect();
        if !missing.is_empty() {
            let slack = 10 * 60 * NS_PER_S;
            let df = self
                .table(Table::Spans)
                .await?
                .filter(
                    time_range(
                        sp::START_TIME,
                        q.from_ns.saturating_sub(slack),
                        q.to_ns.saturating_add(slack),
                    )
                    .and(
                        col(sp::REQUEST_ID).in_list(missing.into_iter().map(lit).collect(), false),
                    ),
                )
                .and_then(|d| d.select_columns(&[sp::REQUEST_ID, sp::TRACE_ID]))
                .and_then(|d| d.distinct())
                .map_err(exec)?;
            let mut by_request: HashMap<String, TraceId> = HashMap::new();
            for b in &self.collect(df).await? {
                let rid = strings(b, sp::REQUEST_ID).map_err(exec)?;
                let tid = trace_ids(b, sp::TRACE_ID).map_err(exec)?;
                for (r, t) in rid.into_iter().zip(tid) {
                    if let (Some(r), Some(t)) = (r, t) {
                        by_request.entry(r).or_insert(t);
                    }
                }
            }
            for s in &mut samples {
                if s.trace_id.is_none() {
                    s.trace_id = s
                        .request_id
                        .as_ref()
                        .and_then(|r| by_request.get(r))
                        .map(|t| t.to_hex());
                }
            }
        }
        Ok(samples)
    }

    /// Distinct service names with spans in the window.
    pub async fn services(&self, from_ns: i64, to_ns: i64) -> Result<Vec<String>, TraceError> {
        let df = self
            .table(Table::Spans)
            .await?
            .filter(time_range(sp::START_TIME, from_ns, to_ns))
            .and_then(|d| d.select_columns(&[sp::SERVICE_NAME]))
            .and_then(|d| d.distinct())
            .map_err(exec)?;
        let mut out = BTreeSet::new();
        for b in &self.collect(df).await? {
            out.extend(
                strings(b, sp::SERVICE_NAME)
                    .map_err(exec)?
                    .into_iter()
                    .flatten(),
            );
        }
        Ok(out.into_iter().collect())
    }

    /// Distinct (span name, kind) of one service in the window.
    pub async fn operations(
        &self,
        service: &str,
        span_kind: Option<&str>,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<(String, String)>, TraceError> {
        let mut f = time_range(sp::START_TIME, from_ns, to_ns)
            .and(col(sp::SERVICE_NAME).eq(lit(service.to_string())));
        if let Some(k) = span_kind {
            f = f.and(col(sp::KIND).eq(lit(k.to_ascii_lowercase())));
        }
        let df = self
            .table(Table::Spans)
            .await?
            .filter(f)
            .and_then(|d| d.select_columns(&[sp::NAME, sp::KIND]))
            .and_then(|d| d.distinct())
            .map_err(exec)?;
        let mut out = BTreeSet::new();
        for b in &self.collect(df).await? {
            let names = strings(b, sp::NAME).map_err(exec)?;
            let kinds = strings(b, sp::KIND).map_err(exec)?;
            for (n, k) in names.into_iter().zip(kinds) {
                out.insert((n.unwrap_or_default(), k.unwrap_or_default()));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Calls between services in the window: (parent service, child service, spans), from
    /// every span whose parent span is in another service (an Envoy hop is a CLIENT span in
    /// the caller's sidecar and a SERVER span in the callee's).
    pub async fn dependencies(
        &self,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<(String, String, u64)>, TraceError> {
        let spans = self
            .table(Table::Spans)
            .await?
            .filter(time_range(sp::START_TIME, from_ns, to_ns))
            .and_then(|d| {
                d.select_columns(&[
                    sp::TRACE_ID,
                    sp::SPAN_ID,
                    sp::PARENT_SPAN_ID,
                    sp::SERVICE_NAME,
                ])
            })
            .map_err(exec)?;
        let child = spans
            .clone()
            .filter(col(sp::PARENT_SPAN_ID).is_not_null())
            .and_then(|d| d.alias("c"))
            .map_err(exec)?;
        let parent = spans.alias("p").map_err(exec)?;
        let df = child
            .join_on(
                parent,
                datafusion::logical_expr::JoinType::Inner,
                [
                    col("c.trace_id").eq(col("p.trace_id")),
                    col("c.parent_span_id").eq(col("p.span_id")),
                ],
            )
            .and_then(|d| d.filter(col("c.service_name").not_eq(col("p.service_name"))))
            .and_then(|d| {
                d.aggregate(
                    vec![
                        col("p.service_name").alias("parent"),
                        col("c.service_name").alias("child"),
                    ],
                    vec![datafusion::functions_aggregate::expr_fn::count(lit(1)).alias("calls")],
                )
            })
            .and_then(|d| {
                d.sort(vec![
                    col("parent").sort(true, false),
                    col("child").sort(true, false),
                ])
            })
            .map_err(exec)?;
        let mut out = Vec::new();
        for b in &self.collect(df).await? {
            let p = strings(b, "parent").map_err(exec)?;
            let c = strings(b, "child").map_err(exec)?;
            let n = ints64(b, "calls").map_err(exec)?;
            for i in 0..b.num_rows() {
                out.push((
                    p[i].clone().unwrap_or_default(),
                    c[i].clone().unwrap_or_default(),
                    n[i].unwrap_or(0) as u64,
                ));
            }
        }
        Ok(out)
    }
}

/// Spans that are errors (`is_error`), or that are not.
pub(crate) fn error_filter(error: bool) -> Expr {
    if error {
        col(sp::STATUS_CODE)
            .eq(lit("error"))
            .or(col(sp::HTTP_STATUS_CODE).gt_eq(lit(500i32)))
    } else {
        col(sp::STATUS_CODE).not_eq(lit("error")).and(
            col(sp::HTTP_STATUS_CODE)
                .is_null()
                .or(col(sp::HTTP_STATUS_CODE).lt(lit(500i32))),
        )
    }
}

/// A tag search term as a filter: a dedicated column when the key has one, else the
/// `attributes` or `resource_attributes` map.
pub(crate) fn tag_filter(key: &str, value: &str) -> Result<Expr, TraceError> {
    match key {
        "error" => return Ok(error_filter(parse_bool("tags", value)?)),
        "span.kind" => return Ok(col(sp::KIND).eq(lit(value.to_ascii_lowercase()))),
        "otel.status_code" => {
            return Ok(col(sp::STATUS_CODE).eq(lit(value.to_ascii_lowercase())));
        }
        "service.name" => return Ok(col(sp::SERVICE_NAME).eq(lit(value.to_string()))),
        _ => {}
    }
    match dedicated_column(key) {
        Some(c) if c == sp::HTTP_STATUS_CODE => {
            let code: i32 = value.parse().map_err(|_| {
                TraceError::bad(
                    "tags",
                    format!("{key}={value:?}: the status code must be a number"),
                )
            })?;
            Ok(col(c).eq(lit(code)))
        }
        Some(c) => Ok(col(c).eq(lit(value.to_string()))),
        None => Ok(get_field(col(sp::ATTRIBUTES), key.to_string())
            .eq(lit(value.to_string()))
            .or(
                get_field(col(sp::RESOURCE_ATTRIBUTES), key.to_string()).eq(lit(value.to_string()))
            )),
    }
}
