//! meshscope's collector: receivers that turn Envoy access logs, Envoy stats and OTLP into
//! rows, and the write path of storage (`storage`): WAL, Arrow buffer, Parquet segments,
//! compaction and retention.

pub mod envoy;
pub mod otlp;
pub mod storage;

pub use storage::{Store, StoreConfig, StoreError};
