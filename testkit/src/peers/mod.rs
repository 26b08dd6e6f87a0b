//! Real peers for meshscope's tests (feature `peers`): find (or build) the `meshscope` binary,
//! run it as a real process on loopback and talk HTTP to it (`Server`); real Envoy sidecars
//! configured as Istio configures them (`envoy`); a small app behind them (`app`); a client
//! and server mesh under bounded load (`mesh`); and test rows. Every peer a test needs fails
//! loudly when it is missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use meshscope_schemas::rows::{RequestRow, SpanEvent, SpanLink, SpanRow, StatSampleRow};
use meshscope_schemas::{SpanId, TraceId};
use serde_json::Value;

/// The workspace's target directory, derived from this test binary's own path
/// (`target/<profile>/deps/<test>`).
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of the `meshscope` binary; builds it once if it is missing or `MESHSCOPE_BIN` is unset.
pub fn meshscope_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    static BUILD: Mutex<()> = Mutex::new(());
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("MESHSCOPE_BIN") {
            return PathBuf::from(p);
        }
        let dir = target_profile_dir();
        let bin = dir.join("meshscope");
        let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-q", "-p", "meshscope", "--bin", "meshscope"]);
        if release {
            cmd.arg("--release");
        }
        // Always (re)build: cargo is a no-op when the binary is fresh, and a stale binary
        // would test old code.
        let status = cmd
            .status()
            .expect("running cargo build for the meshscope binary");
        assert!(status.success(), "cargo build of meshscope failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// A `meshscope` process on loopback with its own data directory; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// OTLP receiver addresses (collector roles).
    pub otlp_grpc: Option<String>,
    pub otlp_http: Option<String>,
    pub data_dir: PathBuf,
    /// Sent as `Authorization: Bearer` by every request helper when set (servers started
    /// with a token file).
    pub token: Option<String>,
    stderr_log: PathBuf,
}

impl Server {
    /// Starts `meshscope <sub> --data-dir <dir> --api-addr 127.0.0.1:0 <extra>` and waits for
    /// its "listening on" line. OTLP addresses get port 0 too; an address `extra` names
    /// replaces the default one.
    pub fn start(sub: &str, data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_at(
            sub,
            data_dir.to_str().expect("utf-8 path"),
            data_dir,
            extra,
            &[],
        )
    }

