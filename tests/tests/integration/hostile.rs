//! What a hostile client sends, against a real `meshscope serve`: each request answered with a
//! clear 400 that names the limit it hit, and the process alive after. Queries right at the
//! limits run, so the limits leave the process room to spare.

use meshscope_tests::Server;
use serde_json::json;

fn nested(depth: usize) -> String {
    format!("{}1{}", "(".repeat(depth), ")".repeat(depth))
}

#[test]
fn queries_deeper_or_longer_than_the_limits_are_refused_and_the_process_lives() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("serve", &dir.path().join("d"), &[]);

    // PromQL: 200,000 parentheses deep (over the length limit), 10,000 deep, 20,000 terms.
    let chain = vec!["1"; 20_000].join("+");
    for (q, limit) in [
        (nested(200_000), "bytes long"),
        (nested(10_000), "nests brackets more than 64"),
        (chain.clone(), "more than 1000 operators"),
    ] {
        for path in ["/prometheus/api/v1/query", "/prometheus/api/v1/query_range"] {
            let (status, v) = server.post_form(
                path,
                &[("query", &q), ("start", "1"), ("end", "2"), ("step", "1")],
            );
            assert_eq!(status, 400, "{path}: {v}");
            assert_eq!(v["errorType"], "bad_data");
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(
                msg.contains(limit) && msg.contains("limit"),
                "{path}: {msg}"
            );
        }
    }
    // SQL: the same shapes.
    for (q, limit) in [
        (
            format!("SELECT {}", nested(10_000)),
            "nests brackets more than 40",
        ),
        (format!("SELECT {chain}"), "more than 1000 operators"),
    ] {
        let (status, v) = server.post_json("/api/v1/sql", &json!({ "sql": q }));
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error_type"], "query_too_large");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(limit), "{msg}");
    }

    // Right at the limits, the queries run and give the right answer.
    let at_sql = format!("SELECT {} AS n", vec!["1"; 1_001].join("+"));
    assert_eq!(server.sql(&at_sql)[0]["n"], 1001);
    let at_sql = format!("SELECT {} AS n", nested(40));
    assert_eq!(server.sql(&at_sql)[0]["n"], 1);
    for (q, want) in [(vec!["1"; 1_001].join(" + "), "1001"), (nested(64), "1")] {
        let (status, v) = server.post_form("/prometheus/api/v1/query", &[("query", &q)]);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"]["result"][1], want, "{v}");
    }

    // Alive, and answering.
    let (status, v) = server.get_json("/api/v1/status");
    assert_eq!(status, 200, "{v}");
}

/// Peak resident memory of a process (VmHWM), bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        << 10
}

/// The memory bombs of issue 15 and their kin: each answered with a 400 naming the limit
/// within the time limit plus a second, the process alive, and its peak RSS under the query
/// memory limit plus the buffer limit plus 25%.
#[test]
fn memory_bombs_are_refused_within_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (query_mb, buffer_mb, timeout_s) = (256u64, 256u64, 10u64);
    let server = Server::start(
        "serve",
        &dir.path().join("d"),
        &[
            "--query-memory-mb",
            &query_mb.to_string(),
            "--max-buffer-mb",
            &buffer_mb.to_string(),
            "--sql-timeout",
            &format!("{timeout_s}s"),
        ],
    );
    // a few rows, so functions also run over columns and not only over constants
    let rows: Vec<String> = (0..100)
        .map(|i| {
            json!({"start_time": meshscope_tests::hour_start_ns(0) + i, "response_code": 200,
                   "bytes_received": 0, "bytes_sent": 1, "duration_ms": 1,
                   "request_id": format!("bomb-{i}")})
            .to_string()
        })
        .collect();
    let (status, v) = server.post_text("/api/v1/ingest/rows/requests", &rows.join("\n"));
    assert_eq!((status, v["stored"].as_u64()), (200, Some(100)), "{v}");

    for (q, kind, says) in [
        (
            "SELECT count(*) FROM (SELECT unnest(range(300000000)))",
            "bad_query",
            "range",
        ),
        (
            "SELECT length(repeat('x', 1500000000))",
            "query_memory_limit",
            "repeat() would produce",
        ),
        (
            "SELECT max(length(repeat(request_id, 10000000))) FROM requests",
            "query_memory_limit",
            "--query-memory-mb",
        ),
        (
            "SELECT length(lpad('x', 2000000000))",
            "query_memory_limit",
            "lpad()",
        ),
        (
            "SELECT length(replace(repeat('x', 100000), 'x', repeat('y', 100000)))",
            "query_memory_limit",
            "replace()",
        ),
        (
            "SELECT cardinality(array_repeat(1, 1000000000))",
            "query_memory_limit",
            "array_repeat()",
        ),
        (
            "SELECT count(*) FROM (SELECT unnest(generate_series(1, 300000000)))",
            "bad_query",
            "generate_series",
        ),
    ] {
        let started = std::time::Instant::now();
        let (status, v) = server.post_json("/api/v1/sql", &json!({ "sql": q }));
        let took = started.elapsed();
        assert_eq!(
            (status, v["error_type"].as_str()),
            (400, Some(kind)),
            "{q}: {v}"
        );
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{q}: {msg}");
        assert!(
            took < std::time::Duration::from_secs(timeout_s + 1),
            "{q} took {took:?}"
        );
    }
    // within the limits, the same functions work
    let ok = server.sql("SELECT length(repeat('ab', 1000)) AS n, length(lpad('x', 5)) AS p");
    assert_eq!(ok, vec![json!({"n": 2000, "p": 5})]);

    let (status, v) = server.get_json("/api/v1/status");
    assert_eq!(status, 200, "{v}");
    let peak = peak_rss(server.child.id());
    let bound = (query_mb + buffer_mb) * (1 << 20) * 5 / 4;
    println!("peak RSS {} MiB (bound {} MiB)", peak >> 20, bound >> 20);
    assert!(
        peak < bound,
        "peak RSS {} MiB over {} MiB",
        peak >> 20,
        bound >> 20
    );
}

