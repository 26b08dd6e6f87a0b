//! Envoy text format strings (`%START_TIME% "%REQ(:METHOD)% …"`), compiled once into the
//! literal text that must appear in a line and the command operators in between.
//!
//! The grammar is Envoy's: `%COMMAND%`, `%COMMAND(ARGUMENT)%`, either with an optional
//! `:N` length limit before the closing `%` (`%REQ(USER-AGENT):10%`); the argument runs to the
//! first `)`, so `%START_TIME(%Y/%m/%d)%` works. `%%` is a literal percent. Operators this
//! module does not know are kept (as [`Target::Extra`]) rather than rejected, so a format
//! with custom headers or filter state still parses.

use std::fmt;

/// Istio's default text access-log format (`meshConfig.accessLogEncoding: TEXT`), exactly as
/// Istio configures it, trailing newline included.
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// A format string that cannot be compiled; positions are 1-based byte columns of the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "format column {column}: `%` must start an operator such as %RESPONSE_CODE% (or be written `%%`), found {found:?}"
    )]
    BadOperator { column: usize, found: String },
    #[error("format column {column}: `%{command}(` has no closing `)`")]
    UnclosedArgument { column: usize, command: String },
    #[error("format column {column}: operator `%{operator}` is not closed by `%`")]
    NotClosed { column: usize, operator: String },
    #[error("format column {column}: length limit {found:?} of `%{command}` is not a number")]
    BadLength {
        column: usize,
        command: String,
        found: String,
    },
    #[error("format {format:?} has no command operators, so it cannot describe a request")]
    NoOperators { format: String },
}

/// The `RequestRow` column a command operator fills (or why it fills none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    StartTime,
    Method,
    Path,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamServiceTime,
    XForwardedFor,
    UserAgent,
    RequestId,
    Authority,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    RequestedServerName,
    RouteName,
    /// `%REQ(TRACEPARENT)%`: fills `trace_id` when it is a valid W3C traceparent.
    Traceparent,
    /// `%TRACE_ID%`: fills `trace_id` when it is 32 hex digits.
    TraceId,
    /// No `requests` column: kept in `ParsedLine::extra` under the operator's name.
    Extra,
}

impl Target {
    /// The target of an operator `%command(argument)%`. Header names are case-insensitive
    /// in Envoy, so they are compared upper-cased.
    pub fn of_operator(command: &str, argument: Option<&str>) -> Target {
        let header = argument.map(str::to_ascii_uppercase);
        match (command, header.as_deref()) {
            ("START_TIME", _) => Target::StartTime,
            ("PROTOCOL", None) => Target::Protocol,
            ("RESPONSE_CODE", None) => Target::ResponseCode,
            ("RESPONSE_FLAGS", None) => Target::ResponseFlags,
            ("RESPONSE_CODE_DETAILS", None) => Target::ResponseCodeDetails,
            ("CONNECTION_TERMINATION_DETAILS", None) => Target::ConnectionTerminationDetails,
            ("UPSTREAM_TRANSPORT_FAILURE_REASON", None) => Target::UpstreamTransportFailureReason,
            ("BYTES_RECEIVED", None) => Target::BytesReceived,
            ("BYTES_SENT", None) => Target::BytesSent,
            ("DURATION", None) => Target::Duration,
            ("UPSTREAM_HOST", None) => Target::UpstreamHost,
            // Newer Envoy prints a cluster's observability name for UPSTREAM_CLUSTER, which is
            // why Istio moved to _RAW; both go to the same column.
            ("UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW", None) => Target::UpstreamCluster,
            ("UPSTREAM_LOCAL_ADDRESS", None) => Target::UpstreamLocalAddress,
            ("DOWNSTREAM_LOCAL_ADDRESS", None) => Target::DownstreamLocalAddress,
            ("DOWNSTREAM_REMOTE_ADDRESS", None) => Target::DownstreamRemoteAddress,
            ("REQUESTED_SERVER_NAME", None) => Target::RequestedServerName,
            ("ROUTE_NAME", None) => Target::RouteName,
            ("TRACE_ID", None) => Target::TraceId,
            ("REQ", Some(":METHOD")) => Target::Method,
            ("REQ", Some(":PATH" | "X-ENVOY-ORIGINAL-PATH?:PATH" | "X-ENVOY-ORIGINAL-PATH")) => {
                Target::Path
            }
            // Envoy stores HTTP/1 `Host` as `:authority`, so both names read the same header.
            ("REQ", Some(":AUTHORITY" | "HOST" | ":AUTHORITY?HOST" | "HOST?:AUTHORITY")) => {
                Target::Authority
            }
            ("REQ", Some("USER-AGENT")) => Target::UserAgent,
            ("REQ", Some("X-FORWARDED-FOR")) => Target::XForwardedFor,
            ("REQ", Some("X-REQUEST-ID")) => Target::RequestId,
            ("REQ", Some("TRACEPARENT")) => Target::Traceparent,
            ("RESP", Some("X-ENVOY-UPSTREAM-SERVICE-TIME")) => Target::UpstreamServiceTime,
            _ => Target::Extra,
        }
    }

