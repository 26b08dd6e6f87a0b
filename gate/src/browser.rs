//! What a web page must not make meshscope do. Any page a user has open can send requests to
//! `localhost:20001`: the browser attaches no token, but on a loopback listener without
//! authentication none is needed, and a browser that cached Basic credentials would send them.
//! Reading the answers is stopped by the same-origin policy (meshscope sends no CORS
//! headers); what is left are "simple" cross-origin requests that act before anyone reads
//! the answer, and DNS rebinding (a foreign name that resolves to 127.0.0.1).

use axum::http::{HeaderMap, Method, Uri, header};

/// What bodies an endpoint reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bodies {
    /// JSON only: a body of a simple-CORS type (text/plain, a form, multipart) or of no type
    /// is refused, since a page can send those cross-origin without a preflight.
    Json,
    /// Any type (forms for the Prometheus API, text for access-log and stats pushes).
    Any,
}

/// Why a browser-shaped request was refused (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `Origin` names another site than the one addressed.
    ForeignOrigin(String),
    /// `Sec-Fetch-Site` says a page of another site sent it.
    CrossSite(String),
    /// A simple-CORS (or missing) content type on a JSON endpoint.
    SimpleContentType(String),
    /// The `Host` is not a loopback name, on a loopback listener without authentication.
    ForeignHost(String),
}

impl Refused {
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::ForeignOrigin(_) => "cross_origin",
            Refused::CrossSite(_) => "cross_site",
            Refused::SimpleContentType(_) => "content_type",
            Refused::ForeignHost(_) => "host",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refused::ForeignOrigin(o) => format!(
                "cross-origin request refused: Origin {o:?} is not this server; meshscope's API takes no requests from other sites' pages"
            ),
            Refused::CrossSite(s) => {
                format!("cross-site request refused (Sec-Fetch-Site: {s})")
            }
            Refused::SimpleContentType(t) => {
                format!("this endpoint reads JSON: send `Content-Type: application/json` (got {t})")
            }
            Refused::ForeignHost(h) => format!(
                "Host {h:?} is not a loopback name: a loopback meshscope without a token answers only localhost, 127.0.0.1 and [::1] (set --auth-token-file to serve other names)"
            ),
        }
    }
}

/// Checks a request against what browsers can be made to send. Safe methods (GET, HEAD,
/// OPTIONS) change nothing and pass the origin checks; `loopback_host_only` applies to all.
pub fn check_browser(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    bodies: Bodies,
    loopback_host_only: bool,
) -> Result<(), Refused> {
    let host = request_host(uri, headers);
    if loopback_host_only {
        let h = host.unwrap_or("");
        if !is_loopback_host(h) {
            return Err(Refused::ForeignHost(h.to_string()));
        }
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        let same = origin_authority(o).is_some_and(|a| {
            host.is_some_and(|h| a.eq_ignore_ascii_case(h))
                || forwarded_host(headers).is_some_and(|h| a.eq_ignore_ascii_case(h))
        });
        if !same {
            return Err(Refused::ForeignOrigin(o.to_string()));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && (site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site"))
    {
        return Err(Refused::CrossSite(site.to_string()));
    }
    if bodies == Bodies::Json {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if matches!(
            media.as_str(),
            "" | "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
        ) {
            let shown = if ct.is_empty() { "none" } else { ct };
            return Err(Refused::SimpleContentType(shown.to_string()));
        }
    }
    Ok(())
}

/// `Host`, or the URI's authority (HTTP/2 sends `:authority`, not `Host`).
fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// `X-Forwarded-Host` set by a reverse proxy in front of meshscope (a page cannot set it on
/// a cross-origin request without a preflight meshscope never answers).
fn forwarded_host(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-forwarded-host")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
}

/// `host[:port]` of an `Origin` value; `None` for `null` and other opaque origins.
fn origin_authority(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    let a = rest.split('/').next()?;
    (!a.is_empty()).then_some(a)
}

/// Whether `host[:port]` names this machine: `localhost` (and `*.localhost`), an IPv4
/// address in 127.0.0.0/8, or `[::1]`.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, _)) => h,
            None => return false,
        }
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn post(pairs: &[(&'static str, &str)], bodies: Bodies) -> Result<(), Refused> {
        check_browser(
            &Method::POST,
            &Uri::from_static("/api/v1/sql"),
            &headers(pairs),
            bodies,
            false,
        )
    }

    #[test]
    fn cross_origin_posts_are_refused() {
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:20001");
        assert_eq!(post(&[host, json], Bodies::Json), Ok(()));
        assert_eq!(
            post(
                &[host, json, ("origin", "http://127.0.0.1:20001")],
                Bodies::Json
            ),
            Ok(())
        );
        assert_eq!(
            post(
                &[host, json, ("origin", "http://evil.example")],
                Bodies::Json
            ),
            Err(Refused::ForeignOrigin("http://evil.example".into()))
        );
        // another port on the same machine is another origin (a page on :3000)
        assert!(
            post(
                &[host, json, ("origin", "http://127.0.0.1:3000")],
                Bodies::Any
            )
            .is_err()
        );
        assert!(post(&[host, json, ("origin", "null")], Bodies::Json).is_err());
        // behind a proxy that names the public host
        assert_eq!(
            post(
                &[
                    ("host", "meshscope:20001"),
                    ("x-forwarded-host", "mesh.example.com"),
                    ("origin", "https://mesh.example.com"),
                    json
                ],
                Bodies::Json
            ),
            Ok(())
        );
        assert_eq!(
            post(&[host, json, ("sec-fetch-site", "cross-site")], Bodies::Any),
            Err(Refused::CrossSite("cross-site".into()))
        );
        assert_eq!(
            post(
                &[host, json, ("sec-fetch-site", "same-origin")],
                Bodies::Json
            ),
            Ok(())
        );
        // simple-CORS bodies on a JSON endpoint, even without any Origin
        for ct in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            assert!(
                matches!(
                    post(&[host, ("content-type", ct)], Bodies::Json),
                    Err(Refused::SimpleContentType(_))
                ),
                "{ct}"
            );
            assert_eq!(
                post(&[host, ("content-type", ct)], Bodies::Any),
                Ok(()),
                "{ct}"
            );
        }
        assert!(post(&[host], Bodies::Json).is_err(), "no content type");
        // GET passes the origin checks (reading is stopped by the same-origin policy)
        let get = check_browser(
            &Method::GET,
            &Uri::from_static("/api/v1/graph"),
            &headers(&[host, ("origin", "http://evil.example")]),
            Bodies::Json,
            false,
        );
        assert_eq!(get, Ok(()));
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:20001",
            "LOCALHOST:1",
            "app.localhost:80",
            "127.0.0.1:20001",
            "127.9.9.9",
            "[::1]:20001",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "evil.example",
            "evil.example:20001",
            "127.0.0.1.evil.example",
            "10.0.0.1:20001",
            "[::2]:1",
            "[::1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        let rebinding = check_browser(
            &Method::GET,
            &Uri::from_static("/api/v1/graph"),
            &headers(&[("host", "evil.example:20001")]),
            Bodies::Json,
            true,
        );
        assert_eq!(
            rebinding,
            Err(Refused::ForeignHost("evil.example:20001".into()))
        );
    }
}
