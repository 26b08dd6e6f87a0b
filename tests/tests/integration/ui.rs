//! The web UI in real headless Chromium: a real `meshscope serve` holds a small bookinfo's
//! access-log lines (every proxy, pushed in Istio's text format) and OTLP spans; then
//! `tests/browser/ui.test.mjs` drives Debian's Chromium through the topology, an edge's
//! codes × flags, the x-request-id search and the waterfall, and checks that a hostile span
//! attribute stays text. Screenshots land in `target/ui-artifacts/`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use meshscope_testkit::bookinfo;
use serde_json::{Value, json};

/// A pod of the testkit's bookinfo mesh at a loopback address (the UI shows addresses).
struct Pod {
    name: &'static str,
    app: &'static str,
    version: &'static str,
    namespace: &'static str,
    ip: &'static str,
}

const fn at(i: usize, ip: &'static str) -> Pod {
    let p = &bookinfo::PODS[i];
    Pod {
        name: p.name,
        app: p.app,
        version: match p.version {
            Some(v) => v,
            None => "",
        },
        namespace: p.namespace,
        ip,
    }
}

const INGRESS: Pod = at(bookinfo::GATEWAY, "127.0.10.1");
const PRODUCTPAGE: Pod = at(bookinfo::PRODUCTPAGE, "127.0.10.2");
const REVIEWS_V1: Pod = at(bookinfo::REVIEWS_V1, "127.0.10.3");
const REVIEWS_V2: Pod = at(bookinfo::REVIEWS_V2, "127.0.10.4");
const RATINGS: Pod = at(bookinfo::RATINGS, "127.0.10.5");
const DETAILS: Pod = at(bookinfo::DETAILS, "127.0.10.6");

