//! Prometheus metrics of the ADS server, served at `GET /metrics`.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `shadowmesh_xds_connected_proxies` | gauge | `mode` | open ADS streams |
//! | `shadowmesh_xds_responses_total` | counter | `type`, `mode` | responses pushed |
//! | `shadowmesh_xds_response_bytes_total` | counter | `type`, `mode` | encoded bytes of them |
//! | `shadowmesh_xds_acks_total` | counter | `type`, `mode` | responses ACKed |
//! | `shadowmesh_xds_nacks_total` | counter | `type`, `mode` | responses NACKed |
//! | `shadowmesh_xds_push_latency_seconds` | histogram | `type`, `mode` | response sent → its ACK/NACK |
//! | `shadowmesh_xds_snapshot_updates_total` | counter | | snapshot changes published |
//! | `shadowmesh_xds_connections_closed_total` | counter | `reason` | connections the server closed: `cap` (on accept, at `max_connections`), `idle` (no stream for `max_connection_idle_secs`), `write_timeout` (the peer read nothing for `write_timeout_secs`) |
//!
//! `type` is `cluster` or `endpoint`; `mode` is `sotw` or `delta`.

use super::resource::{CLUSTER_TYPE, ENDPOINT_TYPE};
use super::status::XdsMode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Labels of per-mode metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// `sotw` or `delta`.
    pub mode: &'static str,
}

/// Labels of connections the server closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `cap`, `idle` or `write_timeout`.
    pub reason: &'static str,
}

/// Labels of per-type metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// `cluster`, `endpoint` or `other`.
    pub r#type: &'static str,
    /// `sotw` or `delta`.
    pub mode: &'static str,
}

impl TypeLabels {
    /// Labels for a type URL on a stream of `mode`.
    pub fn new(type_url: &str, mode: XdsMode) -> TypeLabels {
        let r#type = match type_url {
            CLUSTER_TYPE => "cluster",
            ENDPOINT_TYPE => "endpoint",
            _ => "other",
        };
        TypeLabels {
            r#type,
            mode: mode.as_str(),
        }
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~52 s.
    Histogram::new(exponential_buckets(1e-4, 2.0, 20))
}

/// The server's metrics. Shared by every stream (`Arc`).
pub struct XdsMetrics {
    /// Open ADS streams.
    pub connected: Family<ModeLabels, Gauge>,
    /// Responses pushed.
    pub responses: Family<TypeLabels, Counter>,
    /// Encoded bytes pushed.
    pub response_bytes: Family<TypeLabels, Counter>,
    /// ACKs received.
    pub acks: Family<TypeLabels, Counter>,
    /// NACKs received.
    pub nacks: Family<TypeLabels, Counter>,
    /// Time from a response to its ACK or NACK.
    pub push_latency: Family<TypeLabels, Histogram>,
    /// Snapshot changes published.
    pub snapshot_updates: Counter,
    /// Connections the server closed, by reason.
    pub connections_closed: Family<ReasonLabels, Counter>,
}

impl Default for XdsMetrics {
    /// Metrics registered nowhere (for a server that exposes none).
    fn default() -> Self {
        XdsMetrics::register(&mut Registry::default())
    }
}

impl XdsMetrics {
    /// Creates the metrics and registers them in `registry` under `shadowmesh_xds_`.
    pub fn register(registry: &mut Registry) -> XdsMetrics {
        let registry = registry.sub_registry_with_prefix("shadowmesh_xds");
        let connected = Family::<ModeLabels, Gauge>::default();
        let responses = Family::<TypeLabels, Counter>::default();
        let response_bytes = Family::<TypeLabels, Counter>::default();
        let acks = Family::<TypeLabels, Counter>::default();
        let nacks = Family::<TypeLabels, Counter>::default();
        let push_latency =
            Family::<TypeLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let snapshot_updates = Counter::default();
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register("connected_proxies", "Open ADS streams", connected.clone());
        registry.register("responses", "Discovery responses pushed", responses.clone());
        registry.register(
            "response_bytes",
            "Encoded bytes of discovery responses pushed",
            response_bytes.clone(),
        );
        registry.register("acks", "Responses the proxy applied", acks.clone());
        registry.register("nacks", "Responses the proxy rejected", nacks.clone());
        registry.register(
            "push_latency_seconds",
            "Time from a discovery response to its ACK or NACK",
            push_latency.clone(),
        );
        registry.register(
            "snapshot_updates",
            "Snapshot changes published",
            snapshot_updates.clone(),
        );
        registry.register(
            "connections_closed",
            "ADS connections the server closed: at the cap, idle without a stream, or not reading",
            connections_closed.clone(),
        );
        XdsMetrics {
            connected,
            responses,
            response_bytes,
            acks,
            nacks,
            push_latency,
            snapshot_updates,
            connections_closed,
        }
    }

    /// Records a connection the server closed for `reason` (`cap`, `idle`, `write_timeout`).
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records a response of `bytes` encoded bytes.
    pub fn pushed(&self, labels: &TypeLabels, bytes: usize) {
        self.responses.get_or_create(labels).inc();
        self.response_bytes
            .get_or_create(labels)
            .inc_by(bytes as u64);
    }

    /// Records the proxy's answer to a response sent `after` ago.
    pub fn answered(&self, labels: &TypeLabels, ack: bool, after: Duration) {
        if ack {
            self.acks.get_or_create(labels).inc();
        } else {
            self.nacks.get_or_create(labels).inc();
        }
        self.push_latency
            .get_or_create(labels)
            .observe(after.as_secs_f64());
    }
}
