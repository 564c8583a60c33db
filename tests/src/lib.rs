//! # shadowmesh-e2e
//!
//! The end-to-end tests of Shadowmesh live in `tests/tests/`; the loopback deployments they
//! start (real Envoy, upstreams, load, the control plane) come from `shadowmesh-testkit`.
//! This library holds the one piece of test support that is only for these tests:
//!
//! * [`wasm_host`] — an in-process Proxy-Wasm host on wasmtime that runs the compiled
//!   `.wasm` deterministically (tests of the filter without Envoy).

pub mod wasm_host;
