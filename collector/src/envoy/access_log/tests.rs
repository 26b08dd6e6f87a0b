//! End-to-end tests on real Istio lines (Envoy 1.40 with Istio's default format, see
//! `docs/envoy-as-istio.md`), custom formats, JSON, container wrappers and garbage.

use super::*;
use chrono::DateTime;
use meshscope_schemas::TraceId;

fn ns(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap()
}

fn s<T: for<'a> From<&'a str>>(v: &str) -> Option<T> {
    Some(v.into())
}

/// The sidecar of `productpage-v1` in the loopback demo (one 127.0.10.x address per pod).
fn productpage() -> ProxyIdentity {
    ProxyIdentity {
        app: s("productpage"),
        version: s("v1"),
        ip: s("127.0.10.2"),
        ..ProxyIdentity::from_pod("productpage-v1-6b746f74dc-9stp6", "default")
    }
}

fn book() -> AddressBook {
    let mut b = AddressBook::new();
    b.insert(
        "127.0.10.1",
        ProxyIdentity {
            app: s("sleep"),
            ..ProxyIdentity::from_pod("sleep-7c8d9f5b6d-x2k4p", "default")
        },
    );
    b.insert(
        "127.0.10.4",
        ProxyIdentity {
            app: s("reviews"),
            version: s("v2"),
            ..ProxyIdentity::from_pod("reviews-v2-5b64f47978-abcde", "default")
        },
    );
    b
}

fn istio_rows(text: &str) -> ParseOutcome {
    parse_lines(
        &AccessLogFormat::istio(),
        text,
        &productpage(),
        &book(),
        "/var/log/containers/x.log",
    )
}

fn one_row(line: &str) -> RequestRow {
    let out = istio_rows(line);
    assert_eq!(out.rejected, vec![], "{line}");
    assert_eq!(out.rows.len(), 1);
    out.rows.into_iter().next().unwrap()
}

#[test]
fn inbound_line_from_istio_docs() {
    let row = one_row(SAMPLE_LINES[0]);
    let want = RequestRow {
        start_time_unix_nano: ns("2026-11-26T01:02:03.456Z"),
        method: s("GET"),
        path: s("/productpage"),
        protocol: s("HTTP/1.1"),
        response_code: 200,
        response_flags: None,
        response_code_details: s("via_upstream"),
        connection_termination_details: None,
        upstream_transport_failure_reason: None,
        bytes_received: 0,
        bytes_sent: 5293,
        duration_ms: 35,
        upstream_service_time_ms: Some(34),
        x_forwarded_for: None,
        user_agent: s("curl/8.5.0"),
        request_id: s("b1c1e2a4-7c2f-9a8e-b7e1-1a2b3c4d5e6f"),
        authority: s("productpage:9080"),
        upstream_host: s("127.0.10.2:9080"),
        upstream_cluster: s("inbound|9080||"),
        upstream_local_address: s("127.0.0.6:45127"),
        downstream_local_address: s("127.0.10.2:9080"),
        downstream_remote_address: s("127.0.10.1:36468"),
        requested_server_name: s("outbound_.9080_._.productpage.default.svc.cluster.local"),
        route_name: s("default"),
        reporter: s("destination"),
        request_protocol: s("http"),
        proxy: s("productpage-v1-6b746f74dc-9stp6"),
        // The caller, found in the address book by the downstream remote address.
        source_namespace: s("default"),
        source_workload: s("sleep"),
        source_app: s("sleep"),
        source_version: None,
        source_service: s("sleep"),
        // The proxy that wrote the line, and the service from the SNI the caller sent.
        destination_namespace: s("default"),
        destination_workload: s("productpage-v1"),
        destination_app: s("productpage"),
        destination_version: s("v1"),
        destination_service: s("productpage.default.svc.cluster.local"),
        destination_service_name: s("productpage"),
        destination_subset: None,
        destination_port: Some(9080),
        trace_id: None,
        log_source: s("/var/log/containers/x.log"),
    };
    assert_eq!(row, want);
}

