//! meshscope's integration tests, one binary: each module is an area, run against a real
//! `meshscope` process (or the engine in process) and real peers — Envoy, the OpenTelemetry
//! SDK, moto's S3, headless Chromium. Helpers are the testkit's real peers (`testkit/src/peers`); `tests/run.sh` installs
//! the peers. Modules that start sidecars use their own loopback /24 (127.0.<base>.x), so
//! they can run side by side.

mod access_log_files;
mod auth;
mod crash;
mod demo;
mod envoy_graph;
mod envoy_mesh;
mod envoy_traces;
mod hostile;
mod otel_sdk;
mod process;
mod s3;
mod storage;
mod ui;
