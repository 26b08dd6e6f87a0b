//! A custom Envoy text format (the input's first line) compiled with
//! `AccessLogFormat::compile`, then the rest of the input parsed as lines of that format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshscope_collector::envoy::access_log::{
    AccessLogFormat, AddressBook, ProxyIdentity, parse_lines,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (format, lines) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(format) = AccessLogFormat::compile(format) else {
        return;
    };
    let proxy = ProxyIdentity::from_pod("reviews-v2-7d4b9c6f8d-q2wxl", "default");
    let out = parse_lines(&format, lines, &proxy, &AddressBook::new(), "");
    let n = lines.split('\n').filter(|l| !l.trim().is_empty()).count();
    assert_eq!(
        out.rows.len() + out.rejected.len(),
        n,
        "every line is a row or rejected"
    );
    for line in lines.lines() {
        let _ = format.parse_text_line(line);
    }
});
