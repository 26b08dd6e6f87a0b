//! What stands at every listener: how connections are served and bounded ([`serve`]), who
//! may call meshscope, and what a browser page may not make it do.
//!
//! - [`tokens`]: bearer tokens read from files, per scope (reads, ingest), checked in constant
//!   time; Basic auth with the token as the password, as Grafana's datasources send it.
//! - [`browser`]: refusals of cross-origin state-changing requests, simple-CORS bodies on JSON
//!   endpoints and (loopback without a token) foreign `Host` names.
//! - [`Guard`]: both as one axum middleware; each listener says which of its paths need
//!   which scope and in which format its clients expect an error.

pub mod browser;
pub mod serve;
pub mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub use browser::{Bodies, Refused, check_browser, is_loopback_host};
pub use tokens::{Auth, Denied, Scope, TokenFileError, TokenFiles};

/// Whether a path needs a token, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health, meshscope's own metrics, the UI's static files (they hold no data; the UI
    /// asks for the token itself).
    Open,
    Need(Scope),
}

/// The error body a path's clients understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    /// `{"error": ..., "error_type": ...}`
    Meshscope,
    /// `{"status": "error", "errorType": ..., "error": ...}` (Grafana's Prometheus datasource)
    Prometheus,
    /// `{"errors": [{"code": ..., "msg": ...}]}` (Grafana's Jaeger datasource)
    Jaeger,
}

/// What a listener says about one of its paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub access: Access,
    pub bodies: Bodies,
    pub style: ErrorStyle,
}

/// Requests refused, by reason (meshscope's `/metrics`).
#[derive(Debug, Default)]
pub struct GuardStats {
    pub unauthorized: AtomicU64,
    pub forbidden: AtomicU64,
}

/// The checks of one listener: its tokens, how it classifies paths, and whether it answers
/// only loopback `Host` names (a loopback listener without tokens: DNS rebinding).
#[derive(Clone)]
pub struct Guard {
    auth: Auth,
    classify: Arc<dyn Fn(&str) -> Route + Send + Sync>,
    loopback_host_only: bool,
    pub stats: Arc<GuardStats>,
}

impl Guard {
    pub fn new(auth: Auth, classify: impl Fn(&str) -> Route + Send + Sync + 'static) -> Guard {
        Guard {
            auth,
            classify: Arc::new(classify),
            loopback_host_only: false,
            stats: Default::default(),
        }
    }

    /// Answer only `localhost`, `127.x` and `[::1]` as `Host` when no token is configured:
    /// set for listeners bound to a loopback address.
    pub fn loopback_host_only(mut self, on_loopback: bool) -> Guard {
        self.loopback_host_only = on_loopback && !self.auth.is_enabled();
        self
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Checks a request; the refusal as a response in the path's format.
    pub fn check(&self, req: &Request) -> Result<(), Box<Response>> {
        let route = (self.classify)(req.uri().path());
        if let Err(r) = check_browser(
            req.method(),
            req.uri(),
            req.headers(),
            route.bodies,
            self.loopback_host_only,
        ) {
            self.stats.forbidden.fetch_add(1, Ordering::Relaxed);
            return Err(Box::new(refusal(
                route.style,
                StatusCode::FORBIDDEN,
                r.kind(),
                &r.message(),
            )));
        }
        if let Access::Need(scope) = route.access
            && let Err(d) = self.auth.check(req.headers(), scope)
        {
            let (status, kind, counter) = match d {
                Denied::WrongScope(_) => {
                    (StatusCode::FORBIDDEN, "forbidden", &self.stats.forbidden)
                }
                _ => (
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    &self.stats.unauthorized,
                ),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let mut resp = refusal(route.style, status, kind, &d.message());
            if status == StatusCode::UNAUTHORIZED {
                // Bearer only: a Basic challenge would make browsers pop up their own dialog
                // over the UI's login form.
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"meshscope\""),
                );
            }
            return Err(Box::new(resp));
        }
        Ok(())
    }

