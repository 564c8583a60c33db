//! The Predictive Traffic Analyzer hosted in the control plane: a subscriber of the
//! [`crate::hub::TelemetryHub`] that folds every report into per-service and per-link
//! demand series ([`DemandIngest`]) and serves the overload list to operators
//! (`/v1/forecast`, see [`crate::http`]) and to the Shadow Node Provisioner.

use crate::hub::ReportSubscriber;
use crate::store::StoreError;
use shadowmesh_predictor::analyzer::{Analyzer, AnalyzerConfig, OverloadRisk, SeriesForecast};
use shadowmesh_predictor::demand::DemandIngest;
use shadowmesh_predictor::error::FieldError;
use shadowmesh_predictor::events::ScheduledEvent;
use shadowmesh_wire::TelemetryReport;
use std::sync::{Arc, Mutex, MutexGuard};

struct ForecastState {
    analyzer: Analyzer,
    ingest: DemandIngest,
    refused: u64,
    anomalies: u64,
}

/// The analyzer and its telemetry intake, shared. Cheap to clone.
#[derive(Clone)]
pub struct Forecaster {
    inner: Arc<Mutex<ForecastState>>,
    /// Where capacities and events are kept (what operators set through the API).
    store: Option<crate::store::StateStore>,
}

/// Why an operator's change to the forecaster was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ForecastChangeError {
    /// The input is invalid: the field at fault.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The state store could not keep the change.
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

/// Store documents of the forecaster.
const CAPACITIES: &str = "capacities";
const EVENTS: &str = "events";

/// Checks a series name: a service (`checkout`) or a link (`edge-1->checkout`), each part
/// of the form the registry and the telemetry checks accept.
pub fn validate_series(name: &str) -> Result<(), FieldError> {
    let service = match name.split_once("->") {
        Some((proxy, service)) => {
            let proxy_ok = (1..=128).contains(&proxy.len())
                && proxy.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-')
                });
            if !proxy_ok {
                return Err(FieldError::new(
                    "series",
                    "a link's proxy must be 1 to 128 characters of letters, digits and `._:/-`",
                ));
            }
            service
        }
        None => name,
    };
    crate::registry::validate_service(service).map_err(|e| FieldError::new("series", e.message))
}

impl Forecaster {
    /// A forecaster with no series yet.
    pub fn new(config: AnalyzerConfig) -> Result<Forecaster, FieldError> {
        Ok(Forecaster {
            inner: Arc::new(Mutex::new(ForecastState {
                analyzer: Analyzer::new(config)?,
                ingest: DemandIngest::default(),
                refused: 0,
                anomalies: 0,
            })),
            store: None,
        })
    }

    /// Keeps capacities and events in `store`, starting from those stored there.
    pub fn with_store(mut self, store: crate::store::StateStore) -> Result<Forecaster, FieldError> {
        let unreadable = |e: crate::store::StoreError| FieldError::new("state_dir", e.to_string());
        let capacities: std::collections::BTreeMap<String, f64> = store
            .document(CAPACITIES)
            .map_err(unreadable)?
            .unwrap_or_default();
        let events: Vec<ScheduledEvent> = store
            .document(EVENTS)
            .map_err(unreadable)?
            .unwrap_or_default();
        {
            let mut s = self.lock();
            for (series, c) in capacities {
                s.analyzer.set_capacity(&series, c)?;
            }
            for e in events {
                s.analyzer.add_event(e)?;
            }
        }
        self.store = Some(store);
        Ok(self)
    }

