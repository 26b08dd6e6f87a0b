//! meshscope's benchmarks, behind `meshscope bench`: storage (`storage`), trace and request
//! lookups (`lookup`), the service graph (`graph`), OTLP ingest as a load client (`otlp`) and
//! access-log parsing (`access_log`). They print figures; tests only check that they run.
//!
//! Benchmarks live apart so that no library crate carries their dependencies (the OTLP load
//! client, rand, tempfile); the data they store comes from the testkit's generators. Only the
//! application imports this crate.

pub mod access_log;
pub mod graph;
pub mod lookup;
pub mod otlp;
pub mod storage;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

pub use access_log::access_log;
pub use lookup::lookup;
pub use storage::storage;

/// `dir` when it is empty or new, else a temporary directory (removed when dropped).
pub(crate) fn bench_dir(
    dir: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(&d)?.next().is_some() {
                bail!(
                    "{} is not empty; the benchmark needs an empty or new directory",
                    d.display()
                );
            }
            Ok((d, None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("meshscope-bench-")
                .tempdir()?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// Nearest-rank percentile of sorted durations (`q` = 1.0 is the maximum).
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Memory by phase: RSS when a phase starts and its peak RSS, using the resettable
/// high-water mark (`5` written to /proc/self/clear_refs, Linux ≥ 4.0); where that is not
/// allowed, only the process's peak.
pub(crate) struct MemoryPhases {
    resettable: bool,
    peak: u64,
    /// (phase, RSS at its start, its peak), MiB.
    phases: Vec<(&'static str, u64, u64)>,
    current: Option<(&'static str, u64)>,
}

impl MemoryPhases {
    pub(crate) fn new() -> MemoryPhases {
        MemoryPhases {
            resettable: true,
            peak: 0,
            phases: Vec::new(),
            current: None,
        }
    }

    /// Ends the current phase, if any, and starts `name`.
    pub(crate) fn start(&mut self, name: &'static str) {
        self.finish();
        let rss = proc_status_mib("VmRSS:");
        self.resettable = self.resettable && std::fs::write("/proc/self/clear_refs", "5").is_ok();
        self.current = Some((name, rss));
    }

    pub(crate) fn finish(&mut self) {
        let hwm = proc_status_mib("VmHWM:");
        self.peak = self.peak.max(hwm);
        if let Some((name, rss)) = self.current.take() {
            self.phases.push((name, rss, hwm));
        }
    }
}

impl std::fmt::Display for MemoryPhases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peak RSS {} MiB", self.peak)?;
        if !self.resettable {
            return f.write_str(
                " (per-phase peaks unavailable: /proc/self/clear_refs is not writable)",
            );
        }
        f.write_str("; by phase, RSS at start → peak:")?;
        for (i, (name, rss, peak)) in self.phases.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{name} {rss} → {peak}")?;
        }
        f.write_str(" MiB")
    }
}

/// A `kB` field of /proc/self/status (`VmRSS:`, `VmHWM:`) in MiB; 0 where there is none.
pub(crate) fn proc_status_mib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) >> 10
}
