//! [`Stack`]: a whole local deployment on loopback with ephemeral ports — a primary and a
//! shadow upstream, the control plane, and a real Envoy 1.40 running the compiled ATRE
//! filter on the static bootstrap. Every process and task is started by the caller and
//! stopped when the `Stack` is dropped. Also: the control plane on ephemeral ports
//! ([`spawn_plane`]), an Envoy on the ADS bootstrap ([`ads_envoy`]), and the lock that
//! keeps load tests from measuring each other ([`load_test_lock`]).

use crate::envoy::{Bootstrap, EnvoyOptions, EnvoyProcess, FilterChoice, default_plugin_config};
use crate::upstream::{self, OrcaMode, UpstreamConfig, UpstreamHandle};
use anyhow::Result;
use shadowmesh_xds::ControlPlane;
use shadowmesh_xds::hub::TelemetryHub;
use std::time::Duration;

/// Capacities of the two upstreams and the filter configuration.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Primary: concurrency and service time.
    pub primary: (usize, Duration),
    /// Shadow: concurrency and service time.
    pub shadow: (usize, Duration),
    /// ORCA reporting of both upstreams.
    pub orca: OrcaMode,
    /// Plugin configuration (JSON); `None` = no Wasm filter.
    pub plugin: Option<serde_json::Value>,
    /// Envoy workers.
    pub envoy_workers: u32,
    /// Instead of ATRE, run a Wasm filter that faults on every request.
    pub fault: bool,
}

/// The shipped ATRE plugin configuration with the primary's capacity set to `primary_max`.
pub fn atre_plugin(primary_max: u32) -> serde_json::Value {
    let mut plugin = default_plugin_config().expect("envoy-configs/atre-plugin.json");
    plugin["services"][0]["primary"]["max_in_flight"] = primary_max.into();
    plugin
}

/// Envoy `edge-1` of proxy group `edge` on the ADS bootstrap (delta mode if `delta`):
/// clusters and endpoints from ADS on `xds_port`, telemetry to `control_port`, running
/// `filter`.
pub async fn ads_envoy(
    xds_port: u16,
    control_port: u16,
    filter: FilterChoice,
    delta: bool,
) -> EnvoyProcess {
    ads_envoy_for(xds_port, control_port, filter, delta, Vec::new()).await
}

/// Like [`ads_envoy`], routing each of `services` by its host names.
pub async fn ads_envoy_for(
    xds_port: u16,
    control_port: u16,
    filter: FilterChoice,
    delta: bool,
    services: Vec<crate::envoy::ServiceRoute>,
) -> EnvoyProcess {
    let yaml = crate::envoy::AdsBootstrap {
        node_id: "edge-1".into(),
        node_cluster: "edge".into(),
        xds_port,
        control_port,
        filter,
        delta,
        services,
        tls: None,
    }
    .render()
    .unwrap();
    EnvoyProcess::launch(yaml, EnvoyOptions::default())
        .await
        .unwrap()
}

impl StackConfig {
    /// The shipped plugin configuration with the primary's capacity set to `primary_max`.
    pub fn atre(primary_max: u32) -> StackConfig {
        let plugin = atre_plugin(primary_max);
        StackConfig {
            primary: (primary_max as usize, Duration::from_millis(20)),
            shadow: (64, Duration::from_millis(20)),
            orca: OrcaMode::Off,
            plugin: Some(plugin),
            envoy_workers: 2,
            fault: false,
        }
    }

    /// The plugin configuration of the (single) service, for adjustments.
    pub fn service(&mut self) -> &mut serde_json::Value {
        &mut self.plugin.as_mut().expect("ATRE stack")["services"][0]
    }
}

/// A running deployment. Dropping it stops Envoy, the upstreams and the control plane.
pub struct Stack {
    /// The Envoy.
    pub envoy: EnvoyProcess,
    /// Primary upstream (`x-served-by: primary`).
    pub primary: UpstreamHandle,
    /// Shadow upstream (`x-served-by: shadow`).
    pub shadow: UpstreamHandle,
    /// The control plane (its HTTP API only: this Envoy's clusters are static).
    pub plane: ControlPlane,
    /// The control plane's telemetry hub (`plane.hub`).
    pub hub: TelemetryHub,
    control: tokio::task::JoinHandle<()>,
    _exclusive: tokio::sync::OwnedRwLockWriteGuard<()>,
}

