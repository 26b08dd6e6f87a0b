//! The integration tests' helpers are the testkit's real peers (`meshscope_testkit::peers`):
//! this crate re-exports them under the names the tests use, and holds the tests themselves
//! (`tests/integration/`) with their peers' scripts (`otel/`, `prom/`, `browser/`).

pub use meshscope_testkit::peers::*;
