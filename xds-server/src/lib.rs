//! # shadowmesh-xds — the Shadowmesh control plane
//!
//! Modules follow the data flow:
//!
//! | module | job |
//! |---|---|
//! | [`ingest`] | the checks a telemetry report passes: the server's clock, replays, bounds |
//! | [`hub`] | telemetry reports from the ATRE filters in, published to subscribers |
//! | [`forecaster`] | the Predictive Traffic Analyzer, a subscriber: the overload list |
//! | [`registry`] | the one owner of shadow state: endpoints and readiness per service, one generation |
//! | [`provisioning`] | the Shadow Node Provisioner's loop: forecast → policy → spares → registry |
//! | [`store`] | durable state (embedded `redb`): committed before published |
//! | [`xds`] | the xDS server as a library: snapshots, cache, ADS (SotW + delta), protocol rules |
//! | [`http`] | the HTTP/JSON surface: one route table, one error shape |
//! | [`relay`] | state synchronization's relay: session deltas, backlog, acknowledgements |
//! | [`config`], [`cli`], [`clock`] | the TOML configuration file and the `shadowmesh-xds` command; the wall clock |
//!
//! [`ControlPlane`] wires them together. Shadows are warm-spare nodes that serve real
//! traffic, not Envoy's request mirroring.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use shadowmesh_xds::ControlPlane;
//! use shadowmesh_xds::xds::builders::EndpointSpec;
//! let plane = ControlPlane::default();
//! plane.registry.set_primary("checkout", &[EndpointSpec::healthy("10.0.0.1:8080".parse()?)])?;
//! let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let ads = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! plane.serve(http, ads).await?;
//! # Ok(()) }
//! ```

pub mod cli;
pub mod clock;
pub mod config;
pub mod forecaster;
pub mod http;
pub mod hub;
pub mod ingest;
mod plane;
pub mod provisioning;
pub mod registry;
pub mod relay;
pub mod store;
pub mod xds;

pub use plane::{
    AdsTls, ControlPlane, LISTEN_BACKLOG, PlaneOptions, ProviderKind, ProvisioningOptions, bind,
};
