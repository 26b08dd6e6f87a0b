//! The `meshscope` binary as users run it: the SQL endpoint and its limits, row ingest with
//! bad lines, clean shutdown on SIGTERM, collector and query as separate processes, and the
//! `meshscope sql` command.

use meshscope_tests::{Server, files_under, hour_start_ns, meshscope_bin, read};
use serde_json::{Value, json};

fn request_lines(n: usize, prefix: &str) -> String {
    let t = hour_start_ns(0);
    (0..n)
        .map(|i| {
            json!({"start_time": t + i as i64, "response_code": if i.is_multiple_of(4) { 503 } else { 200 },
                   "response_flags": if i.is_multiple_of(4) { Value::from("UO") } else { Value::Null },
                   "bytes_received": 0, "bytes_sent": i, "duration_ms": i % 7,
                   "request_id": format!("{prefix}-{i}")})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn sql_endpoint_is_read_only_and_enforces_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        "serve",
        &dir.path().join("d"),
        &["--sql-max-rows", "50", "--sql-timeout", "1ms"],
    );
    let (status, v) = server.post_text("/api/v1/ingest/rows/requests", &request_lines(40, "r"));
    assert_eq!((status, v["stored"].as_u64()), (200, Some(40)), "{v}");

    for (sql, what) in [
        ("DROP TABLE requests", "DDL"),
        ("CREATE TABLE x AS SELECT 1", "DDL"),
        (
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
            "DDL",
        ),
        ("INSERT INTO requests SELECT * FROM requests", "DML"),
        ("COPY (SELECT 1) TO '/tmp/meshscope-copy.parquet'", "DML"),
        ("SET datafusion.execution.batch_size = 1", "Statement"),
    ] {
        let (status, v) = server.post_json("/api/v1/sql", &json!({ "sql": sql }));
        assert_eq!(status, 403, "{sql}: {v}");
        assert_eq!(v["error_type"], "read_only");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(&format!("{what} not supported")),
            "{sql}: {v}"
        );
    }
    assert!(!std::path::Path::new("/tmp/meshscope-copy.parquet").exists());

    // the time limit (1 ms) is hit by a 1600-row self join aggregation…
    let (status, v) = server.post_json(
        "/api/v1/sql",
        &json!({"sql": "SELECT sum(a.bytes_sent * b.bytes_sent) FROM requests a, requests b, requests c"}),
    );
    assert_eq!(
        (status, v["error_type"].as_str()),
        (400, Some("timeout")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("time limit"));
    drop(server);

    // …and the row limit (50) by a 64-row result, with a clear message
    let server = Server::start("serve", &dir.path().join("d"), &["--sql-max-rows", "50"]);
    let (status, v) = server.post_json(
        "/api/v1/sql",
        &json!({"sql": "SELECT * FROM requests a, (VALUES (1),(2)) t(x)"}),
    );
    assert_eq!(
        (status, v["error_type"].as_str()),
        (400, Some("too_many_rows")),
        "{v}"
    );
    assert!(
        v["error"].as_str().unwrap().contains("more than 50 rows"),
        "{v}"
    );
    // within the limits, numbers match what was stored
    let rows = server.sql("SELECT count(*) AS n, sum(CASE WHEN response_flags = 'UO' THEN 1 ELSE 0 END) AS uo FROM requests");
    assert_eq!(rows, vec![json!({"n": 40, "uo": 10})]);
    // malformed requests get a clear 400 (a text/plain body is refused before: auth.rs)
    let (status, v) = read(
        server
            .post("/api/v1/sql")
            .content_type("application/json")
            .send("not json")
            .expect("POST"),
    );
    assert_eq!(status, 400, "{v}");
    let (status, v) = server.post_json("/api/v1/sql", &json!({"sql": "SELECT nope FROM requests"}));
    assert_eq!(
        (status, v["error_type"].as_str()),
        (400, Some("bad_query")),
        "{v}"
    );
}

#[test]
fn bad_lines_are_rejected_with_line_and_column_and_the_rest_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("serve", &dir.path().join("d"), &[]);
    let t = hour_start_ns(0);
    let body = [
        json!({"start_time": t, "response_code": 200, "bytes_received": 1, "bytes_sent": 2, "duration_ms": 3, "request_id": "ok-1"}).to_string(),
        json!({"start_time": t, "response_code": "abc", "bytes_received": 1, "bytes_sent": 2, "duration_ms": 3}).to_string(),
        "{not json".to_string(),
        json!({"start_time": t, "response_code": 200, "bytes_received": 1, "bytes_sent": 2, "duration_ms": 3, "trace_id": "abc"}).to_string(),
        json!({"start_time": t, "response_code": 200, "bytes_received": 1, "bytes_sent": 2}).to_string(),
        json!({"start_time": t, "response_code": 204, "bytes_received": 1, "bytes_sent": 2, "duration_ms": 3, "request_id": "ok-2"}).to_string(),
    ]
    .join("\n");
    let (status, v) = server.post_text("/api/v1/ingest/rows/requests", &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stored"], 2);
    let rejected = v["rejected"].as_array().unwrap();
    let lines: Vec<u64> = rejected
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3, 4, 5]);
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap()
            .contains("'response_code'"),
        "{v}"
    );
    assert!(
        rejected[1]["error"].as_str().unwrap().contains("not JSON"),
        "{v}"
    );
    assert!(
        rejected[2]["error"]
            .as_str()
            .unwrap()
            .contains("`trace_id`"),
        "{v}"
    );
    assert!(
        rejected[3]["error"]
            .as_str()
            .unwrap()
            .contains("`duration_ms` is required"),
        "{v}"
    );
    let rows = server.sql("SELECT request_id FROM requests ORDER BY request_id");
    assert_eq!(
        rows,
        vec![json!({"request_id": "ok-1"}), json!({"request_id": "ok-2"})]
    );
    let (status, _) = server.post_text("/api/v1/ingest/rows/nosuchtable", "{}");
    assert_eq!(status, 404);
}