    /// What characters a value of this operator can hold, as far as Envoy or the HTTP codecs
    /// guarantee; the line splitter uses it to decide between candidate splits.
    fn value_class(self) -> ValueClass {
        use Target::*;
        match self {
            ResponseCode | BytesReceived | BytesSent | Duration | UpstreamServiceTime => {
                ValueClass::Numeric
            }
            // Envoy replaces whitespace in response code details with `_`; methods, protocols,
            // addresses, cluster names, SNI and validated authorities never hold a space or a
            // quote. Request ids are UUIDs in practice (see `split` in text.rs for odd ones).
            StartTime
            | Method
            | Protocol
            | ResponseFlags
            | ResponseCodeDetails
            | RequestId
            | Authority
            | UpstreamHost
            | UpstreamCluster
            | UpstreamLocalAddress
            | DownstreamLocalAddress
            | DownstreamRemoteAddress
            | RequestedServerName
            | Traceparent
            | TraceId => ValueClass::Token,
            // Client-controlled headers and free-form details may hold anything.
            Path
            | UserAgent
            | XForwardedFor
            | UpstreamTransportFailureReason
            | ConnectionTerminationDetails
            | RouteName
            | Extra => ValueClass::Text,
        }
    }
}

/// The bytes a [`ValueClass::Token`] value never contains.
pub(crate) const TOKEN_FORBIDDEN: [u8; 3] = [b' ', b'\t', b'"'];

/// The characters a field value may contain; see [`Target::value_class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueClass {
    /// Digits, or `-` for "not set".
    Numeric,
    /// No space, tab or double quote.
    Token,
    /// Anything.
    Text,
}

impl ValueClass {
    #[inline]
    pub(crate) fn allows(self, b: u8) -> bool {
        match self {
            ValueClass::Numeric => b.is_ascii_digit() || b == b'-',
            ValueClass::Token => !TOKEN_FORBIDDEN.contains(&b),
            ValueClass::Text => true,
        }
    }
}

/// One command operator of a compiled format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    /// The operator as written between the `%` signs, e.g. `REQ(USER-AGENT):10`; errors and
    /// extra fields are named by it.
    pub operator: String,
    /// `REQ` in `%REQ(USER-AGENT):10%`.
    pub command: String,
    /// `USER-AGENT` in `%REQ(USER-AGENT):10%`.
    pub argument: Option<String>,
    /// `10` in `%REQ(USER-AGENT):10%`: Envoy truncates the value to this many characters.
    pub max_len: Option<usize>,
    pub target: Target,
    /// 1-based byte column of the operator's `%` in the format string.
    pub column: usize,
    pub(crate) class: ValueClass,
    /// The literal text between this field and the next one (or the end of the line).
    pub(crate) after: String,
}

