//! Bytes as an Envoy stats body: Prometheus text and plain `/stats` text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshscope_collector::envoy::access_log::ProxyIdentity;
use meshscope_collector::envoy::stats::{parse_plain, parse_prometheus, parse_stats};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let proxy = ProxyIdentity::from_pod("httpbin-7d4b9c6f8d-q2wxl", "default");
    let t = 1_795_654_923_000_000_000;
    let _ = parse_prometheus(body, &proxy, t);
    let _ = parse_plain(body, &proxy, t);
    let _ = parse_stats(body, &proxy, t);
});
