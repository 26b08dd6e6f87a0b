//! meshscope's data model: the one source of truth for table names, column names and
//! Arrow schemas, the row types the collector builds batches from, and the Envoy/Istio
//! vocabulary (response flags, cluster names) shared by collector and query.
//!
//! No I/O lives here: this crate is the contract between the write path and the read path.

pub mod envoy;
pub mod ids;
pub mod rows;
pub mod table;

pub use ids::{IdError, SpanId, TraceId};
pub use table::{SchemaError, Table, check_batch};