/// One call from `src` to `dst` (service `svc`, subset `subset`), as both sidecars log it
/// in Istio's default text format. A local reply (`UO`, `FI`) has no destination line.
#[allow(clippy::too_many_arguments)]
fn call(
    logs: &mut Vec<(&'static str, String)>,
    t: chrono::DateTime<chrono::Utc>,
    rid: &str,
    src: &Pod,
    dst: &Pod,
    path: &str,
    (code, flags, details): (u16, &str, &str),
    dur_ms: u32,
) {
    let ts = t.format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let svc = dst.app;
    let subset = if src.app == "productpage" && svc == "reviews" {
        dst.version
    } else {
        ""
    };
    let port = 40000 + (rid.len() as u32 * 7 + dur_ms) % 20000;
    let local_reply = flags != "-";
    let (up_host, up_local, ust) = if local_reply {
        ("-".to_string(), "-".to_string(), "-".to_string())
    } else {
        (
            format!("{}:9080", dst.ip),
            format!("{}:{port}", src.ip),
            (dur_ms.saturating_sub(1)).to_string(),
        )
    };
    logs.push((
        src.name,
        format!(
            "[{ts}] \"GET {path} HTTP/1.1\" {code} {flags} {details} - \"-\" 0 {bytes} {dur_ms} {ust} \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\" \"{rid}\" \"{svc}:9080\" \"{up_host}\" outbound|9080|{subset}|{svc}.{ns}.svc.cluster.local {up_local} {dip}:9080 {sip}:{sport} - default",
            bytes = if code == 200 { 358 } else { 81 },
            ns = dst.namespace,
            dip = dst.ip,
            sip = src.ip,
            sport = port + 1,
        ),
    ));
    if !local_reply {
        logs.push((
            dst.name,
            format!(
                "[{ts}] \"GET {path} HTTP/1.1\" {code} - via_upstream - \"-\" 0 358 {d} {d2} \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\" \"{rid}\" \"{svc}:9080\" \"{dip}:9080\" inbound|9080|| 127.0.0.6:{port} {dip}:9080 {sip}:{sport} outbound_.9080_.{subset}_.{svc}.{ns}.svc.cluster.local default",
                d = dur_ms.saturating_sub(1),
                d2 = dur_ms.saturating_sub(2),
                ns = dst.namespace,
                dip = dst.ip,
                sip = src.ip,
                sport = port + 1,
            ),
        ));
    }
}

fn attr(k: &str, v: &str) -> Value {
    json!({"key": k, "value": {"stringValue": v}})
}

/// A sidecar span in OTLP/JSON (hex ids, nanosecond strings).
#[allow(clippy::too_many_arguments)]
fn span(
    trace: &str,
    id: u64,
    parent: Option<u64>,
    name: &str,
    kind: u8,
    start_ns: i64,
    dur_ms: f64,
    code: u16,
    flags: &str,
    rid: &str,
    extra: &[(&str, &str)],
) -> Value {
    let mut attrs = vec![
        attr("guid:x-request-id", rid),
        attr("http.method", "GET"),
        attr("http.status_code", &code.to_string()),
        attr("response_flags", flags),
        attr("component", "proxy"),
    ];
    attrs.extend(extra.iter().map(|(k, v)| attr(k, v)));
    json!({
        "traceId": trace,
        "spanId": format!("{id:016x}"),
        "parentSpanId": parent.map(|p| format!("{p:016x}")).unwrap_or_default(),
        "name": name,
        "kind": kind,
        "startTimeUnixNano": start_ns.to_string(),
        "endTimeUnixNano": (start_ns + (dur_ms * 1e6) as i64).to_string(),
        "attributes": attrs,
        "status": if code >= 500 { json!({"code": 2, "message": flags}) } else { json!({}) },
    })
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

#[test]
fn ui_in_headless_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = meshscope_tests::Server::start(
        "serve",
        &dir.path().join("data"),
        &["--rollup-resolution", "1s"],
    );

    // 40 user requests over the last 40 s: ingress → productpage → reviews (v1 ×3 : v2 ×1)
    // → ratings (from v2; every second one aborted by an injected fault), and productpage →
    // details, where every third call overflows the circuit breaker (503 UO, local reply).
    let now = chrono::Utc::now();
    let mut logs: Vec<(&'static str, String)> = Vec::new();
    let mut traced = Vec::new();
    for i in 0..40u32 {
        let t = now - chrono::Duration::milliseconds(40_000 - i as i64 * 1000);
        let rid = format!("7f3c2a10-{i:04x}-4e5b-9c1d-{:012x}", 0xb00c1f0 + i);
        let ok = (200, "-", "via_upstream");
        call(
            &mut logs,
            t,
            &rid,
            &INGRESS,
            &PRODUCTPAGE,
            "/productpage",
            ok,
            60,
        );
        let reviews = if i % 4 == 3 { &REVIEWS_V2 } else { &REVIEWS_V1 };
        call(
            &mut logs,
            t,
            &rid,
            &PRODUCTPAGE,
            reviews,
            "/reviews/0",
            ok,
            30,
        );
        let fault = i % 8 == 7;
        if reviews.version == "v2" {
            let r = if fault {
                (500, "FI", "fault_filter_abort")
            } else {
                ok
            };
            call(&mut logs, t, &rid, reviews, &RATINGS, "/ratings/0", r, 4);
        }
        let uo = i % 3 == 0;
        let d = if uo {
            (
                503,
                "UO",
                "upstream_reset_before_response_started{overflow}",
            )
        } else {
            ok
        };
        call(
            &mut logs,
            t,
            &rid,
            &PRODUCTPAGE,
            &DETAILS,
            "/details/0",
            d,
            6,
        );
        if i % 8 == 7 || i == 4 {
            traced.push((i, t, rid, fault, uo));
        }
    }
    for pod in [
        &INGRESS,
        &PRODUCTPAGE,
        &REVIEWS_V1,
        &REVIEWS_V2,
        &RATINGS,
        &DETAILS,
    ] {
        let body: Vec<&str> = logs
            .iter()
            .filter(|(p, _)| *p == pod.name)
            .map(|(_, l)| l.as_str())
            .collect();
        let path = format!(
            "/api/v1/ingest/accesslog?pod={}&namespace={}&app={}&version={}&ip={}",
            pod.name, pod.namespace, pod.app, pod.version, pod.ip
        );
        let (status, v) = server.post_text(&path, &body.join("\n"));
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["stored"].as_u64(),
            Some(body.len() as u64),
            "{}: {v}",
            pod.name
        );
    }

    // Sidecar spans of a few of those requests, over OTLP/HTTP JSON. One attribute is a
    // script injection attempt: the UI must show it as text.
    let mut by_service: std::collections::BTreeMap<&str, Vec<Value>> = Default::default();
    for (i, t, rid, fault, uo) in &traced {
        let trace = format!("{:032x}", 0x5eed_0000_u64 + *i as u64);
        let t0 = t.timestamp_nanos_opt().expect("time in range");
        let ms = |m: f64| t0 + (m * 1e6) as i64;
        let base = (*i as u64 + 1) << 8;
        let rid = rid.as_str();
        let pp = "productpage.default.svc.cluster.local:9080/productpage";
        by_service
            .entry("istio-ingressgateway.istio-system")
            .or_default()
            .push(span(
                &trace,
                base + 1,
                None,
                pp,
                3,
                ms(0.0),
                // Durations vary a little, so the search's scatter has a shape.
                60.0 + (*i % 5) as f64 * 9.0,
                200,
                "-",
                rid,
                &[],
            ));
        by_service
            .entry("productpage.default")
            .or_default()
            .extend([
                span(
                    &trace,
                    base + 2,
                    Some(base + 1),
                    pp,
                    2,
                    ms(1.0),
                    58.0,
                    200,
                    "-",
                    rid,
                    &[("user.comment", "<img src=x onerror=alert(1)>")],
                ),
                span(
                    &trace,
                    base + 3,
                    Some(base + 2),
                    "reviews.default.svc.cluster.local:9080/*",
                    3,
                    ms(4.0),
                    30.0,
                    200,
                    "-",
                    rid,
                    &[],
                ),
                span(
                    &trace,
                    base + 6,
                    Some(base + 2),
                    "details.default.svc.cluster.local:9080/*",
                    3,
                    ms(40.0),
                    if *uo { 0.3 } else { 6.0 },
                    if *uo { 503 } else { 200 },
                    if *uo { "UO" } else { "-" },
                    rid,
                    &[],
                ),
            ]);
        by_service.entry("reviews.default").or_default().extend([
            span(
                &trace,
                base + 4,
                Some(base + 3),
                "reviews.default.svc.cluster.local:9080/*",
                2,
                ms(5.0),
                28.0,
                200,
                "-",
                rid,
                &[],
            ),
            span(
                &trace,
                base + 5,
                Some(base + 4),
                "ratings.default.svc.cluster.local:9080/*",
                3,
                ms(12.0),
                if *fault { 0.2 } else { 4.0 },
                if *fault { 500 } else { 200 },
                if *fault { "FI" } else { "-" },
                rid,
                &[],
            ),
        ]);
    }
    let resource_spans: Vec<Value> = by_service
        .into_iter()
        .map(|(svc, spans)| {
            json!({
                "resource": {"attributes": [attr("service.name", svc)]},
                "scopeSpans": [{"spans": spans}],
            })
        })
        .collect();
    let otlp = server.otlp_http.clone().expect("OTLP/HTTP address");
    let resp = ureq::post(&format!("http://{otlp}/v1/traces"))
        .header("content-type", "application/json")
        .send_json(json!({"resourceSpans": resource_spans}))
        .expect("OTLP/HTTP export");
    assert_eq!(resp.status().as_u16(), 200);

    // The graph must be there before the browser looks (rollups are per second).
    let (status, g) = server.get_json("/api/v1/graph?window=5m&graph_type=versioned_app");
    assert_eq!(status, 200, "{g}");
    assert!(
        g["edges"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["circuit_breaker"]["tripped"] == true)),
        "the details edge is tripped: {g}"
    );
    let (status, t) = server.get_json("/api/v1/traces?service=productpage.default");
    assert_eq!(
        status, 200,
        "the trace API (branch `traces`) must be served for the waterfall: {t}"
    );

    // The browser.
    let artifacts = run_browser(&server, "ui-artifacts", &[]);
    for shot in ["topology.png", "waterfall.png"] {
        let len = std::fs::metadata(artifacts.join(shot)).map(|m| m.len());
        assert!(len.is_ok_and(|l| l > 10_000), "{shot} missing or empty");
    }
}

