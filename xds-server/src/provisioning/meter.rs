//! Current demand per service, from the latest telemetry report of every proxy: the
//! provisioner's view of "now" (the forecaster's series close a step later).

use crate::hub::ReportSubscriber;
use shadowmesh_wire::TelemetryReport;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A proxy's report older than this (by its window end) no longer counts as current.
pub const STALE_MS: u64 = 3_000;

/// Latest request rate per (proxy, service). A [`ReportSubscriber`].
#[derive(Debug, Default)]
pub struct DemandMeter {
    latest: Mutex<BTreeMap<(String, String), (u64, f64)>>,
}

impl DemandMeter {
    /// Requests per second `service` receives across proxies whose last report ended
    /// within [`STALE_MS`] of `now_ms`.
    pub fn current(&self, service: &str, now_ms: u64) -> f64 {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((_, s), (end, _))| s == service && end + STALE_MS >= now_ms)
            .map(|(_, (_, rate))| rate)
            .sum()
    }
}

impl ReportSubscriber for DemandMeter {
    fn on_report(&self, report: &TelemetryReport, received_ms: u64) {
        let secs = report.window_end_ms.saturating_sub(report.window_start_ms) as f64 / 1e3;
        if secs <= 0.0 {
            return;
        }
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        for s in &report.services {
            latest.insert(
                (report.proxy.clone(), s.service.clone()),
                (received_ms, s.requests as f64 / secs),
            );
        }
    }
}