/// Issue 15's 3,000 spans one hour apart, years back, in one OTLP/JSON request, with three
/// spans of now: the old ones refused and reported as a partial success, the three stored,
/// and one hour partition written, not 3,000.
#[test]
fn spans_outside_the_ingest_window_are_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let server = Server::start("serve", &data, &["--flush-interval", "200ms"]);
    const HOUR: i64 = 3_600_000_000_000;
    let now = meshscope_tests::hour_start_ns(0) + 60_000_000_000;
    let span = |i: i64, t: i64| {
        json!({"traceId": format!("{:032x}", 0xabc000 + i), "spanId": format!("{:016x}", i + 1),
               "name": "old", "kind": 2, "startTimeUnixNano": t.to_string(),
               "endTimeUnixNano": (t + 1_000_000).to_string()})
    };
    let years_ago = now - 6 * 365 * 24 * HOUR;
    let mut spans: Vec<_> = (0..3000).map(|i| span(i, years_ago + i * HOUR)).collect();
    spans.extend((0..3).map(|i| span(5000 + i, now + i)));
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "old.default"}}]},
        "scopeSpans": [{"spans": spans}],
    }]});
    let url = format!("http://{}/v1/traces", server.otlp_http.as_deref().unwrap());
    let (status, v) = meshscope_tests::read(
        ureq::post(&url)
            .header("content-type", "application/json")
            .send_json(&body)
            .unwrap(),
    );
    assert_eq!(status, 200, "{v}");
    let ps = &v["partialSuccess"];
    let rejected = ps["rejectedSpans"]
        .as_i64()
        .or_else(|| ps["rejectedSpans"].as_str().and_then(|s| s.parse().ok()));
    assert_eq!(rejected, Some(3000), "{v}");
    let msg = ps["errorMessage"].as_str().unwrap_or_default();
    assert!(
        msg.contains("3000 rows with a time outside the accepted window"),
        "{msg}"
    );
    assert_eq!(server.sql("SELECT count(*) AS n FROM spans")[0]["n"], 3);
    // after the flush: one hour partition of spans on disk
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let hours = loop {
        let hours: Vec<_> = meshscope_tests::files_under(&data.join("spans"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .filter_map(|p| p.parent().map(|d| d.to_path_buf()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !hours.is_empty() || std::time::Instant::now() > deadline {
            break hours;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(hours.len(), 1, "{hours:?}");
    let (_, st) = server.get_json("/api/v1/status");
    assert_eq!(st["storage"]["refused_window"], 3000, "{st}");
}

/// Raises this test process's open-files limit: the test holds thousands of sockets.
fn enough_files(need: u64) {
    let (_, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
    assert!(
        hard >= need,
        "this test needs {need} open files; the hard limit is {hard} (raise it with ulimit -Hn)"
    );
    rlimit::Resource::NOFILE.set(hard, hard).expect("setrlimit");
}

/// One unary gRPC call with an empty `ExportTraceServiceRequest` on `client`; its grpc-status.
async fn empty_export(client: &mut h2::client::SendRequest<bytes::Bytes>) -> String {
    let req = http::Request::post(
        "http://meshscope/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let mut ready = client.clone().ready().await.expect("h2 ready");
    let (resp, mut body) = ready.send_request(req, false).expect("send");
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("data");
    let resp = resp.await.expect("response");
    let head = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    let mut b = resp.into_body();
    while let Some(chunk) = b.data().await {
        let _ = chunk;
    }
    let trailers = b.trailers().await.ok().flatten();
    head.or_else(|| {
        trailers.and_then(|t| {
            t.get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string())
        })
    })
    .unwrap_or_default()
}

/// 2,000 idle connections on the API port and 1,000 idle gRPC streams: a normal request
/// still answers in under a second, and the idle ones are closed after the idle timeout.
#[test]
fn idle_connections_and_streams_are_closed_and_requests_still_answer() {
    enough_files(6000);
    let dir = tempfile::tempdir().unwrap();
    let idle_s = 3;
    let server = Server::start(
        "serve",
        &dir.path().join("d"),
        &[
            "--idle-timeout",
            &format!("{idle_s}s"),
            "--header-read-timeout",
            "2s",
        ],
    );
    let api = server.addr.clone();
    let grpc = server.otlp_grpc.clone().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use tokio::io::AsyncReadExt;
        // 2,000 connections that send nothing
        let mut idle = Vec::new();
        for _ in 0..2000 {
            idle.push(tokio::net::TcpStream::connect(&api).await.expect("connect"));
        }
        // 1,000 gRPC streams that send their headers and nothing more, 100 per connection
        let mut streams = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..10 {
            let tcp = tokio::net::TcpStream::connect(&grpc).await.unwrap();
            let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            conns.push(tokio::spawn(conn));
            for _ in 0..100 {
                let req = http::Request::post(
                    "http://meshscope/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                )
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
                let mut ready = client.clone().ready().await.expect("ready");
                let (resp, body) = ready.send_request(req, false).expect("send");
                streams.push((resp, body));
            }
        }
        // a normal request on each port still answers at once
        let started = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(&api).await.unwrap();
        use tokio::io::AsyncWriteExt;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let took = started.elapsed();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            took < std::time::Duration::from_secs(1),
            "API answered after {took:?}"
        );
        let tcp = tokio::net::TcpStream::connect(&grpc).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let started = std::time::Instant::now();
        let status = empty_export(&mut client).await;
        let took = started.elapsed();
        assert_eq!(status, "0", "an empty export succeeds");
        assert!(
            took < std::time::Duration::from_secs(1),
            "gRPC answered after {took:?}"
        );
        // after the idle timeout: every idle connection closed, every idle stream ended
        let deadline = std::time::Duration::from_secs(idle_s + 5);
        for mut c in idle {
            let mut b = [0u8; 64];
            let n = tokio::time::timeout(deadline, c.read(&mut b)).await;
            assert!(
                matches!(n, Ok(Ok(0)) | Ok(Err(_))),
                "an idle connection stayed open: {n:?}"
            );
        }
        let mut ended = 0;
        for (resp, _body) in streams {
            match tokio::time::timeout(deadline, resp).await {
                Ok(_) => ended += 1,
                Err(_) => panic!("an idle gRPC stream was still open after {deadline:?}"),
            }
        }
        assert_eq!(ended, 1000);
    });
    let (_, metrics) = server.get_json("/metrics");
    let m = metrics.as_str().unwrap_or_default().to_string();
    let line = m
        .lines()
        .find(|l| l.starts_with("meshscope_connections_idle_closed_total{listener=\"api\"}"))
        .unwrap_or_default();
    let closed: f64 = line
        .rsplit(' ')
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0.0);
    assert!(closed >= 2000.0, "{line}");
}

/// 1M spans into one hour while compaction runs every 3 s: the compactions merge with
/// bounded memory (peak RSS at most 512 MiB with the default buffer; before, compaction
/// decoded the whole hour, about 1 KB of Arrow per span), and every span is stored exactly
/// once. (The same with 2M spans, release build: README, Benchmarks, session 15.)
#[test]
fn compaction_of_a_big_hour_stays_within_512_mib() {
    let spans: usize = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        "serve",
        &dir.path().join("d"),
        // (the final count reads 2M rows in a debug build next to other tests: time for it)
        &[
            "--maintenance-interval",
            "3s",
            "--wal-fsync",
            "never",
            "--sql-timeout",
            "300s",
        ],
    );
    let out = std::process::Command::new(meshscope_tests::meshscope_bin())
        .args(["bench", "otlp", "--target"])
        .arg(format!("grpc://{}", server.otlp_grpc.as_deref().unwrap()))
        .args([
            "--spans",
            &spans.to_string(),
            "--distinct",
            &spans.to_string(),
        ])
        .args(["--concurrency", "2", "--max-time", "600s"])
        .output()
        .expect("meshscope bench otlp");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("spans_acked={spans} ")), "{text}");
    // let maintenance compact what the flushes wrote
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let (_, st) = server.get_json("/api/v1/status");
        if st["storage"]["compactions"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no compaction: {st}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let peak = peak_rss(server.child.id());
    println!("{spans} spans: peak RSS {} MiB", peak >> 20);
    let n = server.sql("SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans");
    assert_eq!(n, vec![json!({"n": spans, "d": spans})]);
    assert!(peak <= 512 << 20, "peak RSS {} MiB", peak >> 20);
}
