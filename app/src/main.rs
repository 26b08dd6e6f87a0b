//! The `meshscope` binary: serve (default), collector, query, demo, sql, bench.
//!
//! This crate is the application: the CLI and its configuration (`config`), the wiring of a
//! process for its role (`server`, `status`), the embedded UI (`ui`) and `meshscope demo`
//! (`demo`). With the benchmarks (`meshscope-bench`), it is the only crate that imports both
//! the collector and the query service; no library crate imports it.

use std::process::ExitCode;

mod config;
mod demo;
mod guard;
mod server;
mod status;
mod ui;

use meshscope_query::sql::{QueryEngine, SqlLimits, batches_to_json};
use meshscope_storage::{Store, StoreConfig};

use crate::config::{BenchWhat, Command, SqlFormat};
use crate::status::Role;

/// mimalloc instead of glibc's malloc: parsing builds rows of many small strings, and
/// mimalloc makes access-log parsing about 1.5× faster (README, Benchmarks). mimalloc asks
/// for transparent huge pages, and that is kept on purpose (session 11 tried its `no_thp`
/// feature). Without them, OTLP ingest spent less CPU: the kernel zeroes 2 MiB at each fault
/// on memory the ingest path allocates and frees again (0.95× / 0.84× of Rotel without,
/// 0.83× / 0.66× with). But every query that chases pointers through gigabytes (the 10k-edge
/// graph, Prometheus panels, trace and request-id lookups) got 6–37% slower from TLB misses,
/// and the request-id lookup went over its 50 ms goal.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h: 15 in every release since 2.1 (v3 included).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc gives memory a thread freed back to the OS after `purge_delay` (1 s by
/// default), and the kernel zeroes it again when it is next touched. The store's buffer is
/// allocated by the receivers and freed by each flush, about every second under load, so
/// much of it went back and forth: with the delay at 10 s, OTLP ingest took 15-25% less CPU
/// per span (session 12), for ~100 MiB more resident memory while under load. Memory
/// unused for 10 s still goes back. `MIMALLOC_PURGE_DELAY` in the environment wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: plain calls into mimalloc's option table, made before any other thread runs.
    unsafe {
        if libmimalloc_sys::mi_version() >= 210 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000);
        }
    }
}

/// Stack of every runtime thread (workers and the blocking pool). Parsers, DataFusion's
/// planner and the PromQL evaluator recurse over a query's expression tree, and some of that
/// recursion (DataFusion formatting an expression's name, dropping a tree) has no guard of its
/// own: with tokio's 2 MiB a `SELECT 1+1+…` of 300 terms overflowed it in a debug build and
/// aborted the process. `api::limits` bounds the tree (1,000 operators, brackets 64 deep);
/// this leaves room for that bound. The memory is reserved, not used, until touched.
const THREAD_STACK_BYTES: usize = 16 << 20;

fn main() -> ExitCode {
    tune_allocator();
    // connection limits, not the kernel's default soft limit of 1024 files, decide how many
    // clients a listener holds
    let _ = meshscope_gate::serve::raise_open_files_limit();
    let cli = match config::parse_from(std::env::args().collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            // clap renders --help and --version as "errors" too
            let msg = e.to_string();
            return if msg.starts_with("Usage")
                || msg.contains("\nUsage:") && !msg.starts_with("error")
            {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshscope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Command) -> anyhow::Result<()> {
    let (role, opts) = match cmd {
        Command::Serve(o) => (Role::AllInOne, o),
        Command::Collector(o) => (Role::Collector, o),
        Command::Query(o) => (Role::Query, o),
        Command::Demo(d) => {
            d.validate_demo()?;
            let cfg = d.server.validate(false)?;
            server::init_logging(&cfg.log);
            return demo::run(cfg, d.speed, d.seed).await;
        }
        Command::Sql(o) => return sql(o).await,
        Command::Bench(b) => {
            server::init_logging("warn");
            return match b.what {
                BenchWhat::Storage {
                    spans,
                    writers,
                    batch,
                    dir,
                } => meshscope_bench::storage(spans, writers, batch, dir).await,
                BenchWhat::Lookup {
                    spans,
                    dir,
                    no_compact,
                } => meshscope_bench::lookup(spans, dir, !no_compact).await,
                BenchWhat::Graph {
                    edges,
                    rps,
                    minutes,
                    iterations,
                } => meshscope_bench::graph::graph(&edges, rps, minutes, iterations),
                BenchWhat::Otlp(o) => {
                    meshscope_bench::otlp::run(meshscope_bench::otlp::LoadSpec {
                        target: o.target,
                        spans: o.spans,
                        batch: o.batch,
                        concurrency: o.concurrency,
                        max_time: o.max_time,
                        distinct: o.distinct,
                    })
                    .await
                }
                BenchWhat::AccessLog { lines } => {
                    meshscope_bench::access_log(lines);
                    Ok(())
                }
            };
        }
    };
    let cfg = opts.validate(role == Role::Query)?;
    server::init_logging(&cfg.log);
    server::run(role, cfg, server::shutdown_signal()).await
}

async fn sql(o: config::SqlOpts) -> anyhow::Result<()> {
    server::init_logging("warn");
    let mut cfg = StoreConfig::local(&o.data_dir);
    cfg.location = o.data_dir.clone();
    if let Some(w) = &o.wal_dir {
        cfg.wal_dir = w.clone();
    }
    cfg.read_only = true;
    cfg.request_decoder = Some(meshscope_collector::otlp::request_decoder);
    let store = Store::open(cfg).await?;
    let engine = QueryEngine::new(store)?;
    let out = engine
        .query(
            &o.query,
            SqlLimits {
                timeout: o.timeout,
                max_rows: o.max_rows,
                ..SqlLimits::default()
            },
        )
        .await?;
    match o.format {
        SqlFormat::Table => println!(
            "{}",
            arrow::util::pretty::pretty_format_batches(&out.batches)?
        ),
        SqlFormat::Json => println!(
            "{}",
            String::from_utf8_lossy(&batches_to_json(&out.batches)?)
        ),
    }
    Ok(())
}
