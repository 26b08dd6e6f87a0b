//! Time and duration parameters, and the clock. Every API reads "now" through [`now_ns`] and
//! parses its times here; each API only says which epoch unit its numbers are in (graph and
//! Prometheus: seconds; meshscope's trace API: milliseconds; Jaeger: microseconds).

use chrono::{DateTime, Utc};

/// The unit of a time given as a number since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epoch {
    /// Unix seconds, fractions allowed (Prometheus, the graph).
    Seconds,
    /// Unix milliseconds (meshscope's trace search).
    Millis,
    /// Unix microseconds (Jaeger's `start`/`end`).
    Micros,
}

impl Epoch {
    fn nanos(self) -> f64 {
        match self {
            Epoch::Seconds => 1e9,
            Epoch::Millis => 1e6,
            Epoch::Micros => 1e3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Epoch::Seconds => "unix seconds",
            Epoch::Millis => "unix milliseconds",
            Epoch::Micros => "unix microseconds",
        }
    }
}

/// Times past what unix nanoseconds in an `i64` hold (the year 2262) are refused.
const MAX_NS: f64 = i64::MAX as f64;

/// The current time in unix nanoseconds: the one clock of every API.
pub fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// A number in `epoch` units (integers exactly; fractions allowed) or RFC 3339
/// (`2026-11-26T01:02:03Z`) → unix nanoseconds. The error says what was wrong, for the caller
/// to name the parameter.
pub fn parse_time(s: &str, epoch: Epoch) -> Result<i64, String> {
    let unit = epoch.nanos() as i64;
    if let Ok(n) = s.parse::<i64>() {
        return n
            .checked_mul(unit)
            .filter(|ns| (0.0..MAX_NS).contains(&(*ns as f64)))
            .ok_or_else(|| format!("`{s}` is out of range for {}", epoch.name()));
    }
    if let Ok(n) = s.parse::<f64>() {
        let ns = n * epoch.nanos();
        if !(0.0..MAX_NS).contains(&ns) {
            return Err(format!("`{s}` is out of range for {}", epoch.name()));
        }
        return Ok(ns as i64);
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| {
            format!(
                "`{s}` is not a time: write RFC 3339 (2026-11-26T01:02:03Z) or {}",
                epoch.name()
            )
        })
}

/// `10ms`, `1.5s`, `250us`, `2m`, `1h30m` (Go's duration syntax, as Jaeger takes it) → ns.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || {
        format!("{s:?} is not a duration; write a number and a unit, e.g. 10ms, 1.5s, 250us, 2m")
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[u..];
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(total as i64)
}

/// Unix nanoseconds as RFC 3339 with nanoseconds, the one format times are answered in.
pub fn rfc3339(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_reads_its_unit_and_rfc3339() {
        assert_eq!(parse_time("1.5", Epoch::Seconds), Ok(1_500_000_000));
        assert_eq!(parse_time("1000", Epoch::Millis), Ok(1_000_000_000));
        assert_eq!(parse_time("7", Epoch::Micros), Ok(7_000));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", Epoch::Millis),
            Ok(1_700_000_000_000_000_000)
        );
        for bad in ["-1", "1e12", "yesterday", "", "NaN"] {
            assert!(parse_time(bad, Epoch::Seconds).is_err(), "{bad}");
        }
        assert!(parse_time("9223372036854775807", Epoch::Micros).is_err());
    }

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration("250us"), Ok(250_000));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
