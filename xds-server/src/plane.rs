//! [`ControlPlane`]: every piece wired together, and the two listeners it serves.

use crate::forecaster::Forecaster;
use crate::http::{self, Api};
use crate::hub::TelemetryHub;
use crate::provisioning::{
    DemandMeter, ForecastSource, LoopSettings, PoolProvider, ProcessProvider, Provisioning,
    ProvisioningParts, SnpMetrics, StaticProvider, SurgeSource,
};
use crate::registry::{RegistrySettings, ShadowRegistry};
use crate::store::StateStore;
use crate::xds::{Ads, NodeGrouping, SnapshotCache, XdsMetrics, serve_ads};
use anyhow::Context;
use prometheus_client::registry::Registry;
use shadowmesh_predictor::analyzer::AnalyzerConfig;
use shadowmesh_predictor::error::FieldError;
use shadowmesh_provisioner::SpareSpec;
use std::path::PathBuf;
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
    /// The Shadow Node Provisioner's loop, when configured.
    pub provisioning: Option<Provisioning>,
    /// Durable state, when a state directory is configured.
    pub store: Option<StateStore>,
}

/// How spares are brought up and down.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderKind {
    /// They already run ([`StaticProvider`]).
    Static,
    /// The control plane runs them from this command template ([`ProcessProvider`]).
    Process(Vec<String>),
}

/// The provisioner part of [`PlaneOptions`].
#[derive(Clone)]
pub struct ProvisioningOptions {
    /// Loop and policy settings.
    pub settings: LoopSettings,
    /// The warm-spare pool.
    pub spares: Vec<SpareSpec>,
    /// How spares are started.
    pub provider: ProviderKind,
    /// Where surge forecasts come from (default: the forecaster's overload list).
    pub source: Option<Arc<dyn SurgeSource>>,
}

/// Everything a control plane is built from.
#[derive(Clone)]
pub struct PlaneOptions {
    /// How proxies are grouped.
    pub grouping: NodeGrouping,
    /// The Predictive Traffic Analyzer.
    pub predictor: AnalyzerConfig,
    /// The shadow registry.
    pub registry: RegistrySettings,
    /// Where durable state lives (none: memory only).
    pub state_dir: Option<PathBuf>,
    /// The Shadow Node Provisioner (none: shadows are set by operators only).
    pub provisioning: Option<ProvisioningOptions>,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        PlaneOptions {
            grouping: NodeGrouping::default(),
            predictor: AnalyzerConfig::for_step(60, 60),
            registry: RegistrySettings::default(),
            state_dir: None,
            provisioning: None,
        }
    }
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
        ControlPlane::build(PlaneOptions {
            grouping,
            predictor,
            registry,
            ..PlaneOptions::default()
        })
        .map_err(|e| match e.downcast::<FieldError>() {
            Ok(f) => f,
            Err(e) => FieldError::new("", e.to_string()),
        })
    }

    /// A control plane from `options`: with a state directory it resumes from the state
    /// stored there (services, shadows, the provisioner), so Envoys are served the same
    /// snapshot as before a restart.
    pub fn build(options: PlaneOptions) -> anyhow::Result<ControlPlane> {
        let mut metrics = Registry::default();
        let xds_metrics = Arc::new(XdsMetrics::register(&mut metrics));
        let cache = SnapshotCache::new(options.grouping);
        let forecaster = Forecaster::new(options.predictor)?;
        let hub = TelemetryHub::default();
        hub.subscribe(Arc::new(forecaster.clone()));
        let store = options
            .state_dir
            .as_deref()
            .map(StateStore::open)
            .transpose()?;
        let mut registry =
            ShadowRegistry::with_settings(cache.clone(), xds_metrics.clone(), options.registry);
        if let Some(store) = &store {
            registry = registry.with_store(store.clone())?;
        }
        let provisioning = match options.provisioning {
            None => None,
            Some(p) => {
                let meter = Arc::new(DemandMeter::default());
                hub.subscribe(meter.clone());
                let provider: Arc<dyn PoolProvider> = match p.provider {
                    ProviderKind::Static => Arc::new(StaticProvider),
                    ProviderKind::Process(command) => {
                        Arc::new(ProcessProvider::new(command, store.clone()))
                    }
                };
                let source = p
                    .source
                    .unwrap_or_else(|| Arc::new(ForecastSource(forecaster.clone())));
                Some(
                    Provisioning::new(
                        p.settings,
                        p.spares,
                        ProvisioningParts {
                            registry: registry.clone(),
                            forecaster: forecaster.clone(),
                            meter,
                            source,
                            provider,
                            store: store.clone(),
                            metrics: SnpMetrics::register(&mut metrics),
                        },
                    )
                    .context("provisioner")?,
                )
            }
        };
        Ok(ControlPlane {
            registry,
            cache,
            hub,
            forecaster,
            xds_metrics,
            metrics: Arc::new(metrics),
            provisioning,
            store,
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
            provisioning: self.provisioning.clone(),
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

    /// Serves the HTTP routes on `http` and ADS on `ads`, and runs the provisioner loop
    /// if there is one, until either listener fails (or the task is dropped).
    pub async fn serve(
        &self,
        http: tokio::net::TcpListener,
        ads: tokio::net::TcpListener,
    ) -> anyhow::Result<()> {
        let provisioning = async {
            match &self.provisioning {
                Some(p) => p.run().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = self.serve_http(http) => r?,
            r = self.serve_ads(ads) => r?,
            () = provisioning => {}
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
