//! [`ControlPlane`]: every piece wired together, and the two listeners it serves.

use crate::forecaster::Forecaster;
use crate::http::{self, Api, HttpMetrics, ServeLimits, Tokens};
use crate::hub::TelemetryHub;
use crate::ingest::{IngestGuard, ReportLimits};
use crate::provisioning::{
    DemandMeter, ForecastSource, LoopSettings, PoolProvider, ProcessProvider, Provisioning,
    ProvisioningParts, SnpMetrics, StaticProvider, SurgeSource,
};
use crate::registry::{RegistrySettings, ShadowRegistry};
use crate::relay::{MemoryRelay, RelayLimits};
use crate::store::StateStore;
use crate::xds::{Ads, AdsLimits, NodeGrouping, SnapshotCache, XdsMetrics, serve_ads};
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
    /// Who may use the HTTP API.
    pub tokens: Tokens,
    /// The checks telemetry reports pass.
    pub guard: Arc<IngestGuard>,
    /// Limits of the HTTP listener.
    pub http_limits: ServeLimits,
    /// The HTTP surface's metrics.
    pub http_metrics: HttpMetrics,
    /// TLS of the ADS listener (none: plaintext h2c).
    pub ads_tls: Option<AdsTls>,
    /// Limits of the ADS listener.
    pub ads_limits: AdsLimits,
    /// State synchronization's relay.
    pub relay: Arc<MemoryRelay>,
    /// Cancelled when shutdown begins: long polls answer at once.
    pub closing: tokio_util::sync::CancellationToken,
}

/// TLS of the ADS listener: the server's certificate chain and key, and — for mutual TLS —
/// the CA that client (Envoy) certificates must chain to. PEM.
#[derive(Clone)]
pub struct AdsTls {
    /// Certificate chain.
    pub cert_pem: Vec<u8>,
    /// Private key.
    pub key_pem: Vec<u8>,
    /// CA of client certificates; with it, a client without a valid certificate is refused.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl AdsTls {
    /// The listener's TLS, with handshakes dropped after `handshake_timeout` (the
    /// connection's idle deadline covers the handshake too; this frees tonic's handshake
    /// task at the same moment).
    fn server_config(
        &self,
        handshake_timeout: std::time::Duration,
    ) -> tonic::transport::ServerTlsConfig {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .timeout(handshake_timeout);
        if let Some(ca) = &self.client_ca_pem {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        config
    }
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
    /// Who may use the HTTP API (empty: everyone).
    pub tokens: Tokens,
    /// Limits of telemetry reports.
    pub report_limits: ReportLimits,
    /// Limits of the HTTP listener.
    pub http_limits: ServeLimits,
    /// TLS of the ADS listener.
    pub ads_tls: Option<AdsTls>,
    /// Limits of the ADS listener.
    pub ads_limits: AdsLimits,
    /// Limits of the state relay.
    pub relay_limits: RelayLimits,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        PlaneOptions {
            grouping: NodeGrouping::default(),
            predictor: AnalyzerConfig::for_step(60, 60),
            registry: RegistrySettings::default(),
            state_dir: None,
            provisioning: None,
            tokens: Tokens::default(),
            report_limits: ReportLimits::default(),
            http_limits: ServeLimits::default(),
            ads_tls: None,
            ads_limits: AdsLimits::default(),
            relay_limits: RelayLimits::default(),
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
        let http_metrics = HttpMetrics::register(&mut metrics);
        let cache = SnapshotCache::new(options.grouping);
        let store = options
            .state_dir
            .as_deref()
            .map(StateStore::open)
            .transpose()?;
        let mut forecaster = Forecaster::new(options.predictor)?;
        if let Some(store) = &store {
            forecaster = forecaster.with_store(store.clone())?;
        }
        let hub = TelemetryHub::default();
        hub.subscribe(Arc::new(forecaster.clone()));
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
            tokens: options.tokens,
            guard: Arc::new(IngestGuard::new(options.report_limits)),
            http_limits: options.http_limits,
            http_metrics,
            ads_tls: options.ads_tls,
            ads_limits: options.ads_limits,
            // The start time names this run: a restarted relay has a new epoch.
            relay: Arc::new(MemoryRelay::new(
                options.relay_limits,
                crate::clock::unix_now_ms(),
            )),
            closing: tokio_util::sync::CancellationToken::new(),
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
            tokens: self.tokens.clone(),
            guard: self.guard.clone(),
            http_metrics: self.http_metrics.clone(),
            relay: self.relay.clone(),
            store: self.store.clone(),
            closing: self.closing.clone(),
        })
    }

    /// Serves the HTTP routes on `listener`, within the HTTP limits, until `shutdown`
    /// resolves (then lets requests in flight finish).
    pub async fn serve_http(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        http::serve(
            listener,
            self.router(),
            self.http_limits.clone(),
            self.http_metrics.clone(),
            shutdown,
        )
        .await
    }

    /// Serves ADS on `listener` (over TLS when configured) until `shutdown` resolves (then
    /// ends the streams with `UNAVAILABLE` and drops connections left after the grace).
    pub async fn serve_ads(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        serve_ads(
            listener,
            Ads::with_metrics(self.cache.clone(), self.xds_metrics.clone()),
            self.ads_tls.as_ref().map(|tls| {
                tls.server_config(std::time::Duration::from_secs(
                    self.ads_limits.max_connection_idle_secs,
                ))
            }),
            self.ads_limits.clone(),
            shutdown,
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
        self.serve_until(http, ads, std::future::pending()).await
    }

    /// Like [`ControlPlane::serve`], until `shutdown` resolves: then both listeners stop
    /// accepting, ADS streams end, HTTP requests in flight finish (long polls answer at
    /// once), the store closes — its lock is free for the next process while ADS
    /// connections finish — and it returns.
    pub async fn serve_until(
        &self,
        http: tokio::net::TcpListener,
        ads: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let provisioning = async {
            match &self.provisioning {
                Some(p) => p.run().await,
                None => std::future::pending().await,
            }
        };
        let http = async {
            self.serve_http(http, signal(stopped.clone())).await?;
            // Served until the shutdown and drained: nothing writes to the store any more.
            if let Some(store) = &self.store {
                store.close();
            }
            anyhow::Ok(())
        };
        let ads = async {
            self.serve_ads(ads, signal(stopped.clone()))
                .await
                .map_err(anyhow::Error::from)
        };
        let servers = async { tokio::try_join!(http, ads) };
        tokio::pin!(servers);
        tokio::select! {
            r = &mut servers => { r?; }
            () = provisioning => {}
            () = shutdown => {
                self.closing.cancel();
                let _ = stop.send(true);
                servers.await?;
            }
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
