//! Bytes as Envoy access-log text in every form a receiver accepts: Istio's text format,
//! Istio JSON, and lines wrapped by CRI or Docker. The parsers must answer a row or a
//! rejected line for each line, never panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use meshscope_collector::envoy::access_log::{
    AccessLogFormat, AddressBook, ContainerLineJoiner, ProxyIdentity, parse_container_lines,
    parse_json_line, parse_lines,
};

static ISTIO: LazyLock<AccessLogFormat> = LazyLock::new(AccessLogFormat::istio);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let proxy = ProxyIdentity::from_pod("productpage-v1-6b746f74dc-9stp6", "default");
    let mut book = AddressBook::new();
    book.insert(
        "10.244.1.9",
        ProxyIdentity::from_pod("ratings-v1-5c8f7b6d9b-zt4kq", "default"),
    );
    let out = parse_lines(&ISTIO, text, &proxy, &book, "fuzz");
    let lines = text.split('\n').filter(|l| !l.trim().is_empty()).count();
    assert_eq!(
        out.rows.len() + out.rejected.len(),
        lines,
        "every line is a row or rejected"
    );
    let mut joiner = ContainerLineJoiner::default();
    let _ = parse_container_lines(&ISTIO, text, &mut joiner, &proxy, &book, "fuzz");
    for line in text.lines() {
        let _ = parse_json_line(line);
        let _ = ISTIO.parse_line(line);
    }
});
