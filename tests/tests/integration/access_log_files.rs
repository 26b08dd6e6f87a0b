//! `--access-log <glob>`: a real `meshscope` tails Istio access-log files (a CRI-wrapped
//! `/var/log/containers`-style file and a bare one) through rotation by rename, copytruncate,
//! a SIGTERM restart while lines are being written, and a kill -9 restart with lines written
//! while it was down; every line is stored exactly once (checked by count and by request id).

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshscope_tests::Server;
use serde_json::Value;

const POD: &str = "productpage-v1-6b7f9c8d4-x2x9z";

/// Istio's default text format, one line with request id `id`, started now.
fn istio_line(id: &str, i: usize) -> String {
    let t = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let code = if i.is_multiple_of(7) { 503 } else { 200 };
    let flags = if code == 503 { "UO" } else { "-" };
    format!(
        "[{t}] \"GET /productpage HTTP/1.1\" {code} {flags} via_upstream - \"-\" 0 5293 35 34 \"-\" \"curl/8.5.0\" \"{id}\" \"productpage:9080\" \"127.0.10.2:9080\" inbound|9080|| 127.0.0.6:45127 127.0.10.2:9080 127.0.10.1:36468 outbound_.9080_._.productpage.default.svc.cluster.local default"
    )
}

/// What the container runtime writes for one line; every 10th line split into two pieces.
fn cri_wrap(line: &str, i: usize) -> String {
    let t = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.9fZ");
    if i.is_multiple_of(10) {
        let (a, b) = line.split_at(60);
        format!("{t} stdout P {a}\n{t} stdout F {b}\n")
    } else {
        format!("{t} stdout F {line}\n")
    }
}

struct Logs {
    cri: PathBuf,
    plain: PathBuf,
    /// Request ids written so far.
    written: BTreeSet<String>,
}

impl Logs {
    fn new(dir: &Path) -> Logs {
        fs::create_dir_all(dir).unwrap();
        let id = "3f1e2d4c5b6a79880123456789abcdef".repeat(2);
        Logs {
            cri: dir.join(format!("{POD}_default_istio-proxy-{id}.log")),
            plain: dir.join("envoy-gateway.log"),
            written: BTreeSet::new(),
        }
    }

    /// Appends lines `range` with ids `<prefix>-<i>` to the CRI file (wrapped) or the plain one.
    fn write(&mut self, cri: bool, prefix: &str, range: std::ops::Range<usize>) {
        let mut text = String::new();
        for i in range {
            let id = format!("{prefix}-{i}");
            let line = istio_line(&id, i);
            if cri {
                text += &cri_wrap(&line, i);
            } else {
                text += &line;
                text += "\n";
            }
            assert!(self.written.insert(id));
        }
        let path = if cri { &self.cri } else { &self.plain };
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn write_raw(&self, cri: bool, text: &str) {
        let path = if cri { &self.cri } else { &self.plain };
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

fn start(data: &Path, logs: &Path) -> Server {
    let glob = format!("{}/*.log", logs.display());
    Server::start(
        "serve",
        data,
        &["--access-log", &glob, "--sql-max-rows", "100000"],
    )
}

fn count(server: &Server) -> u64 {
    server.sql("SELECT count(*) AS n FROM requests")[0]["n"]
        .as_u64()
        .unwrap()
}

/// Waits (bounded) until `want` rows are stored, then checks a poll later that no more
/// arrive and that the stored request ids are exactly the ones written.
fn assert_stored_exactly(server: &Server, logs: &Logs, what: &str) {
    let want = logs.written.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = count(server);
    while n < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        n = count(server);
    }
    assert_eq!(
        n,
        want,
        "{what}: rows stored; server log:\n{}",
        server.stderr()
    );
    // Two polls later (1 s each), nothing more came.
    std::thread::sleep(Duration::from_millis(2500));
    let rows = server.sql("SELECT request_id FROM requests");
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap_or("<null>").to_string())
        .collect();
    let set: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), set.len(), "{what}: some lines were stored twice");
    assert_eq!(
        set, logs.written,
        "{what}: stored ids differ from written ids"
    );
}

fn file_status(server: &Server) -> Vec<Value> {
    let (status, v) = server.get_json("/api/v1/status");
    assert_eq!(status, 200);
    v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "access-log-file")
        .cloned()
        .collect()
}

