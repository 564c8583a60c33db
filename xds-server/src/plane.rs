//! [`ControlPlane`]: every piece wired together, and the two listeners it serves.

use crate::forecaster::Forecaster;
use crate::http::{self, Api};
use crate::hub::TelemetryHub;
use crate::registry::{RegistrySettings, ShadowRegistry};
use crate::xds::{Ads, NodeGrouping, SnapshotCache, XdsMetrics, serve_ads};
use prometheus_client::registry::Registry;
use shadowmesh_predictor::analyzer::AnalyzerConfig;
use shadowmesh_predictor::error::FieldError;
use std::sync::Arc;

/// Every piece of the control plane, wired together. Cheap to clone (shared).
///
/// Data flow: telemetry reports → [`TelemetryHub`] → subscribers ([`Forecaster`]);
/// operator and provisioner changes → [`ShadowRegistry`] → [`SnapshotCache`] → ADS to
/// every Envoy, and readiness records back to the filters in the telemetry answer.
#[derive(Clone)]
pub struct ControlPlane {
    /// Desired snapshots and acknowledged state.
    pub cache: SnapshotCache,
    /// Services, shadows and readiness: publishes into `cache`.
    pub registry: ShadowRegistry,
    /// Telemetry from the filters, published to its subscribers.
    pub hub: TelemetryHub,
    /// The Predictive Traffic Analyzer, a subscriber of `hub`.
    pub forecaster: Forecaster,
    /// ADS metrics.
    pub xds_metrics: Arc<XdsMetrics>,
    /// Every metric, for `/metrics`.
    pub metrics: Arc<Registry>,
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane::new(NodeGrouping::default())
    }
}

impl ControlPlane {
    /// A control plane grouping proxies by `grouping`, with no services yet, forecasting
    /// demand per minute an hour ahead.
    pub fn new(grouping: NodeGrouping) -> ControlPlane {
        ControlPlane::with_predictor(grouping, AnalyzerConfig::for_step(60, 60))
            .expect("the default predictor configuration is valid")
    }

    /// Like [`ControlPlane::new`], with this predictor configuration.
    pub fn with_predictor(
        grouping: NodeGrouping,
        predictor: AnalyzerConfig,
    ) -> Result<ControlPlane, FieldError> {
        ControlPlane::with_settings(grouping, predictor, RegistrySettings::default())
    }

    /// Like [`ControlPlane::with_predictor`], with these registry settings.
    pub fn with_settings(
        grouping: NodeGrouping,
        predictor: AnalyzerConfig,
        registry: RegistrySettings,
    ) -> Result<ControlPlane, FieldError> {
        let mut metrics = Registry::default();
        let xds_metrics = Arc::new(XdsMetrics::register(&mut metrics));
        let cache = SnapshotCache::new(grouping);
        let forecaster = Forecaster::new(predictor)?;
        let hub = TelemetryHub::default();
        hub.subscribe(Arc::new(forecaster.clone()));
        Ok(ControlPlane {
            registry: ShadowRegistry::with_settings(cache.clone(), xds_metrics.clone(), registry),
            cache,
            hub,
            forecaster,
            xds_metrics,
            metrics: Arc::new(metrics),
        })
    }

    /// All HTTP routes ([`crate::http`]).
    pub fn router(&self) -> axum::Router {
        http::router(Api {
            registry: self.registry.clone(),
            hub: self.hub.clone(),
            forecaster: self.forecaster.clone(),
            cache: self.cache.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Serves the HTTP routes on `listener` until the task is dropped.
    pub async fn serve_http(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Serves ADS on `listener` until the task is dropped.
    pub async fn serve_ads(
        &self,
        listener: tokio::net::TcpListener,
    ) -> Result<(), tonic::transport::Error> {
        serve_ads(
            listener,
            Ads::with_metrics(self.cache.clone(), self.xds_metrics.clone()),
        )
        .await
    }

    /// Serves the HTTP routes on `http` and ADS on `ads` until either fails (or the task
    /// is dropped).
    pub async fn serve(
        &self,
        http: tokio::net::TcpListener,
        ads: tokio::net::TcpListener,
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = self.serve_http(http) => r?,
            r = self.serve_ads(ads) => r?,
        }
        Ok(())
    }
}

/// Backlog of the listeners [`bind`] creates.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with a backlog for a reconnect storm: when a control plane restarts,
/// every Envoy reconnects at once, the kernel completes the handshakes before the server
/// accepts them, and with a short accept queue the excess SYNs are dropped and retried
/// only after a second. (Measured: each overflow cost the fan-out benchmark one second.)
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
