//! Envoy access logs → rows of the `requests` table. Pure parsing, no I/O: receivers (file
//! tailers, push endpoints) hand text in and get rows and rejected lines out.
//!
//! Layers, outermost first:
//! - [`container`]: Kubernetes CRI and Docker json-file wrappers, joining of partial lines,
//!   and `/var/log/containers/…` file names → pod, namespace, container.
//! - [`format`](mod@format) + `text`: an Envoy text format string ([`ISTIO_TEXT_FORMAT`] or
//!   a custom one) compiled once into literals and typed fields; each line split along it
//!   (the rule for ambiguous lines: `text.rs` and [`AccessLogFormat::parse_text_line`]).
//! - [`json`]: Istio's JSON encoding. A line whose first non-blank character is `{` is JSON.
//! - [`identity`]: reporter, source and destination workload, service and protocol, from
//!   the cluster name, the proxy that wrote the line and an [`AddressBook`] for the peer.
//! - [`parse_lines`] / [`parse_container_lines`]: a batch of lines → [`ParseOutcome`].

pub mod container;
pub mod format;
pub mod identity;
pub mod json;
mod text;
pub mod values;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Instant;

use meshscope_schemas::rows::{RequestRow, Text};

pub use container::{
    ContainerLine, ContainerLineJoiner, ContainerLogError, ContainerLogFile, Stream,
    parse_container_log_path, parse_cri_line, parse_docker_line, unwrap_container_line,
};
pub use format::{AccessLogFormat, FieldSpec, FormatError, ISTIO_TEXT_FORMAT, Target};
pub use identity::{
    AddressBook, ProxyIdentity, address_host, derive_identity, parse_istio_cluster,
    workload_from_pod_name,
};
pub use json::parse_json_line;
pub use text::MAX_LINE_BYTES;

use json::parse_json_into;
use text::Scratch;

/// One parsed line: the row (identity not yet derived) plus what has no column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedLine {
    pub row: RequestRow,
    /// Operators (text) or keys (JSON) that map to no `requests` column, in line order.
    pub extra: Vec<ExtraField>,
    /// Whether the line carried a start time; if not, a receiver can use the container
    /// runtime's time instead of leaving 1970 in `start_time`.
    pub has_start_time: bool,
}

/// A value meshscope has no column for, e.g. `%REQ(X-B3-TRACEID)%`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraField {
    /// The operator as written (`REQ(X-B3-TRACEID)`) or the JSON key.
    pub name: String,
    /// `None` for `-` or JSON null.
    pub value: Option<String>,
}

impl ParsedLine {
    /// Runs `parse` on a fresh line's sink, keeping extra fields.
    fn fill(
        parse: impl FnOnce(&mut Sink) -> Result<(), LineError>,
    ) -> Result<ParsedLine, LineError> {
        let mut p = ParsedLine::default();
        let mut sink = Sink {
            row: &mut p.row,
            extra: Some(&mut p.extra),
            has_start_time: false,
        };
        parse(&mut sink)?;
        p.has_start_time = sink.has_start_time;
        Ok(p)
    }
}

/// Where the parsers put one line's values. Batch parsing points it at the row's final
/// place in the rows vector: a row is about a kilobyte, and moving it through a chain of
/// return values showed up in profiles.
pub(crate) struct Sink<'a> {
    pub(crate) row: &'a mut RequestRow,
    /// `None` when extra fields are not wanted (batch parsing has no column for them).
    pub(crate) extra: Option<&'a mut Vec<ExtraField>>,
    pub(crate) has_start_time: bool,
}

impl Sink<'_> {
    pub(crate) fn push_extra(&mut self, name: impl FnOnce() -> String, value: Option<&str>) {
        if let Some(extra) = self.extra.as_deref_mut() {
            extra.push(ExtraField {
                name: name(),
                value: value.map(str::to_string),
            });
        }
    }

    /// Forgets a failed attempt before trying another encoding.
    fn reset(&mut self) {
        *self.row = RequestRow::default();
        if let Some(extra) = self.extra.as_deref_mut() {
            extra.clear();
        }
        self.has_start_time = false;
    }
}

/// Where in a line a bad value sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A text-format field: its 1-based number among the format's operators, the operator,
    /// and the 1-based byte column where its value starts.
    Field {
        index: usize,
        operator: String,
        column: usize,
    },
    /// A JSON key.
    Key(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Field {
                index,
                operator,
                column,
            } => write!(f, "field {index} ({operator}) at column {column}"),
            Location::Key(key) => write!(f, "key {key:?}"),
        }
    }
}

