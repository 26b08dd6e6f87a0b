//! meshscope's data model: the one source of truth for table names, column names and
//! Arrow schemas, the row types the collector builds batches from and their conversion to
//! Arrow and back (`rows`, `rows::decode`), and the Envoy/Istio vocabulary (response flags,
//! cluster names, node ids, workload names) shared by every crate.
//!
//! No I/O lives here: this crate is the contract between the write path and the read path.
//! It must never import another meshscope crate.

pub mod envoy;
pub mod ids;
pub mod rows;
pub mod table;

pub use ids::{IdError, SpanId, TraceId};
pub use table::{SchemaError, Table, check_batch};
