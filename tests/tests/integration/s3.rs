//! Parquet on a real S3-compatible server (PyPI `moto[server]`, installed by tests/run.sh):
//! `--data-dir s3://bucket/prefix` with the usual AWS_* variables, flush on shutdown, and a
//! restarted server reading every row back from the bucket.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshscope_tests::{Server, hour_start_ns};
use serde_json::json;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_moto() -> (Moto, String) {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let moto = Moto(child);
    let url = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if agent.get(&format!("{url}/")).call().is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "moto's S3 server did not start: `pip install 'moto[server]'` (tests/run.sh does it)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // a bucket, as an operator would create it
    let resp = agent.put(&format!("{url}/meshscope")).send_empty().unwrap();
    assert_eq!(resp.status().as_u16(), 200, "creating the bucket");
    (moto, url)
}

#[test]
fn parquet_segments_live_in_s3_and_survive_a_restart() {
    let (_moto, endpoint) = start_moto();
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let envs = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
    ];
    let args = ["--wal-dir", wal.to_str().unwrap()];
    let url = "s3://meshscope/mesh";
    let t = hour_start_ns(0);
    let body: String = (0..500)
        .map(|i| {
            json!({"start_time": t + i, "response_code": if i % 5 == 0 { 503 } else { 200 },
                   "bytes_received": 0, "bytes_sent": i, "duration_ms": i % 9,
                   "request_id": format!("s3-{i}")})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let server = Server::start_at("serve", url, &dir.path().join("first"), &args, &envs);
    let (status, v) = server.post_text("/api/v1/ingest/rows/requests", &body);
    assert_eq!((status, v["stored"].as_u64()), (200, Some(500)), "{v}");
    // SIGTERM flushes the buffer to Parquet in the bucket
    assert!(server.terminate().success());

    // the objects are in the bucket, under the prefix
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let listing = agent
        .get(&format!("{endpoint}/meshscope?list-type=2&prefix=mesh/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(listing.contains(".parquet</Key>"), "{listing}");
    assert!(listing.contains("mesh/requests/_hours.json"), "{listing}");

    // a fresh WAL directory: every row must come from S3
    let wal2 = dir.path().join("wal2");
    let args2 = ["--wal-dir", wal2.to_str().unwrap()];
    let server = Server::start_at("serve", url, &dir.path().join("second"), &args2, &envs);
    let rows = server.sql(
        "SELECT count(*) AS n, count(DISTINCT request_id) AS ids, sum(bytes_sent) AS bytes, \
         sum(CASE WHEN response_code = 503 THEN 1 ELSE 0 END) AS errors FROM requests",
    );
    assert_eq!(
        rows,
        vec![json!({"n": 500, "ids": 500, "bytes": (0..500).sum::<i64>(), "errors": 100})]
    );
    let (_, st) = server.get_json("/api/v1/status");
    assert!(
        st["storage"]["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("s3://")),
        "{st}"
    );
    // the graph's rollups were rebuilt from the bucket as well
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, st) = server.get_json("/api/v1/status");
        if st["rollups"]["loaded"] == true {
            assert_eq!(st["rollups"]["rows"].as_u64(), Some(500), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "rollups not loaded: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
