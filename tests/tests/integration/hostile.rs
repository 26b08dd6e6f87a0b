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
