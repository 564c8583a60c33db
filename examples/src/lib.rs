//! # shadowmesh-examples
//!
//! Runnable pieces of a local Shadowmesh deployment, shared by the demo, the benchmark and
//! the end-to-end tests:
//!
//! * [`upstream`] — an HTTP service with a real capacity limit that reports ORCA load;
//! * [`loadgen`] — an open-loop load generator with time-varying rate profiles;
//! * [`envoy`] — starts a real Envoy from the bootstraps in `envoy-configs/`.
#![warn(missing_docs)]

pub mod envoy;
pub mod loadgen;
pub mod upstream;
