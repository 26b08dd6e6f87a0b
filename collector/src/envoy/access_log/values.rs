//! Typing one access-log value into its `RequestRow` column; shared by the text and JSON
//! parsers so both treat `-`, numbers, times and trace ids the same way.

use meshscope_schemas::TraceId;
use meshscope_schemas::rows::Text;

use super::Sink;
use super::format::Target;

/// Envoy prints `-` for a value that is not set.
#[inline]
pub(crate) fn nullable(v: &str) -> Option<&str> {
    if v == "-" { None } else { Some(v) }
}

#[inline]
fn opt_text(v: &str) -> Option<Text> {
    nullable(v).map(Text::from)
}

/// What a value should have looked like; becomes the end of a `LineError::Value` message.
pub(crate) type Expected = &'static str;

const A_NUMBER: Expected = "a number";
const A_TIME: Expected = "a time such as 2026-11-26T01:02:03.456Z";

/// A decimal integer, or `None` for `-`.
pub(crate) fn int<T: std::str::FromStr>(v: &str) -> Result<Option<T>, Expected> {
    if v == "-" {
        return Ok(None);
    }
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(A_NUMBER);
    }
    v.parse::<T>()
        .map(Some)
        .map_err(|_| "a number small enough for its column")
}

/// Stores one textual value (as it appears in a text line or a JSON string) into `sink`.
/// `Target::Extra` is the caller's business: it knows the field's name.
pub(crate) fn apply(sink: &mut Sink, target: Target, v: &str) -> Result<(), Expected> {
    let row = &mut *sink.row;
    match target {
        Target::StartTime => {
            if let Some(v) = nullable(v) {
                row.start_time_unix_nano = parse_time(v).ok_or(A_TIME)?;
                sink.has_start_time = true;
            }
        }
        Target::Method => row.method = opt_text(v),
        Target::Path => row.path = opt_text(v),
        Target::Protocol => row.protocol = opt_text(v),
        Target::ResponseCode => row.response_code = int(v)?.unwrap_or(0),
        Target::ResponseFlags => row.response_flags = opt_text(v),
        Target::ResponseCodeDetails => row.response_code_details = opt_text(v),
        Target::ConnectionTerminationDetails => row.connection_termination_details = opt_text(v),
        Target::UpstreamTransportFailureReason => {
            row.upstream_transport_failure_reason = opt_text(v)
        }
        Target::BytesReceived => row.bytes_received = int(v)?.unwrap_or(0),
        Target::BytesSent => row.bytes_sent = int(v)?.unwrap_or(0),
        Target::Duration => row.duration_ms = int(v)?.unwrap_or(0),
        Target::UpstreamServiceTime => row.upstream_service_time_ms = int(v)?,
        Target::XForwardedFor => row.x_forwarded_for = opt_text(v),
        Target::UserAgent => row.user_agent = opt_text(v),
        Target::RequestId => row.request_id = opt_text(v),
        Target::Authority => row.authority = opt_text(v),
        Target::UpstreamHost => row.upstream_host = opt_text(v),
        Target::UpstreamCluster => row.upstream_cluster = opt_text(v),
        Target::UpstreamLocalAddress => row.upstream_local_address = opt_text(v),
        Target::DownstreamLocalAddress => row.downstream_local_address = opt_text(v),
        Target::DownstreamRemoteAddress => row.downstream_remote_address = opt_text(v),
        Target::RequestedServerName => row.requested_server_name = opt_text(v),
        Target::RouteName => row.route_name = opt_text(v),
        // A malformed traceparent is the client's problem, not the line's: the request still
        // happened, so the row is kept without a trace id.
        Target::Traceparent => {
            if let Some(t) = trace_id_from_traceparent(v) {
                row.trace_id = Some(t);
            }
        }
        Target::TraceId => {
            if let Some(t) = trace_id_from_hex(v) {
                row.trace_id = Some(t);
            }
        }
        Target::Extra => {}
    }
    Ok(())
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); `None` if it is not
/// one, or if its trace id is all zeros (invalid per the spec). Versions above 00 may append
/// fields, which are ignored; version `ff` is invalid.
pub fn trace_id_from_traceparent(v: &str) -> Option<TraceId> {
    let b = v.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let hex = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_hexdigit);
    if !hex(0..2) || !hex(36..52) || !hex(53..55) {
        return None;
    }
    let version = v.get(0..2)?;
    let extended = b.len() > 55;
    if version.eq_ignore_ascii_case("ff") || (version == "00" && extended) {
        return None;
    }
    if extended && b[55] != b'-' {
        return None;
    }
    trace_id_from_hex(v.get(3..35)?)
}

/// A 32-hex-digit trace id, as `%TRACE_ID%` prints it; `None` otherwise or if all zeros.
pub fn trace_id_from_hex(v: &str) -> Option<TraceId> {
    // `from_hex` would trim and left-pad shorter ids (Jaeger style); here all 32 bytes must
    // be hex digits.
    if v.len() != 32 || !v.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    TraceId::from_hex(v).ok().filter(|t| t.0 != [0; 16])
}