/// Waits until every followed file's checkpointed offset is its size.
fn wait_caught_up(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files = file_status(server);
        let done = !files.is_empty()
            && files
                .iter()
                .all(|f| f["file"]["offset"] == f["file"]["size"]);
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "not caught up: {files:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tailed_files_are_stored_exactly_once_through_rotation_truncation_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (data, logs_dir) = (dir.path().join("d"), dir.path().join("logs"));
    let mut logs = Logs::new(&logs_dir);
    // Lines written before meshscope starts are read from the beginning.
    logs.write(true, "a", 0..300);
    let server = start(&data, &logs_dir);
    logs.write(false, "p", 0..200);
    // Bad lines among good ones: rejected with file and line number, the rest stored.
    logs.write_raw(false, "this is not an access-log line\n");
    logs.write(false, "p", 200..250);
    assert_stored_exactly(&server, &logs, "first lines");

    let files = file_status(&server);
    assert_eq!(files.len(), 2, "{files:?}");
    let plain = files
        .iter()
        .find(|f| f["url"].as_str().unwrap().ends_with("envoy-gateway.log"))
        .unwrap();
    assert_eq!(plain["file"]["lines_stored"], 250);
    assert_eq!(plain["file"]["lines_rejected"], 1);
    let last = plain["file"]["last_rejected"].as_str().unwrap();
    assert!(last.contains("envoy-gateway.log: line 201:"), "{last}");
    // The CRI file's name gives the proxy.
    let rows = server.sql(&format!(
        "SELECT count(*) AS n FROM requests WHERE proxy = '{POD}' AND log_source LIKE '%istio-proxy%'"
    ));
    assert_eq!(rows[0]["n"], 300);

    // Rotation by rename: lines written just before the rename are read from the old file.
    logs.write(true, "a", 300..400);
    let rotated = logs_dir.join("rotated.log.1");
    fs::rename(&logs.cri, &rotated).unwrap();
    logs.write(true, "a", 400..500);
    assert_stored_exactly(&server, &logs, "after rotation by rename");

    // copytruncate: copy aside (a name the glob does not match), truncate in place.
    fs::copy(&logs.plain, logs_dir.join("envoy-gateway.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&logs.plain)
        .unwrap()
        .set_len(0)
        .unwrap();
    logs.write(false, "p", 250..400);
    assert_stored_exactly(&server, &logs, "after copytruncate");

    // SIGTERM while a writer appends: the chunk in hand is finished and checkpointed.
    let writer_logs = std::sync::Arc::new(std::sync::Mutex::new(logs));
    let w = writer_logs.clone();
    let writer = std::thread::spawn(move || {
        for batch in 0..30 {
            let mut l = w.lock().unwrap();
            l.write(true, "s", batch * 40..(batch + 1) * 40);
            l.write(false, "t", batch * 10..(batch + 1) * 10);
            drop(l);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let server = start(&data, &logs_dir);
    writer.join().unwrap();
    let mut logs = std::sync::Arc::try_unwrap(writer_logs)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    assert_stored_exactly(&server, &logs, "after a SIGTERM restart mid-stream");

    // kill -9, then lines, a truncation and a rotation while meshscope is down.
    wait_caught_up(&server);
    drop(server); // SIGKILL
    logs.write(true, "k", 0..200);
    OpenOptions::new()
        .write(true)
        .open(&logs.plain)
        .unwrap()
        .set_len(0)
        .unwrap();
    logs.write(false, "u", 0..120);
    let server = start(&data, &logs_dir);
    logs.write(true, "k", 200..260);
    assert_stored_exactly(&server, &logs, "after kill -9 and a restart");

    // /metrics shows the files and the receiver.
    let body = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(body.contains("meshscope_access_log_files 2"), "{body}");
    assert!(
        body.contains("meshscope_receiver_stored_total{receiver=\"accesslog_files\"}"),
        "{body}"
    );
    let cp = fs::read_to_string(data.join("checkpoints/access_log.json")).unwrap();
    let cp: Value = serde_json::from_str(&cp).unwrap();
    assert_eq!(cp["files"].as_array().unwrap().len(), 2, "{cp}");
}
