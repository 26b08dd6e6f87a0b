//! How many queries run at once. Every query endpoint takes a permit before it starts; when
//! all are taken, up to `max_waiting` requests wait for one (at most `wait`), and anything
//! beyond answers 429 with `Retry-After`, naming the limit. A permit is held until the
//! answer is built (answers are not streamed) and released when the request is dropped, so
//! a client that goes away frees its place.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Queries that run at once.
    pub max_running: usize,
    /// Queries that may wait for a permit.
    pub max_waiting: usize,
    /// How long one waits before 429.
    pub wait: Duration,
    /// Open graph streams (`/api/v1/graph/stream`); each of their refreshes takes a permit.
    pub max_streams: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_running: 4,
            max_waiting: 64,
            wait: Duration::from_secs(5),
            max_streams: 32,
        }
    }
}

/// The permits, shared by every query route of a process.
#[derive(Debug, Clone)]
pub struct Admission {
    cfg: AdmissionConfig,
    permits: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    /// Requests answered 429.
    pub refused: Arc<AtomicU64>,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(cfg.max_running.max(1))),
            streams: Arc::new(Semaphore::new(cfg.max_streams.max(1))),
            cfg,
            waiting: Default::default(),
            refused: Default::default(),
        }
    }

    /// A place for one open stream, if any is free.
    pub fn stream_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    /// A query permit, waiting at most the configured time (a stream's refresh).
    pub async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(self.cfg.wait, self.permits.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.cfg.max_running.max(1) - self.permits.available_permits()
    }

    pub fn apply(self, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(self, admit))
    }

    /// The 429 answer, counted.
    pub fn too_many(&self) -> Response {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let msg = format!(
            "too many queries: {} run at once and {} wait (--max-concurrent-queries); retry shortly",
            self.cfg.max_running, self.cfg.max_waiting
        );
        // both envelopes: meshscope's and Prometheus's (Grafana reads `error`)
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({
                "status": "error", "errorType": "too_many_queries",
                "error": msg, "error_type": "too_many_queries",
            })),
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    }
}

async fn admit(State(a): State<Admission>, req: Request, next: Next) -> Response {
    let permit = match a.permits.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            if a.waiting.fetch_add(1, Ordering::AcqRel) >= a.cfg.max_waiting {
                a.waiting.fetch_sub(1, Ordering::AcqRel);
                return a.too_many();
            }
            let got = tokio::time::timeout(a.cfg.wait, a.permits.clone().acquire_owned()).await;
            a.waiting.fetch_sub(1, Ordering::AcqRel);
            match got {
                Ok(Ok(p)) => p,
                _ => return a.too_many(),
            }
        }
    };
    let resp = next.run(req).await;
    drop(permit);
    resp
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(AdmissionConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn beyond_running_and_waiting_answers_429() {
        let a = Admission::new(AdmissionConfig {
            max_running: 1,
            max_waiting: 1,
            wait: Duration::from_millis(300),
            max_streams: 1,
        });
        let (tx, rx) = tokio::sync::watch::channel(false);
        let app = a.clone().apply(axum::Router::new().route(
            "/slow",
            get(move || {
                let mut rx = rx.clone();
                async move {
                    let _ = rx.wait_for(|v| *v).await;
                    "done"
                }
            }),
        ));
        let call = |app: axum::Router| async move {
            app.oneshot(
                axum::http::Request::get("/slow")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
        };
        let first = tokio::spawn(call(app.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(a.running(), 1);
        let second = tokio::spawn(call(app.clone())); // waits
        tokio::time::sleep(Duration::from_millis(50)).await;
        let third = call(app.clone()).await; // no room to wait
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(third.headers()[header::RETRY_AFTER], "1");
        // the waiting one times out: 429
        assert_eq!(
            second.await.unwrap().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        tx.send(true).unwrap();
        assert_eq!(first.await.unwrap().status(), StatusCode::OK);
        assert_eq!(a.refused.load(Ordering::Relaxed), 2);
        // the permit came back
        assert_eq!(a.running(), 0);
        assert_eq!(call(app).await.status(), StatusCode::OK);
    }
}
