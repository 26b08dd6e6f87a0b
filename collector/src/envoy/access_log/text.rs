//! Splitting a text access-log line along a compiled format, then typing each field.
//!
//! # How a line is split
//!
//! Literals must match exactly; a field's value is the text between its preceding literal
//! and an occurrence of its following literal. Envoy does not escape anything in text
//! format, so a value can contain its own terminator (a user agent with `" "`, a path with a
//! space), and then several splits fit. The rule:
//!
//! 1. **Lazy, with backtracking.** Each field first takes the *nearest* occurrence of its
//!    following literal; when the rest of the line then cannot be matched, the most recent
//!    field takes its next occurrence, and so on (leftmost-shortest, like a lazy regex).
//! 2. **Value classes steer the backtracking.** Every known operator has a class:
//!    numbers (`%RESPONSE_CODE%`, `%BYTES_SENT%`, …) are digits or `-`; tokens (method,
//!    protocol, flags, response code details, request id, authority, addresses, cluster,
//!    SNI, default START_TIME) hold no space, tab or `"`; free text (path, user agent,
//!    X-Forwarded-For, transport failure reason, termination details, route name, unknown
//!    operators) holds anything. A split that puts a space into a token is not taken. So for
//!    Istio's format, `"GET /a b HTTP/1.1"` gives path `/a b` (the protocol cannot be
//!    `b HTTP/1.1`), and a user agent containing `" "` is kept whole because the request id
//!    after it cannot hold a quote.
//! 3. **Relaxed retry.** If no split satisfies the classes (a client sent a request id with a
//!    space, or a number field holds `abc`), the line is split again with every field free
//!    text, so it is still kept when it fits, and a bad number is reported by field name
//!    instead of as a vague mismatch.
//! 4. Two operators with nothing between them (`%A%%B%`): the first takes as much as its
//!    class allows (greedy), then backtracks.
//! 5. The last field runs to the end of the line (minus a trailing literal, if the format
//!    has one), so a free-text `%ROUTE_NAME%` at the end may contain anything.
//!
//! Failed (field, position) pairs are remembered and the number of tries is capped, so a
//! hostile line costs bounded time instead of exponential backtracking.

use super::format::{AccessLogFormat, FieldSpec, TOKEN_FORBIDDEN, Target, ValueClass};
use super::values::apply;
use super::{LineError, Location, ParsedLine, Sink, snippet};

/// Lines longer than this are rejected before splitting (bounds the memo below).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Tries per pass before a line is given up as too ambiguous. A well-formed Istio line takes
/// one try per field.
const MAX_STEPS: usize = 20_000;

/// The failure memo has one bit per (field, byte); past this size the step cap alone bounds
/// the work.
const MAX_MEMO_BITS: usize = 1 << 26;

/// Buffers reused across lines so that splitting allocates nothing per line.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    spans: Vec<(usize, usize)>,
    /// Bit `field * (len + 1) + pos`: field `field` starting at `pos` is known to fail.
    failed: Vec<u64>,
    failed_in_use: bool,
}

impl AccessLogFormat {
    /// Parses one line of this text format (a trailing `\n` or `\r\n` is ignored).
    ///
    /// Envoy does not escape text-format values, so a value may contain the text that
    /// follows it; such lines are split by a documented rule: each field ends at the nearest
    /// occurrence of its following literal that lets the rest of the line match, where known
    /// operators' values may not contain what Envoy never puts in them (numbers are digits
    /// or `-`; method, protocol, flags, addresses, cluster, request id, authority have no
    /// space or `"`), and free-text values (path, user agent, X-Forwarded-For, failure
    /// reasons, route name, unknown operators) may contain anything. If no split fits those
    /// classes, the line is split again with every value free text. Details: `text.rs`.
    pub fn parse_text_line(&self, line: &str) -> Result<ParsedLine, LineError> {
        ParsedLine::fill(|sink| self.parse_text_into(line, &mut Scratch::default(), sink))
    }