impl FieldSpec {
    /// The literal text that follows this field in a line (empty at the end of a line or
    /// between two adjacent operators).
    pub fn literal_after(&self) -> &str {
        &self.after
    }
}

/// A compiled Envoy text format: a leading literal, then fields each followed by a literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogFormat {
    source: String,
    pub(crate) head: String,
    pub(crate) fields: Vec<FieldSpec>,
}

impl AccessLogFormat {
    /// Compiles an Envoy text format string. One trailing newline (Envoy's line terminator,
    /// which log readers strip) is dropped from the format.
    pub fn compile(format: &str) -> Result<AccessLogFormat, FormatError> {
        let body = match format.strip_suffix('\n') {
            Some(b) => b.strip_suffix('\r').unwrap_or(b),
            None => format,
        };
        let bytes = body.as_bytes();
        let mut head: Option<String> = None;
        let mut fields: Vec<FieldSpec> = Vec::new();
        let mut literal = String::new();
        let (mut i, mut lit_start) = (0, 0);
        while i < bytes.len() {
            if bytes[i] != b'%' {
                i += 1;
                continue;
            }
            literal.push_str(&body[lit_start..i]);
            if bytes.get(i + 1) == Some(&b'%') {
                literal.push('%');
                i += 2;
                lit_start = i;
                continue;
            }
            let (field, end) = parse_operator(body, i)?;
            let text = std::mem::take(&mut literal);
            match fields.last_mut() {
                Some(prev) => prev.after = text,
                None => head = Some(text),
            }
            fields.push(field);
            i = end;
            lit_start = end;
        }
        literal.push_str(&body[lit_start..]);
        match fields.last_mut() {
            Some(last) => last.after = literal,
            None => {
                return Err(FormatError::NoOperators {
                    format: format.to_string(),
                });
            }
        }
        Ok(AccessLogFormat {
            source: format.to_string(),
            head: head.unwrap_or_default(),
            fields,
        })
    }

    /// Istio's default text format, [`ISTIO_TEXT_FORMAT`].
    pub fn istio() -> AccessLogFormat {
        // The constant is tested to compile; a failure here is a bug in this file.
        AccessLogFormat::compile(ISTIO_TEXT_FORMAT).expect("ISTIO_TEXT_FORMAT compiles")
    }

    /// The format string this was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The literal text every line starts with (`[` for Istio's format).
    pub fn leading_literal(&self) -> &str {
        &self.head
    }

    /// The command operators, in the order they appear in a line.
    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }
}

