//! meshscope's testkit: the one description of the bookinfo mesh (`bookinfo`), the
//! generators of realistic data for it (`spans`), shared by `meshscope demo`, the benchmarks
//! and the tests, and (feature `peers`, for the tests only) the helpers that start real peers:
//! a `meshscope` process, Envoy sidecars configured as Istio configures them, a test app.
//! Without `peers` it does no I/O and depends on the data model (`schemas`) only, so the
//! binary can carry it. It must never import the collector, the storage engine or the query
//! service: the data it makes goes in through them like any other client's.

pub mod bookinfo;
#[cfg(feature = "peers")]
pub mod peers;
pub mod spans;