/// Unix nanoseconds of an access-log time. Accepts what Envoy's `%START_TIME%` prints by
/// default (`2026-11-26T01:02:03.456Z`) and the variants custom `START_TIME(…)` formats and
/// container runtimes produce: any number of fraction digits (beyond 9 ignored), a `T`, `t` or
/// space between date and time, `Z`, `±HH:MM`, `±HHMM`, `±HH` or no zone (Envoy formats in
/// UTC). All digits is a Unix epoch whose unit follows from its length: up to 11 digits
/// seconds, 12–14 milliseconds, 15–17 microseconds, longer nanoseconds (`%s`, `%s%3f`, …);
/// `<seconds>.<fraction>` is seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.first()?.is_ascii_digit() && b.len() >= 5 && b[4] == b'-' {
        parse_rfc3339(b)
    } else {
        parse_epoch(s)
    }
}

fn parse_epoch(s: &str) -> Option<i64> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    if whole.is_empty() || !whole.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: i64 = whole.parse().ok()?;
    match frac {
        Some(f) => n
            .checked_mul(1_000_000_000)?
            .checked_add(fraction_nanos(f.as_bytes())?),
        None => {
            let scale = match whole.len() {
                0..=11 => 1_000_000_000,
                12..=14 => 1_000_000,
                15..=17 => 1_000,
                _ => 1,
            };
            n.checked_mul(scale)
        }
    }
}

/// Nanoseconds of the digits after a decimal point (at least one digit).
fn fraction_nanos(f: &[u8]) -> Option<i64> {
    if f.is_empty() || !f.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nanos = 0i64;
    for i in 0..9 {
        nanos = nanos * 10 + f.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    Some(nanos)
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let part = b.get(at..at + n)?;
    let mut v = 0i64;
    for &c in part {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

fn parse_rfc3339(b: &[u8]) -> Option<i64> {
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if b.get(7) != Some(&b'-') || !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        nanos = fraction_nanos(&b[start..i])?;
    }
    let offset_secs = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let (h, m) = match rest.len() {
                2 => (digits(rest, 0, 2)?, 0),
                4 => (digits(rest, 0, 2)?, digits(rest, 2, 2)?),
                5 if rest[2] == b':' => (digits(rest, 0, 2)?, digits(rest, 3, 2)?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if sign == b'+' { secs } else { -secs }
        }
        Some(_) => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn chrono_ns(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap()
    }

    #[test]
    fn times_agree_with_chrono() {
        for s in [
            "2026-11-26T01:02:03.456Z",
            "2026-11-26T01:02:03Z",
            "2026-11-26T01:02:03.123456789Z",
            "2024-02-29T23:59:59.999+02:00",
            "1970-01-01T00:00:00Z",
            "2000-03-01T00:00:00.5-05:30",
            "1969-12-31T23:59:59.1Z",
        ] {
            assert_eq!(parse_time(s), Some(chrono_ns(s)), "{s}");
        }
        assert_eq!(
            parse_time("2026-11-26 01:02:03+0000"),
            Some(chrono_ns("2026-11-26T01:02:03Z"))
        );
        assert_eq!(
            parse_time("2026-11-26T01:02:03.1234567891Z"),
            Some(chrono_ns("2026-11-26T01:02:03.123456789Z"))
        );
        let t = chrono_ns("2026-11-26T01:02:03Z");
        assert_eq!(parse_time("1795654923"), Some(t));
        assert_eq!(parse_time("1795654923456"), Some(t + 456_000_000));
        assert_eq!(parse_time("1795654923456789"), Some(t + 456_789_000));
        assert_eq!(parse_time("1795654923.5"), Some(t + 500_000_000));
        for bad in [
            "",
            "-",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T01:02:03.Z",
            "2026-11-26T01:02:03Zjunk",
            "2026-11-26",
            "9999999999999999999999",
            "yesterday",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn traceparents() {
        let t =
            trace_id_from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .unwrap();
        assert_eq!(t.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // A future version may append fields.
        assert!(
            trace_id_from_traceparent(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
            )
            .is_some()
        );
        for bad in [
            "-",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id_from_traceparent(bad), None, "{bad}");
        }
        assert!(trace_id_from_hex("4bf92f3577b34da6a3ce929d0e0e4736").is_some());
        assert_eq!(trace_id_from_hex("4bf92f35"), None);
        assert_eq!(trace_id_from_hex(" 4bf92f3577b34da6a3ce929d0e0e473"), None);
        assert_eq!(
            trace_id_from_traceparent("00- 4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"),
            None
        );
    }

    #[test]
    fn integers() {
        assert_eq!(int::<i64>("-"), Ok(None));
        assert_eq!(int::<i64>("5293"), Ok(Some(5293)));
        assert_eq!(
            int::<i32>("99999999999"),
            Err("a number small enough for its column")
        );
        for bad in ["", "abc", "+1", "-1", "1.5"] {
            assert_eq!(int::<i64>(bad), Err(A_NUMBER), "{bad}");
        }
    }
}
