//! ATRE telemetry → demand series. Every Envoy reports, per service, the requests of its
//! last window; demand per step is the sum over reports whose window ends in that step,
//! per service (`checkout`) and per link (`<proxy>->checkout`), in requests per second.

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
    /// Adds one report; steps closed by it (one step of grace for late reports) are
    /// learned by `analyzer`.
    pub fn add(&mut self, analyzer: &mut Analyzer, report: &TelemetryReport) -> Ingested {
        let step = analyzer.config().model.step_secs.max(1);
        let idx = (report.window_end_ms / 1000) as i64 / step;
        let bucket = self.open.entry(idx).or_default();
        for s in &report.services {
            let requests = s.requests as f64;
            *bucket.entry(s.service.clone()).or_default() += requests;
            *bucket
                .entry(format!("{}->{}", report.proxy, s.service))
                .or_default() += requests;
        }
        self.newest = self.newest.max(idx);
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