#[test]
fn circuit_breaker_line() {
    let row = one_row(SAMPLE_LINES[2]);
    assert_eq!(row.response_code, 503);
    assert_eq!(row.response_flags.as_deref(), Some("UO"));
    assert_eq!(
        row.response_code_details.as_deref(),
        Some("upstream_reset_before_response_started{overflow}")
    );
    assert_eq!(
        (row.bytes_received, row.bytes_sent, row.duration_ms),
        (0, 81, 0)
    );
    assert_eq!(row.upstream_service_time_ms, None);
    assert_eq!(row.user_agent.as_deref(), Some("fortio.org/fortio-1.69.1"));
    assert_eq!(
        (
            row.upstream_host.as_deref(),
            row.upstream_local_address.as_deref()
        ),
        (None, None)
    );
    assert_eq!(
        row.downstream_local_address.as_deref(),
        Some("10.96.1.2:8000")
    );
    assert_eq!(row.requested_server_name, None);
    assert_eq!(row.reporter.as_deref(), Some("source"));
    assert_eq!(
        row.destination_service.as_deref(),
        Some("httpbin.default.svc.cluster.local")
    );
    assert_eq!(row.destination_service_name.as_deref(), Some("httpbin"));
    assert_eq!(row.destination_namespace.as_deref(), Some("default"));
    assert_eq!(
        (row.destination_subset.as_deref(), row.destination_port),
        (None, Some(8000))
    );
    // Nothing answered, so there is no destination workload.
    assert_eq!(row.destination_workload, None);
    assert_eq!(row.source_workload.as_deref(), Some("productpage-v1"));
    assert_eq!(row.source_service.as_deref(), Some("productpage"));
    assert_eq!(row.source_version.as_deref(), Some("v1"));
}

#[test]
fn outbound_line_with_subset_browser_user_agent_and_peer_lookup() {
    let row = one_row(
        r#"[2026-11-26T01:02:03.470Z] "GET /reviews/0 HTTP/1.1" 200 - via_upstream - "-" 0 358 21 20 "-" "Mozilla/5.0 (X11; Linux x86_64)" "b1c1e2a4-7c2f-9a8e-b7e1-1a2b3c4d5e6f" "reviews:9080" "127.0.10.4:9080" outbound|9080|v2|reviews.default.svc.cluster.local 127.0.10.2:51832 127.0.10.4:9080 127.0.10.2:44310 - default"#,
    );
    assert_eq!(
        row.user_agent.as_deref(),
        Some("Mozilla/5.0 (X11; Linux x86_64)")
    );
    assert_eq!(row.reporter.as_deref(), Some("source"));
    assert_eq!(row.destination_subset.as_deref(), Some("v2"));
    assert_eq!(row.destination_workload.as_deref(), Some("reviews-v2"));
    assert_eq!(row.destination_version.as_deref(), Some("v2"));
    assert_eq!(row.destination_app.as_deref(), Some("reviews"));
    assert_eq!(row.source_workload.as_deref(), Some("productpage-v1"));
}

