//! # shadowmesh-xds — the Shadowmesh control plane
//!
//! Today it is the endpoint the ATRE filters report their traffic to
//! ([`telemetry::TelemetryHub`]) and the source of each service's shadow readiness record,
//! handed back to the filters in the report's answer. The ADS server (issue #3) and the
//! Shadow Node Provisioner build on it.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let hub = shadowmesh_xds::telemetry::TelemetryHub::default();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! shadowmesh_xds::serve(listener, hub).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod ads;
pub mod cache;
pub mod protocol;
pub mod resources;
pub mod telemetry;

/// Serves ADS (gRPC) for `cache` on `listener` until the task is dropped.
pub async fn serve_ads(
    listener: tokio::net::TcpListener,
    cache: cache::SnapshotCache,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(ads::Ads::new(cache).into_service())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
}

/// Serves the control plane's HTTP API on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: telemetry::TelemetryHub,
) -> std::io::Result<()> {
    axum::serve(listener, hub.router()).await
}
