//! Process wiring: open the store, serve the API, shut down cleanly on SIGINT/SIGTERM
//! (stop accepting, flush the buffer to Parquet, stop the WAL writer).

use std::future::Future;
use std::sync::Arc;

use meshscope_gate::serve::ListenerStats;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::info;

use meshscope_collector::envoy::access_log::{AccessLogFormat, ProxyIdentity, derive_identity};
use meshscope_collector::envoy::push::EnvoyIngest;
use meshscope_collector::envoy::scrape::{Sources, spawn_scrapers};
use meshscope_collector::envoy::tail::{TailConfig, spawn_tailer};
use meshscope_collector::otlp::{OtlpLimits, OtlpState};

use meshscope_query::api::QueryApi;
use meshscope_query::api::admission::Admission;
use meshscope_query::graph::api::GraphState;
use meshscope_query::rollup::Rollups;
use meshscope_query::sql::QueryEngine;
use meshscope_storage::Store;

use crate::config::ServerConfig;
use crate::status::{AppState, Role, router};

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

/// The addresses a server bound (port 0 becomes a real port).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub api: std::net::SocketAddr,
    pub otlp_http: Option<std::net::SocketAddr>,
}

/// What a subcommand built on `serve` adds (`demo`): routes, a section of
/// `/api/v1/status`, and word of the bound addresses once the API listens.
#[derive(Default)]
pub struct Extras {
    pub routes: Option<axum::Router>,
    pub demo_status: Option<crate::status::StatusHook>,
    pub ready: Option<tokio::sync::oneshot::Sender<Bound>>,
}

/// A running server; `run` serves until `stop` resolves, then stops the receivers, flushes
/// the buffer to Parquet and returns.
pub async fn run(
    role: Role,
    cfg: ServerConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(role, cfg, stop, Extras::default()).await
}

/// `run` with [`Extras`].
pub async fn run_with(
    role: Role,
    cfg: ServerConfig,
    stop: impl Future<Output = ()> + Send + 'static,
    extras: Extras,
) -> anyhow::Result<()> {
    // The service graph's rollups see every batch that enters the store (query roles).
    let rollups = (role != Role::Collector).then(|| Rollups::start(cfg.rollups));
    let mut store_cfg = cfg.store.clone();
    store_cfg.observer = rollups.as_ref().map(|r| r.observer());
    let store = Store::open(store_cfg).await.with_context(|| {
        format!(
            "opening storage at {} (WAL {})",
            cfg.store.location,
            cfg.store.wal_dir.display()
        )
    })?;
    let engine = if role == Role::Collector {
        None
    } else {
        Some(QueryEngine::with_memory_limit(
            store.clone(),
            cfg.sql.memory_bytes,
        )?)
    };
    if let Some(r) = &rollups {
        let (r, s) = (r.clone(), store.clone());
        tokio::spawn(async move { r.load_existing(&s.reader()).await });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sources: Sources = Default::default();
    let receivers = if role != Role::Query {
        Some(start_receivers(&cfg, &store, &sources, &stop_rx).await?)
    } else {
        None
    };
    let queries = match (engine, rollups) {
        (Some(engine), Some(rollups)) => {
            let admission = Admission::new(cfg.admission);
            Some(QueryApi {
                engine,
                sql_limits: cfg.sql,
                graph: GraphState {
                    rollups,
                    health: cfg.health,
                    admission: admission.clone(),
                },
                admission,
            })
        }
        _ => None,
    };
    let guard = meshscope_gate::Guard::new(cfg.auth.clone(), crate::guard::route_of)
        .loopback_host_only(cfg.api_addr.ip().is_loopback());
    let api_conns: Arc<ListenerStats> = Default::default();
    let mut listeners = vec![("api", api_conns.clone())];
    if let Some(r) = &receivers {
        listeners.push(("otlp_http", r.http_conns.clone()));
        listeners.push(("otlp_grpc", r.grpc_conns.clone()));
    }
    let state = AppState {
        refused: guard.stats.clone(),
        listeners,
        role,
        store: store.reader(),
        queries,
        ingest: receivers.as_ref().map(|r| r.envoy.clone()),
        otlp: receivers.as_ref().map(|r| r.otlp_stats.clone()),
        sources,
        demo_status: extras.demo_status,
    };
    let mut app = router(state, cfg.max_body_bytes);
    if let Some(r) = extras.routes {
        app = app.merge(r);
    }
    let listener = TcpListener::bind(cfg.api_addr)
        .await
        .with_context(|| format!("binding --api-addr {}", cfg.api_addr))?;
    let addr = listener.local_addr()?;
    // Tokens and browser checks in front of every route, extras included.
    let app = guard.apply(app);
    if cfg.auth.is_enabled() {
        info!("tokens required on every listener (except /healthz, /metrics and the UI's files)");
    } else if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving without authentication (--insecure-no-auth)");
    }
    info!(role = role.as_str(), %addr, data = %cfg.store.location, "meshscope is serving");
    // A line tests and scripts can wait for.
    println!("meshscope {} listening on http://{addr}/", role.as_str());
    if let Some(tx) = extras.ready {
        let _ = tx.send(Bound {
            api: addr,
            otlp_http: receivers.as_ref().map(|r| r.otlp_http_addr),
        });
    }
    let api = meshscope_gate::serve::serve(
        listener,
        app,
        cfg.listener,
        api_conns,
        stopped(stop_rx.clone()),
    );
    let api = tokio::spawn(api);
    stop.await;
    let _ = stop_tx.send(true);
    api.await?.context("API server")?;
    let (tasks, tailer) = match receivers {
        Some(r) => (r.tasks, r.tailer),
        None => (Vec::new(), None),
    };
    for t in tasks {
        match t.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "an OTLP receiver stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "an OTLP receiver task failed"),
            Ok(Ok(())) => {}
        }
    }
    // The tailer finishes the chunk in hand and its checkpoint before the store closes.
    if let Some(t) = tailer
        && let Err(e) = t.await
    {
        tracing::warn!(error = %e, "the access-log tailer task failed");
    }
    info!("shutting down: flushing buffered rows");
    store.shutdown().await.context("flushing on shutdown")?;
    info!("stopped cleanly");
    Ok(())
}

