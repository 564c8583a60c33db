//! `shadowmesh-xds`: runs the Shadowmesh control plane.

use clap::Parser;

/// The Shadowmesh control plane: telemetry ingest and shadow readiness API for the ATRE
/// filters (the ADS server arrives with issue #3).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address for the HTTP API (`POST /v1/telemetry`, `/v1/shadows/{service}`).
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "shadowmesh control plane listening");
    shadowmesh_xds::serve(listener, shadowmesh_xds::telemetry::TelemetryHub::default()).await?;
    Ok(())
}
