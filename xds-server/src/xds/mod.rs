//! The xDS server as a library: what every proxy should have, what each one has, and the
//! Aggregated Discovery Service between the two. Nothing here knows about forecasts,
//! shadows or HTTP — it serves any clusters and endpoints it is given.
//!
//! Data flow, following the modules:
//!
//! | step | module | what |
//! |---|---|---|
//! | build | [`builders`] | Envoy clusters and endpoint assignments |
//! | encode | [`resource`] | resources with content-hash versions, in persistent maps |
//! | desire | [`snapshot`], [`cache`] | one immutable [`Snapshot`] per proxy group ([`NodeGrouping`]) |
//! | serve | [`ads`] | one task per stream, state of the world and delta |
//! | rules | [`protocol`] | nonces, ACK/NACK, never re-sending a rejected version, make-before-break |
//! | observe | [`status`], [`metrics`] | what each proxy ACKed/NACKed ([`ProxyStatus`]), Prometheus |
//!
//! ```
//! use shadowmesh_xds::xds::{Snapshot, SnapshotCache, builders};
//! let cache = SnapshotCache::default();
//! let cluster = builders::eds_cluster("checkout_primary");
//! let endpoints = builders::load_assignment(
//!     "checkout_primary",
//!     &[builders::EndpointSpec::healthy("10.0.0.1:8080".parse().unwrap())],
//! );
//! cache.set_snapshot("edge", Snapshot::new(&[cluster], &[endpoints]));
//! assert!(cache.snapshot_for("edge").is_some());
//! ```

pub mod ads;
pub mod builders;
pub mod cache;
mod listener;
pub mod metrics;
pub mod protocol;
pub mod resource;
pub mod snapshot;
pub mod status;

pub use ads::Ads;
pub use cache::{DEFAULT_GROUP, NodeGrouping, SnapshotCache};
pub use listener::DEFAULT_MAX_CONNECTIONS;
pub use metrics::XdsMetrics;
pub use resource::{CLUSTER_TYPE, ENDPOINT_TYPE};
pub use snapshot::Snapshot;
pub use status::{ProxyStatus, XdsMode};

/// Limits of the ADS listener (`[ads]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdsLimits {
    /// Connections (proxies) open at once; further ones are closed on accept.
    pub max_connections: usize,
    /// Streams one connection may have open at once (HTTP/2 `MAX_CONCURRENT_STREAMS`):
    /// each stream is a proxy, and Envoy opens one.
    pub max_streams_per_connection: u32,
    /// Seconds a connection may go without an open ADS stream — from its accept (TLS
    /// handshake, HTTP/2 preface, first stream) and from its last stream's end — before it
    /// is closed; also the time a new stream has to send its first request.
    pub max_connection_idle_secs: u64,
    /// Seconds a write may wait for the peer to read before the connection is closed.
    pub write_timeout_secs: u64,
    /// Seconds connections get to close after the streams were ended at shutdown; then
    /// they are dropped.
    pub shutdown_grace_secs: u64,
}

impl Default for AdsLimits {
    fn default() -> Self {
        AdsLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: 8,
            max_connection_idle_secs: 10,
            write_timeout_secs: 10,
            shutdown_grace_secs: 10,
        }
    }
}

/// Serves an ADS service (gRPC) on `listener`, over TLS if `tls` is given (mutual TLS
/// when it names a client CA), within `limits`, until `shutdown` resolves.
///
/// Then it stops accepting and ends every stream with `UNAVAILABLE` (Envoy keeps its last
/// configuration and reconnects, here or elsewhere); connections still open after
/// `shutdown_grace_secs` are dropped.
pub async fn serve_ads(
    listener: tokio::net::TcpListener,
    ads: Ads,
    tls: Option<tonic::transport::ServerTlsConfig>,
    limits: AdsLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use tokio_util::sync::CancellationToken;
    let secs = std::time::Duration::from_secs;
    // Two steps: `closing` ends the streams (and hyper's graceful shutdown then closes each
    // connection whose streams are gone); `abort` drops connections that outlive the grace.
    let (closing, abort) = (CancellationToken::new(), CancellationToken::new());
    let incoming = listener::CappedIncoming::new(
        listener,
        limits.max_connections.max(1),
        listener::Deadlines {
            max_idle: secs(limits.max_connection_idle_secs),
            write_timeout: secs(limits.write_timeout_secs),
        },
        ads.metrics(),
        abort.clone(),
    );
    let ads = ads
        .closing_with(closing.clone())
        .first_request_within(secs(limits.max_connection_idle_secs));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let signal = {
        let closing = closing.clone();
        async move {
            shutdown.await;
            closing.cancel();
        }
    };
    let serving = builder
        // Envoy pings every 10 s (envoy-configs); these notice a dead proxy from this side.
        .http2_keepalive_interval(Some(secs(30)))
        .http2_keepalive_timeout(Some(secs(10)))
        .max_concurrent_streams(Some(limits.max_streams_per_connection.max(1)))
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => return served,
        () = async {
            closing.cancelled().await;
            tokio::time::sleep(secs(limits.shutdown_grace_secs)).await;
        } => {}
    }
    tracing::warn!(
        grace_secs = limits.shutdown_grace_secs,
        "ADS connections still open after the grace period; dropping them"
    );
    abort.cancel();
    serving.await
}