/// The receivers a collector runs, started.
struct Receivers {
    envoy: std::sync::Arc<EnvoyIngest>,
    otlp_stats: std::sync::Arc<meshscope_collector::otlp::OtlpStats>,
    http_conns: Arc<ListenerStats>,
    grpc_conns: Arc<ListenerStats>,
    otlp_http_addr: std::net::SocketAddr,
    /// The OTLP servers, which end when `stop` turns true.
    tasks: Vec<tokio::task::JoinHandle<Result<(), meshscope_collector::otlp::OtlpError>>>,
    tailer: Option<tokio::task::JoinHandle<()>>,
}

/// Resolves once `rx` turns true.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Binds the OTLP listeners and starts the OTLP servers, the admin scrapers and the
/// access-log tailer, all writing to `store` and stopping when `stop_rx` turns true.
async fn start_receivers(
    cfg: &ServerConfig,
    store: &Store,
    sources: &Sources,
    stop_rx: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Receivers> {
    let mut tasks = Vec::new();
    let mut tailer = None;
    let format = AccessLogFormat::compile(&cfg.access_log_format).context("--access-log-format")?;
    let envoy = EnvoyIngest::new(store.clone(), format);
    // OTLP logs from Envoy's OpenTelemetry access logger: a string body is an access-log
    // line in the same format; identity comes from the cluster name and the address book.
    let body_format =
        AccessLogFormat::compile(&cfg.access_log_format).context("--access-log-format")?;
    let book_owner = envoy.clone();
    let otlp = OtlpState::new(store.clone())
        .with_auth(cfg.auth.clone())
        .with_limits(OtlpLimits {
            max_body_bytes: cfg.max_body_bytes,
            listener: cfg.listener,
        })
        .with_body_parser(move |line| body_format.parse_line(line).ok().map(|p| p.row))
        .with_enricher(move |row| {
            let book = book_owner.book.read().unwrap_or_else(|e| e.into_inner());
            derive_identity(row, &ProxyIdentity::default(), &book);
        });
    let otlp_stats = otlp.stats.clone();
    let (http_conns, grpc_conns) = (otlp.http_conns.clone(), otlp.grpc_conns.clone());
    let grpc = TcpListener::bind(cfg.otlp_grpc_addr)
        .await
        .with_context(|| format!("binding --otlp-grpc-addr {}", cfg.otlp_grpc_addr))?;
    let http = TcpListener::bind(cfg.otlp_http_addr)
        .await
        .with_context(|| format!("binding --otlp-http-addr {}", cfg.otlp_http_addr))?;
    let otlp_http_addr = http.local_addr()?;
    println!("meshscope OTLP/gRPC on {}", grpc.local_addr()?);
    println!("meshscope OTLP/HTTP on http://{}/", http.local_addr()?);
    tasks.push(tokio::spawn(meshscope_collector::otlp::serve_grpc(
        grpc,
        otlp.clone(),
        stopped(stop_rx.clone()),
    )));
    tasks.push(tokio::spawn(meshscope_collector::otlp::serve_http(
        http,
        otlp,
        stopped(stop_rx.clone()),
    )));
    spawn_scrapers(
        envoy.clone(),
        cfg.envoy_admin.clone(),
        cfg.scrape_interval,
        sources.clone(),
        stop_rx.clone(),
    );
    if !cfg.access_log.is_empty() {
        let tail = TailConfig::new(cfg.access_log.clone(), &cfg.store);
        tailer = Some(spawn_tailer(
            envoy.clone(),
            tail,
            sources.clone(),
            stop_rx.clone(),
        ));
    }
    Ok(Receivers {
        envoy,
        otlp_stats,
        http_conns,
        grpc_conns,
        otlp_http_addr,
        tasks,
        tailer,
    })
}
