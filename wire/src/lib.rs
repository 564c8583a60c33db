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
    /// control plane refuses a `(proxy, seq)` it has seen as a replay, and a `seq` past its
    /// own clock in milliseconds (beyond the allowed skew).
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
    /// Share of all the service's traffic the plan sends to the shadow at the end of the
    /// window (session-less requests and pinned sessions together), 0..=1.
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
    /// Requests the cluster serves at once before it queues, as the filter measured it
    /// (throughput × unloaded latency while requests wait), when that is below the
    /// configured `max_in_flight`: the filter then counts load against it. Absent when no
    /// queue was seen below `max_in_flight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_in_flight: Option<f64>,
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

/// Schema tag of the state-synchronization messages.
pub const STATE_SCHEMA: &str = "shadowmesh.state.v1";

/// Longest session key state synchronization carries, in bytes (the relay refuses
/// longer ones; the filter keeps such sessions on the primary).
pub const MAX_SESSION_KEY_BYTES: usize = 256;

/// One change of one key of a session's state: `value: None` removes the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateOp {
    /// The key (allowlisted in the filter configuration).
    pub key: String,
    /// Its new value, or `None` to delete it.
    #[serde(default)]
    pub value: Option<String>,
}

impl StateOp {
    /// Bytes of its key and value (what a session's size limit counts).
    pub fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, String::len)
    }
}

/// Bytes of a session's keys and values (what a session's size limit counts).
pub fn state_bytes(state: &std::collections::BTreeMap<String, String>) -> usize {
    state.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Applies `ops` to `state` in order: a value sets its key, `None` removes it.
pub fn apply_ops(state: &mut std::collections::BTreeMap<String, String>, ops: &[StateOp]) {
    for op in ops {
        match &op.value {
            Some(v) => state.insert(op.key.clone(), v.clone()),
            None => state.remove(&op.key),
        };
    }
}

/// A session's changes since the version before `version`: applying `ops` to version
/// `version − 1` gives version `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDelta {
    /// Session key.
    pub session: String,
    /// The version these changes produce.
    pub version: u64,
    /// The changes, in order.
    pub ops: Vec<StateOp>,
    /// When the publisher captured the change (its clock, Unix ms; 0: unknown): the
    /// relay measures replication lag from it.
    #[serde(default)]
    pub at_ms: u64,
    /// The change came from a shadow's response: the primary does not have it.
    #[serde(default)]
    pub from_shadow: bool,
}

/// A session's whole state at `version` (sent instead of deltas to resynchronize).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// Session key.
    pub session: String,
    /// Its version.
    pub version: u64,
    /// Every key and value.
    pub state: std::collections::BTreeMap<String, String>,
    /// Its last change came from a shadow: the primary does not have it.
    #[serde(default)]
    pub from_shadow: bool,
}

/// Publisher → relay: "what do you hold of this session?" — asked by an edge that has no
/// record of it (it restarted), before the session's request goes to the primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateLookup {
    /// Always [`STATE_SCHEMA`].
    pub schema: String,
    /// The service.
    pub service: String,
    /// The session.
    pub session: String,
}

/// Relay → publisher: the session's whole state as the relay has it (`None`: unknown).
/// `from_shadow` says whether the primary lacks it (its last change came from a shadow).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateLookupAnswer {
    /// The session's state.
    #[serde(default)]
    pub state: Option<SessionSnapshot>,
}

/// Publisher → relay: one service's session changes captured by a filter on the primary's
/// path, and the sessions whose acknowledgement it waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatePublish {
    /// Always [`STATE_SCHEMA`].
    pub schema: String,
    /// The publishing proxy.
    pub publisher: String,
    /// The service.
    pub service: String,
    /// The relay epoch this publisher last saw (0: none yet).
    pub epoch: u64,
    /// The publisher's own incarnation (random per Envoy start): its session versions
    /// count from 1 again after a restart, and the relay continues each session's numbering
    /// from where it was.
    #[serde(default)]
    pub incarnation: u64,
    /// Changes, oldest first per session.
    #[serde(default)]
    pub deltas: Vec<SessionDelta>,
    /// Whole states (answers to `resync`, or after a relay restart).
    #[serde(default)]
    pub snapshots: Vec<SessionSnapshot>,
    /// Sessions whose acknowledged version the publisher wants to know.
    #[serde(default)]
    pub watch: Vec<String>,
    /// Event mode: how long the relay may hold the answer until the live subscribers
    /// have applied these changes (0: answer at once).
    #[serde(default)]
    pub wait_ack_ms: u64,
}

/// Relay → publisher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatePublishAck {
    /// The relay's epoch (changes when it restarts without its state).
    pub epoch: u64,
    /// For each watched or published session: the version every live subscriber of the
    /// service has applied (0: not all have it, or no subscriber is live).
    #[serde(default)]
    pub acked: Vec<(String, u64)>,
    /// Sessions whose changes arrived with a gap: send their whole state.
    #[serde(default)]
    pub resync: Vec<String>,
}

/// Subscriber → relay: "what changed after `cursor`?" (long poll).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatePull {
    /// Always [`STATE_SCHEMA`].
    pub schema: String,
    /// The subscribing proxy (a shadow's side).
    pub subscriber: String,
    /// The service.
    pub service: String,
    /// Relay epoch of `cursor` (0: none, start from a full snapshot).
    pub epoch: u64,
    /// The last change applied (the relay's sequence number).
    pub cursor: u64,
    /// Longest the relay may hold the request when nothing changed (ms).
    pub wait_ms: u64,
    /// Continues a full snapshot after this session key (the previous answer's `more`);
    /// `epoch` and `cursor` are then that answer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_after: Option<String>,
}

/// Relay → subscriber.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatePullAnswer {
    /// The relay's epoch.
    pub epoch: u64,
    /// The cursor to send next (every change up to it is in this answer).
    pub cursor: u64,
    /// True when the subscriber must drop what it holds first: `snapshots` are the whole
    /// state of the service (its cursor was too old, or from another epoch).
    pub full: bool,
    /// Changes after the previous cursor, in order.
    #[serde(default)]
    pub deltas: Vec<SessionDelta>,
    /// Whole session states.
    #[serde(default)]
    pub snapshots: Vec<SessionSnapshot>,
    /// A full snapshot continues after this session key: pull again with it as
    /// `page_after` (and this answer's epoch and cursor) before taking changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<String>,
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

    fn op(key: &str, value: Option<&str>) -> StateOp {
        StateOp {
            key: key.into(),
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn a_size_counts_keys_and_values_in_bytes() {
        // "cart" 4 + "ä" 2 (bytes, not characters): 6; a removal counts its key alone.
        assert_eq!(op("cart", Some("ä")).bytes(), 6);
        assert_eq!(op("cart", None).bytes(), 4);
        let state = [("cart", "abc"), ("writes", "12")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // 4 + 3 + 6 + 2.
        assert_eq!(state_bytes(&state), 15);
    }

    #[test]
    fn ops_apply_in_order_a_value_setting_and_none_removing_its_key() {
        let mut state = std::collections::BTreeMap::new();
        apply_ops(
            &mut state,
            &[
                op("cart", Some("a")),
                op("writes", Some("1")),
                op("cart", Some("b")),
                op("writes", None),
            ],
        );
        assert_eq!(state, [("cart".to_string(), "b".to_string())].into());
        // Removing a key that is not there changes nothing.
        apply_ops(&mut state, &[op("gone", None)]);
        assert_eq!(state.len(), 1);
    }
}
