//! `meshscope bench access-log`: Istio text lines parsed per second on one core.

/// `meshscope bench access-log`: Istio text lines parsed per second on this thread (one
/// core), with the binary's allocator; best of three runs after a warm-up.
pub fn access_log(lines: usize) {
    use meshscope_collector::envoy::access_log::bench_parse;
    bench_parse(lines.min(100_000));
    let runs: Vec<_> = (0..3).map(|_| bench_parse(lines)).collect();
    let best = |f: &dyn Fn(&_) -> f64| runs.iter().map(f).fold(0.0, f64::max);
    let wall = best(&|r| r.per_second);
    let cpu = best(&|r| r.per_cpu_second.unwrap_or(0.0));
    println!(
        "access-log parse: {lines} Istio text lines (identity derived) on one thread, best of 3: \
         {cpu:.0} lines per CPU-second, {wall:.0} lines per wall-clock second"
    );
}
