//! ATRE telemetry → demand series. Every Envoy reports, per service, the requests of its
//! last window; each window's requests are spread over the steps it overlaps, in
//! proportion to the overlap, and summed per step, per service (`checkout`) and per link
//! (`<proxy>->checkout`), in requests per second. (Counting a window in the step where it
//! *ends* would date all of its traffic late by up to a window — a whole step when windows
//! and steps are both a second long.)

use crate::analyzer::Analyzer;
use crate::anomaly::AnomalyState;
use shadowmesh_wire::TelemetryReport;
use std::collections::BTreeMap;

/// Accumulates reports into steps and feeds completed steps to an [`Analyzer`].
#[derive(Debug, Default)]
pub struct DemandIngest {
    /// step index → series → requests.
    open: BTreeMap<i64, BTreeMap<String, f64>>,
    /// Highest step seen.
    newest: i64,
    /// Series contributions dropped because a step already held `max_series` series.
    dropped: u64,
}

/// What flushing steps produced.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Observations learned.
    pub observed: u64,
    /// Observations refused (e.g. a report for a step already closed).
    pub refused: u64,
    /// Anomalies flagged, by series.
    pub anomalies: Vec<(String, AnomalyState)>,
}

impl DemandIngest {
    /// Adds one report that arrived at `received_ms`: its window is dated to end then (the
    /// receiver's clock decides, not the proxy's); steps closed by it (one step of grace for
    /// late reports) are learned by `analyzer`.
    pub fn add(
        &mut self,
        analyzer: &mut Analyzer,
        report: &TelemetryReport,
        received_ms: u64,
    ) -> Ingested {
        let step = analyzer.config().model.step_secs.max(1);
        let step_ms = step as u64 * 1000;
        let length = report.window_end_ms.saturating_sub(report.window_start_ms);
        let (start, end) = (received_ms.saturating_sub(length), received_ms);
        // A step holds at most as many series as the analyzer tracks: names invented by
        // a report beyond that cost nothing but a count.
        let max = analyzer.config().max_series;
        for (i, share) in shares(start, end, step_ms) {
            let bucket = self.open.entry(i).or_default();
            for s in &report.services {
                let requests = s.requests as f64 * share;
                for key in [
                    s.service.clone(),
                    format!("{}->{}", report.proxy, s.service),
                ] {
                    if bucket.len() >= max && !bucket.contains_key(&key) {
                        self.dropped += 1;
                        continue;
                    }
                    *bucket.entry(key).or_default() += requests;
                }
            }
        }
        self.newest = self.newest.max((end / step_ms) as i64);
        let mut out = Ingested::default();
        let closed: Vec<i64> = self
            .open
            .keys()
            .copied()
            .filter(|i| *i + 1 < self.newest)
            .collect();
        for i in closed {
            for (series, requests) in self.open.remove(&i).unwrap_or_default() {
                match analyzer.observe(&series, i * step, requests / step as f64) {
                    Ok(Some(a)) => {
                        out.observed += 1;
                        out.anomalies.push((series, a));
                    }
                    Ok(None) => out.observed += 1,
                    Err(_) => out.refused += 1,
                }
            }
        }
        out
    }
}

impl DemandIngest {
    /// Series contributions dropped so far because a step was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The steps (of `step_ms`) a window `[start_ms, end_ms)` overlaps, each with its share of
/// the window. A window longer than ten steps (a reporter that was silent) is cut to its
/// last ten; an empty one counts in the step of its end.
fn shares(start_ms: u64, end_ms: u64, step_ms: u64) -> Vec<(i64, f64)> {
    let start = start_ms.clamp(end_ms.saturating_sub(10 * step_ms), end_ms);
    let idx = |ms: u64| (ms / step_ms) as i64;
    if start == end_ms {
        return vec![(idx(end_ms), 1.0)];
    }
    (idx(start)..=idx(end_ms - 1))
        .map(|i| {
            let (from, to) = (i as u64 * step_ms, (i as u64 + 1) * step_ms);
            let overlap = to.min(end_ms) - from.max(start);
            (i, overlap as f64 / (end_ms - start) as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_spread_over_the_steps_it_overlaps() {
        assert_eq!(shares(10_500, 11_500, 1_000), [(10, 0.5), (11, 0.5)]);
        assert_eq!(shares(10_000, 11_000, 1_000), [(10, 1.0)]);
        assert_eq!(shares(10_000, 10_000, 1_000), [(10, 1.0)]);
        assert_eq!(shares(59_000, 61_000, 60_000), [(0, 0.5), (1, 0.5)]);
        // A silent reporter's hour-long window: only its last ten steps.
        let long = shares(0, 3_600_000, 1_000);
        assert_eq!(long.len(), 10);
        assert_eq!(long[0], (3_590, 0.1));
    }
}

#[cfg(test)]
mod bounds {
    use super::*;
    use crate::analyzer::AnalyzerConfig;
    use shadowmesh_wire::{RedirectState, ServiceTelemetry, TELEMETRY_SCHEMA};

    #[test]
    fn a_step_holds_at_most_max_series_whatever_names_reports_invent() {
        let mut config = AnalyzerConfig::for_step(1, 5);
        config.max_series = 10;
        let mut analyzer = Analyzer::new(config).unwrap();
        let mut ingest = DemandIngest::default();
        let report = TelemetryReport {
            schema: TELEMETRY_SCHEMA.into(),
            proxy: "forger".into(),
            seq: 1,
            window_start_ms: 0,
            window_end_ms: 1_000,
            services: (0..50)
                .map(|i| ServiceTelemetry {
                    service: format!("invented-{i}"),
                    requests: 1,
                    redirected: 0,
                    fallbacks: 0,
                    state: RedirectState::Normal,
                    redirect_share: 0.0,
                    primary: Default::default(),
                    shadow: Default::default(),
                })
                .collect(),
        };
        ingest.add(&mut analyzer, &report, 10_000);
        assert!(ingest.open.values().all(|b| b.len() <= 10));
        assert_eq!(ingest.dropped(), 90, "50 services and 50 links, 10 kept");
    }
}