impl fmt::Display for AccessLogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Parses the operator whose `%` is at byte `start`; returns it and the byte after its
/// closing `%`. Envoy's own grammar: `%[A-Z0-9_]+(\([^)]*\))?(:[0-9]+)?%`.
fn parse_operator(body: &str, start: usize) -> Result<(FieldSpec, usize), FormatError> {
    let b = body.as_bytes();
    let column = start + 1;
    let mut j = start + 1;
    while j < b.len() && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_') {
        j += 1;
    }
    if j == start + 1 {
        return Err(FormatError::BadOperator {
            column,
            found: body[start..].chars().take(24).collect(),
        });
    }
    let command = &body[start + 1..j];
    let mut argument = None;
    if b.get(j) == Some(&b'(') {
        let close = body[j + 1..]
            .find(')')
            .ok_or_else(|| FormatError::UnclosedArgument {
                column,
                command: command.to_string(),
            })?
            + j
            + 1;
        argument = Some(&body[j + 1..close]);
        j = close + 1;
    }
    let mut max_len = None;
    if b.get(j) == Some(&b':') {
        let digits_start = j + 1;
        let mut k = digits_start;
        while k < b.len() && b[k].is_ascii_digit() {
            k += 1;
        }
        let digits = &body[digits_start..k];
        max_len = Some(
            digits
                .parse::<usize>()
                .map_err(|_| FormatError::BadLength {
                    column,
                    command: command.to_string(),
                    found: body[digits_start..].chars().take(12).collect(),
                })?,
        );
        j = k;
    }
    if b.get(j) != Some(&b'%') {
        return Err(FormatError::NotClosed {
            column,
            operator: body[start + 1..j].to_string(),
        });
    }
    let target = Target::of_operator(command, argument);
    // A START_TIME with its own strftime format may contain spaces.
    let class = match (target, argument) {
        (Target::StartTime, Some(_)) => ValueClass::Text,
        _ => target.value_class(),
    };
    let field = FieldSpec {
        operator: body[start + 1..j].to_string(),
        command: command.to_string(),
        argument: argument.map(str::to_string),
        max_len,
        target,
        column,
        class,
        after: String::new(),
    };
    Ok((field, j + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_format_compiles_to_its_operators() {
        let f = AccessLogFormat::compile(ISTIO_TEXT_FORMAT).unwrap();
        assert_eq!(f.leading_literal(), "[");
        assert_eq!(f.fields().len(), 24);
        let targets: Vec<Target> = f.fields().iter().map(|x| x.target).collect();
        assert!(!targets.contains(&Target::Extra));
        assert_eq!(f.fields()[0].literal_after(), "] \"");
        assert_eq!(f.fields()[2].target, Target::Path);
        assert_eq!(f.fields()[3].literal_after(), "\" ");
        assert_eq!(f.fields()[18].target, Target::UpstreamCluster);
        // The trailing newline is not part of the last literal: lines arrive without it.
        assert_eq!(f.fields()[23].literal_after(), "");
        assert_eq!(f.fields()[23].target, Target::RouteName);
    }

    #[test]
    fn operators_with_arguments_lengths_and_percent_signs() {
        let f = AccessLogFormat::compile(
            "100%% %START_TIME(%Y/%m/%dT%H:%M:%S%z)% %REQ(user-agent):10% %FILTER_STATE(a:b):5%|",
        )
        .unwrap();
        assert_eq!(f.leading_literal(), "100% ");
        let [t, ua, fs] = f.fields() else {
            panic!("three fields expected: {:?}", f.fields())
        };
        assert_eq!(t.target, Target::StartTime);
        assert_eq!(t.argument.as_deref(), Some("%Y/%m/%dT%H:%M:%S%z"));
        assert_eq!(t.class, ValueClass::Text);
        assert_eq!((ua.target, ua.max_len), (Target::UserAgent, Some(10)));
        assert_eq!(ua.operator, "REQ(user-agent):10");
        assert_eq!((fs.target, fs.max_len), (Target::Extra, Some(5)));
        assert_eq!(fs.argument.as_deref(), Some("a:b"));
        assert_eq!(fs.literal_after(), "|");
        assert_eq!(t.column, 7);
    }

    #[test]
    fn unknown_operators_are_kept() {
        let f = AccessLogFormat::compile("%UPSTREAM_PEER_URI_SAN% %REQ(X-B3-TRACEID)%").unwrap();
        assert!(f.fields().iter().all(|x| x.target == Target::Extra));
    }

    #[test]
    fn bad_formats_name_the_column() {
        let e = AccessLogFormat::compile("abc %foo%").unwrap_err();
        assert_eq!(
            e.to_string(),
            "format column 5: `%` must start an operator such as %RESPONSE_CODE% (or be written `%%`), found \"%foo%\""
        );
        assert!(matches!(
            AccessLogFormat::compile("%REQ(X%"),
            Err(FormatError::UnclosedArgument { column: 1, .. })
        ));
        assert!(matches!(
            AccessLogFormat::compile("x %DURATION"),
            Err(FormatError::NotClosed { column: 3, .. })
        ));
        assert!(matches!(
            AccessLogFormat::compile("%REQ(A):x%"),
            Err(FormatError::BadLength { column: 1, .. })
        ));
        assert!(matches!(
            AccessLogFormat::compile("just text 100%%\n"),
            Err(FormatError::NoOperators { .. })
        ));
        assert!(AccessLogFormat::compile("%").is_err());
    }
}
