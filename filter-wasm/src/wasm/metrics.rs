//! Envoy stats the filter defines: per service and filter-wide. Every update goes through
//! [`Metric`], which turns a metric the host refused to define into a no-op.

use super::abi::{self, metric};

/// A metric id, or nothing if the host refused to define it (then updates are no-ops).
#[derive(Clone, Copy, Default)]
pub(super) struct Metric(Option<u32>);

impl Metric {
    pub(super) fn define(kind: u32, name: &str) -> Metric {
        Metric(abi::define_metric(kind, name).ok())
    }
    pub(super) fn add(self, delta: u64) {
        if let (Some(id), true) = (self.0, delta > 0) {
            let _ = abi::increment_metric(id, delta as i64);
        }
    }
    pub(super) fn set(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = abi::record_metric(id, value);
        }
    }
}

/// Per-service metrics. Names are `shadowmesh.service.<name>.<metric>`; the Envoy
/// bootstraps turn `<name>` into a `shadowmesh_service` Prometheus label.
#[derive(Clone, Copy, Default)]
pub(super) struct ServiceMetrics {
    pub(super) requests: Metric,
    pub(super) redirected: Metric,
    pub(super) fallbacks: Metric,
    pub(super) orca_malformed: Metric,
    pub(super) in_flight_primary: Metric,
    pub(super) in_flight_shadow: Metric,
    pub(super) redirect_share_permille: Metric,
    pub(super) primary_load_permille: Metric,
    pub(super) shadow_load_permille: Metric,
    pub(super) redirecting: Metric,
    pub(super) latency_ms: Metric,
}

impl ServiceMetrics {
    pub(super) fn define(service: &str) -> ServiceMetrics {
        let n = |m: &str| format!("shadowmesh.service.{service}.{m}");
        let counter = |m: &str| Metric::define(metric::COUNTER, &n(m));
        let gauge = |m: &str| Metric::define(metric::GAUGE, &n(m));
        ServiceMetrics {
            requests: counter("requests_total"),
            redirected: counter("redirected_total"),
            fallbacks: counter("fallbacks_total"),
            orca_malformed: counter("orca_malformed_total"),
            in_flight_primary: gauge("in_flight_primary"),
            in_flight_shadow: gauge("in_flight_shadow"),
            redirect_share_permille: gauge("redirect_share_permille"),
            primary_load_permille: gauge("primary_load_permille"),
            shadow_load_permille: gauge("shadow_load_permille"),
            redirecting: gauge("redirecting"),
            latency_ms: Metric::define(metric::HISTOGRAM, &n("latency_ms")),
        }
    }
}

/// Filter-wide metrics.
#[derive(Clone, Copy, Default)]
pub(super) struct GlobalMetrics {
    pub(super) spoofed_route_headers: Metric,
    pub(super) telemetry_reports: Metric,
    pub(super) telemetry_failures: Metric,
    pub(super) shared_data_errors: Metric,
}

impl GlobalMetrics {
    pub(super) fn define() -> GlobalMetrics {
        let counter = |name: &str| Metric::define(metric::COUNTER, name);
        GlobalMetrics {
            spoofed_route_headers: counter("shadowmesh.spoofed_route_headers_total"),
            telemetry_reports: counter("shadowmesh.telemetry_reports_total"),
            telemetry_failures: counter("shadowmesh.telemetry_failures_total"),
            shared_data_errors: counter("shadowmesh.shared_data_errors_total"),
        }
    }
}
