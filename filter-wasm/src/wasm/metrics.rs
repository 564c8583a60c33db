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
    /// The share of all traffic the plan means for the shadow.
    pub(super) redirect_share_permille: Metric,
    /// The share that went to the shadow over the last tick.
    pub(super) measured_share_permille: Metric,
    /// The session-point threshold below which sessions are on the shadow.
    pub(super) session_pins_permille: Metric,
    /// Concurrency load is counted against: `max_in_flight`, or the measured knee below it.
    pub(super) primary_capacity: Metric,
    pub(super) shadow_capacity: Metric,
    pub(super) primary_load_permille: Metric,
    pub(super) shadow_load_permille: Metric,
    pub(super) redirecting: Metric,
    pub(super) latency_ms: Metric,
    /// State synchronization (SSM).
    pub(super) state: StateMetrics,
}

/// State synchronization's counters of one service.
#[derive(Clone, Copy, Default)]
pub(super) struct StateMetrics {
    /// Changes captured from responses.
    pub(super) captured: Metric,
    /// Changes dropped (not allowlisted, oversize, malformed, no room); the session is
    /// pinned to the primary.
    pub(super) dropped: Metric,
    /// Requests the plan sent to the shadow that stayed on the primary because the
    /// shadows had not acknowledged their session's latest version.
    pub(super) held: Metric,
    /// Requests handed their session's state (in front of a shadow, or to a primary
    /// behind a shadow's writes).
    pub(super) injected: Metric,
    /// Publishes answered / failed.
    pub(super) publishes: Metric,
    pub(super) publish_failures: Metric,
    /// Requests of sessions whose key state sync cannot carry (not UTF-8, or longer than
    /// `MAX_SESSION_KEY_BYTES`): they stay on the primary, and take no room in the table.
    pub(super) unsyncable: Metric,
    /// Lookups of unknown sessions that failed (the session stays on the primary).
    pub(super) lookup_failures: Metric,
    /// Changes applied from the relay (subscribers), gaps found, full resyncs.
    pub(super) applied: Metric,
    pub(super) gaps: Metric,
    pub(super) full_resyncs: Metric,
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
            measured_share_permille: gauge("measured_share_permille"),
            session_pins_permille: gauge("session_pins_permille"),
            primary_capacity: gauge("primary_capacity_in_flight"),
            shadow_capacity: gauge("shadow_capacity_in_flight"),
            primary_load_permille: gauge("primary_load_permille"),
            shadow_load_permille: gauge("shadow_load_permille"),
            redirecting: gauge("redirecting"),
            latency_ms: Metric::define(metric::HISTOGRAM, &n("latency_ms")),
            state: StateMetrics {
                captured: counter("state_captured_total"),
                dropped: counter("state_dropped_total"),
                held: counter("state_held_on_primary_total"),
                injected: counter("state_injected_total"),
                publishes: counter("state_publishes_total"),
                publish_failures: counter("state_publish_failures_total"),
                lookup_failures: counter("state_lookup_failures_total"),
                unsyncable: counter("state_unsyncable_keys_total"),
                applied: counter("state_applied_total"),
                gaps: counter("state_gaps_total"),
                full_resyncs: counter("state_full_resyncs_total"),
            },
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
