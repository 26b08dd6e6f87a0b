//! Kubernetes container-log wrappers around Envoy's lines, and container-log file names.
//!
//! - CRI (containerd, CRI-O): `2026-11-26T01:02:03.123456789Z stdout F <line>`. The tag `F`
//!   ends a line; `P` means the runtime split a long line (containerd at 16 KiB) and the rest
//!   follows in the next entries of the same stream.
//! - Docker json-file: `{"log":"<line>\n","stream":"stdout","time":"…"}`, the line JSON-escaped;
//!   a `log` without the trailing `\n` is a partial line in the same sense.
//!
//! Partial lines are joined by a [`ContainerLineJoiner`] the caller keeps per file (it must
//! outlive one read, since a split line can straddle two reads): partial entries are buffered
//! per stream and come out joined, with the time of the first piece, when the entry that
//! ends the line arrives. A line that grows past [`MAX_JOINED_LINE_BYTES`] is dropped and
//! reported once, when its end arrives.

use std::borrow::Cow;

use serde::Deserialize;

use super::identity::ProxyIdentity;
use super::snippet;
use super::text::MAX_LINE_BYTES;
use super::values::parse_time;

/// A joined partial line longer than this is dropped (no access-log line is that long).
pub const MAX_JOINED_LINE_BYTES: usize = MAX_LINE_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerLogError {
    #[error("not a CRI log line (`<time> stdout|stderr F|P <text>`): {reason}; found {found:?}")]
    Cri { reason: &'static str, found: String },
    #[error("not a Docker json-file log line: {message}")]
    Docker { message: String },
    #[error("a partial line grew past {max} bytes before its end arrived; it was dropped")]
    PartialTooLong { max: usize },
    #[error(
        "{path:?} is not a Kubernetes container log path (/var/log/containers/<pod>_<namespace>_<container>-<64 hex>.log or /var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log)"
    )]
    Path { path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn parse(s: &str) -> Option<Stream> {
        match s {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// One entry of a container log, unwrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLine<'a> {
    /// When the runtime received the text, Unix nanoseconds; `None` for a bare line.
    pub time_unix_nano: Option<i64>,
    /// `None` for a bare line.
    pub stream: Option<Stream>,
    /// The line continues in the next entry of the same stream.
    pub partial: bool,
    /// What the container wrote, without the newline (Docker's escapes undone).
    pub content: Cow<'a, str>,
}

/// Unwraps a CRI log line.
pub fn parse_cri_line(line: &str) -> Result<ContainerLine<'_>, ContainerLogError> {
    let err = |reason| ContainerLogError::Cri {
        reason,
        found: snippet(line),
    };
    let (time, rest) = line
        .split_once(' ')
        .ok_or_else(|| err("no space after the time"))?;
    let time = parse_time(time).ok_or_else(|| err("the time is not RFC 3339"))?;
    let (stream, rest) = rest
        .split_once(' ')
        .ok_or_else(|| err("no space after the stream"))?;
    let stream = Stream::parse(stream).ok_or_else(|| err("the stream is not stdout or stderr"))?;
    // containerd writes `F ` before an empty line's end too, but accept a bare tag.
    let (tags, content) = rest.split_once(' ').unwrap_or((rest, ""));
    // Tags are `:`-separated; the first says whether the line is complete.
    let partial = match tags.split(':').next() {
        Some("F") => false,
        Some("P") => true,
        _ => return Err(err("the tag is not F or P")),
    };
    let content = content.strip_suffix('\n').unwrap_or(content);
    Ok(ContainerLine {
        time_unix_nano: Some(time),
        stream: Some(stream),
        partial,
        content: Cow::Borrowed(content.strip_suffix('\r').unwrap_or(content)),
    })
}

#[derive(Deserialize)]
struct DockerEntry<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
}