    pub(crate) fn parse_text_into(
        &self,
        line: &str,
        scratch: &mut Scratch,
        sink: &mut Sink,
    ) -> Result<(), LineError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > MAX_LINE_BYTES {
            return Err(LineError::TooLong {
                len: line.len(),
                max: MAX_LINE_BYTES,
            });
        }
        self.split(line, scratch)?;
        self.type_fields(line, &scratch.spans, sink)
    }

    /// Fills `scratch.spans` with each field's byte range in `line`.
    fn split(&self, line: &str, scratch: &mut Scratch) -> Result<(), LineError> {
        if !line.starts_with(self.head.as_str()) {
            return Err(LineError::Leading {
                expected: self.head.clone(),
                found: snippet(line),
            });
        }
        scratch.spans.clear();
        scratch.spans.resize(self.fields.len(), (0, 0));
        let mut failure = None;
        for relaxed in [false, true] {
            if scratch.failed_in_use {
                scratch.failed.clear();
                scratch.failed_in_use = false;
            }
            let mut m = Matcher {
                fields: &self.fields,
                line: line.as_bytes(),
                relaxed,
                steps: 0,
                furthest: None,
                scratch,
            };
            if m.field(0, self.head.len()) {
                return Ok(());
            }
            failure = Some((m.steps, m.furthest));
        }
        match failure {
            Some((steps, _)) if steps > MAX_STEPS => Err(LineError::Ambiguous { steps: MAX_STEPS }),
            Some((_, Some((i, start)))) => {
                let f = &self.fields[i];
                Err(LineError::Literal {
                    field: i + 1,
                    operator: f.operator.clone(),
                    column: start + 1,
                    expected: f.after.clone(),
                    at_end: i + 1 == self.fields.len(),
                })
            }
            // Unreachable: a failed pass always records where it failed.
            _ => Err(LineError::Ambiguous { steps: 0 }),
        }
    }

    fn type_fields(
        &self,
        line: &str,
        spans: &[(usize, usize)],
        sink: &mut Sink,
    ) -> Result<(), LineError> {
        for (i, (f, &(start, end))) in self.fields.iter().zip(spans).enumerate() {
            // Spans always fall on char boundaries (see `Matcher`); `get` keeps that a
            // rejected line rather than a panic if it were ever wrong.
            let Some(v) = line.get(start..end) else {
                return Err(LineError::Ambiguous { steps: 0 });
            };
            if f.target == Target::Extra {
                sink.push_extra(|| f.operator.clone(), super::values::nullable(v));
                continue;
            }
            apply(sink, f.target, v).map_err(|expected| LineError::Value {
                at: Location::Field {
                    index: i + 1,
                    operator: f.operator.clone(),
                    column: start + 1,
                },
                value: snippet(v),
                expected,
            })?;
        }
        Ok(())
    }
}

/// One backtracking search over a line. Positions are byte offsets; every candidate end is
/// where a non-empty literal matches (its first byte is a UTF-8 leading byte, so that is a
/// char boundary) or, for empty literals, an explicit char boundary.
struct Matcher<'a> {
    fields: &'a [FieldSpec],
    line: &'a [u8],
    relaxed: bool,
    steps: usize,
    /// The failing (field, start) that got furthest into the line: the best error to report.
    furthest: Option<(usize, usize)>,
    scratch: &'a mut Scratch,
}