    /// Puts the guard in front of every route of `router`.
    pub fn apply<S: Clone + Send + Sync + 'static>(
        self,
        router: axum::Router<S>,
    ) -> axum::Router<S> {
        router.layer(axum::middleware::from_fn_with_state(self, guard))
    }
}

async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    match g.check(&req) {
        Ok(()) => next.run(req).await,
        Err(resp) => *resp,
    }
}

fn refusal(style: ErrorStyle, status: StatusCode, kind: &str, msg: &str) -> Response {
    let body = match style {
        ErrorStyle::Meshscope => json!({"error": msg, "error_type": kind}),
        ErrorStyle::Prometheus => json!({"status": "error", "errorType": kind, "error": msg}),
        ErrorStyle::Jaeger => json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": status.as_u16(), "msg": msg}],
        }),
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    const TOKEN: &str = "token-0123456789abcdef";

    fn app(auth: Auth, loopback: bool) -> axum::Router {
        let router = axum::Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/api/v1/graph", get(|| async { "graph" }))
            .route("/api/v1/sql", post(|| async { "sql" }))
            .route("/api/v1/ingest/accesslog", post(|| async { "ingested" }));
        let guard = Guard::new(auth, |path| Route {
            access: match path {
                "/healthz" => Access::Open,
                p if p.starts_with("/api/v1/ingest/") => Access::Need(Scope::Ingest),
                _ => Access::Need(Scope::Read),
            },
            bodies: if path == "/api/v1/sql" {
                Bodies::Json
            } else {
                Bodies::Any
            },
            style: ErrorStyle::Meshscope,
        })
        .loopback_host_only(loopback);
        guard.apply(router)
    }

    async fn call(app: &axum::Router, req: axum::http::request::Builder) -> (u16, String) {
        let resp = app
            .clone()
            .oneshot(req.body(Body::from("{}")).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn tokens_and_browsers_at_the_door() {
        let auth = Auth::from_tokens(vec![TOKEN.into()], vec![TOKEN.into()]).unwrap();
        let app = app(auth, true);
        let get = |p: &str| axum::http::Request::get(p).header("host", "10.0.0.5:20001");
        assert_eq!(call(&app, get("/healthz")).await.0, 200);
        let (s, body) = call(&app, get("/api/v1/graph")).await;
        assert_eq!(s, 401, "{body}");
        assert!(body.contains("requires a token"), "{body}");
        let bearer = format!("Bearer {TOKEN}");
        let (s, body) = call(&app, get("/api/v1/graph").header("authorization", &bearer)).await;
        assert_eq!((s, body.as_str()), (200, "graph"));
        // with a token configured, other host names are fine (the token is the check)
        let post = |p: &str| {
            axum::http::Request::post(p)
                .header("host", "10.0.0.5:20001")
                .header("authorization", &bearer)
        };
        assert_eq!(
            call(
                &app,
                post("/api/v1/sql").header("content-type", "application/json")
            )
            .await
            .0,
            200
        );
        let (s, body) = call(
            &app,
            post("/api/v1/sql").header("content-type", "text/plain"),
        )
        .await;
        assert_eq!(s, 403, "{body}");
        assert!(body.contains("content_type"), "{body}");
        let (s, _) = call(
            &app,
            post("/api/v1/ingest/accesslog").header("origin", "http://evil.example"),
        )
        .await;
        assert_eq!(s, 403);
        assert_eq!(call(&app, post("/api/v1/ingest/accesslog")).await.0, 200);
    }

    #[tokio::test]
    async fn open_loopback_answers_loopback_names_only() {
        let app = app(Auth::open(), true);
        let get = |h: &str| axum::http::Request::get("/api/v1/graph").header("host", h);
        assert_eq!(call(&app, get("127.0.0.1:20001")).await.0, 200);
        assert_eq!(call(&app, get("localhost:20001")).await.0, 200);
        let (s, body) = call(&app, get("rebound.evil.example:20001")).await;
        assert_eq!(s, 403, "{body}");
        // a non-loopback listener with --insecure-no-auth answers any name
        let app = self::app(Auth::open(), false);
        assert_eq!(
            call(&app, get("meshscope.observability:20001")).await.0,
            200
        );
    }
}
