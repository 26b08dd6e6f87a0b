//! Command line and configuration: one clap definition, `MESHSCOPE_*` environment variables,
//! and an optional TOML file, validated in one place (`ServerOpts::validate`).
//!
//! Precedence: command-line flag > environment variable > config file > built-in default.
//! Config-file keys are the long flag names (`api-addr` or `api_addr`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use meshscope_storage::{FsyncPolicy, StoreConfig};

use meshscope_query::sql::SqlLimits;

#[derive(Debug, Parser)]
#[command(
    name = "meshscope",
    version,
    about = "Observability backend for Istio/Envoy meshes: access logs, Envoy stats and OTLP traces in one program.",
    long_about = "meshscope ingests Envoy access logs, Envoy stats and OTLP spans into columnar storage \
(WAL → Arrow → Parquet) and serves the service graph, traces and read-only SQL on one API port.\n\n\
Without a subcommand, `meshscope` runs `serve`. Every option can also be given as a MESHSCOPE_* \
environment variable or as a key in the TOML file named by --config."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run collector and query service in one process (the default).
    Serve(ServerOpts),
    /// Run only the collector: receivers and the storage writer.
    Collector(ServerOpts),
    /// Run only the query service, reading the storage a collector writes (read-only).
    Query(ServerOpts),
    /// Run `serve` with the built-in bookinfo traffic simulator.
    Demo(DemoOpts),
    /// Run one read-only SQL query against a data directory and print a table.
    Sql(SqlOpts),
    /// Benchmarks that print throughput, size and latency figures.
    Bench(BenchOpts),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsyncArg {
    /// fsync the WAL before every acknowledgement: rows survive power loss.
    Always,
    /// write(2) only: rows survive a meshscope crash, not a power loss.
    Never,
}

#[derive(Debug, Clone, Args)]
pub struct ServerOpts {
    /// Optional TOML config file; its keys are these options' long names.
    #[arg(long, env = "MESHSCOPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where Parquet segments live: a directory, or an object-store URL such as
    /// s3://bucket/prefix (credentials from AWS_* variables).
    #[arg(long, env = "MESHSCOPE_DATA_DIR", default_value = "./data")]
    pub data_dir: String,

    /// Local directory of the write-ahead log [default: <data-dir>/wal; required when
    /// --data-dir is a URL].
    #[arg(long, env = "MESHSCOPE_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// Address of the HTTP API and UI.
    #[arg(long, env = "MESHSCOPE_API_ADDR", default_value = "127.0.0.1:20001")]
    pub api_addr: SocketAddr,

