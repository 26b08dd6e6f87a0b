//! meshscope's collector: the receivers. Each turns what a proxy or SDK sends (Envoy access
//! logs as files, pushes or OTLP logs; Envoy stats scraped or pushed; OTLP traces) into typed
//! rows and writes them through the storage crate's `StoreWriter`.
//!
//! It owns parsing, identity and the ingest endpoints; it must never import the query side
//! (`meshscope-query`) or the application, and never reaches into the storage engine beyond
//! the writer handle.

pub mod envoy;
pub mod http;
pub mod otlp;
pub mod reply;
pub mod rows;
