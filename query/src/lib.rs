//! meshscope's query service: DataFusion over the store (`provider`), read-only SQL (`sql`),
//! the HTTP API (`api`), configuration (`config`) and process wiring (`server`).

pub mod api;
pub mod bench;
pub mod bench_otlp;
pub mod config;
pub mod ingest;
pub mod provider;
pub mod server;
pub mod sql;