    /// Address of the OTLP/gRPC receiver.
    #[arg(
        long,
        env = "MESHSCOPE_OTLP_GRPC_ADDR",
        default_value = "127.0.0.1:4317"
    )]
    pub otlp_grpc_addr: SocketAddr,

    /// Address of the OTLP/HTTP receiver.
    #[arg(
        long,
        env = "MESHSCOPE_OTLP_HTTP_ADDR",
        default_value = "127.0.0.1:4318"
    )]
    pub otlp_http_addr: SocketAddr,

    /// When the WAL is fsynced.
    #[arg(
        long,
        env = "MESHSCOPE_WAL_FSYNC",
        value_enum,
        default_value = "always"
    )]
    pub wal_fsync: FsyncArg,

    /// How long the WAL writer gathers appends into one commit (at most 100ms).
    #[arg(long, env = "MESHSCOPE_WAL_GROUP_COMMIT", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub wal_group_commit: Duration,

    /// Flush buffered rows to Parquet when the oldest is this old.
    #[arg(long, env = "MESHSCOPE_FLUSH_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,

    /// Flush buffered rows to Parquet when this many are buffered.
    #[arg(long, env = "MESHSCOPE_FLUSH_ROWS", default_value_t = 500_000)]
    pub flush_rows: usize,

    /// Refuse appends (HTTP 429 / gRPC UNAVAILABLE) while the buffer holds more than this many MiB.
    /// A flush starts at a quarter of it. 256 MiB, not 1 GiB: under sustained OTLP load the
    /// smaller buffer costs 18-25% less CPU per span (fewer pages faulted in and flushes that
    /// stay in cache) at a third of the memory.
    #[arg(long, env = "MESHSCOPE_MAX_BUFFER_MB", default_value_t = 256)]
    pub max_buffer_mb: usize,

    /// Delete hour partitions older than this.
    #[arg(long, env = "MESHSCOPE_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// The current hour: merge files once this many of one level (flushes are level 0) have
    /// gathered. A past hour is merged into one sorted file whatever its count.
    #[arg(long, env = "MESHSCOPE_COMPACTION_MIN_FILES", default_value_t = 8)]
    pub compaction_min_files: usize,

    /// Oldest row time accepted at ingest, as an age [default: --retention]. Older rows are
    /// refused and reported (partial success, `refused` in push answers); they would land in
    /// partitions retention deletes anyway.
    #[arg(long, env = "MESHSCOPE_INGEST_MAX_AGE", value_parser = humantime::parse_duration)]
    pub ingest_max_age: Option<Duration>,

    /// How far in the future a row's time may lie (clock skew between hosts).
    #[arg(long, env = "MESHSCOPE_INGEST_MAX_SKEW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub ingest_max_skew: Duration,

    /// Hour partitions one request (or one tailed chunk) may write; rows of older hours
    /// beyond them are refused and reported.
    #[arg(long, env = "MESHSCOPE_INGEST_MAX_HOURS", default_value_t = 24)]
    pub ingest_max_hours: usize,

    /// How often compaction and retention run.
    #[arg(long, env = "MESHSCOPE_MAINTENANCE_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub maintenance_interval: Duration,

    /// Time limit of one SQL query.
    #[arg(long, env = "MESHSCOPE_SQL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub sql_timeout: Duration,

    /// Row limit of one SQL result.
    #[arg(long, env = "MESHSCOPE_SQL_MAX_ROWS", default_value_t = 10_000)]
    pub sql_max_rows: usize,

    /// Memory one SQL query may use, MiB: its operators' pool (sorts, aggregations and joins
    /// spill or fail beyond it) and the most a sized function (repeat, lpad, replace…) may
    /// produce in one call. Beyond it the query answers 400 `query_memory_limit`.
    #[arg(long, env = "MESHSCOPE_QUERY_MEMORY_MB", default_value_t = 256)]
    pub query_memory_mb: usize,

    /// Queries (SQL, graph, traces, Prometheus, Jaeger) that run at once; up to 16 times as
    /// many wait up to 5 s for a turn, and the rest answer 429 with Retry-After.
    #[arg(long, env = "MESHSCOPE_MAX_CONCURRENT_QUERIES", default_value_t = 4)]
    pub max_concurrent_queries: usize,

    /// A client must send a whole request head within this; an HTTP/1 connection waiting for
    /// its next request is closed after it too (slow and idle clients).
    #[arg(long, env = "MESHSCOPE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection with no request in flight for this long is closed (HTTP/1 and HTTP/2);
    /// on OTLP/gRPC it is also the longest one call may take.
    #[arg(long, env = "MESHSCOPE_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Open connections per listener; beyond it a new connection is closed at once. The
    /// soft limit of open files is raised to the hard limit at start.
    #[arg(long, env = "MESHSCOPE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Largest accepted request body, MiB (after decompression).
    #[arg(long, env = "MESHSCOPE_MAX_BODY_MB", default_value_t = 16)]
    pub max_body_mb: usize,

    /// Envoy admin endpoint to scrape (`/server_info` and `/stats/prometheus`), e.g.
    /// http://127.0.0.1:15000; repeatable, or comma-separated in the env variable.
    #[arg(
        long = "envoy-admin",
        env = "MESHSCOPE_ENVOY_ADMIN",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub envoy_admin: Vec<String>,

    /// How often each Envoy admin endpoint is scraped.
    #[arg(long, env = "MESHSCOPE_SCRAPE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub scrape_interval: Duration,

    /// Envoy format string of text access logs [default: Istio's default format]. JSON lines
    /// (Istio's JSON encoding) are recognised whatever this is.
    #[arg(long, env = "MESHSCOPE_ACCESS_LOG_FORMAT", value_name = "FORMAT")]
    pub access_log_format: Option<String>,

    /// Width of one service-graph rollup bucket (divides a minute: 1s…60s). Graph windows
    /// are rounded out to whole buckets.
    #[arg(long, env = "MESHSCOPE_ROLLUP_RESOLUTION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub rollup_resolution: Duration,

    /// How far back the service-graph rollups reach (they are rebuilt from stored rows at start).
    #[arg(long, env = "MESHSCOPE_ROLLUP_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub rollup_retention: Duration,

    /// Health thresholds in percent of requests, `5xx=<degraded>:<failure>,4xx=<degraded>:<failure>`
    /// (Kiali's defaults: any 5xx degraded, 10% failure; 4xx 10% degraded, 20% failure).
    #[arg(
        long,
        env = "MESHSCOPE_HEALTH_THRESHOLDS",
        default_value = "5xx=0:10,4xx=10:20"
    )]
    pub health_thresholds: String,

    /// Envoy access-log files to tail, as a glob, e.g.
    /// '/var/log/containers/*_istio-proxy-*.log'; repeatable, or comma-separated in the env
    /// variable. Files are followed through rotation and truncation, and a checkpoint in
    /// <data-dir>/checkpoints/ lets a restart go on where it stopped. A file seen for the
    /// first time is read from its beginning. Lines may be Istio text (--access-log-format)
    /// or JSON, bare or wrapped by CRI or Docker; pod, namespace and container come from
    /// /var/log/containers/<pod>_<namespace>_<container>-<id>.log names.
    #[arg(
        long = "access-log",
        env = "MESHSCOPE_ACCESS_LOG",
        value_delimiter = ',',
        value_name = "GLOB"
    )]
    pub access_log: Vec<String>,

    /// Log filter (tracing EnvFilter syntax), e.g. info or meshscope=debug.
    #[arg(long, env = "MESHSCOPE_LOG", default_value = "info")]
    pub log: String,

    /// File of bearer tokens, one per line (`#` starts a comment; at least 16 characters
    /// each), granting reads and ingest. With any token file set, every listener asks for a
    /// token (`Authorization: Bearer <token>`, or Basic auth with the token as the password)
    /// except /healthz, /metrics and the UI's static files. Read once at start.
    #[arg(long, env = "MESHSCOPE_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// File of tokens that grant reads only (the UI, Grafana, the query APIs).
    #[arg(long, env = "MESHSCOPE_READ_TOKEN_FILE", value_name = "FILE")]
    pub read_token_file: Option<PathBuf>,

    /// File of tokens that grant ingest only (OTLP, pushes, row ingest).
    #[arg(long, env = "MESHSCOPE_INGEST_TOKEN_FILE", value_name = "FILE")]
    pub ingest_token_file: Option<PathBuf>,

    /// Serve a non-loopback address without any token. Without this, meshscope refuses to
    /// start when a listener binds beyond 127.0.0.0/8 or ::1 and no token file is set.
    #[arg(long, env = "MESHSCOPE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

