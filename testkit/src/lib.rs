//! meshscope's testkit: the one description of the bookinfo mesh (`bookinfo`) and the
//! generators of realistic data for it (`spans`), shared by `meshscope demo`, the benchmarks
//! and the tests. No I/O and no server here: it depends on the data model (`schemas`) only,
//! so the binary can carry it; the helpers that start real peers live with the tests. It must
//! never import the collector, the storage engine or the query service: the data it makes
//! goes in through them like any other client's.

pub mod bookinfo;
pub mod spans;
