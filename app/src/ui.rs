//! The web UI: the files of `ui/`, embedded at compile time: `index.html` at `/`, the others
//! at `/ui/<file>`.
//! Every answer carries a strict Content-Security-Policy (scripts, styles and data from this
//! origin only, no inline script), so data rendered by the UI can never run as code.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// What the UI may load: its own files and its own API; nothing inline, nothing foreign.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// (file name, content type, bytes) of every file in `ui/`.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "graph.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/graph.js"),
    ),
    (
        "traces.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/traces.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/dom.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../ui/favicon.svg"),
    ),
];

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file("index.html") }))
        // index.html names its assets relative to `/`, so it is served there only.
        .route(
            "/ui/{file}",
            get(|Path(f): Path<String>| async move {
                if f == "index.html" {
                    return (StatusCode::NOT_FOUND, "the UI is at /").into_response();
                }
                file(&f)
            }),
        )
}

fn file(name: &str) -> Response {
    let Some((name, content_type, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such UI file").into_response();
    };
    // For working on the UI without rebuilding: `MESHSCOPE_UI_DIR=ui` reads the same files
    // (only these names) from disk on each request.
    let from_disk = std::env::var_os("MESHSCOPE_UI_DIR")
        .and_then(|d| std::fs::read_to_string(std::path::Path::new(&d).join(name)).ok());
    let mut r = match from_disk {
        Some(text) => text.into_response(),
        None => (*body).into_response(),
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change only with the binary; revalidating is cheap on loopback.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    #[tokio::test]
    async fn serves_each_file_with_its_type_and_the_csp() {
        for (path, ty) in [
            ("/", "text/html; charset=utf-8"),
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/style.css", "text/css; charset=utf-8"),
            ("/ui/favicon.svg", "image/svg+xml"),
        ] {
            let r = get(path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], ty, "{path}");
            assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
        }
        assert_eq!(
            get("/ui/../Cargo.toml").await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(get("/ui/nope.js").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/ui/index.html").await.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn no_inline_script_and_only_relative_urls() {
        for (name, _, body) in FILES {
            // The SVG namespace is a name, not a URL anything loads.
            let rest = body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !rest.contains("http://") && !rest.contains("https://"),
                "{name} names an absolute URL"
            );
            if name.ends_with(".js") {
                for sink in [
                    ".innerHTML",
                    ".outerHTML",
                    "insertAdjacentHTML(",
                    "document.write(",
                ] {
                    assert!(!body.contains(sink), "{name} parses HTML with {sink}");
                }
            }
        }
        let index = FILES[0].2;
        assert!(!index.contains("<script>") && !index.contains("<style"));
    }
}
