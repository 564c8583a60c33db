//! # shadowmesh-xds — the Shadowmesh control plane
//!
//! * [`ads`] — an Aggregated Discovery Service, state of the world and incremental
//!   (delta), that pushes the primary and shadow clusters and endpoints to every Envoy.
//! * [`cache`] — the snapshot cache between what the controller wants ([`cache::Snapshot`]
//!   per proxy group) and what each Envoy has acknowledged ([`cache::ProxyStatus`]);
//!   [`protocol`] holds the per-stream xDS rules (versions, nonces, ACK/NACK).
//! * [`controller`] — the in-process controller API (primary and shadow endpoints per
//!   service), [`admin`] its HTTP/JSON face for operators, [`metrics`] `/metrics`.
//! * [`telemetry`] — the endpoint the ATRE filters report their traffic to, and the shadow
//!   readiness records handed back to them.
//!
//! Shadows are warm-spare nodes that serve real traffic, not Envoy's request mirroring.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use shadowmesh_xds::ControlPlane;
//! use shadowmesh_xds::resources::EndpointSpec;
//! let plane = ControlPlane::default();
//! plane.controller.set_primary("checkout", &[EndpointSpec::healthy("10.0.0.1:8080".parse()?)])?;
//! let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let ads = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let serving = plane.clone();
//! tokio::spawn(async move { serving.serve_ads(ads).await });
//! plane.serve_http(http).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod admin;
pub mod ads;
pub mod cache;
pub mod cli;
pub mod config;
pub mod controller;
pub mod forecast;
pub mod metrics;
pub mod protocol;
pub mod resources;
pub mod telemetry;

use std::sync::Arc;

/// Helpers shared by the unit tests of the HTTP routes.
#[cfg(test)]
mod test_util {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    /// One request through `router`: status and body.
    pub async fn call(
        router: axum::Router,
        method: &str,
        path: &str,
        body: &str,
    ) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }
}

/// Every piece of the control plane, wired together. Cheap to clone (shared).
#[derive(Clone)]
pub struct ControlPlane {
    /// Desired snapshots and acknowledged state.
    pub cache: cache::SnapshotCache,
    /// The controller API publishing into `cache`.
    pub controller: controller::Controller,
    /// Telemetry from the filters and shadow readiness records.
    pub hub: telemetry::TelemetryHub,
    /// The Predictive Traffic Analyzer, fed by `hub`.
    pub forecaster: forecast::Forecaster,
    /// ADS and controller metrics.
    pub metrics: Arc<metrics::XdsMetrics>,
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane::new(cache::NodeGrouping::default())
    }
}

impl ControlPlane {
    /// A control plane grouping proxies by `grouping`, with no services yet, forecasting
    /// demand per minute an hour ahead.
    pub fn new(grouping: cache::NodeGrouping) -> ControlPlane {
        let predictor = shadowmesh_predictor::analyzer::AnalyzerConfig::for_step(60, 60);
        ControlPlane::with_predictor(grouping, predictor)
            .expect("the default predictor configuration is valid")
    }

    /// Like [`ControlPlane::new`], with this predictor configuration.
    pub fn with_predictor(
        grouping: cache::NodeGrouping,
        predictor: shadowmesh_predictor::analyzer::AnalyzerConfig,
    ) -> Result<ControlPlane, shadowmesh_predictor::model::ConfigError> {
        let cache = cache::SnapshotCache::new(grouping);
        let metrics = Arc::new(metrics::XdsMetrics::default());
        let forecaster = forecast::Forecaster::new(predictor)?;
        Ok(ControlPlane {
            controller: controller::Controller::with_metrics(cache.clone(), metrics.clone()),
            cache,
            hub: telemetry::TelemetryHub::with_forecaster(forecaster.clone()),
            forecaster,
            metrics,
        })
    }

    /// All HTTP routes: telemetry, admin API and `/metrics`.
    pub fn router(&self) -> axum::Router {
        let admin = admin::Admin {
            controller: self.controller.clone(),
            cache: self.cache.clone(),
            metrics: self.metrics.clone(),
        };
        self.hub
            .router()
            .merge(admin.router())
            .merge(self.forecaster.router())
    }

    /// Serves the HTTP routes on `listener` until the task is dropped.
    pub async fn serve_http(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
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

    /// Serves ADS on `listener` until the task is dropped.
    pub async fn serve_ads(
        &self,
        listener: tokio::net::TcpListener,
    ) -> Result<(), tonic::transport::Error> {
        serve_ads(
            listener,
            ads::Ads::with_metrics(self.cache.clone(), self.metrics.clone()),
        )
        .await
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

/// Serves an ADS service (gRPC) on `listener` until the task is dropped.
pub async fn serve_ads(
    listener: tokio::net::TcpListener,
    ads: ads::Ads,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        // Envoy pings every 10 s (envoy-configs); these notice a dead proxy from this side.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(ads.into_service())
        // Large responses end in a partial segment: without TCP_NODELAY it waits for the
        // proxy's delayed ACK (40 ms). The builder's own nodelay setting does not reach
        // connections from an external listener, hence here.
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
}

/// Serves only the telemetry routes of `hub` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: telemetry::TelemetryHub,
) -> std::io::Result<()> {
    axum::serve(listener, hub.router()).await
}
