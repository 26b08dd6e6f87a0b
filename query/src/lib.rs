//! meshscope's query service: DataFusion over the store (`provider`), read-only SQL (`sql`),
//! the HTTP API (`api`), configuration (`config`) and process wiring (`server`).

pub mod api;
pub mod bench;
pub mod config;
pub mod graph;
pub mod ingest;
pub mod provider;
pub mod rollup;
pub mod server;
pub mod sql;
pub mod ui;