/// `demo`: every `serve` option plus the simulator's.
#[derive(Debug, Clone, Args)]
pub struct DemoOpts {
    #[command(flatten)]
    pub server: ServerOpts,

    /// Time compression: phases last 60 s / speed (whole seconds, at least 1) and request
    /// rates rise with it (bounded to about 200 requests per second in total).
    #[arg(long, env = "MESHSCOPE_DEMO_SPEED", default_value_t = 1.0)]
    pub speed: f64,

    /// Seed of the simulator's decisions (arrivals, routing, status codes, durations); the
    /// same seed gives the same requests. Default: a random seed, printed at start.
    #[arg(long, env = "MESHSCOPE_DEMO_SEED")]
    pub seed: Option<u64>,
}

impl DemoOpts {
    /// Checks the simulator's options; the server options are checked by `ServerOpts::validate`.
    pub fn validate_demo(&self) -> Result<(), ConfigError> {
        if !(self.speed.is_finite() && self.speed > 0.0 && self.speed <= 1000.0) {
            return Err(ConfigError::Invalid(format!(
                "--speed must be above 0 and at most 1000, got {}",
                self.speed
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Args)]
pub struct SqlOpts {
    /// The data directory (or object-store URL) to read.
    #[arg(long, env = "MESHSCOPE_DATA_DIR", default_value = "./data")]
    pub data_dir: String,
    /// WAL directory [default: <data-dir>/wal]; rows not yet flushed are read from it.
    #[arg(long, env = "MESHSCOPE_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SqlFormat,
    /// Time limit of the query.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Row limit of the result.
    #[arg(long, default_value_t = 10_000)]
    pub max_rows: usize,
    /// The query, e.g. "SELECT count(*) FROM spans".
    pub query: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqlFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct BenchOpts {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchWhat {
    /// Service graph: latency of a one-hour graph over rollups of `rps` requests per second.
    Graph {
        /// Edge counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "50,10000")]
        edges: Vec<usize>,
        /// Requests per second across the mesh.
        #[arg(long, default_value_t = 1000)]
        rps: usize,
        /// Minutes of traffic (the graph's window).
        #[arg(long, default_value_t = 60)]
        minutes: usize,
        /// Graph builds to time.
        #[arg(long, default_value_t = 20)]
        iterations: usize,
    },
    /// Storage: durable span appends per second, bytes per span on disk, trace lookup latency.
    Storage {
        /// Spans to store.
        #[arg(long, default_value_t = 1_000_000)]
        spans: usize,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Spans per append.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Where to put the data [default: a temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Trace APIs: trace-by-id and request-id lookup latency, warm and cold, over many spans.
    Lookup {
        /// Spans to store (each with its access-log row).
        #[arg(long, default_value_t = 1_000_000)]
        spans: usize,
        /// Where to put the data [default: a temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Look up in the files the flushes wrote (arrival order, many per hour) instead of
        /// compacting every hour into one sorted file first; background compaction is off.
        #[arg(long)]
        no_compact: bool,
    },
    /// OTLP load generator: sends bookinfo spans to a receiver, prints spans acked per second.
    Otlp(OtlpBenchOpts),
    /// Access-log parsing: Istio text lines parsed per second on one core.
    AccessLog {
        /// Lines to parse.
        #[arg(long, default_value_t = 2_000_000)]
        lines: usize,
    },
}

/// Options of `meshscope bench otlp`.
#[derive(Debug, Clone, Args)]
pub struct OtlpBenchOpts {
    /// Receiver: `grpc://host:port` (OTLP/gRPC) or `http://host:port` (OTLP/HTTP protobuf).
    #[arg(long, default_value = "grpc://127.0.0.1:4317")]
    pub target: meshscope_bench::otlp::Target,
    /// Spans to have acknowledged.
    #[arg(long, default_value_t = 1_000_000)]
    pub spans: usize,
    /// Spans per export request.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Concurrent requests, each task on its own connection.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Stop sending after this long even if fewer spans were acknowledged.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub max_time: Duration,
    /// Distinct spans encoded up front (client memory); requests repeat past this.
    #[arg(long, default_value_t = 200_000)]
    pub distinct: usize,
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub store: StoreConfig,
    pub envoy_admin: Vec<String>,
    pub scrape_interval: Duration,
    pub access_log_format: String,
    /// `--access-log` globs of files to tail.
    pub access_log: Vec<String>,
    pub api_addr: SocketAddr,
    pub otlp_grpc_addr: SocketAddr,
    pub otlp_http_addr: SocketAddr,
    pub sql: SqlLimits,
    pub admission: meshscope_query::api::admission::AdmissionConfig,
    pub max_body_bytes: usize,
    /// Connections, timeouts and HTTP/2 streams of every listener.
    pub listener: meshscope_gate::serve::ListenerLimits,
    pub rollups: meshscope_query::rollup::RollupConfig,
    pub health: meshscope_query::graph::HealthConfig,
    pub log: String,
    /// Tokens every listener asks for (open when none are configured).
    pub auth: meshscope_gate::Auth,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: {1}")]
    File(String, String),
    #[error("{0}")]
    Invalid(String),
}

impl ServerOpts {
    /// The one place options are checked and turned into configuration.
    pub fn validate(&self, read_only: bool) -> Result<ServerConfig, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let is_url = self.data_dir.contains("://");
        let wal_dir = match (&self.wal_dir, is_url) {
            (Some(w), _) => w.clone(),
            (None, false) => PathBuf::from(&self.data_dir).join("wal"),
            (None, true) => {
                return bad(format!(
                    "--wal-dir is required when --data-dir is a URL ({})",
                    self.data_dir
                ));
            }
        };
        if is_url && let Err(e) = url::Url::parse(&self.data_dir) {
            return bad(format!(
                "--data-dir {:?} is not a valid URL: {e}",
                self.data_dir
            ));
        }
        if self.wal_group_commit > Duration::from_millis(100) {
            return bad(format!(
                "--wal-group-commit must be at most 100ms, got {:?}",
                self.wal_group_commit
            ));
        }
        if self.flush_interval < Duration::from_millis(100) {
            return bad("--flush-interval must be at least 100ms".into());
        }
        if self.flush_rows == 0
            || self.sql_max_rows == 0
            || self.max_buffer_mb == 0
            || self.max_body_mb == 0
            || self.query_memory_mb == 0
            || self.max_concurrent_queries == 0
        {
            return bad(
                "--flush-rows, --sql-max-rows, --max-buffer-mb, --max-body-mb, --query-memory-mb and --max-concurrent-queries must be positive"
                    .into(),
            );
        }
        if self.retention < Duration::from_secs(3600) {
            return bad(format!(
                "--retention must be at least 1h, got {}",
                humantime::format_duration(self.retention)
            ));
        }
        if self.header_read_timeout < Duration::from_millis(100)
            || self.idle_timeout < Duration::from_millis(100)
            || self.max_connections == 0
        {
            return bad(
                "--header-read-timeout and --idle-timeout must be at least 100ms, --max-connections positive"
                    .into(),
            );
        }
        if self.sql_timeout.is_zero() {
            return bad("--sql-timeout must be positive".into());
        }
        let addrs = [
            ("--api-addr", self.api_addr),
            ("--otlp-grpc-addr", self.otlp_grpc_addr),
            ("--otlp-http-addr", self.otlp_http_addr),
        ];
        for (i, (n1, a1)) in addrs.iter().enumerate() {
            for (n2, a2) in &addrs[i + 1..] {
                if a1 == a2 && a1.port() != 0 {
                    return bad(format!("{n1} and {n2} are both {a1}"));
                }
            }
        }
        for u in &self.envoy_admin {
            match url::Url::parse(u) {
                Ok(p) if p.scheme() == "http" => {}
                _ => {
                    return bad(format!(
                        "--envoy-admin {u:?} must be an http:// URL such as http://127.0.0.1:15000"
                    ));
                }
            }
        }
        if self.scrape_interval < Duration::from_millis(100) {
            return bad("--scrape-interval must be at least 100ms".into());
        }
        let access_log_format = self.access_log_format.clone().unwrap_or_else(|| {
            meshscope_collector::envoy::access_log::ISTIO_TEXT_FORMAT.to_string()
        });
        if let Err(e) =
            meshscope_collector::envoy::access_log::AccessLogFormat::compile(&access_log_format)
        {
            return bad(format!("--access-log-format: {e}"));
        }
        let res = self.rollup_resolution.as_secs();
        if self.rollup_resolution.subsec_nanos() != 0 || res == 0 || 60 % res != 0 {
            return bad(format!(
                "--rollup-resolution {}: must be whole seconds dividing a minute (1s, 5s, 10s, 15s, 30s, 60s…)",
                humantime::format_duration(self.rollup_resolution)
            ));
        }
        if self.rollup_retention < Duration::from_secs(60) {
            return bad("--rollup-retention must be at least 1m".into());
        }
        let health = match meshscope_query::graph::HealthConfig::parse(&self.health_thresholds) {
            Ok(h) => h,
            Err(e) => return bad(format!("--health-thresholds: {e}")),
        };
        for g in &self.access_log {
            if let Err(e) = meshscope_collector::envoy::tail::validate_glob(g) {
                return bad(format!("--access-log: {e}"));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return bad(format!("--log {:?}: {e}", self.log));
        }
        let auth = self.auth(read_only)?;
        let mut store = StoreConfig::local(&self.data_dir);
        store.location = self.data_dir.clone();
        store.wal_dir = wal_dir;
        store.fsync = match self.wal_fsync {
            FsyncArg::Always => FsyncPolicy::Always,
            FsyncArg::Never => FsyncPolicy::Never,
        };
        store.group_commit = self.wal_group_commit;
        store.flush_interval = self.flush_interval;
        store.flush_rows = self.flush_rows;
        store.max_buffer_bytes = self.max_buffer_mb << 20;
        store.flush_bytes = (store.max_buffer_bytes / 4).max(1 << 20);
        store.retention = self.retention;
        store.ingest_window = Some(meshscope_storage::window::IngestWindow {
            past: self.ingest_max_age.unwrap_or(self.retention),
            future: self.ingest_max_skew,
            max_hours: self.ingest_max_hours.max(1),
        });
        store.compaction_min_files = self.compaction_min_files.max(2);
        store.maintenance_interval = self.maintenance_interval;
        store.read_only = read_only;
        // The OTLP receiver logs trace exports in the WAL as received; replay and a following
        // query process decode them with the receiver's own decoder.
        store.request_decoder = Some(meshscope_collector::otlp::request_decoder);
        Ok(ServerConfig {
            store,
            envoy_admin: self.envoy_admin.clone(),
            scrape_interval: self.scrape_interval,
            access_log_format,
            access_log: self.access_log.clone(),
            api_addr: self.api_addr,
            otlp_grpc_addr: self.otlp_grpc_addr,
            otlp_http_addr: self.otlp_http_addr,
            sql: SqlLimits {
                timeout: self.sql_timeout,
                max_rows: self.sql_max_rows,
                memory_bytes: self.query_memory_mb << 20,
            },
            admission: meshscope_query::api::admission::AdmissionConfig {
                max_running: self.max_concurrent_queries,
                max_waiting: self.max_concurrent_queries * 16,
                ..Default::default()
            },
            max_body_bytes: self.max_body_mb << 20,
            listener: meshscope_gate::serve::ListenerLimits {
                header_read_timeout: self.header_read_timeout,
                idle_timeout: self.idle_timeout,
                max_connections: self.max_connections,
                ..Default::default()
            },
            rollups: meshscope_query::rollup::RollupConfig {
                resolution: self.rollup_resolution,
                retention: self.rollup_retention,
            },
            health,
            log: self.log.clone(),
            auth,
        })
    }

    /// Tokens from the token files; refuses to serve a non-loopback address without any
    /// (unless `--insecure-no-auth`). `read_only`: the query role binds no OTLP listener.
    fn auth(&self, read_only: bool) -> Result<meshscope_gate::Auth, ConfigError> {
        let files = meshscope_gate::TokenFiles {
            both: self.auth_token_file.clone(),
            read: self.read_token_file.clone(),
            ingest: self.ingest_token_file.clone(),
        };
        let auth = meshscope_gate::Auth::from_files(&files)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if auth.is_enabled() || self.insecure_no_auth {
            return Ok(auth);
        }
        let mut bound = vec![("--api-addr", self.api_addr)];
        if !read_only {
            bound.push(("--otlp-grpc-addr", self.otlp_grpc_addr));
            bound.push(("--otlp-http-addr", self.otlp_http_addr));
        }
        if let Some((flag, addr)) = bound.iter().find(|(_, a)| !a.ip().is_loopback()) {
            return Err(ConfigError::Invalid(format!(
                "{flag} {addr} is reachable from other machines and no token is set: anyone who \
                 reaches it could read every trace and write rows. Give --auth-token-file FILE \
                 (MESHSCOPE_AUTH_TOKEN_FILE; one token per line, e.g. from \
                 `head -c 24 /dev/urandom | base64`), or --insecure-no-auth to serve without \
                 authentication"
            )));
        }
        Ok(auth)
    }
}

const SERVER_SUBCOMMANDS: [&str; 4] = ["serve", "collector", "query", "demo"];

/// Parses the command line, applying the TOML config file as defaults beneath flags and env.
pub fn parse_from(mut args: Vec<String>) -> Result<Cli, ConfigError> {
    // No subcommand (or only options) means `serve`.
    let known = [
        "serve",
        "collector",
        "query",
        "demo",
        "sql",
        "bench",
        "help",
        "-h",
        "--help",
        "-V",
        "--version",
    ];
    if args.len() < 2 || !known.contains(&args[1].as_str()) {
        args.insert(1, "serve".to_string());
    }
    let mut cmd = Cli::command();
    if let Some(path) = config_path(&args) {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::File(path.clone(), e.to_string()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| ConfigError::File(path.clone(), e.to_string()))?;
        let sub = SERVER_SUBCOMMANDS.iter().find(|s| **s == args[1]).copied();
        if let Some(sub) = sub {
            let ids: Vec<String> = cmd
                .find_subcommand(sub)
                .map(|c| c.get_arguments().map(|a| a.get_id().to_string()).collect())
                .unwrap_or_default();
            let mut defaults = Vec::new();
            for (key, value) in &table {
                let id = key.replace('-', "_");
                if !ids.contains(&id) || id == "config" {
                    return Err(ConfigError::File(
                        path.clone(),
                        format!("unknown key {key:?}"),
                    ));
                }
                let v = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Array(items) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| i.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    other => {
                        return Err(ConfigError::File(
                            path.clone(),
                            format!("key {key:?}: unsupported value {other}"),
                        ));
                    }
                };
                defaults.push((id, v));
            }
            cmd = cmd.mut_subcommand(sub, |mut c| {
                for (id, v) in defaults {
                    c = c.mut_arg(id, |a| a.default_value(v));
                }
                c
            });
        }
    }
    let matches = cmd
        .try_get_matches_from(&args)
        .map_err(|e| ConfigError::Invalid(e.render().to_string()))?;
    Cli::from_arg_matches(&matches).map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// `--config FILE`, `--config=FILE` or MESHSCOPE_CONFIG.
fn config_path(args: &[String]) -> Option<String> {
    for (i, a) in args.iter().enumerate() {
        if a == "--config" {
            return args.get(i + 1).cloned();
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_string());
        }
    }
    std::env::var("MESHSCOPE_CONFIG")
        .ok()
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        std::iter::once("meshscope")
            .chain(a.iter().copied())
            .map(String::from)
            .collect()
    }

    #[test]
    fn defaults_and_default_subcommand() {
        let cli = parse_from(args(&[])).unwrap();
        let Command::Serve(o) = cli.command else {
            panic!("not serve")
        };
        let c = o.validate(false).unwrap();
        assert_eq!(c.api_addr.to_string(), "127.0.0.1:20001");
        assert_eq!(c.otlp_grpc_addr.to_string(), "127.0.0.1:4317");
        assert_eq!(c.otlp_http_addr.to_string(), "127.0.0.1:4318");
        assert_eq!(c.store.wal_dir, PathBuf::from("./data/wal"));
        assert_eq!(c.store.retention, Duration::from_secs(7 * 86400));
    }

    #[test]
    fn config_file_sits_below_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        std::fs::write(
            &f,
            "api-addr = \"127.0.0.1:9999\"\nflush_rows = 7\nretention = \"2days\"\n",
        )
        .unwrap();
        let f = f.to_string_lossy().to_string();
        let cli = parse_from(args(&["serve", "--config", &f, "--flush-rows", "9"])).unwrap();
        let Command::Serve(o) = cli.command else {
            panic!()
        };
        let c = o.validate(false).unwrap();
        assert_eq!(c.api_addr.port(), 9999);
        assert_eq!(c.store.flush_rows, 9);
        assert_eq!(c.store.retention, Duration::from_secs(2 * 86400));
        std::fs::write(dir.path().join("bad.toml"), "no_such_option = 1\n").unwrap();
        let bad = dir.path().join("bad.toml").to_string_lossy().to_string();
        let err = parse_from(args(&["--config", &bad]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key \"no_such_option\""), "{err}");
    }

    #[test]
    fn access_log_globs_from_flags_and_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        std::fs::write(
            &f,
            "access-log = [\"/var/log/containers/*istio-proxy*.log\", \"/tmp/envoy/*.log\"]\n",
        )
        .unwrap();
        let f = f.to_string_lossy().to_string();
        let cli = parse_from(args(&["collector", "--config", &f])).unwrap();
        let Command::Collector(o) = cli.command else {
            panic!()
        };
        let c = o.validate(false).unwrap();
        assert_eq!(
            c.access_log,
            ["/var/log/containers/*istio-proxy*.log", "/tmp/envoy/*.log"]
        );
        let cli = parse_from(args(&[
            "--access-log",
            "/a/*.log",
            "--access-log",
            "/b/[.log",
        ]))
        .unwrap();
        let Command::Serve(o) = cli.command else {
            panic!()
        };
        let err = o.validate(false).unwrap_err().to_string();
        assert!(
            err.contains("--access-log") && err.contains("/b/[.log"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_the_option() {
        let cli = parse_from(args(&["serve", "--wal-group-commit", "500ms"])).unwrap();
        let Command::Serve(o) = cli.command else {
            panic!()
        };
        assert!(
            o.validate(false)
                .unwrap_err()
                .to_string()
                .contains("--wal-group-commit")
        );
        let cli = parse_from(args(&["serve", "--data-dir", "s3://bucket/prefix"])).unwrap();
        let Command::Serve(o) = cli.command else {
            panic!()
        };
        assert!(
            o.validate(false)
                .unwrap_err()
                .to_string()
                .contains("--wal-dir is required")
        );
    }

    #[test]
    fn non_loopback_listeners_need_a_token() {
        let serve = |a: &[&str]| -> Result<ServerConfig, ConfigError> {
            let cli = parse_from(args(a)).unwrap();
            match cli.command {
                Command::Serve(o) => o.validate(false),
                Command::Query(o) => o.validate(true),
                _ => panic!(),
            }
        };
        let err = serve(&["serve", "--api-addr", "0.0.0.0:20001"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--api-addr 0.0.0.0:20001") && err.contains("--auth-token-file"),
            "{err}"
        );
        let err = serve(&["serve", "--otlp-grpc-addr", "[::]:4317"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--otlp-grpc-addr"), "{err}");
        // the query role binds no OTLP listener
        assert!(serve(&["query", "--otlp-grpc-addr", "0.0.0.0:4317"]).is_ok());
        let open = serve(&["serve", "--api-addr", "0.0.0.0:20001", "--insecure-no-auth"]).unwrap();
        assert!(!open.auth.is_enabled());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        let f = f.to_string_lossy().to_string();
        let c = serve(&[
            "serve",
            "--api-addr",
            "0.0.0.0:20001",
            "--auth-token-file",
            &f,
        ])
        .unwrap();
        assert!(c.auth.is_enabled());
        // a token file on loopback turns auth on too
        assert!(
            serve(&["serve", "--auth-token-file", &f])
                .unwrap()
                .auth
                .is_enabled()
        );
        let err = serve(&["serve", "--read-token-file", &f])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no token grants ingest"), "{err}");
    }
}
