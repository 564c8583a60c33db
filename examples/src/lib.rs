//! # shadowmesh-examples
//!
//! Runnable pieces of a local Shadowmesh deployment, shared by the demo, the benchmark and
//! the end-to-end tests:
//!
//! * [`upstream`] — an HTTP service with a real capacity limit that reports ORCA load;
//! * [`loadgen`] — an open-loop load generator with time-varying rate profiles;
//! * [`envoy`] — starts a real Envoy from the bootstraps in `envoy-configs/`;
//! * [`ads_client`] — simulated Envoys on the ADS protocol, for the xDS fan-out benchmark.
#![warn(missing_docs)]

pub mod ads_client;
pub mod envoy;
pub mod loadgen;
pub mod upstream;

use shadowmesh_xds::telemetry::TelemetryHub;

/// The control plane's HTTP API (telemetry ingest, shadow records) on an ephemeral
/// loopback port: its hub, its port, and the task serving it (abort it to stop).
pub async fn start_control_plane()
-> std::io::Result<(TelemetryHub, u16, tokio::task::JoinHandle<()>)> {
    let hub = TelemetryHub::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let served = hub.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = shadowmesh_xds::serve(listener, served).await {
            tracing::error!(error = %e, "control plane stopped");
        }
    });
    Ok((hub, port, task))
}
