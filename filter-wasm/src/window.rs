//! Traffic windows: what the workers count between ticks, merged across workers in shared
//! data, consumed by the controller each tick and summed into telemetry reports.

use crate::load::LatencyHistogram;
use serde::{Deserialize, Serialize};
use shadowmesh_wire::ClusterTelemetry;

/// Counts for one cluster (primary or shadow) of one service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterWindow {
    /// Latency of completed requests; its `count` is the number of completed requests.
    pub latency: LatencyHistogram,
    /// Sum of well-formed ORCA utilizations.
    pub orca_sum: f64,
    /// Number of well-formed ORCA reports.
    pub orca_reports: u64,
    /// Number of malformed ORCA headers ignored.
    pub orca_malformed: u64,
}

/// Counts for one service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceWindow {
    /// Requests sent to the shadow.
    pub redirected: u64,
    /// Requests that wanted the shadow but had to go to the primary.
    pub fallbacks: u64,
    /// Primary side.
    pub primary: ClusterWindow,
    /// Shadow side.
    pub shadow: ClusterWindow,
}

impl ClusterWindow {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ClusterWindow) {
        self.latency.merge(&other.latency);
        self.orca_sum += other.orca_sum;
        self.orca_reports += other.orca_reports;
        self.orca_malformed += other.orca_malformed;
    }

    /// Mean ORCA utilization, if any report arrived.
    pub fn orca_mean(&self) -> Option<f64> {
        (self.orca_reports > 0).then(|| self.orca_sum / self.orca_reports as f64)
    }

    /// The wire form; `in_flight` and `load_score` are the controller's current view.
    pub fn telemetry(&self, cluster: &str, in_flight: u64, load_score: f64) -> ClusterTelemetry {
        ClusterTelemetry {
            cluster: cluster.to_string(),
            requests: self.latency.count,
            in_flight,
            load_score,
            latency_ms: self.latency.summary(),
            orca_utilization: self.orca_mean(),
            orca_reports: self.orca_reports,
            orca_malformed: self.orca_malformed,
        }
    }
}

impl ServiceWindow {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ServiceWindow) {
        self.redirected += other.redirected;
        self.fallbacks += other.fallbacks;
        self.primary.merge(&other.primary);
        self.shadow.merge(&other.shadow);
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == ServiceWindow::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_everything() {
        let mut a = ServiceWindow {
            redirected: 1,
            ..Default::default()
        };
        a.primary.latency.record(1_000);
        a.primary.orca_sum = 0.5;
        a.primary.orca_reports = 1;
        let mut b = a.clone();
        b.shadow.orca_malformed = 2;
        a.merge(&b);
        assert_eq!(a.redirected, 2);
        assert_eq!(a.primary.latency.count, 2);
        assert_eq!(a.primary.orca_mean(), Some(0.5));
        assert_eq!(a.shadow.orca_malformed, 2);
        assert!(!a.is_empty());
        assert!(ServiceWindow::default().is_empty());
        let t = a.primary.telemetry("p", 3, 0.7);
        assert_eq!((t.requests, t.in_flight, t.orca_reports), (2, 3, 2));
    }
}
