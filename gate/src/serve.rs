//! Serving an axum router on a TCP listener with the limits `axum::serve` does not set:
//!
//! - **a header-read timeout**: a client must send a whole request head within it (slowloris),
//!   and an HTTP/1 keep-alive connection waiting for its next request is closed after it;
//! - **an idle timeout**: a connection (HTTP/1 or HTTP/2) with no request in flight for this
//!   long is closed gracefully;
//! - **a connection limit**: beyond it new connections are closed at once, so the process
//!   keeps its file descriptors and memory for the connections it has;
//! - **HTTP/2 streams per connection** and a header-size limit;
//! - **accept back-off**: when `accept` fails (EMFILE, ENFILE, ENOBUFS…) the loop sleeps,
//!   doubling up to a second, instead of spinning on the error.
//!
//! On shutdown the listener stops accepting, every connection is asked to finish (HTTP/1
//! after its current response, HTTP/2 with GOAWAY) and the call returns once they have, or
//! after a grace period.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_h2_streams: u32,
    /// How long shutdown waits for open connections.
    pub grace: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_h2_streams: 128,
            grace: Duration::from_secs(10),
        }
    }
}

/// What a listener did, for meshscope's `/metrics`.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub open: AtomicUsize,
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed for idleness.
    pub idle_closed: AtomicU64,
    /// `accept` errors (each followed by a back-off).
    pub accept_errors: AtomicU64,
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    stats: Arc<ListenerStats>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(256 << 10);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_h2_streams)
        .max_header_list_size(64 << 10)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let mut backoff = Backoff::default();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            s = accept(&listener, &mut backoff, &stats) => s,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, builder, stats, stop) =
            (app.clone(), builder.clone(), stats.clone(), stop_rx.clone());
        tokio::spawn(async move {
            stats.open.fetch_add(1, Ordering::Relaxed);
            connection(stream, app, &builder, limits, &stats, stop).await;
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // every connection gives its slot back when it ends
    let all = limits.max_connections.max(1) as u32;
    let _ = tokio::time::timeout(limits.grace, slots.acquire_many(all)).await;
    Ok(())
}

/// The pause after consecutive `accept` errors.
#[derive(Debug, Default)]
pub struct Backoff(Duration);

/// The next connection of `listener`. When `accept` fails (EMFILE, ENFILE, ENOBUFS…) it
/// sleeps, doubling from 10 ms up to a second, instead of spinning on the error.
pub async fn accept(
    listener: &TcpListener,
    backoff: &mut Backoff,
    stats: &ListenerStats,
) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                backoff.0 = Duration::ZERO;
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                return s;
            }
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                backoff.0 =
                    (backoff.0 * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::warn!(error = %e, wait = ?backoff.0, "accept failed; backing off");
                tokio::time::sleep(backoff.0).await;
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    since: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Option<Duration> {
        (self.in_flight.load(Ordering::Relaxed) == 0).then(|| {
            self.since
                .elapsed()
                .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
        })
    }
}

/// Decrements the in-flight count even when a request's future is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    builder: &auto::Builder<TokioExecutor>,
    limits: ListenerLimits,
    stats: &ListenerStats,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        since: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        act.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(act.clone());
        let app = app.clone();
        async move {
            let r = app.oneshot(req.map(axum::body::Body::new)).await;
            drop(guard);
            r
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = false;
    let check = (limits.idle_timeout / 4).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = tokio::time::sleep(check), if !closing => {
                if activity.idle_for().is_some_and(|d| d >= limits.idle_timeout) {
                    stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Raises the soft limit of open files to the hard limit, so connection limits (not the
/// kernel's default of 1024) decide how many clients meshscope holds. Returns the limit now
/// in force.
pub fn raise_open_files_limit() -> Option<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
    if soft < hard {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    rlimit::Resource::NOFILE.get().ok().map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::io::{Read, Write};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_idle_and_surplus_connections_are_closed_and_requests_still_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ListenerStats::default());
        let limits = ListenerLimits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(400),
            max_connections: 8,
            max_h2_streams: 4,
            grace: Duration::from_secs(2),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let server = tokio::spawn(serve(listener, app, limits, stats.clone(), async {
            let _ = rx.await;
        }));
        let st = stats.clone();
        tokio::task::spawn_blocking(move || {
            let get = || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out
            };
            // a slow client: half a head, then nothing → closed after the header timeout
            let mut slow = std::net::TcpStream::connect(addr).unwrap();
            slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            slow.write_all(b"GET / HTTP/1.1\r\nHost:").unwrap();
            // seven idle connections fill the limit with the slow one
            let idle: Vec<_> = (0..7)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            // the ninth is closed at once
            let mut surplus = std::net::TcpStream::connect(addr).unwrap();
            surplus
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 16];
            let n = surplus.read(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "a connection over the limit is closed");
            assert!(st.refused.load(Ordering::Relaxed) >= 1);
            // after the timeouts, the slow and idle ones are gone, and requests answer again
            let started = Instant::now();
            let mut buf = Vec::new();
            let _ = slow.read_to_end(&mut buf);
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "slow client held {:?}",
                started.elapsed()
            );
            for mut c in idle {
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut b = Vec::new();
                let _ = c.read_to_end(&mut b);
            }
            let answer = get();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with("ok"), "{answer}");
        })
        .await
        .unwrap();
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert_eq!(stats.open.load(Ordering::Relaxed), 0);
    }
}
