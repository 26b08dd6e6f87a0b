//! Bounded random testing of the two query languages' entry points, through the HTTP API as
//! a client reaches them: `POST /api/v1/sql` (shape check, parse, plan, execute) and the
//! Prometheus `query` / `query_range` endpoints (shape check, parse, series fetch,
//! evaluation). Texts are grown from seed queries by mutation (token insertion, deletion,
//! duplication, nesting, splicing), a fixed number of cases within a time budget. Every answer
//! must be a clear 2xx or 4xx (or Prometheus's 503 for a timeout): no panic, no other 5xx, and
//! no answer later than the deadline plus a second. (Not coverage-guided: building DataFusion under cargo-fuzz's instrumentation
//! costs more CI time than it is worth; the hand-written parsers keep their cargo-fuzz
//! targets in `collector/fuzz`.)

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use meshscope_schemas::Table;
use meshscope_schemas::rows::{RequestRow, requests_batch};
use meshscope_storage::{Store, StoreConfig};
use tower::ServiceExt;

use super::{QueryApi, routes};
use crate::graph::HealthConfig;
use crate::graph::api::GraphState;
use crate::rollup::{RollupConfig, Rollups};
use crate::sql::{QueryEngine, SqlLimits};

const SQL_SEEDS: &[&str] = &[
    "SELECT count(*) FROM requests",
    "SELECT response_code, count(*) AS n FROM requests WHERE response_flags = 'UO' GROUP BY 1 ORDER BY n DESC LIMIT 10",
    "SELECT encode(trace_id, 'hex'), name FROM spans WHERE service_name LIKE 'reviews%' AND duration_ns > 1000",
    "SELECT metric, max(value) FROM stat_samples GROUP BY metric HAVING count(*) > 1",
    "SELECT length(repeat(request_id, 3)), lpad('x', 4) FROM requests",
    "WITH t AS (SELECT * FROM requests) SELECT count(DISTINCT request_id) FROM t a JOIN t b ON a.request_id = b.request_id",
    "SELECT CASE WHEN duration_ms > 100 THEN 'slow' ELSE 'ok' END, array_agg(path) FROM requests GROUP BY 1",
];

const PROM_SEEDS: &[&str] = &[
    "sum(rate(istio_requests_total{reporter=\"destination\"}[1m])) by (destination_service_name)",
    "histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket[5m])) by (le))",
    "sum(irate(istio_requests_total{response_code=~\"5..\"}[5m])) / sum(irate(istio_requests_total[5m]))",
    "max_over_time(rate(istio_requests_total[1m])[10m:30s])",
    "topk(3, sum by (source_workload) (istio_tcp_sent_bytes_total offset 5m))",
    "envoy_cluster_upstream_rq_pending_overflow{cluster_name=~\"outbound.*\"} > 0",
    "1 + 2 * (3 - -4) ^ 2 % 5",
];

const SQL_TOKENS: &[&str] = &[
    "(",
    ")",
    "+",
    "*",
    ",",
    "'",
    "\"",
    " ",
    "--",
    "/*",
    "*/",
    "SELECT ",
    " FROM ",
    "requests",
    "spans",
    "1",
    "0",
    "-1",
    "NULL",
    " AND ",
    " OR ",
    "NOT ",
    "unnest(",
    "repeat(",
    "range(",
    "array_repeat(",
    "make_array(",
    "[",
    "]",
    "::",
    "CAST(",
    " AS INT)",
    ";",
    "\\",
    "é",
    "\u{0}",
    "99999999999999999999",
    "1e308",
    " UNION ALL ",
    " ORDER BY ",
    " LIMIT ",
    "count(*)",
];

const PROM_TOKENS: &[&str] = &[
    "(",
    ")",
    "+",
    "*",
    "/",
    "^",
    ",",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    "`",
    " ",
    "=~",
    "!=",
    "=",
    "sum(",
    "rate(",
    "by ",
    "without ",
    "offset ",
    "@ ",
    "[5m]",
    "[1s:1ms]",
    "[100y]",
    "1",
    "-",
    "0x1f",
    "NaN",
    "Inf",
    "1e308",
    "\\",
    "#",
    "é",
    "\u{0}",
    "istio_requests_total",
    "le",
    "histogram_quantile(",
    "absent(",
    "label_replace(",
    "count_values(",
    "topk(",
];

