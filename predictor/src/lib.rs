//! # shadowmesh-predictor — the Predictive Traffic Analyzer (PTA)
//!
//! PTA will turn the per-service telemetry that the ATRE filter reports
//! ([`shadowmesh_wire`-style reports](https://docs.rs/shadowmesh-wire)) into a prioritized
//! list of services expected to overload. Its model (seasonality, scheduled events,
//! anomaly detection) is tracked in issue #4; the crate exists now so the workspace layout
//! is the final one.
#![forbid(unsafe_code)]