    /// Like `start`, with `--data-dir` given as text (an `s3://` URL, say), the log next to
    /// `local`, and extra environment variables.
    pub fn start_at(
        sub: &str,
        data_dir_arg: &str,
        local: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Server {
        let data_dir = local;
        let stderr_log = data_dir.with_extension(format!("{sub}.{}.log", std::process::id()));
        let log = std::fs::File::create(&stderr_log).expect("log file");
        let mut child = Command::new(meshscope_bin())
            .arg(sub)
            .args(["--data-dir", data_dir_arg])
            .envs(envs.iter().copied())
            // port 0 on loopback unless the test names an address itself
            .args(
                ["--api-addr", "--otlp-grpc-addr", "--otlp-http-addr"]
                    .into_iter()
                    .filter(|flag| !extra.contains(flag))
                    .flat_map(|flag| [flag, "127.0.0.1:0"]),
            )
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning meshscope");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut grpc, mut http) = (None, None);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("meshscope OTLP/gRPC on ") {
                    grpc = Some(rest.trim().to_string());
                } else if let Some(rest) = line.strip_prefix("meshscope OTLP/HTTP on http://") {
                    http = Some(rest.trim().trim_end_matches('/').to_string());
                } else if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send((
                        rest.trim_end_matches('/').to_string(),
                        grpc.take(),
                        http.take(),
                    ));
                }
            }
        });
        let (addr, otlp_grpc, otlp_http) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "meshscope {sub} did not start: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
        };
        Server {
            child,
            addr,
            otlp_grpc,
            otlp_http,
            data_dir: data_dir.to_path_buf(),
            token: None,
            stderr_log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A POST to `path` carrying the token, if any.
    pub fn post(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let r = agent().post(&self.url(path));
        match &self.token {
            Some(t) => r.header("authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// A GET of `path` carrying the token, if any.
    pub fn get(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let r = agent().get(&self.url(path));
        match &self.token {
            Some(t) => r.header("authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// POSTs a JSON body; returns (status, parsed JSON body).
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self.post(path).send_json(body).expect("POST");
        read(resp)
    }

    /// POSTs a text body; returns (status, parsed JSON body).
    pub fn post_text(&self, path: &str, body: &str) -> (u16, Value) {
        self.try_post_text(path, body).expect("POST")
    }

    /// POSTs a text body; a transport error (e.g. the server was killed) is an `Err`.
    pub fn try_post_text(&self, path: &str, body: &str) -> Result<(u16, Value), ureq::Error> {
        self.post(path).send(body).map(read)
    }

    /// POSTs an `application/x-www-form-urlencoded` form (as Grafana does).
    pub fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .post(path)
            .send_form(fields.iter().copied())
            .expect("POST");
        read(resp)
    }

    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.get(path).call().expect("GET");
        read(resp)
    }

    /// Runs SQL through the API; panics with the server's message unless it answers 200.
    pub fn sql(&self, sql: &str) -> Vec<Value> {
        let (status, v) = self.post_json("/api/v1/sql", &serde_json::json!({ "sql": sql }));
        assert_eq!(status, 200, "SQL {sql:?} failed: {v}");
        v.as_array().cloned().unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "meshscope did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Status and body (parsed as JSON when it is JSON) of a response.
pub fn read(mut resp: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// Every file under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Unix nanoseconds of the start of the current hour minus `hours_ago` hours, plus `offset_ns`.
pub fn hour_start_ns(hours_ago: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64;
    let h = 3_600_000_000_000i64;
    now.div_euclid(h) * h - hours_ago * h
}

/// A deterministic, fully populated span (every column, maps, events and links).
pub fn span(i: u64, t_ns: i64) -> SpanRow {
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&(i / 4 + 1).to_be_bytes());
    trace[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
    let span_id = SpanId((i + 1).to_be_bytes());
    SpanRow {
        trace_id: TraceId(trace),
        span_id,
        parent_span_id: (!i.is_multiple_of(4)).then(|| SpanId((i - i % 4 + 1).to_be_bytes())),
        trace_state: (i.is_multiple_of(7)).then(|| "vendor=x".to_string()),
        start_time_unix_nano: t_ns + i as i64 * 1000,
        duration_ns: 1_000_000 + i as i64,
        service_name: ["productpage.default", "reviews.default", "ratings.default"]
            [(i % 3) as usize]
            .into(),
        name: "reviews.default.svc.cluster.local:9080/*".into(),
        kind: if i.is_multiple_of(2) {
            "server"
        } else {
            "client"
        }
        .into(),
        status_code: if i.is_multiple_of(10) {
            "error"
        } else {
            "unset"
        }
        .into(),
        status_message: (i.is_multiple_of(10)).then(|| "upstream overflow".to_string()),
        request_id: Some(format!("req-{:08}", i / 4)),
        http_method: Some("GET".into()),
        http_status_code: Some(if i.is_multiple_of(10) { 503 } else { 200 }),
        http_url: Some(format!("http://reviews:9080/reviews/{i}")),
        http_protocol: Some("HTTP/1.1".into()),
        user_agent: Some("fortio.org/fortio-1.69".into()),
        upstream_cluster: Some("outbound|9080|v1|reviews.default.svc.cluster.local".into()),
        upstream_address: Some("127.0.10.5:9080".into()),
        response_flags: (i.is_multiple_of(10)).then(|| "UO".to_string()),
        peer_address: Some("127.0.10.2".into()),
        downstream_cluster: None,
        node_id: Some(
            "sidecar~127.0.10.2~productpage-v1-1.default~default.svc.cluster.local".into(),
        ),
        component: Some("proxy".into()),
        istio_canonical_service: Some("productpage".into()),
        istio_canonical_revision: Some("v1".into()),
        istio_namespace: Some("default".into()),
        istio_mesh_id: Some("cluster.local".into()),
        scope_name: None,
        attributes: vec![
            ("zone".into(), "z1".into()),
            ("request_size".into(), (i * 3).to_string()),
        ],
        resource_attributes: vec![("host.name".into(), format!("pod-{}", i % 5))],
        events: if i.is_multiple_of(5) {
            vec![SpanEvent {
                time_unix_nano: t_ns + 5,
                name: "retry".into(),
                attributes: vec![("n".into(), "1".into())],
            }]
        } else {
            vec![]
        },
        links: if i.is_multiple_of(6) {
            vec![SpanLink {
                trace_id: TraceId([9; 16]),
                span_id: SpanId([8; 8]),
                trace_state: None,
                attributes: vec![],
            }]
        } else {
            vec![]
        },
    }
}

/// A deterministic access-log row with a unique request id.
pub fn request(i: u64, t_ns: i64, request_id: &str) -> RequestRow {
    RequestRow {
        start_time_unix_nano: t_ns,
        method: Some("GET".into()),
        path: Some(format!("/ratings/{i}").into()),
        protocol: Some("HTTP/1.1".into()),
        response_code: if i.is_multiple_of(3) { 503 } else { 200 },
        response_flags: (i.is_multiple_of(3)).then(|| "UO".into()),
        response_code_details: Some("via_upstream".into()),
        connection_termination_details: None,
        upstream_transport_failure_reason: None,
        bytes_received: 0,
        bytes_sent: 100 + i as i64,
        duration_ms: (i % 50) as i64,
        upstream_service_time_ms: (!i.is_multiple_of(3)).then_some((i % 40) as i64),
        x_forwarded_for: None,
        user_agent: Some("fortio.org/fortio-1.69".into()),
        request_id: Some(request_id.to_string().into()),
        authority: Some("ratings:9080".into()),
        upstream_host: Some("127.0.10.7:9080".into()),
        upstream_cluster: Some("outbound|9080|v1|ratings.default.svc.cluster.local".into()),
        upstream_local_address: Some("127.0.10.5:40000".into()),
        downstream_local_address: Some("127.0.10.7:9080".into()),
        downstream_remote_address: Some("127.0.10.5:51234".into()),
        requested_server_name: None,
        route_name: Some("default".into()),
        reporter: Some("source".into()),
        request_protocol: Some("http".into()),
        proxy: Some("reviews-v2-1".into()),
        source_namespace: Some("default".into()),
        source_workload: Some("reviews-v2".into()),
        source_app: Some("reviews".into()),
        source_version: Some("v2".into()),
        source_service: Some("reviews".into()),
        destination_namespace: Some("default".into()),
        destination_workload: Some("ratings-v1".into()),
        destination_app: Some("ratings".into()),
        destination_version: Some("v1".into()),
        destination_service: Some("ratings.default.svc.cluster.local".into()),
        destination_service_name: Some("ratings".into()),
        destination_subset: Some("v1".into()),
        destination_port: Some(9080),
        trace_id: (i.is_multiple_of(2)).then(|| TraceId([(i % 251) as u8 + 1; 16])),
        log_source: Some("push".into()),
    }
}

pub fn stat(i: u64, t_ns: i64) -> StatSampleRow {
    StatSampleRow {
        time_unix_nano: t_ns + i as i64,
        proxy: format!("productpage-v1-{}", i % 3),
        proxy_namespace: Some("default".into()),
        proxy_workload: Some("productpage-v1".into()),
        proxy_app: Some("productpage".into()),
        proxy_version: Some("v1".into()),
        metric: "envoy_cluster_upstream_rq_pending_overflow".into(),
        cluster_name: Some("outbound|9080||reviews.default.svc.cluster.local".into()),
        tags: vec![("stat_prefix".into(), "x".into())],
        value: i as f64 * 1.5,
        kind: "counter".into(),
    }
}

pub mod app;
pub mod envoy;
pub mod mesh;