impl Matcher<'_> {
    /// Can field `i`, starting at byte `start`, and everything after it, be matched?
    fn field(&mut self, i: usize, start: usize) -> bool {
        self.steps += 1;
        if self.steps > MAX_STEPS || self.known_failure(i, start) {
            return false;
        }
        let f = &self.fields[i];
        let class = if self.relaxed {
            ValueClass::Text
        } else {
            f.class
        };
        let lit = f.after.as_bytes();
        let ok = if i + 1 == self.fields.len() {
            self.last_field(i, start, class, lit)
        } else if lit.is_empty() {
            self.greedy_field(i, start, class)
        } else {
            self.lazy_field(i, start, class, lit)
        };
        if !ok {
            self.remember_failure(i, start);
            if self.furthest.is_none_or(|(_, s)| start >= s) {
                self.furthest = Some((i, start));
            }
        }
        ok
    }

    fn last_field(&mut self, i: usize, start: usize, class: ValueClass, lit: &[u8]) -> bool {
        let len = self.line.len();
        if len < start + lit.len() || !starts_with(&self.line[len - lit.len()..], lit) {
            return false;
        }
        let end = len - lit.len();
        if !self.line[start..end].iter().all(|&b| class.allows(b)) {
            return false;
        }
        self.scratch.spans[i] = (start, end);
        true
    }

    fn lazy_field(&mut self, i: usize, start: usize, class: ValueClass, lit: &[u8]) -> bool {
        let mut from = start;
        while let Some(q) = next_candidate(self.line, from, lit, class) {
            self.scratch.spans[i] = (start, q);
            if self.field(i + 1, q + lit.len()) {
                return true;
            }
            if self.steps > MAX_STEPS {
                return false;
            }
            // Taking the next occurrence puts this byte into the value.
            if !class.allows(self.line[q]) {
                return false;
            }
            from = q + 1;
        }
        false
    }

    fn greedy_field(&mut self, i: usize, start: usize, class: ValueClass) -> bool {
        let run = self.line[start..]
            .iter()
            .position(|&b| !class.allows(b))
            .map_or(self.line.len(), |n| start + n);
        for end in (start..=run).rev() {
            if !is_char_boundary(self.line, end) {
                continue;
            }
            self.scratch.spans[i] = (start, end);
            if self.field(i + 1, end) {
                return true;
            }
            if self.steps > MAX_STEPS {
                return false;
            }
        }
        false
    }

    fn known_failure(&self, i: usize, start: usize) -> bool {
        if !self.scratch.failed_in_use {
            return false;
        }
        let bit = i * (self.line.len() + 1) + start;
        self.scratch.failed[bit / 64] & (1 << (bit % 64)) != 0
    }

    fn remember_failure(&mut self, i: usize, start: usize) {
        let s = &mut *self.scratch;
        let bits = self.fields.len() * (self.line.len() + 1);
        if bits > MAX_MEMO_BITS {
            return;
        }
        if !s.failed_in_use {
            // Only lines that need backtracking pay for the memo.
            s.failed.clear();
            s.failed.resize(bits.div_ceil(64), 0);
            s.failed_in_use = true;
        }
        let bit = i * (self.line.len() + 1) + start;
        s.failed[bit / 64] |= 1 << (bit % 64);
    }
}

/// `hay` starts with `lit`. Literals are a few bytes, so a plain loop beats a `memcmp` call.
#[inline]
fn starts_with(hay: &[u8], lit: &[u8]) -> bool {
    hay.len() >= lit.len() && hay.iter().zip(lit).all(|(a, b)| a == b)
}

/// The first position `>= from` where `lit` (non-empty) matches, provided every byte of the
/// value before it is allowed by `class`; the caller has checked the bytes before `from`.
#[inline]
fn next_candidate(line: &[u8], from: usize, lit: &[u8], class: ValueClass) -> Option<usize> {
    let first = lit[0];
    let hay = line.get(from..)?;
    match class {
        ValueClass::Text => candidate_in(hay, lit, class, [first]).map(|q| from + q),
        // A token ends at the literal or at its first forbidden byte, whichever comes first:
        // both are found in one pass.
        ValueClass::Token => {
            let [ws, tab, quote] = TOKEN_FORBIDDEN;
            candidate_in(hay, lit, class, [first, ws, tab, quote]).map(|q| from + q)
        }
        // Numbers are a few bytes: a plain loop.
        ValueClass::Numeric => {
            for (n, &b) in hay.iter().enumerate() {
                if b == first && starts_with(&hay[n..], lit) {
                    return Some(from + n);
                }
                if !class.allows(b) {
                    return None;
                }
            }
            None
        }
    }
}

/// The first match of `lit` in `hay` such that no byte before it is forbidden by `class`.
/// `stops` holds `lit[0]` and every byte `class` forbids, so only those are looked at.
#[inline]
fn candidate_in<const N: usize>(
    hay: &[u8],
    lit: &[u8],
    class: ValueClass,
    stops: [u8; N],
) -> Option<usize> {
    let mut at = 0;
    loop {
        let q = at + find_any(&hay[at..], stops)?;
        if starts_with(&hay[q..], lit) {
            return Some(q);
        }
        if !class.allows(hay[q]) {
            return None;
        }
        at = q + 1;
    }
}

