//! # shadowmesh-wire
//!
//! The data that crosses the boundary between the ATRE Wasm filter (inside every Envoy)
//! and the Shadowmesh control plane. Both sides depend on this crate so the schema has
//! exactly one definition.
//!
//! Two flows:
//!
//! * **Up** — [`TelemetryReport`]: once per reporting interval, one elected worker of each
//!   Envoy POSTs the aggregated per-service traffic of *all* its workers as JSON to the
//!   control plane (`telemetry.path`, default `/v1/telemetry`).
//! * **Down** — [`TelemetryAck`]: the control plane answers that POST with the current
//!   [`ShadowRecord`] of each service it manages. The filter stores them in Envoy shared
//!   data, where every worker reads them when deciding whether a shadow is ready.
//!
//! A *shadow* here is a warm-spare instance that serves real traffic when its primary is hot.
//! It is **not** Envoy's request mirroring (`request_mirror_policies`, which Envoy also calls
//! "shadowing"); Shadowmesh never duplicates requests.
//!
//! ```
//! use shadowmesh_wire::{TelemetryAck, ShadowRecord};
//! let ack: TelemetryAck = serde_json::from_str(
//!     r#"{"shadows":[{"service":"checkout","cluster":"checkout_shadow","warm":true,
//!         "max_in_flight":32,"generation":7}]}"#).unwrap();
//! assert!(ack.shadows[0].warm);
//! assert_eq!(ack.shadows[0].expires_at_ms, None);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

/// Identifies the schema of [`TelemetryReport`]; bumped on incompatible changes.
pub const TELEMETRY_SCHEMA: &str = "shadowmesh.telemetry.v1";

/// One report from one Envoy, covering `window_start_ms..window_end_ms` (Unix epoch
/// milliseconds, Envoy's wall clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryReport {
    /// Always [`TELEMETRY_SCHEMA`].
    pub schema: String,
    /// The reporting proxy: Envoy's `node.id`, or `proxy_id` from the plugin configuration.
    pub proxy: String,
    /// Increases by one per report sent by this proxy's reporter (a gap means lost
    /// reports) and is never reused: the filter starts it at its clock in milliseconds, so
    /// a restarted Envoy or a new lease holder continues above every earlier number. The
    /// control plane refuses a `(proxy, seq)` it has seen as a replay.
    pub seq: u64,
    /// Start of the covered window.
    pub window_start_ms: u64,
    /// End of the covered window.
    pub window_end_ms: u64,
    /// One entry per configured service, in configuration order.
    pub services: Vec<ServiceTelemetry>,
}

/// Traffic of one service during one report window, summed over all Envoy workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceTelemetry {
    /// Service name from the plugin configuration.
    pub service: String,
    /// Requests that completed in the window (primary + shadow).
    pub requests: u64,
    /// Requests sent to the shadow because the primary was hot.
    pub redirected: u64,
    /// Requests the plan wanted to redirect but sent to the primary because no shadow was ready.
    pub fallbacks: u64,
    /// Redirection state at the end of the window.
    pub state: RedirectState,
    /// Share of traffic the plan sends to the shadow at the end of the window, 0..=1.
    pub redirect_share: f64,
    /// Traffic that went to the primary cluster.
    pub primary: ClusterTelemetry,
    /// Traffic that went to the shadow cluster (all zero when none was redirected).
    pub shadow: ClusterTelemetry,
}

/// Per-cluster half of [`ServiceTelemetry`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterTelemetry {
    /// Envoy cluster name.
    pub cluster: String,
    /// Completed requests.
    pub requests: u64,
    /// Requests in flight when the window closed (all workers).
    pub in_flight: u64,
    /// Load score when the window closed: the highest of in-flight/capacity,
    /// latency/SLO and ORCA utilization (1.0 = at capacity).
    pub load_score: f64,
    /// Latency of completed requests, measured from request headers to stream end.
    pub latency_ms: LatencySummary,
    /// Mean ORCA utilization reported by the upstream in the window, if it reported any.
    pub orca_utilization: Option<f64>,
    /// Number of well-formed ORCA reports seen.
    pub orca_reports: u64,
    /// Number of malformed ORCA headers that were ignored.
    pub orca_malformed: u64,
}

/// Latency distribution summary, in milliseconds. Quantiles come from a log-bucketed
/// histogram with ≤ 9% relative error; all fields are 0 when `count == 0`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// Whether a service is currently redirecting its excess traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectState {
    /// All traffic goes to the primary.
    #[default]
    Normal,
    /// A share of traffic (and the sessions pinned during this surge) goes to the shadow.
    Redirecting,
}

/// The control plane's answer to a [`TelemetryReport`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryAck {
    /// Current shadow readiness for the services the control plane manages. Services not
    /// listed keep the readiness from the plugin configuration.
    #[serde(default)]
    pub shadows: Vec<ShadowRecord>,
}

/// What the filter needs to know about a service's shadow: the readiness record. The
/// control plane (SNP) owns it; the filter only reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowRecord {
    /// Service name, as in the plugin configuration.
    pub service: String,
    /// Envoy cluster that routes to the shadow instances.
    pub cluster: String,
    /// True once the shadow instances have finished warming up and may take traffic.
    pub warm: bool,
    /// Concurrency the shadow can take before it is itself at capacity.
    pub max_in_flight: u32,
    /// Increases whenever the control plane changes the record; older generations are ignored.
    pub generation: u64,
    /// The record is void after this Unix-epoch millisecond (the control plane went silent);
    /// `None` means it does not expire.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_through_json() {
        let report = TelemetryReport {
            schema: TELEMETRY_SCHEMA.into(),
            proxy: "edge-1".into(),
            seq: 3,
            window_start_ms: 1_000,
            window_end_ms: 2_000,
            services: vec![ServiceTelemetry {
                service: "checkout".into(),
                requests: 10,
                redirected: 4,
                fallbacks: 1,
                state: RedirectState::Redirecting,
                redirect_share: 0.4,
                primary: ClusterTelemetry {
                    cluster: "p".into(),
                    requests: 6,
                    ..Default::default()
                },
                shadow: ClusterTelemetry::default(),
            }],
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains(r#""state":"redirecting""#));
        let back: TelemetryReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