/// xorshift: deterministic cases, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// A byte index of `s` on a char boundary.
fn boundary(s: &str, rng: &mut Rng) -> usize {
    let mut i = rng.below(s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One mutation of `s`.
fn mutate(s: &str, seeds: &[&str], tokens: &[&str], rng: &mut Rng) -> String {
    let mut s = s.to_string();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 | 1 => {
                let i = boundary(&s, rng);
                s.insert_str(i, rng.pick(tokens));
            }
            2 if !s.is_empty() => {
                let a = boundary(&s, rng);
                let b = boundary(&s, rng);
                let (a, b) = (a.min(b), a.max(b));
                s.replace_range(a..b, "");
            }
            3 => {
                // nest: wrap a piece in brackets many times
                let depth = 1 + rng.below(80);
                s = format!("{}{s}{}", "(".repeat(depth), ")".repeat(depth));
            }
            4 => {
                let other = rng.pick(seeds);
                let i = boundary(&s, rng);
                let j = boundary(other, rng);
                s = format!("{}{}", &s[..i], &other[j..]);
            }
            _ => {
                // repeat a piece: long operator chains
                let a = boundary(&s, rng);
                let b = boundary(&s, rng);
                let (a, b) = (a.min(b), a.max(b));
                let piece = s[a..b].to_string();
                for _ in 0..rng.below(40) {
                    s.insert_str(b, &piece);
                }
            }
        }
        if s.len() > 80_000 {
            s.truncate(boundary(&s[..80_000], rng));
        }
    }
    s
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.clone().oneshot(req).await.expect("the router answers");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_sql_and_promql_answer_2xx_or_4xx_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::local(dir.path())).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let rows: Vec<RequestRow> = (0..50)
        .map(|i| RequestRow {
            start_time_unix_nano: now - i * 1_000_000_000,
            response_code: if i % 5 == 0 { 503 } else { 200 },
            request_id: Some(format!("fz-{i}").into()),
            ..Default::default()
        })
        .collect();
    store
        .append(Table::Requests, requests_batch(&rows).unwrap())
        .await
        .unwrap();
    let limits = SqlLimits {
        timeout: Duration::from_secs(2),
        max_rows: 1000,
        memory_bytes: 32 << 20,
    };
    let engine = QueryEngine::with_memory_limit(store.clone(), limits.memory_bytes).unwrap();
    let rollups = Rollups::start(RollupConfig {
        resolution: Duration::from_secs(60),
        retention: Duration::from_secs(3600),
    });
    rollups.load_existing(&store.reader()).await;
    let api = QueryApi {
        engine,
        sql_limits: limits,
        graph: GraphState {
            rollups,
            health: HealthConfig::default(),
            admission: Default::default(),
        },
        admission: Default::default(),
    };
    let app = routes(api);
    // MESHSCOPE_FUZZ_SEED tries other cases; CI runs the fixed seed, so a failure reproduces
    let seed = std::env::var("MESHSCOPE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15u64);
    let mut rng = Rng(seed | 1);
    let budget = Instant::now() + Duration::from_secs(40);
    let (mut sql_cases, mut prom_cases) = (0, 0);
    let (t_end, t_start) = (now / 1_000_000_000, now / 1_000_000_000 - 600);
    while Instant::now() < budget && sql_cases + prom_cases < 20_000 {
        let is_sql = rng.below(2) == 0;
        let text = if is_sql {
            mutate(rng.pick(SQL_SEEDS), SQL_SEEDS, SQL_TOKENS, &mut rng)
        } else {
            mutate(rng.pick(PROM_SEEDS), PROM_SEEDS, PROM_TOKENS, &mut rng)
        };
        let req = if is_sql {
            sql_cases += 1;
            Request::post("/api/v1/sql")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::json!({ "sql": text }).to_string()))
                .unwrap()
        } else {
            prom_cases += 1;
            let path = if rng.below(2) == 0 {
                "/prometheus/api/v1/query"
            } else {
                "/prometheus/api/v1/query_range"
            };
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("query", &text)
                .append_pair("start", &t_start.to_string())
                .append_pair("end", &t_end.to_string())
                .append_pair("step", "15")
                .finish();
            Request::post(path)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form))
                .unwrap()
        };
        let started = Instant::now();
        let (status, body) = call(&app, req).await;
        let took = started.elapsed();
        // (Prometheus answers a timeout with 503 and errorType "timeout", as its clients expect)
        let timeout = status == StatusCode::SERVICE_UNAVAILABLE && body.contains("\"timeout\"");
        assert!(
            status.is_success() || status.is_client_error() || timeout,
            "{status} for {text:?}: {body}"
        );
        assert!(!body.contains("panicked"), "{text:?}: {body}");
        assert!(
            took < Duration::from_secs(3),
            "{text:?} took {took:?} (deadline 2 s)"
        );
    }
    println!("{sql_cases} SQL and {prom_cases} PromQL cases");
    assert!(sql_cases + prom_cases >= 200, "too few cases ran");
    store.shutdown().await.unwrap();
}
