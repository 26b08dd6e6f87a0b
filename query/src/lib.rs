//! meshscope's query service: DataFusion over the store (`provider`), read-only SQL (`sql`),
//! the HTTP API (`api`), configuration (`config`) and process wiring (`server`).

pub mod api;
pub mod bench;
pub mod bench_graph;
pub mod bench_otlp;
pub mod config;
pub mod demo;
pub mod graph;
pub mod ingest;
pub mod jaeger;
pub mod prom;
pub mod provider;
pub mod rollup;
pub mod server;
pub mod sql;
pub mod traces;
pub mod ui;
