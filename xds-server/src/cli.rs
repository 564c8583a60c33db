//! The `shadowmesh-xds` command line: arguments, configuration file, and start-up.
//!
//! `main` is a thin wrapper around [`Args::resolve`] and [`start`], so tests run exactly
//! what the binary runs.

use crate::config::{DEFAULT_ADS_LISTEN, DEFAULT_HTTP_LISTEN, ServerConfig};
use crate::xds::NodeGrouping;
use crate::{ControlPlane, PlaneOptions};
use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The Shadowmesh control plane.
///
/// Serves two listeners:
///
/// * ADS (gRPC, HTTP/2): Envoys open a state-of-the-world or incremental (delta)
///   aggregated stream and receive each service's clusters `{service}_primary`,
///   `{service}_shadow_pool` and `{service}_shadow` (aggregate [pool, primary]) with
///   their endpoints. See envoy-configs/ads-front-proxy.yaml and ads-delta-front-proxy.yaml.
///
/// * HTTP/JSON: `POST /v1/telemetry` (ATRE filter reports, answered with each service's
///   shadow readiness), `/v1/services[/{service}[/shadows]]` (services, their shadow
///   endpoints and readiness — one resource), `/v1/proxies`, `/v1/forecast`,
///   `/v1/capacity/{series}`, `/v1/events` and Prometheus `/metrics`.
///
/// Shadows are warm-spare nodes that serve real traffic redirected by the ATRE filter,
/// not Envoy's request mirroring. Logs go to stderr; set RUST_LOG (e.g. `debug`) for more.
#[derive(Parser, Debug)]
#[command(name = "shadowmesh-xds", version, about, long_about)]
pub struct Args {
    /// TOML configuration file: listeners, proxy grouping and start-up services (see
    /// xds-server/README.md). Flags given on the command line override it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,

    /// Address of the HTTP API (telemetry, admin API, /metrics) [default: 127.0.0.1:18080].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,

    /// Address of the ADS gRPC server [default: 127.0.0.1:18000].
    #[arg(long)]
    pub ads_listen: Option<SocketAddr>,

    /// How a proxy's snapshot group is chosen: `cluster` (node.cluster), `id` (node.id) or
    /// `metadata:KEY` (a string field of node.metadata) [default: cluster].
    #[arg(long, value_parser = parse_grouping)]
    pub group_by: Option<NodeGrouping>,

    /// Directory of the durable state store (services, shadows, the provisioner's state):
    /// what the API changes survives a restart [default: none, memory only].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,

    /// File of `ROLE TOKEN` lines (`operator` or `telemetry`): bearer tokens of the HTTP API.
    /// Without tokens the API is open, which is refused on a non-loopback address unless
    /// `--allow-unauthenticated` is given.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,

    /// Serve the HTTP API without tokens even on a non-loopback address.
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// Validate the configuration, print it and exit.
    #[arg(long)]
    pub check: bool,
}

fn parse_grouping(s: &str) -> Result<NodeGrouping, String> {
    match s {
        "cluster" => Ok(NodeGrouping::Cluster),
        "id" => Ok(NodeGrouping::Id),
        _ => match s.strip_prefix("metadata:") {
            Some(key) if !key.is_empty() => Ok(NodeGrouping::Metadata(key.to_string())),
            _ => Err(format!("{s:?}: expected `cluster`, `id` or `metadata:KEY`")),
        },
    }
}

/// What the command line and the configuration file resolve to.
#[derive(Clone)]
pub struct Settings {
    /// The configuration (file, with `--group-by` applied).
    pub config: ServerConfig,
    /// HTTP API address.
    pub http_listen: SocketAddr,
    /// ADS address.
    pub ads_listen: SocketAddr,
    /// HTTP API tokens.
    pub tokens: crate::http::Tokens,
    /// ADS TLS, loaded.
    pub ads_tls: Option<crate::AdsTls>,
}