/// Why one line could not be turned into a row. Messages name the field and column; the
/// caller adds the line number and source (see [`RejectedLine`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line does not start with {expected:?} as the format does; it starts {found:?}")]
    Leading { expected: String, found: String },
    #[error("{}", literal_message(*.field, .operator, *.column, .expected, *.at_end))]
    Literal {
        /// 1-based number of the field after which the literal was expected.
        field: usize,
        operator: String,
        /// 1-based byte column where that field's value starts.
        column: usize,
        expected: String,
        /// The literal is the end of the format, so the line should end with it.
        at_end: bool,
    },
    #[error("{at} is {value:?}, expected {expected}")]
    Value {
        at: Location,
        value: String,
        expected: &'static str,
    },
    #[error("not a JSON access-log object: {message}")]
    Json { message: String },
    #[error("line is {len} bytes, over the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("no split of the line fits the format within {steps} tries")]
    Ambiguous { steps: usize },
    #[error(transparent)]
    Container(#[from] ContainerLogError),
}

fn literal_message(field: usize, op: &str, column: usize, lit: &str, at_end: bool) -> String {
    if at_end {
        format!(
            "field {field} ({op}) at column {column} should run to {lit:?} at the end of the line"
        )
    } else {
        format!("expected {lit:?} after field {field} ({op}), which starts at column {column}")
    }
}

/// A value for an error message: at most 80 characters.
pub(crate) fn snippet(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

impl AccessLogFormat {
    /// Parses one line: Istio JSON if its first non-blank character is `{`, else this text
    /// format. (If this format itself starts with `{`, the text format is tried first.)
    pub fn parse_line(&self, line: &str) -> Result<ParsedLine, LineError> {
        ParsedLine::fill(|sink| self.parse_line_into(line, &mut Scratch::default(), sink))
    }

    fn parse_line_into(
        &self,
        line: &str,
        scratch: &mut Scratch,
        sink: &mut Sink,
    ) -> Result<(), LineError> {
        if !line.trim_start().starts_with('{') {
            return self.parse_text_into(line, scratch, sink);
        }
        if !self.head.starts_with('{') {
            return parse_json_into(line, sink);
        }
        self.parse_text_into(line, scratch, sink)
            .or_else(|text_err| {
                sink.reset();
                parse_json_into(line, sink).map_err(|_| text_err)
            })
    }
}

/// The result of parsing a batch of lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParseOutcome {
    /// One row per accepted line, identity derived and `log_source` set, in line order.
    pub rows: Vec<RequestRow>,
    pub rejected: Vec<RejectedLine>,
}

impl ParseOutcome {
    /// Room for one row per line: rows are about a kilobyte each, and growing the vector
    /// by doubling costs more than counting newlines (with SIMD; a plain byte filter was a
    /// fifth of parsing).
    fn with_capacity_for(text: &str) -> ParseOutcome {
        let lines = memchr::memchr_iter(b'\n', text.as_bytes()).count() + 1;
        ParseOutcome {
            rows: Vec::with_capacity(lines),
            rejected: Vec::new(),
        }
    }
}

/// A line that was not turned into a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedLine {
    /// 1-based line number within the text handed to the parser.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for RejectedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Parses Envoy access-log lines (text in `format`, or Istio JSON) written by `proxy`.
///
/// Lines are separated by `\n` (a `\r` before it is dropped); blank lines are skipped.
/// Every other line yields a row or a [`RejectedLine`]; a bad line never affects its
/// neighbours. Rows get [`derive_identity`] and `log_source` (unless empty). Extra fields
/// (operators with no column) are dropped here; call [`AccessLogFormat::parse_line`] to
/// keep them.
pub fn parse_lines(
    format: &AccessLogFormat,
    text: &str,
    proxy: &ProxyIdentity,
    book: &AddressBook,
    log_source: &str,
) -> ParseOutcome {
    let batch = Batch {
        format,
        proxy,
        book,
        log_source,
    };
    batch.run(text, |out, line_no, line, scratch| {
        batch.push_row(out, line_no, line, None, scratch)
    })
}