    /// Stores `document` under `key` if there is a store: before the change is made in
    /// memory, so a refused write changes nothing (not even what a later write stores).
    fn persist<T: serde::Serialize>(&self, key: &str, document: &T) -> Result<(), StoreError> {
        match &self.store {
            Some(store) => store.save_document(key, document),
            None => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ForecastState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds one telemetry report that arrived at `received_ms` in; completed steps are
    /// learned.
    pub fn ingest(&self, report: &TelemetryReport, received_ms: u64) {
        let mut s = self.lock();
        let ForecastState {
            analyzer, ingest, ..
        } = &mut *s;
        let out = ingest.add(analyzer, report, received_ms);
        s.refused += out.refused;
        s.anomalies += out.anomalies.len() as u64;
        for (series, a) in out.anomalies {
            tracing::warn!(%series, since = a.since, direction = ?a.direction, samples = a.samples_to_flag, "demand anomaly");
        }
    }

    /// Learns history of `series` from another source (a metrics store, a previous
    /// deployment): `(unix seconds, demand)` points in time order on the step grid.
    /// Points at or before what the series already knows are refused; the count learned is
    /// returned. Lets a new control plane forecast from day one.
    pub fn backfill(&self, series: &str, points: &[(i64, f64)]) -> Result<usize, FieldError> {
        // Checked whole before anything is learned: a refused backfill changes nothing.
        // History is the past (a step of clock slack): a point in the future would leave
        // the series waiting there, refusing live telemetry as out of order.
        let now = (crate::clock::unix_now_ms() / 1_000) as i64;
        for (i, (ts, _)) in points.iter().enumerate() {
            if !(0..=now + 3_600).contains(ts) {
                return Err(FieldError::new(
                    format!("points[{i}]"),
                    format!("timestamp {ts} is not a Unix time in seconds up to now"),
                ));
            }
        }
        let last = self.lock().analyzer.last_observed(series);
        if let (Some(first), Some(last)) = (points.first(), last)
            && first.0 <= last
        {
            return Err(FieldError::new(
                "points[0]",
                format!(
                    "timestamp {} is not after the series' last observation at {last}",
                    first.0
                ),
            ));
        }
        for (i, (ts, value)) in points.iter().enumerate() {
            shadowmesh_predictor::model::check_value(*value)
                .map_err(|e| FieldError::new(format!("points[{i}]"), e.to_string()))?;
            if i > 0 && *ts <= points[i - 1].0 {
                return Err(FieldError::new(
                    format!("points[{i}]"),
                    "timestamps must increase",
                ));
            }
        }
        let mut s = self.lock();
        let mut learned = 0;
        for (i, (ts, value)) in points.iter().enumerate() {
            s.analyzer
                .observe(series, *ts, *value)
                .map_err(|e| FieldError::new(format!("points[{i}]"), e.to_string()))?;
            learned += 1;
        }
        Ok(learned)
    }

    /// The overload list.
    pub fn overload_risks(&self) -> Vec<OverloadRisk> {
        self.lock().analyzer.overload_risks()
    }

    /// A series' forecast over the configured horizon.
    pub fn forecast(&self, series: &str) -> Vec<SeriesForecast> {
        let s = self.lock();
        let steps = s.analyzer.config().model.horizon;
        s.analyzer.forecast(series, steps)
    }

    /// Sets a series' capacity; stored first, if there is a store.
    pub fn set_capacity(&self, series: &str, capacity: f64) -> Result<(), ForecastChangeError> {
        validate_series(series)?;
        shadowmesh_predictor::analyzer::check_capacity(capacity)?;
        let mut s = self.lock();
        let mut capacities: std::collections::BTreeMap<&str, f64> = s
            .analyzer
            .series()
            .filter_map(|name| Some((name, s.analyzer.capacity(name)?)))
            .collect();
        capacities.insert(series, capacity);
        self.persist(CAPACITIES, &capacities)?;
        s.analyzer.set_capacity(series, capacity)?;
        Ok(())
    }

    /// The capacity set for `series`.
    pub fn capacity(&self, series: &str) -> Option<f64> {
        self.lock().analyzer.capacity(series)
    }

    /// The forecast horizon in seconds.
    pub fn horizon_secs(&self) -> f64 {
        let s = self.lock();
        let m = &s.analyzer.config().model;
        (m.step_secs * m.horizon as i64) as f64
    }

    /// The quantile the overload list provisions for.
    pub fn quantile(&self) -> f64 {
        self.lock().analyzer.config().quantile
    }

    /// Adds an event to the calendar; stored first, if there is a store.
    pub fn add_event(&self, event: ScheduledEvent) -> Result<(), ForecastChangeError> {
        let mut s = self.lock();
        s.analyzer.check_event(&event)?;
        let mut events = s.analyzer.events().to_vec();
        events.push(event.clone());
        self.persist(EVENTS, &events)?;
        s.analyzer.add_event(event)?;
        Ok(())
    }

    /// The events calendar.
    pub fn events(&self) -> Vec<ScheduledEvent> {
        self.lock().analyzer.events().to_vec()
    }

    /// Series known.
    pub fn series(&self) -> Vec<String> {
        self.lock().analyzer.series().map(str::to_string).collect()
    }
}

impl ReportSubscriber for Forecaster {
    fn on_report(&self, report: &TelemetryReport, received_ms: u64) {
        self.ingest(report, received_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forecaster() -> Forecaster {
        Forecaster::new(AnalyzerConfig::for_step(60, 10)).unwrap()
    }

    #[test]
    fn a_refused_backfill_learns_nothing() {
        let f = forecaster();
        let now = (crate::clock::unix_now_ms() / 1_000) as i64;
        for (points, field) in [
            (
                vec![(now - 120, 5.0), (now - 60, 1e308), (now - 30, 0.0)],
                "points[1]",
            ),
            (
                vec![(now - 120, 5.0), (now + 86_400 * 365, 1.0)],
                "points[1]",
            ),
            (vec![(i64::MIN, 1.0), (i64::MAX, 1.0)], "points[0]"),
        ] {
            let e = f.backfill("hv", &points).unwrap_err();
            assert_eq!(e.field, field, "{points:?}: {e:?}");
            assert!(f.series().is_empty(), "{points:?} left a series behind");
        }
        // The series stays usable.
        assert_eq!(
            f.backfill("hv", &[(now - 120, 5.0), (now - 60, 6.0)])
                .unwrap(),
            2
        );
        let e = f.backfill("hv", &[(now - 60, 6.0)]).unwrap_err();
        assert_eq!(e.field, "points[0]", "not after the last observation");
    }
}
