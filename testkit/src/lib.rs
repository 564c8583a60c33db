//! # shadowmesh-testkit
//!
//! Test infrastructure for Shadowmesh on loopback, with ephemeral ports and every process
//! owned by the caller. The end-to-end tests in `tests/` and the demos and benchmarks in
//! `examples/` start their deployments from here:
//!
//! * [`envoy`] — locates and starts a real Envoy 1.40 from the bootstraps in
//!   `envoy-configs/`, talks to its admin API;
//! * [`upstream`] — an HTTP service with a real capacity limit that reports ORCA load;
//! * [`loadgen`] — an open-loop load generator with time-varying rate profiles;
//! * [`ads_client`] — simulated Envoys on the ADS protocol, for the xDS fan-out benchmark;
//! * [`stack`] — a whole deployment (upstreams, control plane, Envoy with ATRE), the
//!   control plane served on ephemeral ports, and the lock that keeps load tests apart;
//! * [`scenario`] — a deployment with the provisioner replaying a demand trace under one
//!   strategy (none, always-on, reactive, predictive, oracle), second by second, and
//!   [`timeline`], its picture;
//! * [`state_sync`] — State Synchronization's deployment (relay, primary and shadow `cart`,
//!   shadow-side and edge Envoys) and shopping sessions that detect stale reads;
//! * [`traffic_mix`] — session and session-less traffic in any mix through that
//!   deployment, surging above the primary's capacity, measured second by second;
//! * [`xds_process`] — the `shadowmesh-xds` binary as a child process, and an API client
//!   that presents a token;
//! * [`pki`] — a throwaway CA and certificates for the TLS tests.

pub mod ads_client;
pub mod envoy;
pub mod loadgen;
pub mod pki;
pub mod scenario;
pub mod stack;
pub mod state_sync;
pub mod timeline;
pub mod traffic_mix;
pub mod upstream;
pub mod xds_process;

pub use stack::{
    LoadTestLock, Stack, StackConfig, ads_envoy, ads_envoy_for, atre_plugin, load_test_lock,
    spawn_plane, within,
};

/// Where cargo puts build output: `$CARGO_TARGET_DIR`, else `target/` in the repository.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| envoy::repo_root().join("target"))
}

/// `target/bench/`, created if needed: where benchmarks write their JSON.
pub fn bench_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The median of `values` (the upper middle one of an even count; 0 if there are none).
/// Benchmarks report medians of rounds: on a shared machine a mean follows its outliers.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// A binary of this workspace (`upstream`, `shadowmesh-xds`), built on first use in this
/// process with the same profile as the caller — so a test never runs a stale one.
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static BUILT: Mutex<BTreeMap<String, std::path::PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return Ok(p.clone());
    }
    let release = !cfg!(debug_assertions);
    let mut cmd = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cmd.args(["build", "--quiet", "--bin", name])
        .current_dir(envoy::repo_root());
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "cargo build --bin {name} failed");
    let path = target_dir()
        .join(if release { "release" } else { "debug" })
        .join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing after the build",
        path.display()
    );
    built.insert(name.to_string(), path.clone());
    Ok(path)
}