#[test]
fn hostile_user_agents_and_paths_keep_their_fields() {
    let base = SAMPLE_LINES[1];
    let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";
    for (evil_ua, evil_path) in [
        (r#"say "hi" there"#, "/reviews/0"),
        (r#"a" "b"#, "/reviews/0"),
        (r#"" "" ""#, "/reviews/0"),
        (r#"x" "-" "y"#, "/a b/c d?q=\"1 2\""),
        (ua, r#"/reviews/0" 200 - x"#),
        ("-", "/with space HTTP/1.1"),
    ] {
        let line = base
            .replace(ua, evil_ua)
            .replace("GET /reviews/0 ", &format!("GET {evil_path} "));
        let row = one_row(&line);
        let want_ua = (evil_ua != "-").then(|| evil_ua.to_string());
        assert_eq!(row.user_agent.as_deref(), want_ua.as_deref(), "{line}");
        assert_eq!(row.path.as_deref(), Some(evil_path), "{line}");
        assert_eq!(row.protocol.as_deref(), Some("HTTP/1.1"), "{line}");
        assert_eq!(
            row.request_id.as_deref(),
            Some("b1c1e2a4-7c2f-9a8e-b7e1-1a2b3c4d5e6f"),
            "{line}"
        );
        assert_eq!(row.authority.as_deref(), Some("reviews:9080"), "{line}");
        assert_eq!(
            row.upstream_host.as_deref(),
            Some("127.0.10.4:9080"),
            "{line}"
        );
        assert_eq!(row.bytes_sent, 358, "{line}");
    }
}

#[test]
fn odd_request_id_falls_back_to_the_relaxed_split() {
    let row =
        one_row(&SAMPLE_LINES[0].replace("b1c1e2a4-7c2f-9a8e-b7e1-1a2b3c4d5e6f", "my request 1"));
    assert_eq!(row.request_id.as_deref(), Some("my request 1"));
    assert_eq!(row.authority.as_deref(), Some("productpage:9080"));
}

#[test]
fn x_forwarded_for_lists_and_transport_failures() {
    let row = one_row(SAMPLE_LINES[3]);
    assert_eq!(
        row.x_forwarded_for.as_deref(),
        Some("203.0.113.9, 10.0.0.1")
    );
    assert_eq!(row.path.as_deref(), Some("/api/v1/orders?id=7"));
    assert_eq!(row.request_protocol.as_deref(), Some("http"));
    assert_eq!(row.destination_namespace.as_deref(), Some("shop"));
    let row = one_row(
        r#"[2026-11-26T01:02:07.000Z] "GET /ratings/0 HTTP/1.1" 503 UF upstream_reset_before_response_started{connection_failure,delayed_connect_error:_Connection_refused} - "delayed connect error: Connection refused" 0 145 1 - "-" "Go-http-client/1.1" "5f0c3c2e-1111-4222-8333-944455556666" "ratings:9080" "127.0.10.5:9080" outbound|9080||ratings.default.svc.cluster.local - 10.96.0.30:9080 127.0.10.2:40000 - default"#,
    );
    assert_eq!(
        row.upstream_transport_failure_reason.as_deref(),
        Some("delayed connect error: Connection refused")
    );
    assert_eq!(row.response_flags.as_deref(), Some("UF"));
}

#[test]
fn request_protocols() {
    assert_eq!(
        one_row(SAMPLE_LINES[4]).request_protocol.as_deref(),
        Some("grpc")
    );
    let tcp = one_row(SAMPLE_LINES[5]);
    assert_eq!(tcp.request_protocol.as_deref(), Some("tcp"));
    assert_eq!(
        (
            tcp.method.as_deref(),
            tcp.path.as_deref(),
            tcp.protocol.as_deref()
        ),
        (None, None, None)
    );
    assert_eq!(
        (tcp.response_code, tcp.bytes_received, tcp.bytes_sent),
        (0, 1532, 20731)
    );
    assert_eq!(tcp.route_name, None);
    assert_eq!(tcp.destination_service_name.as_deref(), Some("mysql"));
}

#[test]
fn bad_lines_are_rejected_with_line_numbers_and_good_ones_kept() {
    let bad_code = SAMPLE_LINES[0].replace("\" 200 -", "\" abc -");
    let text = format!(
        "{}\n\n   \ngarbage\r\n{}\n{bad_code}\n[2026-11-26T01:02:03.456Z] \"GET\n{{\"method\":\n{}\r\n",
        SAMPLE_LINES[0], SAMPLE_LINES[1], SAMPLE_LINES[2]
    );
    let out = istio_rows(&text);
    assert_eq!(out.rows.len(), 3);
    assert_eq!(out.rows[2].response_flags.as_deref(), Some("UO"));
    let lines: Vec<usize> = out.rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![4, 6, 7, 8]);
    assert_eq!(
        out.rejected[0].reason,
        "line does not start with \"[\" as the format does; it starts \"garbage\""
    );
    assert_eq!(
        out.rejected[1].to_string(),
        "line 6: field 5 (RESPONSE_CODE) at column 56 is \"abc\", expected a number"
    );
    // The error points at the furthest the line got: the method was never terminated.
    assert_eq!(
        out.rejected[2].reason,
        "expected \" \" after field 2 (REQ(:METHOD)), which starts at column 29"
    );
    assert!(
        out.rejected[3]
            .reason
            .starts_with("not a JSON access-log object"),
        "{}",
        out.rejected[3]
    );
}

#[test]
fn custom_format() {
    let f = AccessLogFormat::compile(
        "%START_TIME% %RESPONSE_CODE% %REQ(X-REQUEST-ID)% %UPSTREAM_CLUSTER%\n",
    )
    .unwrap();
    let out = parse_lines(
        &f,
        "2026-11-26T01:02:03.456Z 200 abc-123 outbound|9080|v1|reviews.default.svc.cluster.local\n\
         2026-11-26T01:02:03.457Z 503 - -\n\
         2026-11-26T01:02:03.458Z OK x y\n",
        &productpage(),
        &AddressBook::new(),
        "",
    );
    assert_eq!(out.rows.len(), 2);
    let r = &out.rows[0];
    assert_eq!(r.start_time_unix_nano, ns("2026-11-26T01:02:03.456Z"));
    assert_eq!(
        (r.response_code, r.request_id.as_deref()),
        (200, Some("abc-123"))
    );
    assert_eq!(r.destination_service_name.as_deref(), Some("reviews"));
    assert_eq!(r.log_source, None);
    assert_eq!(
        (out.rows[1].response_code, &out.rows[1].upstream_cluster),
        (503, &None)
    );
    assert_eq!(
        out.rejected,
        vec![RejectedLine {
            line: 3,
            reason: "field 2 (RESPONSE_CODE) at column 26 is \"OK\", expected a number".into()
        }]
    );
}

#[test]
fn unknown_operators_become_extra_fields_and_traceparent_a_trace_id() {
    let f = AccessLogFormat::compile(
        "%START_TIME(%s)% %UPSTREAM_PEER_URI_SAN% %REQ(X-B3-SAMPLED):1% \"%REQ(TRACEPARENT)%\" %DYNAMIC_METADATA(istio.mixer:status)%",
    )
    .unwrap();
    let p = f
        .parse_line(
            "1764118923 spiffe://cluster.local/ns/default/sa/reviews - \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\" some status text",
        )
        .unwrap();
    assert_eq!(p.row.start_time_unix_nano, 1_764_118_923_000_000_000); // 2025-11-26T01:02:03Z
    assert_eq!(
        p.row.trace_id,
        Some(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap())
    );
    assert_eq!(
        p.extra,
        vec![
            ExtraField {
                name: "UPSTREAM_PEER_URI_SAN".into(),
                value: s("spiffe://cluster.local/ns/default/sa/reviews")
            },
            ExtraField {
                name: "REQ(X-B3-SAMPLED):1".into(),
                value: None
            },
            ExtraField {
                name: "DYNAMIC_METADATA(istio.mixer:status)".into(),
                value: s("some status text")
            },
        ]
    );
    // A malformed traceparent costs the trace id, not the row.
    let p = f.parse_line("1764118923 - - \"garbage\" -").unwrap();
    assert_eq!(p.row.trace_id, None);
}

/// Istio's JSON encoding of the same request as `SAMPLE_LINES[0]`, with the value types
/// Envoy's JSON formatter emits (numbers typed, null for unset).
const ISTIO_JSON_LINE: &str = r#"{"authority":"productpage:9080","bytes_received":0,"bytes_sent":5293,"connection_termination_details":null,"downstream_local_address":"127.0.10.2:9080","downstream_remote_address":"127.0.10.1:36468","duration":35,"method":"GET","path":"/productpage","protocol":"HTTP/1.1","request_id":"b1c1e2a4-7c2f-9a8e-b7e1-1a2b3c4d5e6f","requested_server_name":"outbound_.9080_._.productpage.default.svc.cluster.local","response_code":200,"response_code_details":"via_upstream","response_flags":"-","route_name":"default","start_time":"2026-11-26T01:02:03.456Z","upstream_cluster":"inbound|9080||","upstream_host":"127.0.10.2:9080","upstream_local_address":"127.0.0.6:45127","upstream_service_time":"34","upstream_transport_failure_reason":null,"user_agent":"curl/8.5.0","x_forwarded_for":null}"#;

#[test]
fn json_line_gives_the_same_row_as_the_text_line() {
    let out = istio_rows(&format!("{}\n  {ISTIO_JSON_LINE}\n", SAMPLE_LINES[0]));
    assert_eq!(out.rejected, vec![]);
    assert_eq!(out.rows[0], out.rows[1]);
    let p = parse_json_line(ISTIO_JSON_LINE).unwrap();
    assert!(p.extra.is_empty());
}

#[test]
fn container_logs_cri_docker_and_partials() {
    let (head, tail) = SAMPLE_LINES[2].split_at(120);
    let docker = serde_json::json!({"log": format!("{}\n", SAMPLE_LINES[0]), "stream": "stdout", "time": "2026-11-26T01:02:09Z"});
    let text = format!(
        "2026-11-26T01:02:08.000000001Z stdout F {}\n\
         2026-11-26T01:02:08.1Z stdout P {head}\n\
         2026-11-26T01:02:08.2Z stderr F 2026-11-26T01:02:08.2Z warning envoy config\n\
         2026-11-26T01:02:08.3Z stdout F {tail}\n\
         {docker}\n\
         2026-11-26T01:02:08.4Z stdout P [2026-11-26T01:02:03.456Z] \"GET",
        SAMPLE_LINES[1]
    );
    let mut joiner = ContainerLineJoiner::new();
    let out = parse_container_lines(
        &AccessLogFormat::istio(),
        &text,
        &mut joiner,
        &productpage(),
        &book(),
        "f",
    );
    // Envoy's own stderr log line is not an access-log line: rejected, not fatal.
    assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected);
    assert_eq!(out.rejected[0].line, 3);
    assert_eq!(out.rows.len(), 3);
    assert_eq!(out.rows[1], one_row(SAMPLE_LINES[2]).clone_with_source("f"));
    assert_eq!(out.rows[2], one_row(SAMPLE_LINES[0]).clone_with_source("f"));
    // The last line is still partial; its rest comes with the next read.
    assert!(joiner.has_pending());

    // A format without START_TIME takes the runtime's time.
    let f = AccessLogFormat::compile("%RESPONSE_CODE% %UPSTREAM_CLUSTER%").unwrap();
    let out = parse_container_lines(
        &f,
        "2026-11-26T01:02:08.5Z stdout F 200 inbound|80||",
        &mut ContainerLineJoiner::new(),
        &productpage(),
        &book(),
        "",
    );
    assert_eq!(
        out.rows[0].start_time_unix_nano,
        ns("2026-11-26T01:02:08.5Z")
    );
    assert_eq!(out.rows[0].reporter.as_deref(), Some("destination"));
}

trait WithSource {
    fn clone_with_source(self, source: &str) -> RequestRow;
}

impl WithSource for RequestRow {
    fn clone_with_source(mut self, source: &str) -> RequestRow {
        self.log_source = s(source);
        self
    }
}

#[test]
fn reporter_without_an_istio_cluster() {
    // NR: no route, so no cluster. The listener address tells the direction.
    let nr = SAMPLE_LINES[2]
        .replace("503 UO", "404 NR")
        .replace("outbound|8000||httpbin.default.svc.cluster.local", "-");
    let row = one_row(&nr);
    assert_eq!(row.reporter.as_deref(), Some("source"));
    assert_eq!(row.source_workload.as_deref(), Some("productpage-v1"));
    assert_eq!(row.destination_service, None);
    let passthrough = SAMPLE_LINES[2].replace(
        "outbound|8000||httpbin.default.svc.cluster.local",
        "PassthroughCluster",
    );
    let row = one_row(&passthrough);
    assert_eq!(row.reporter.as_deref(), Some("source"));
    assert_eq!(
        row.destination_service_name.as_deref(),
        Some("PassthroughCluster")
    );
    // Without the proxy's IP and a cluster, the direction is unknown: nothing is guessed.
    let out = parse_lines(
        &AccessLogFormat::istio(),
        &nr,
        &ProxyIdentity::default(),
        &AddressBook::new(),
        "",
    );
    assert_eq!(out.rows[0].reporter, None);
    assert_eq!(out.rows[0].request_protocol.as_deref(), Some("http"));
}

#[test]
fn inbound_plaintext_service_comes_from_the_authority() {
    let line = SAMPLE_LINES[0].replace(
        "outbound_.9080_._.productpage.default.svc.cluster.local",
        "-",
    );
    let row = one_row(&line);
    // a short name resolves in the destination's namespace, as the source side names it
    assert_eq!(
        row.destination_service.as_deref(),
        Some("productpage.default.svc.cluster.local")
    );
    assert_eq!(row.destination_service_name.as_deref(), Some("productpage"));
    assert_eq!(row.destination_namespace.as_deref(), Some("default"));
}

/// A small deterministic generator, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_garbage_never_panics_and_every_line_is_accounted_for() {
    const PIECES: &[&str] = &[
        "\"",
        " ",
        "-",
        "[",
        "]",
        "{",
        "}",
        "%",
        ":",
        "|",
        "0",
        "9",
        "200",
        "a",
        "Z",
        "T",
        "é",
        "✓",
        "\t",
        "\r",
        "\" \"",
        "{\"log\":\"",
        "\\n\"}",
        "stdout F ",
        "2026-11-26T01:02:03Z ",
        "outbound|9080||",
        "inbound|",
        "_.",
        "00-",
        "\u{0}",
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let formats = [
        AccessLogFormat::istio(),
        AccessLogFormat::compile("%REQ(A)%%REQ(B)% %RESPONSE_CODE%%BYTES_SENT%\"%ROUTE_NAME%\"")
            .unwrap(),
        AccessLogFormat::compile("{\"t\":\"%START_TIME%\",\"c\":%RESPONSE_CODE%}").unwrap(),
    ];
    for round in 0..300 {
        let mut text = String::new();
        for _ in 0..20 {
            let line = if rng.below(2) == 0 {
                // A real line, mutated at char boundaries.
                let mut chars: Vec<char> = SAMPLE_LINES[rng.below(SAMPLE_LINES.len())]
                    .chars()
                    .collect();
                for _ in 0..=rng.below(4) {
                    if chars.is_empty() {
                        break;
                    }
                    let at = rng.below(chars.len());
                    match rng.below(3) {
                        0 => {
                            chars.remove(at);
                        }
                        1 => chars
                            .insert(at, PIECES[rng.below(PIECES.len())].chars().next().unwrap()),
                        _ => chars.truncate(at),
                    }
                }
                chars.into_iter().collect::<String>()
            } else {
                (0..rng.below(40))
                    .map(|_| PIECES[rng.below(PIECES.len())])
                    .collect()
            };
            text.push_str(&line);
            text.push('\n');
        }
        let non_blank = text.split('\n').filter(|l| !l.trim().is_empty()).count();
        for f in &formats {
            let out = parse_lines(f, &text, &productpage(), &book(), "fuzz");
            assert_eq!(
                out.rows.len() + out.rejected.len(),
                non_blank,
                "round {round}"
            );
            let mut joiner = ContainerLineJoiner::new();
            let out = parse_container_lines(f, &text, &mut joiner, &productpage(), &book(), "");
            assert!(out.rows.len() + out.rejected.len() <= non_blank);
        }
        // Random format strings compile or fail cleanly.
        let _ = AccessLogFormat::compile(&text.chars().take(200 + round).collect::<String>());
        let _ = parse_container_log_path(&text);
    }
}

/// Prints throughput; asserts nothing about time. For figures, run in release mode:
/// `MESHSCOPE_BENCH_LINES=2000000 cargo test --release -p meshscope-collector envoy::access_log::tests::bench -- --nocapture`
#[test]
fn bench_parse_prints_lines_per_second() {
    let lines = std::env::var("MESHSCOPE_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rate = bench_parse(lines);
    assert!(rate.per_second > 0.0);
    println!(
        "bench_parse: {lines} Istio lines, {:.0} lines/s, {:.0} lines per CPU-second",
        rate.per_second,
        rate.per_cpu_second.unwrap_or(0.0)
    );
}

#[test]
fn a_push_may_not_rename_an_address_a_trusted_source_named() {
    let who = |pod: &str| ProxyIdentity {
        pod: Some(pod.into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let mut b = AddressBook::new();
    // the Envoy admin scrape says 10.0.0.5 is reviews-v1
    b.learn("10.0.0.5", who("reviews-v1-abc"), true).unwrap();
    // a push claims it for another pod: refused, the book unchanged
    let e = b.learn("10.0.0.5:9080", who("evil-0"), false).unwrap_err();
    assert!(e.contains("belongs to pod reviews-v1-abc"), "{e}");
    assert_eq!(
        b.get("10.0.0.5").unwrap().pod.as_deref(),
        Some("reviews-v1-abc")
    );
    // the same pod pushing its own address is fine, and so is a new address
    b.learn("10.0.0.5", who("reviews-v1-abc"), false).unwrap();
    b.learn("10.0.0.6", who("ratings-v1-x"), false).unwrap();
    // a pushed address may be taken over by a trusted source (IP reuse)
    b.learn("10.0.0.6", who("details-v1-y"), true).unwrap();
    assert_eq!(
        b.get("10.0.0.6").unwrap().pod.as_deref(),
        Some("details-v1-y")
    );
    // the book stops growing from pushes at its bound
    let mut big = AddressBook::new();
    for i in 0..crate::envoy::access_log::identity::MAX_ADDRESSES {
        big.learn(format!("ip-{i}"), who("p"), false).unwrap();
    }
    assert!(big.learn("one-more", who("p"), false).is_err());
    assert!(
        big.learn("one-more", who("p"), true).is_ok(),
        "trusted sources still add"
    );
}