#[test]
fn sigterm_flushes_to_parquet_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let server = Server::start("serve", &data, &[]);
    let (status, _) = server.post_text("/api/v1/ingest/rows/requests", &request_lines(25, "t"));
    assert_eq!(status, 200);
    let st = server.terminate();
    assert!(st.success(), "exit status {st}");
    // the rows are in Parquet, the WAL holds nothing to replay
    let parquet: Vec<_> = files_under(&data.join("requests"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert_eq!(parquet.len(), 1, "{parquet:?}");
    let wal_bytes: u64 = files_under(&data.join("wal"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(wal_bytes, 0);
    // and `meshscope sql` reads them back
    let out = std::process::Command::new(meshscope_bin())
        .args([
            "sql",
            "--data-dir",
            data.to_str().unwrap(),
            "--format",
            "json",
            "SELECT count(*) AS n FROM requests",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!([{"n": 25}]));
    let out = std::process::Command::new(meshscope_bin())
        .args([
            "sql",
            "--data-dir",
            data.to_str().unwrap(),
            "DELETE FROM requests",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DML not supported"));
}

#[test]
fn collector_and_query_run_as_separate_processes_on_one_storage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let collector = Server::start("collector", &data, &["--flush-interval", "60s"]);
    let query = Server::start("query", &data, &[]);
    let (status, v) =
        collector.post_text("/api/v1/ingest/rows/requests", &request_lines(30, "split"));
    assert_eq!((status, v["stored"].as_u64()), (200, Some(30)));
    // acknowledged rows are visible to the query process before any flush (it tails the WAL)
    let n = || query.sql("SELECT count(DISTINCT request_id) AS d, count(*) AS n FROM requests");
    assert_eq!(n(), vec![json!({"d": 30, "n": 30})]);
    // the query process does not accept writes, the collector does not answer SQL
    let (status, _) = query.post_text("/api/v1/ingest/rows/requests", &request_lines(1, "x"));
    assert_eq!(status, 404);
    let (status, _) = collector.post_json("/api/v1/sql", &json!({"sql": "SELECT 1"}));
    assert_eq!(status, 404);
    // after the collector flushes and stops, the rows are still there exactly once
    assert!(collector.terminate().success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(n(), vec![json!({"d": 30, "n": 30})]);
    let (_, status) = query.get_json("/api/v1/status");
    assert_eq!(status["role"], "query");
    assert_eq!(status["storage"]["read_only"], true);
}