/// Keeps load tests apart within a test binary: a test that measures behaviour under load
/// (a surge, latency, zero errors at a rate) holds it exclusively
/// (`write_owned`); a test that only checks configuration flowing through
/// holds it shared (`read_owned`). Two Envoys plus load generators sharing
/// two cores would otherwise measure each other.
pub type LoadTestLock = std::sync::Arc<tokio::sync::RwLock<()>>;

/// This test binary's [`LoadTestLock`].
pub fn load_test_lock() -> LoadTestLock {
    static LOCK: std::sync::OnceLock<LoadTestLock> = std::sync::OnceLock::new();
    LOCK.get_or_init(Default::default).clone()
}

impl Stack {
    /// Starts everything; must run inside a multi-threaded tokio runtime.
    pub async fn start(config: StackConfig) -> Result<Stack> {
        let exclusive = load_test_lock().write_owned().await;
        let (p, s) = (config.primary, config.shadow);
        let primary =
            upstream::start(UpstreamConfig::new("primary", p.0, p.1, config.orca), 0).await?;
        let shadow =
            upstream::start(UpstreamConfig::new("shadow", s.0, s.1, config.orca), 0).await?;
        let plane = ControlPlane::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let control_port = listener.local_addr()?.port();
        let serving = plane.clone();
        let control = tokio::spawn(async move {
            if let Err(e) = serving.serve_http(listener, std::future::pending()).await {
                tracing::error!(error = %e, "control plane stopped");
            }
        });
        let bootstrap = Bootstrap {
            node_id: "e2e-edge".into(),
            primary_port: primary.addr.port(),
            shadow_port: shadow.addr.port(),
            control_port,
            filter: match (&config.plugin, config.fault) {
                (_, true) => FilterChoice::Faulting,
                (Some(p), false) => FilterChoice::Atre(p.to_string()),
                (None, false) => FilterChoice::None,
            },
        }
        .render()?;
        let options = EnvoyOptions {
            concurrency: config.envoy_workers,
            ..Default::default()
        };
        let envoy = EnvoyProcess::launch(bootstrap, options).await?;
        Ok(Stack {
            envoy,
            primary,
            shadow,
            hub: plane.hub.clone(),
            plane,
            control,
            _exclusive: exclusive,
        })
    }

    /// Waits until the filter's controller has published a report (the data path is live
    /// and telemetry flows); replaces guessing a start-up delay.
    pub async fn wait_for_first_report(&self) -> Result<()> {
        tokio::time::timeout(
            Duration::from_secs(20),
            self.hub.wait_for(|r| !r.is_empty()),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no telemetry report within 20 s:\n{}",
                self.envoy.log_tail(30)
            )
        })
    }

    /// A Prometheus sample value (first line starting with `prefix`).
    pub fn prometheus_value(&self, prefix: &str) -> Result<Option<f64>> {
        let text = self.envoy.prometheus()?;
        Ok(text
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok()))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.control.abort();
    }
}

/// Serves `plane` (HTTP API and ADS) on ephemeral loopback ports: the HTTP address, the
/// ADS port, and the serving task (abort it to stop; it panics if serving fails).
pub async fn spawn_plane(
    plane: &ControlPlane,
) -> (std::net::SocketAddr, u16, tokio::task::JoinHandle<()>) {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ads = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, ads_port) = (http.local_addr().unwrap(), ads.local_addr().unwrap().port());
    let plane = plane.clone();
    let task = tokio::spawn(async move { plane.serve(http, ads).await.unwrap() });
    (http_addr, ads_port, task)
}

/// Awaits `future`, failing the test with `what` if it takes longer than `timeout`: for
/// waits on events (`wait_for` on the cache or the hub) that would otherwise hang a broken
/// test instead of failing it.
pub async fn within<T>(what: &str, timeout: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, future).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}