/// `memchr` for up to a few needles without the dependency: the index of the first byte of
/// `hay` equal to one of `needles`, eight bytes a step (SWAR).
#[inline]
fn find_any<const N: usize>(hay: &[u8], needles: [u8; N]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let patterns = needles.map(|n| LO.wrapping_mul(u64::from(n)));
    let mut i = 0;
    while i + 8 <= hay.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&hay[i..i + 8]);
        let word = u64::from_le_bytes(word);
        let mut found = 0;
        for p in patterns {
            // The lowest set high bit marks the first byte equal to the needle; higher ones
            // may be false (borrows), which is why only the lowest is used.
            let x = word ^ p;
            found |= x.wrapping_sub(LO) & !x & HI;
        }
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay[i..]
        .iter()
        .position(|b| needles.contains(b))
        .map(|n| i + n)
}

#[inline]
fn is_char_boundary(line: &[u8], i: usize) -> bool {
    // Continuation bytes are 0b10xx_xxxx.
    i == line.len() || line.get(i).is_some_and(|&b| (b as i8) >= -0x40)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(f: &str) -> AccessLogFormat {
        AccessLogFormat::compile(f).unwrap()
    }

    #[test]
    fn find_any_finds_the_first_needle() {
        let hay = b"0123456789abcdef ghijklmnopqrstuvwxyz\"";
        for (i, &b) in hay.iter().enumerate() {
            assert_eq!(find_any(hay, [b]), Some(i));
            assert_eq!(find_any(hay, [b'"', b, b'!']), Some(i));
        }
        assert_eq!(find_any(hay, [b'!']), None);
        assert_eq!(find_any(b"", [b'a']), None);
        assert_eq!(find_any(&[0x7f, 0x80], [0x80]), Some(1));
        // A byte just above a match must not hide an earlier match of another needle.
        assert_eq!(find_any(b"aaaaaaa\x01\x00bbbbbbb", [0, 1]), Some(7));
    }

    #[test]
    fn path_with_spaces_is_kept_whole() {
        let f = fmt("\"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\" %RESPONSE_CODE%");
        let p = f
            .parse_text_line("\"GET /a b \"c\" HTTP/1.1\" 200")
            .unwrap();
        assert_eq!(p.row.path.as_deref(), Some("/a b \"c\""));
        assert_eq!(p.row.protocol.as_deref(), Some("HTTP/1.1"));
        assert_eq!(p.row.response_code, 200);
    }

    #[test]
    fn adjacent_operators_split_greedily_by_class() {
        let f = fmt("%RESPONSE_CODE%%RESPONSE_FLAGS% %ROUTE_NAME%");
        let p = f.parse_text_line("503UO my route").unwrap();
        assert_eq!(p.row.response_code, 503);
        assert_eq!(p.row.response_flags.as_deref(), Some("UO"));
        assert_eq!(p.row.route_name.as_deref(), Some("my route"));
    }

    #[test]
    fn trailing_literal_and_utf8() {
        let f = fmt("<%REQ(USER-AGENT)%>%%");
        let p = f.parse_text_line("<Bücher ✓ >>%").unwrap();
        assert_eq!(p.row.user_agent.as_deref(), Some("Bücher ✓ >"));
        assert!(matches!(
            f.parse_text_line("<abc>"),
            Err(LineError::Literal { at_end: true, .. })
        ));
    }

    #[test]
    fn pathological_lines_are_bounded() {
        // Many free-text fields separated by a literal the line is full of.
        let f = fmt(&"%REQ(A)%,".repeat(30));
        assert!(f.parse_text_line(&",".repeat(5000)).is_ok());
        assert!(f.parse_text_line(&(",".repeat(5000) + "x")).is_err());
        let f = fmt("%REQ(A)%%REQ(B)%%REQ(C)%%REQ(D)%x");
        assert!(f.parse_text_line(&"é".repeat(3000)).is_err());
    }
}
