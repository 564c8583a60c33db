//! # shadowmesh-filter — ATRE, the Adaptive Traffic Redirection Engine
//!
//! A Proxy-Wasm HTTP filter (ABI 0.2.1, `wasm32-wasip1`) that runs in every Envoy in front
//! of a service. Per request it picks the service's *primary* cluster or its *shadow* — a
//! warm-spare instance that serves real traffic while the primary is hot (not Envoy's
//! request mirroring) — and tells the route by setting one request header, which the route
//! turns into a cluster with `cluster_header`.
//!
//! Data flow, following the modules:
//!
//! 1. [`config`] — the validated plugin configuration.
//! 2. [`decision`] — per request: [`decision::decide`] reads the current [`plan::RedirectPlan`]
//!    and the shadow's readiness and returns a [`decision::RedirectDecision`].
//! 3. Per response / stream end: latency and [`orca`] load reports go into a per-worker
//!    [`window::ServiceWindow`]; in-flight counters live in [`shared`] data (CAS).
//! 4. Per tick: workers merge their windows into shared data; the worker holding the
//!    [`shared::Lease`] runs [`control::RedirectController::tick`], which scores both
//!    clusters ([`load::LoadScore`]) and computes the next plan, and sends telemetry.
//!
//! 5. State synchronization ([`session_state`]): the application's state changes, captured
//!    from responses on the primary's path, go to the relay as versioned deltas; in front of
//!    a shadow they come back as a request header; a session is redirected only once the
//!    shadows have acknowledged its latest version.
//!
//! Everything above is plain Rust, unit-tested natively; the `wasm` module is the thin
//! glue to the Proxy-Wasm host and is compiled only for `wasm32`.
#![warn(missing_docs)]

pub mod capacity;
pub mod config;
pub mod control;
pub mod decision;
pub mod load;
pub mod orca;
pub mod plan;
pub mod session_state;
pub mod shared;
pub mod window;

#[cfg(target_arch = "wasm32")]
mod wasm;
