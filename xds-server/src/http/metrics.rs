//! Prometheus metrics of the HTTP surface (`shadowmesh_http_…`).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `shadowmesh_http_connections_open` | gauge | | connections being served |
//! | `shadowmesh_http_connections_refused_total` | counter | | connections closed on accept at the cap |
//! | `shadowmesh_http_requests_in_flight` | gauge | | requests between their headers and their answer |
//! | `shadowmesh_http_telemetry_reports_total` | counter | `outcome` (`accepted`, `invalid`, `skewed`, `replayed`) | filter reports by what became of them |
//!
//! Refusals per proxy are in `GET /v1/telemetry/refusals`, not in labels: proxy names come
//! from outside, and a label per invented name would grow the metrics without bound.

use crate::ingest::RefusalKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `telemetry_reports_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `accepted`, `invalid`, `skewed` or `replayed`.
    pub outcome: &'static str,
}

/// The HTTP surface's metrics. Cheap to clone (shared counters).
#[derive(Clone, Default)]
pub struct HttpMetrics {
    /// Connections being served.
    pub connections_open: Gauge,
    /// Connections closed on accept at the cap.
    pub connections_refused: Counter,
    /// Requests in flight.
    pub requests_in_flight: Gauge,
    /// Telemetry reports by outcome.
    pub reports: Family<OutcomeLabels, Counter>,
}

impl HttpMetrics {
    /// Creates the metrics and registers them in `registry` under `shadowmesh_http_`.
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let m = HttpMetrics::default();
        let r = registry.sub_registry_with_prefix("shadowmesh_http");
        r.register(
            "connections_open",
            "Connections being served",
            m.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed on accept because the connection cap was reached",
            m.connections_refused.clone(),
        );
        r.register(
            "requests_in_flight",
            "Requests between their headers and their answer",
            m.requests_in_flight.clone(),
        );
        r.register(
            "telemetry_reports",
            "Filter telemetry reports by outcome",
            m.reports.clone(),
        );
        m
    }

    /// Counts a report accepted.
    pub fn report_accepted(&self) {
        self.report("accepted");
    }

    /// Counts a report refused for `kind`.
    pub fn report_refused(&self, kind: RefusalKind) {
        self.report(match kind {
            RefusalKind::Invalid => "invalid",
            RefusalKind::Skewed => "skewed",
            RefusalKind::Replayed => "replayed",
        });
    }

    /// A report its token may not make (another proxy's, or about another service).
    pub fn report_forbidden(&self) {
        self.report("forbidden");
    }

    fn report(&self, outcome: &'static str) {
        self.reports.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// Decrements a gauge when dropped: a request or connection counted in flight stops
/// counting however it ends (answered, timed out, cancelled by a closed connection).
pub(super) struct InFlight(Gauge);

impl InFlight {
    pub(super) fn enter(gauge: &Gauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