/// Like [`parse_lines`], for text read from a container log: each line may be wrapped by the
/// container runtime (CRI or Docker json-file, detected per line; bare lines pass through).
/// Split lines are joined through `joiner`, which the caller keeps across reads of the same
/// file; a joined line is reported under the number of its last piece. A line without a
/// start time gets the runtime's time.
pub fn parse_container_lines(
    format: &AccessLogFormat,
    text: &str,
    joiner: &mut ContainerLineJoiner,
    proxy: &ProxyIdentity,
    book: &AddressBook,
    log_source: &str,
) -> ParseOutcome {
    let batch = Batch {
        format,
        proxy,
        book,
        log_source,
    };
    batch.run(
        text,
        |out, line_no, raw, scratch| match unwrap_container_line(raw)
            .and_then(|entry| joiner.push(entry))
        {
            Ok(None) => {}
            Ok(Some(entry)) if entry.content.trim().is_empty() => {}
            Ok(Some(entry)) => {
                let time = entry.time_unix_nano;
                batch.push_row(out, line_no, &entry.content, time, scratch);
            }
            Err(e) => out.rejected.push(RejectedLine {
                line: line_no,
                reason: e.to_string(),
            }),
        },
    )
}

/// What every line of one batch shares.
struct Batch<'a> {
    format: &'a AccessLogFormat,
    proxy: &'a ProxyIdentity,
    book: &'a AddressBook,
    log_source: &'a str,
}

impl Batch<'_> {
    /// Hands every non-blank line of `text`, with its 1-based number, to `each`.
    fn run(
        &self,
        text: &str,
        mut each: impl FnMut(&mut ParseOutcome, usize, &str, &mut Scratch),
    ) -> ParseOutcome {
        let mut out = ParseOutcome::with_capacity_for(text);
        let mut scratch = Scratch::default();
        let mut start = 0;
        let ends = memchr::memchr_iter(b'\n', text.as_bytes()).chain([text.len()]);
        for (i, end) in ends.enumerate() {
            // `\n` is ASCII, so both ends are char boundaries.
            let line = &text[start..end];
            start = end + 1;
            if !line.trim().is_empty() {
                each(&mut out, i + 1, line, &mut scratch);
            }
        }
        out
    }

    /// Parses `line` straight into a new last row of `out` and derives its identity, or
    /// records why the line was rejected. `fallback_time` stands in for a missing start time.
    fn push_row(
        &self,
        out: &mut ParseOutcome,
        line_no: usize,
        line: &str,
        fallback_time: Option<i64>,
        scratch: &mut Scratch,
    ) {
        out.rows.push(RequestRow::default());
        let Some(row) = out.rows.last_mut() else {
            return;
        };
        let mut sink = Sink {
            row,
            extra: None,
            has_start_time: false,
        };
        if let Err(e) = self.format.parse_line_into(line, scratch, &mut sink) {
            out.rows.pop();
            out.rejected.push(RejectedLine {
                line: line_no,
                reason: e.to_string(),
            });
            return;
        }
        if !sink.has_start_time
            && let Some(t) = fallback_time
        {
            sink.row.start_time_unix_nano = t;
        }
        derive_identity(sink.row, self.proxy, self.book);
        if !self.log_source.is_empty() {
            sink.row.log_source = Some(Text::from(self.log_source));
        }
    }
}

