//! meshscope's query service: DataFusion over the storage crate's `StoreReader` (`provider`),
//! read-only SQL (`sql`) with sized functions bounded (`bounded`), the rollups the graph and Prometheus read (`rollup`), the service
//! graph (`graph`), traces and request lookups (`traces`), Jaeger (`jaeger`) and Prometheus
//! (`prom`) APIs, all served by one router (`api`).
//!
//! It reads and never writes: it must never import the collector (`meshscope-collector`) or
//! the application crate, and it sees the storage engine only through the reader handle and
//! the storage crate's file and manifest types.

pub mod api;
pub mod bounded;
pub mod graph;
pub mod jaeger;
pub mod prom;
pub mod provider;
pub mod rollup;
pub mod sql;
pub mod traces;
