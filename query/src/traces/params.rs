//! Request parameters of the trace APIs: ids, durations, tags, limits, each checked with an
//! error that names the parameter.

use super::*;

/// Query-string pairs in order (repeated keys kept, for Jaeger's `traceID=…&traceID=…`).
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>) -> Params {
        Params(
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last non-empty value of `key` (Grafana sends empty values for unset fields).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| k == key && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, v)| k == key && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }

    /// Refuses keys outside `known`, so that a typo is an error rather than a silent no-op.
    pub fn only(&self, known: &[&str]) -> Result<(), TraceError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(TraceError::bad(
                k,
                format!("unknown parameter; known are {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }
}

/// A trace id in a URL: exactly 32 hex digits (`strict`), or Jaeger's 16 to 32.
pub fn parse_trace_id(param: &str, s: &str, strict: bool) -> Result<TraceId, TraceError> {
    let s = s.trim();
    let ok_len = if strict {
        s.len() == 32
    } else {
        (16..=32).contains(&s.len())
    };
    if !ok_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TraceError::bad(
            param,
            format!(
                "{s:?} is not a trace id: expected {} hex digits",
                if strict { "32" } else { "16 to 32" }
            ),
        ));
    }
    let id = TraceId::from_hex(s).map_err(|e| TraceError::bad(param, e))?;
    if id.0 == [0; 16] {
        return Err(TraceError::bad(param, "the all-zero trace id is invalid"));
    }
    Ok(id)
}

/// A request id as Envoy writes it (usually a UUID): printable ASCII, at most 128 characters.
pub fn parse_request_id(param: &str, s: &str) -> Result<String, TraceError> {
    if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TraceError::bad(
            param,
            format!("{s:?} is not a request id: expected 1 to 128 printable ASCII characters"),
        ));
    }
    Ok(s.to_string())
}

/// A duration parameter in Go's syntax (`10ms`, `1h30m`; see [`time::parse_duration`]) → ns.
pub fn parse_duration(param: &str, s: &str) -> Result<i64, TraceError> {
    time::parse_duration(s).map_err(|e| TraceError::bad(param, e))
}

/// A time parameter: RFC 3339 (`2026-11-26T01:02:03Z`) or unix milliseconds → unix ns.
pub fn parse_time(param: &str, s: &str) -> Result<i64, TraceError> {
    time::parse_time(s, Epoch::Millis).map_err(|e| TraceError::bad(param, e))
}

/// Tags as a JSON object (`{"http.status_code":"503"}`, what Jaeger's UI and Grafana send) or
/// `k=v` pairs separated by spaces (values may be double-quoted).
pub fn parse_tags(param: &str, s: &str) -> Result<Vec<(String, String)>, TraceError> {
    let s = s.trim();
    if s.starts_with('{') {
        let obj: serde_json::Map<String, Value> = serde_json::from_str(s)
            .map_err(|e| TraceError::bad(param, format!("not a JSON object of tags: {e}")))?;
        return obj
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(v) => Ok((k, v)),
                Value::Number(_) | Value::Bool(_) => Ok((k, v.to_string())),
                other => Err(TraceError::bad(
                    param,
                    format!(
                        "tag {k:?} has value {other}; values must be strings, numbers or booleans"
                    ),
                )),
            })
            .collect();
    }
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or_else(|| {
            TraceError::bad(
                param,
                format!("{rest:?} is not key=value; write k=v pairs or a JSON object"),
            )
        })?;
        let key = rest[..eq].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(TraceError::bad(param, format!("bad tag key {key:?}")));
        }
        rest = &rest[eq + 1..];
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let end = q
                .find('"')
                .ok_or_else(|| TraceError::bad(param, "unterminated quoted value"))?;
            value = q[..end].to_string();
            rest = &q[end + 1..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value = rest[..end].to_string();
            rest = &rest[end..];
        }
        out.push((key.to_string(), value));
        rest = rest.trim_start();
    }
    if out.is_empty() {
        return Err(TraceError::bad(param, "no tags given"));
    }
    Ok(out)
}

pub fn parse_limit(param: &str, s: Option<&str>) -> Result<usize, TraceError> {
    let Some(s) = s else {
        return Ok(DEFAULT_SEARCH_LIMIT);
    };
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_SEARCH_LIMIT).contains(&n) => Ok(n),
        _ => Err(TraceError::bad(
            param,
            format!("{s:?} is not a limit: expected 1 to {MAX_SEARCH_LIMIT}"),
        )),
    }
}

pub(crate) fn parse_bool(param: &str, s: &str) -> Result<bool, TraceError> {
    match s {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(TraceError::bad(
            param,
            format!("{s:?} is not true or false"),
        )),
    }
}