/// Realistic Istio lines of a Bookinfo-like mesh, used by [`bench_parse`] and the tests.
pub(crate) const SAMPLE_LINES: &[&str] = &[
    r#"[2026-11-26T01:02:03.456Z] "GET /productpage HTTP/1.1" 200 - via_upstream - "-" 0 5293 35 34 "-" "curl/8.5.0" "b1c1e2a4-7c2f-9a8e-b7e1-1a2b3c4d5e6f" "productpage:9080" "127.0.10.2:9080" inbound|9080|| 127.0.0.6:45127 127.0.10.2:9080 127.0.10.1:36468 outbound_.9080_._.productpage.default.svc.cluster.local default"#,
    r#"[2026-11-26T01:02:03.470Z] "GET /reviews/0 HTTP/1.1" 200 - via_upstream - "-" 0 358 21 20 "-" "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36" "b1c1e2a4-7c2f-9a8e-b7e1-1a2b3c4d5e6f" "reviews:9080" "127.0.10.4:9080" outbound|9080|v2|reviews.default.svc.cluster.local 127.0.10.2:51832 10.96.0.21:9080 127.0.10.2:44310 - default"#,
    r#"[2026-11-26T01:02:04.001Z] "GET /get HTTP/1.1" 503 UO upstream_reset_before_response_started{overflow} - "-" 0 81 0 - "-" "fortio.org/fortio-1.69.1" "0d2a5c1e-3f4b-4c6d-8e9f-a0b1c2d3e4f5" "httpbin:8000" "-" outbound|8000||httpbin.default.svc.cluster.local - 10.96.1.2:8000 127.0.10.3:51234 - default"#,
    r#"[2026-11-26T01:02:04.120Z] "POST /api/v1/orders?id=7 HTTP/2" 201 - via_upstream - "-" 512 96 12 11 "203.0.113.9, 10.0.0.1" "python-requests/2.32.3" "7c9e6679-7425-40de-944b-e07fc1f90ae7" "orders.shop.svc.cluster.local:8080" "10.244.1.17:8080" outbound|8080||orders.shop.svc.cluster.local 10.244.2.5:40112 10.96.14.3:8080 10.244.2.5:40100 - orders-route"#,
    r#"[2026-11-26T01:02:05.000Z] "POST /grpc.health.v1.Health/Check HTTP/2" 200 - via_upstream - "-" 5 7 3 2 "-" "grpc-go/1.68.0" "e4d909c2-90d0-4b6e-9a2d-0b0c1d2e3f40" "ratings:9090" "10.244.1.9:9090" outbound|9090||ratings.default.svc.cluster.local 10.244.2.5:50322 10.96.7.7:9090 10.244.2.5:50310 - default"#,
    r#"[2026-11-26T01:02:06.789Z] "- - -" 0 - - - "-" 1532 20731 1003 - "-" "-" "-" "-" "10.244.3.4:3306" outbound|3306||mysql.db.svc.cluster.local 10.244.2.5:52344 10.96.9.9:3306 10.244.2.5:52330 - -"#,
];

/// Lines per [`parse_lines`] call in [`bench_parse`]: about one read of a busy log file.
const BENCH_BATCH_LINES: usize = 4096;

/// What [`bench_parse`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParseRate {
    /// Lines per second of wall-clock time.
    pub per_second: f64,
    /// Lines per second of this thread's CPU time (Linux; `None` elsewhere): the per-core
    /// figure, unaffected by other processes on a busy machine.
    pub per_cpu_second: Option<f64>,
}

/// Measures [`parse_lines`] (Istio text format, identity derivation included) on `lines`
/// lines cycling through realistic samples, on the calling thread. Lines go in batches of
/// 4096, each batch's rows dropped before the next, as a receiver turning reads into Arrow
/// batches would; holding a million rows at once would measure page faults instead.
pub fn bench_parse(lines: usize) -> ParseRate {
    let mut batches = Vec::new();
    let mut batch = String::new();
    for i in 0..lines {
        batch.push_str(SAMPLE_LINES[i % SAMPLE_LINES.len()]);
        batch.push('\n');
        if (i + 1) % BENCH_BATCH_LINES == 0 || i + 1 == lines {
            batches.push(std::mem::take(&mut batch));
        }
    }
    let format = AccessLogFormat::istio();
    let proxy = ProxyIdentity {
        ip: Some("10.244.2.5".into()),
        app: Some("productpage".into()),
        version: Some("v1".into()),
        ..ProxyIdentity::from_pod("productpage-v1-6b746f74dc-9stp6", "default")
    };
    let mut book = AddressBook::new();
    book.insert(
        "10.244.1.17",
        ProxyIdentity::from_pod("orders-7d4b9c6f8d-q2wxl", "shop"),
    );
    book.insert(
        "10.244.1.9",
        ProxyIdentity::from_pod("ratings-v1-5c8f7b6d9b-zt4kq", "default"),
    );
    let started = Instant::now();
    let cpu_started = thread_cpu_ns();
    let mut parsed = 0;
    for text in &batches {
        let outcome = parse_lines(&format, text, &proxy, &book, "bench");
        parsed += std::hint::black_box(outcome).rows.len();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = thread_cpu_ns()
        .zip(cpu_started)
        .map(|(end, start)| end.saturating_sub(start) as f64 / 1e9);
    ParseRate {
        per_second: parsed as f64 / elapsed.max(f64::MIN_POSITIVE),
        per_cpu_second: cpu.map(|c| parsed as f64 / c.max(f64::MIN_POSITIVE)),
    }
}

/// Nanoseconds this thread has run on a CPU (first field of /proc/thread-self/schedstat).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