impl Args {
    /// Loads the configuration file (if any) and applies the flags over it.
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::load(path)?,
            None => ServerConfig::default(),
        };
        if let Some(g) = &self.group_by {
            config.grouping = g.clone();
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = Some(dir.clone());
        }
        if let Some(f) = &self.tokens_file {
            config.tokens_file = Some(f.clone());
        }
        config.allow_unauthenticated |= self.allow_unauthenticated;
        let http_listen = match self.http_listen.or(config.http_listen) {
            Some(a) => a,
            None => DEFAULT_HTTP_LISTEN.parse()?,
        };
        let ads_listen = match self.ads_listen.or(config.ads_listen) {
            Some(a) => a,
            None => DEFAULT_ADS_LISTEN.parse()?,
        };
        let tokens = match &config.tokens_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("tokens_file: cannot read {}", path.display()))?;
                let tokens = crate::http::Tokens::parse(&text)
                    .with_context(|| format!("tokens_file {}", path.display()))?;
                // An empty file (a secret mounted empty) must not open the API.
                anyhow::ensure!(
                    tokens.enabled(),
                    "tokens_file {}: holds no tokens; give at least one `ROLE TOKEN` line",
                    path.display()
                );
                tokens
            }
            None => crate::http::Tokens::default(),
        };
        if !tokens.enabled() && !http_listen.ip().is_loopback() && !config.allow_unauthenticated {
            anyhow::bail!(
                "refusing to serve the HTTP API on {http_listen} without tokens: anyone who reaches it could change services and shadows. Give --tokens-file (or tokens_file), or --allow-unauthenticated if something else guards the port"
            );
        }
        let ads_tls = config
            .ads_tls
            .as_ref()
            .map(|t| t.load())
            .transpose()
            .map_err(|(field, message)| anyhow::anyhow!("field `{field}`: {message}"))?;
        Ok(Settings {
            config,
            http_listen,
            ads_listen,
            tokens,
            ads_tls,
        })
    }
}

/// A started control plane.
pub struct Running {
    /// Its pieces.
    pub plane: ControlPlane,
    /// Bound HTTP API address.
    pub http_addr: SocketAddr,
    /// Bound ADS address.
    pub ads_addr: SocketAddr,
    /// Serves both listeners; ends on an error or after [`Running::shutdown`].
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Stops accepting on both listeners, lets HTTP requests in flight finish, closes ADS
    /// streams, and waits for all that.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}

/// Publishes the configured services, binds both listeners and starts serving.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let config = &settings.config;
    let plane = ControlPlane::build(PlaneOptions {
        grouping: config.grouping.clone(),
        predictor: config.predictor.analyzer(),
        registry: config.registry.settings(),
        state_dir: config.state_dir.clone(),
        provisioning: config.provisioning(),
        tokens: settings.tokens.clone(),
        report_limits: config.telemetry.clone(),
        http_limits: config.http.clone(),
        ads_tls: settings.ads_tls.clone(),
        ads_limits: config.ads.clone(),
        relay_limits: config.relay.clone(),
    })?;
    for (series, capacity) in &config.predictor.capacities {
        plane.forecaster.set_capacity(series, *capacity)?;
    }
    // The stored state, when there is one, is what the API last made of the services; the
    // file only seeds an empty store. One batch, one snapshot: start-up costs the same as
    // building the snapshot once, however many services the file holds.
    if plane.registry.services().is_empty() {
        plane
            .registry
            .apply(config.services.iter().map(|s| s.change()))?;
    } else if !config.services.is_empty() {
        tracing::info!(
            stored = plane.registry.services().len(),
            "services restored from the state store; [[services]] in the file only seed an empty store"
        );
    }
    // The error names the listener: "address already in use" alone does not say which.
    let listen = |field: &str, addr: std::net::SocketAddr| {
        crate::bind(addr).map_err(|e| anyhow::anyhow!("{field} {addr}: cannot listen: {e}"))
    };
    let http = listen("http_listen", settings.http_listen)?;
    let ads = listen("ads_listen", settings.ads_listen)?;
    let (http_addr, ads_addr) = (http.local_addr()?, ads.local_addr()?);
    tracing::info!(http = %http_addr, ads = %ads_addr, services = settings.config.services.len(), "shadowmesh control plane listening");
    let serving = plane.clone();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        serving
            .serve_until(http, ads, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    Ok(Running {
        plane,
        http_addr,
        ads_addr,
        task,
        stop,
    })
}