/// Runs the browser script against `server`; returns the screenshots' directory.
fn run_browser(server: &meshscope_tests::Server, dir: &str, envs: &[(&str, &str)]) -> PathBuf {
    let root = workspace_root();
    let script = root.join("tests/browser/ui.test.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core is missing: run tests/run.sh, or `npm ci` in tests/browser"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run tests/run.sh, or `apt-get install -y chromium`"
    );
    let artifacts = root.join("target").join(dir);
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://{}/", server.addr))
        .arg(&artifacts)
        .envs(envs.iter().copied())
        .output()
        .expect("running node (install Node.js 20 or later)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "browser test failed ({}):\n{stdout}\n{stderr}\nmeshscope log:\n{}",
        out.status,
        server.stderr()
    );
    artifacts
}

const DEMO_TOKEN: &str = "demo-token-0123456789abcdef";

/// The first-run path: `meshscope demo` at a high speed, the page after one whole cycle of
/// the tutorials (the breaker phase's tripped edge, the fault's marker), and a request the
/// fault aborted opened from its x-request-id, with one hostile span attribute added.
/// The server asks for a token: the simulator pushes with it, the page signs in with it.
#[test]
fn ui_on_the_demo_in_headless_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    // with a token: the simulator pushes with it, the browser signs in with it
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{DEMO_TOKEN}\n")).expect("token file");
    let mut server = meshscope_tests::Server::start(
        "demo",
        &dir.path().join("data"),
        &[
            "--speed",
            "20",
            "--seed",
            "7",
            "--rollup-resolution",
            "1s",
            "--auth-token-file",
            tokens.to_str().expect("utf-8"),
        ],
    );
    server.token = Some(DEMO_TOKEN.into());
    // one whole cycle: every phase has run once
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, d) = server.get_json("/api/v1/demo");
        let all_ran = d["phases"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| !p["last"].is_null()));
        if all_ran && d["cycle"].as_u64().is_some_and(|c| c >= 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not finish a cycle: {d}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, g) = server.get_json("/api/v1/graph?window=5m&graph_type=versioned_app");
    assert!(
        g["edges"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["circuit_breaker"]["tripped"] == true)),
        "the breaker phase left a tripped edge: {g}"
    );
    // a request the ratings fault aborted (in that phase's window), seen by several proxies
    let (_, d) = server.get_json("/api/v1/demo");
    let fault = d["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|p| p["name"] == "ratings-abort")
        .expect("the ratings-abort phase")["last"]
        .clone();
    let (from, to) = (
        fault["from"].as_i64().unwrap() * 1000,
        fault["to"].as_i64().unwrap() * 1000,
    );
    let (_, found) = server.get_json(&format!(
        "/api/v1/traces?error=true&limit=50&from={from}&to={to}"
    ));
    let rid = found["traces"]
        .as_array()
        .expect("traces")
        .iter()
        .filter_map(|t| t["request_ids"][0].as_str())
        .find(|rid| {
            let (_, r) = server.get_json(&format!("/api/v1/requests/{rid}"));
            let log = r["access_log"].as_array().cloned().unwrap_or_default();
            let proxies: std::collections::BTreeSet<_> =
                log.iter().map(|l| l["proxy"].to_string()).collect();
            log.iter().any(|l| l["response_flags"] == "FI") && proxies.len() >= 3
        })
        .expect("a traced request aborted by the fault")
        .to_string();
    let (_, req) = server.get_json(&format!("/api/v1/requests/{rid}"));
    let trace = req["traces"][0]["trace_id"]
        .as_str()
        .expect("trace id")
        .to_string();
    let root = req["traces"][0]["spans"][0]["span_id"]
        .as_str()
        .expect("root span")
        .to_string();
    let start: i64 = req["traces"][0]["spans"][0]["start_unix_nano"]
        .as_i64()
        .or_else(|| req["traces"][0]["start_unix_nano"].as_i64())
        .unwrap_or_else(|| meshscope_tests::hour_start_ns(0));
    let mut evil = span(
        &trace,
        0xe1,
        None,
        "annotate",
        1,
        start + 1_000,
        0.5,
        200,
        "-",
        &rid,
        &[("user.comment", "<img src=x onerror=alert(1)>")],
    );
    evil["parentSpanId"] = json!(root);
    let resp = ureq::post(&format!(
        "http://{}/v1/traces",
        server.otlp_http.as_deref().expect("OTLP/HTTP")
    ))
    .header("content-type", "application/json")
    .header("authorization", &format!("Bearer {DEMO_TOKEN}"))
    .send_json(json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", "productpage.default")]},
        "scopeSpans": [{"spans": [evil]}],
    }]}))
    .expect("OTLP/HTTP export");
    assert_eq!(resp.status().as_u16(), 200);
    let artifacts = run_browser(
        &server,
        "ui-artifacts/demo",
        &[
            ("UI_DEMO", "1"),
            ("UI_REQUEST_ID", rid.as_str()),
            ("UI_TOKEN", DEMO_TOKEN),
        ],
    );
    for shot in ["topology.png", "waterfall.png"] {
        let len = std::fs::metadata(artifacts.join(shot)).map(|m| m.len());
        assert!(len.is_ok_and(|l| l > 10_000), "{shot} missing or empty");
    }
}
