//! Current demand per service, from the latest telemetry report of every proxy: the
//! provisioner's view of "now" (the forecaster's series close a step later).

use crate::hub::ReportSubscriber;
use shadowmesh_wire::TelemetryReport;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A proxy's report older than this (by its window end) no longer counts as current.
pub const STALE_MS: u64 = 3_000;

/// Shortest window a rate is computed over: a report claiming its requests came in one
/// millisecond must not claim a thousand times the rate (the ingest guard bounds requests
/// per report, so a forged report moves the meter by at most `max_requests` req/s).
const MIN_WINDOW_SECS: f64 = 1.0;

/// Latest request rate per (proxy, service). A [`ReportSubscriber`].
#[derive(Debug, Default)]
pub struct DemandMeter {
    latest: Mutex<Latest>,
}

#[derive(Debug, Default)]
struct Latest {
    rates: BTreeMap<(String, String), (u64, f64)>,
    /// Entries after the last pruning of stale ones.
    pruned_at: usize,
}

impl DemandMeter {
    /// Requests per second `service` receives across proxies whose last report ended
    /// within [`STALE_MS`] of `now_ms`.
    pub fn current(&self, service: &str, now_ms: u64) -> f64 {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rates
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
        let secs = secs.max(MIN_WINDOW_SECS);
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        for s in &report.services {
            latest.rates.insert(
                (report.proxy.clone(), s.service.clone()),
                (received_ms, s.requests as f64 / secs),
            );
        }
        // Stale entries count for nothing: drop them whenever the map has doubled since
        // the last time (amortised O(1) a report; bounded by the proxies reporting now).
        if latest.rates.len() > 2 * latest.pruned_at + 1_024 {
            latest
                .rates
                .retain(|_, (end, _)| end.saturating_add(STALE_MS) >= received_ms);
            latest.pruned_at = latest.rates.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_wire::{ServiceTelemetry, TELEMETRY_SCHEMA};

    fn report(proxy: &str, service: &str, requests: u64, window_ms: u64) -> TelemetryReport {
        TelemetryReport {
            schema: TELEMETRY_SCHEMA.into(),
            proxy: proxy.into(),
            seq: 1,
            window_start_ms: 10_000 - window_ms,
            window_end_ms: 10_000,
            services: vec![ServiceTelemetry {
                service: service.into(),
                requests,
                redirected: 0,
                fallbacks: 0,
                state: shadowmesh_wire::RedirectState::Normal,
                redirect_share: 0.0,
                primary: Default::default(),
                shadow: Default::default(),
            }],
        }
    }

    #[test]
    fn a_millisecond_window_does_not_multiply_the_rate() {
        let m = DemandMeter::default();
        m.on_report(&report("p", "checkout", 1_000, 1), 10_000);
        assert_eq!(m.current("checkout", 10_000), 1_000.0);
    }

    #[test]
    fn stale_entries_are_dropped_as_new_ones_come() {
        let m = DemandMeter::default();
        for i in 0..5_000 {
            // Every report a new invented service, each a second after the last.
            m.on_report(&report("p", &format!("s{i}"), 1, 1_000), 10_000 + i * 1_000);
        }
        let kept = m.latest.lock().unwrap().rates.len();
        assert!(kept < 3_000, "{kept} entries kept");
    }
}