/// Unwraps a Docker json-file log line.
pub fn parse_docker_line(line: &str) -> Result<ContainerLine<'_>, ContainerLogError> {
    let entry: DockerEntry = serde_json::from_str(line).map_err(|e| ContainerLogError::Docker {
        message: e.to_string(),
    })?;
    let docker_err = |message: String| ContainerLogError::Docker { message };
    let stream = match entry.stream.as_deref() {
        None => None,
        Some(s) => Some(
            Stream::parse(s)
                .ok_or_else(|| docker_err(format!("stream {s:?} is not stdout or stderr")))?,
        ),
    };
    let time = match entry.time.as_deref() {
        None => None,
        Some(t) => {
            Some(parse_time(t).ok_or_else(|| docker_err(format!("time {t:?} is not RFC 3339")))?)
        }
    };
    // Docker writes the newline into `log`; its absence marks a split line.
    let partial = !entry.log.ends_with('\n');
    let trim = |s: &str| -> usize {
        let s = s.strip_suffix('\n').unwrap_or(s);
        s.strip_suffix('\r').unwrap_or(s).len()
    };
    let content = match entry.log {
        Cow::Borrowed(s) => Cow::Borrowed(&s[..trim(s)]),
        Cow::Owned(mut s) => {
            s.truncate(trim(&s));
            Cow::Owned(s)
        }
    };
    Ok(ContainerLine {
        time_unix_nano: time,
        stream,
        partial,
        content,
    })
}

/// Unwraps whatever wrapper a line has: Docker json-file lines start with `{"log":`, CRI
/// lines with an RFC 3339 time and ` stdout ` or ` stderr `; anything else (an Envoy line
/// read straight from a file or a push) is returned as is.
pub fn unwrap_container_line(line: &str) -> Result<ContainerLine<'_>, ContainerLogError> {
    if line.starts_with("{\"log\":") {
        return parse_docker_line(line);
    }
    if looks_like_cri(line) {
        return parse_cri_line(line);
    }
    let content = line.strip_suffix('\n').unwrap_or(line);
    Ok(ContainerLine {
        time_unix_nano: None,
        stream: None,
        partial: false,
        content: Cow::Borrowed(content.strip_suffix('\r').unwrap_or(content)),
    })
}

fn looks_like_cri(line: &str) -> bool {
    let mut parts = line.splitn(3, ' ');
    let (Some(time), Some(stream)) = (parts.next(), parts.next()) else {
        return false;
    };
    time.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && time.len() >= 20
        && time.as_bytes()[4] == b'-'
        && Stream::parse(stream).is_some()
}

#[derive(Debug, Default)]
struct Pending {
    text: String,
    time_unix_nano: Option<i64>,
    overflowed: bool,
}

/// Joins partial container-log entries into whole lines; keep one per log file.
#[derive(Debug, Default)]
pub struct ContainerLineJoiner {
    /// Per stream: stdout (and bare lines), stderr.
    pending: [Pending; 2],
}

impl ContainerLineJoiner {
    pub fn new() -> ContainerLineJoiner {
        ContainerLineJoiner::default()
    }

    /// Feeds one entry. Returns the whole line when `entry` completes one, `None` while a
    /// line is still partial, and an error when a partial line overflowed and was dropped.
    /// A complete entry with nothing pending is passed through without copying.
    pub fn push<'a>(
        &mut self,
        entry: ContainerLine<'a>,
    ) -> Result<Option<ContainerLine<'a>>, ContainerLogError> {
        let slot = &mut self.pending[usize::from(entry.stream == Some(Stream::Stderr))];
        if slot.text.is_empty() && !slot.overflowed {
            if !entry.partial {
                return Ok(Some(entry));
            }
            slot.time_unix_nano = entry.time_unix_nano;
        }
        if !slot.overflowed && slot.text.len() + entry.content.len() <= MAX_JOINED_LINE_BYTES {
            slot.text.push_str(&entry.content);
        } else {
            slot.overflowed = true;
            slot.text = String::new();
        }
        if entry.partial {
            return Ok(None);
        }
        let done = std::mem::take(slot);
        if done.overflowed {
            return Err(ContainerLogError::PartialTooLong {
                max: MAX_JOINED_LINE_BYTES,
            });
        }
        Ok(Some(ContainerLine {
            time_unix_nano: done.time_unix_nano.or(entry.time_unix_nano),
            stream: entry.stream,
            partial: false,
            content: Cow::Owned(done.text),
        }))
    }

    /// Whether part of a line is waiting for its end.
    pub fn has_pending(&self) -> bool {
        self.pending
            .iter()
            .any(|p| !p.text.is_empty() || p.overflowed)
    }
}

