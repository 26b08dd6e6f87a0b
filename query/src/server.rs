//! Process wiring: open the store, serve the API, shut down cleanly on SIGINT/SIGTERM
//! (stop accepting, flush the buffer to Parquet, stop the WAL writer).

use std::future::Future;

use anyhow::Context;
use meshscope_collector::Store;
use tokio::net::TcpListener;
use tracing::info;

use crate::api::{AppState, Role, router};
use crate::config::ServerConfig;
use crate::sql::QueryEngine;

pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A running server; `run` serves until `stop` resolves, then flushes and returns.
pub async fn run(
    role: Role,
    cfg: ServerConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = Store::open(cfg.store.clone()).await.with_context(|| {
        format!(
            "opening storage at {} (WAL {})",
            cfg.store.location,
            cfg.store.wal_dir.display()
        )
    })?;
    let engine = if role == Role::Collector {
        None
    } else {
        Some(QueryEngine::new(store.clone())?)
    };
    let state = AppState {
        role,
        store: store.clone(),
        engine,
        sql_limits: cfg.sql,
    };
    let app = router(state, cfg.max_body_bytes);
    let listener = TcpListener::bind(cfg.api_addr)
        .await
        .with_context(|| format!("binding --api-addr {}", cfg.api_addr))?;
    let addr = listener.local_addr()?;
    info!(role = role.as_str(), %addr, data = %cfg.store.location, "meshscope is serving");
    // A line tests and scripts can wait for.
    println!("meshscope {} listening on http://{addr}/", role.as_str());
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await?;
    info!("shutting down: flushing buffered rows");
    store.shutdown().await.context("flushing on shutdown")?;
    info!("stopped cleanly");
    Ok(())
}