/// Who wrote a container log file, from its Kubernetes path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLogFile {
    pub pod: String,
    pub namespace: String,
    /// `istio-proxy` for a sidecar's log.
    pub container: String,
    /// The 64-hex container id (`/var/log/containers/…` names only).
    pub container_id: Option<String>,
    /// The pod UID (`/var/log/pods/…` paths only).
    pub pod_uid: Option<String>,
}

impl ContainerLogFile {
    /// The identity of the proxy writing this file: pod, namespace and the workload derived
    /// from the pod name (labels and IP are not in the path).
    pub fn proxy_identity(&self) -> ProxyIdentity {
        ProxyIdentity::from_pod(&self.pod, &self.namespace)
    }
}

/// Parses `/var/log/containers/<pod>_<namespace>_<container>-<64 hex id>.log` (the kubelet's
/// symlinks) or `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log` (their targets).
/// Only the trailing components are looked at, so any directory prefix works.
pub fn parse_container_log_path(path: &str) -> Result<ContainerLogFile, ContainerLogError> {
    let err = || ContainerLogError::Path {
        path: path.to_string(),
    };
    let mut components = path.rsplit('/');
    let file = components.next().ok_or_else(err)?;
    let stem = file.strip_suffix(".log").ok_or_else(err)?;
    // Pod, namespace and container names are DNS names: they never contain `_`.
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if let [pod, namespace, container_and_id] = stem.split('_').collect::<Vec<_>>()[..] {
        let (container, id) = container_and_id.rsplit_once('-').ok_or_else(err)?;
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        return Ok(ContainerLogFile {
            pod: nonempty(pod).ok_or_else(err)?,
            namespace: nonempty(namespace).ok_or_else(err)?,
            container: nonempty(container).ok_or_else(err)?,
            container_id: Some(id.to_string()),
            pod_uid: None,
        });
    }
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let container = components.next().ok_or_else(err)?;
    let pod_dir = components.next().ok_or_else(err)?;
    let [namespace, pod, uid] = pod_dir.split('_').collect::<Vec<_>>()[..] else {
        return Err(err());
    };
    Ok(ContainerLogFile {
        pod: nonempty(pod).ok_or_else(err)?,
        namespace: nonempty(namespace).ok_or_else(err)?,
        container: nonempty(container).ok_or_else(err)?,
        container_id: None,
        pod_uid: Some(nonempty(uid).ok_or_else(err)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTIO_LINE: &str = r#"[2026-11-26T01:02:03.456Z] "GET /productpage HTTP/1.1" 200 - via_upstream - "-" 0 5293 35 34 "-" "curl/8.5.0" "b1c1e2a4-7c2f-9a8e-b7e1-1a2b3c4d5e6f" "productpage:9080" "127.0.10.2:9080" inbound|9080|| 127.0.0.6:45127 127.0.10.2:9080 127.0.10.1:36468 outbound_.9080_._.productpage.default.svc.cluster.local default"#;

    #[test]
    fn cri_lines() {
        let raw = format!("2026-11-26T01:02:03.123456789Z stdout F {ISTIO_LINE}\n");
        let l = parse_cri_line(&raw).unwrap();
        assert_eq!(l.content, ISTIO_LINE);
        assert_eq!(l.stream, Some(Stream::Stdout));
        assert!(!l.partial);
        assert_eq!(l.time_unix_nano, Some(1_795_654_923_123_456_789));
        let p = parse_cri_line("2026-11-26T01:02:03Z stderr P:x part").unwrap();
        assert!(p.partial);
        assert_eq!(p.content, "part");
        assert_eq!(
            parse_cri_line("2026-11-26T01:02:03Z stdout F")
                .unwrap()
                .content,
            ""
        );
        for bad in [
            "",
            "garbage",
            "2026-11-26T01:02:03Z stdin F x",
            "yesterday stdout F x",
            "2026-11-26T01:02:03Z stdout X x",
        ] {
            assert!(parse_cri_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_lines() {
        let wrapped = serde_json::json!({
            "log": format!("{ISTIO_LINE}\n"),
            "stream": "stdout",
            "time": "2026-11-26T01:02:03.5Z",
        })
        .to_string();
        let l = unwrap_container_line(&wrapped).unwrap();
        assert_eq!(l.content, ISTIO_LINE);
        assert!(!l.partial);
        assert_eq!(l.time_unix_nano, Some(1_795_654_923_500_000_000));
        let p =
            parse_docker_line(r#"{"log":"abc","stream":"stderr","time":"2026-11-26T01:02:03Z"}"#)
                .unwrap();
        assert!(p.partial);
        assert_eq!(p.stream, Some(Stream::Stderr));
        assert!(parse_docker_line(r#"{"log":1}"#).is_err());
        assert!(parse_docker_line(r#"{"log":"x\n","stream":"tty"}"#).is_err());
    }

    #[test]
    fn bare_lines_pass_through() {
        let raw = format!("{ISTIO_LINE}\r\n");
        let l = unwrap_container_line(&raw).unwrap();
        assert_eq!(l.content, ISTIO_LINE);
        assert_eq!((l.stream, l.time_unix_nano), (None, None));
        let json = r#"{"start_time":"2026-11-26T01:02:03.456Z"}"#;
        assert_eq!(unwrap_container_line(json).unwrap().content, json);
    }

    #[test]
    fn joiner_joins_partials_per_stream() {
        let mut j = ContainerLineJoiner::new();
        let lines = [
            "2026-11-26T01:02:03Z stdout P [2026-11-26T01:02:03.456Z] \"GET ",
            "2026-11-26T01:02:04Z stderr F warning: something",
            "2026-11-26T01:02:05Z stdout P /productpage",
            "2026-11-26T01:02:06Z stdout F  HTTP/1.1\" 200",
        ];
        let mut out = Vec::new();
        for l in lines {
            if let Some(done) = j.push(parse_cri_line(l).unwrap()).unwrap() {
                out.push((done.content.into_owned(), done.time_unix_nano, done.stream));
            }
        }
        assert!(!j.has_pending());
        assert_eq!(out[0].0, "warning: something");
        assert_eq!(
            out[1].0,
            "[2026-11-26T01:02:03.456Z] \"GET /productpage HTTP/1.1\" 200"
        );
        // A joined line carries the time of its first piece.
        assert_eq!(out[1].1, parse_time("2026-11-26T01:02:03Z"));
        assert_eq!(out[1].2, Some(Stream::Stdout));
    }

    #[test]
    fn joiner_drops_overlong_partials_once() {
        let mut j = ContainerLineJoiner::new();
        let chunk = "x".repeat(MAX_JOINED_LINE_BYTES / 2 + 1);
        for _ in 0..3 {
            let e = ContainerLine {
                time_unix_nano: None,
                stream: Some(Stream::Stdout),
                partial: true,
                content: Cow::Borrowed(&chunk),
            };
            assert_eq!(j.push(e), Ok(None));
        }
        assert!(j.has_pending());
        let end = parse_cri_line("2026-11-26T01:02:03Z stdout F end").unwrap();
        assert!(matches!(
            j.push(end),
            Err(ContainerLogError::PartialTooLong { .. })
        ));
        let next = parse_cri_line("2026-11-26T01:02:03Z stdout F next").unwrap();
        assert_eq!(j.push(next).unwrap().unwrap().content, "next");
    }

    #[test]
    fn container_log_paths() {
        let id = "0123456789abcdef".repeat(4);
        let f = parse_container_log_path(&format!(
            "/var/log/containers/reviews-v2-5b64f47978-abcde_default_istio-proxy-{id}.log"
        ))
        .unwrap();
        assert_eq!(f.pod, "reviews-v2-5b64f47978-abcde");
        assert_eq!(f.namespace, "default");
        assert_eq!(f.container, "istio-proxy");
        assert_eq!(f.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(f.proxy_identity().workload.as_deref(), Some("reviews-v2"));
        let g = parse_container_log_path(
            "/var/log/pods/default_reviews-v2-5b64f47978-abcde_3f1e2d4c-aaaa-bbbb-cccc-0123456789ab/istio-proxy/0.log",
        )
        .unwrap();
        assert_eq!((g.pod, g.namespace), (f.pod, f.namespace));
        assert_eq!(g.container, "istio-proxy");
        for bad in [
            "",
            "/var/log/containers/x.log",
            "/var/log/containers/pod_ns_c-123.log",
            &format!("/var/log/containers/_ns_c-{id}.log"),
            &format!("/var/log/containers/pod_ns_c-{id}.txt"),
            "/var/log/pods/ns_pod/c/0.log",
            "0.log",
        ] {
            assert!(parse_container_log_path(bad).is_err(), "{bad}");
        }
    }
}
