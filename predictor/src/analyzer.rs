//! The analyzer: one [`SeasonalModel`] per service and per link, the events calendar, the
//! capacities, and the product — a prioritized list of who is expected to overload.

use crate::anomaly::{AnomalyState, Direction};
use crate::error::FieldError;
use crate::events::{EventMemory, ScheduledEvent};
use crate::model::{
    Confidence, ModelConfig, ObserveError, SeasonalModel, check_value, normal_quantile,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Settings of an analyzer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzerConfig {
    /// The model of every series.
    pub model: ModelConfig,
    /// Quantile the controller provisions for (e.g. 0.9), above the median: the peak at
    /// it, and the interval between it and its complement, bound the peak from above.
    pub quantile: f64,
    /// Series whose overload probability within the horizon is below this are not listed.
    pub min_probability: f64,
    /// Probability at which overload counts as begun (the onset time).
    pub onset_probability: f64,
    /// Most series tracked. A new series beyond it evicts the least recently observed
    /// tenth of the series that have no capacity set (capacities are an operator's intent
    /// and stay); counted in [`Analyzer::evicted`].
    #[serde(default = "default_max_series")]
    pub max_series: usize,
}

fn default_max_series() -> usize {
    100_000
}

impl AnalyzerConfig {
    /// Defaults for series sampled every `step_secs`, looking `horizon` steps ahead.
    pub fn for_step(step_secs: i64, horizon: usize) -> AnalyzerConfig {
        AnalyzerConfig {
            model: ModelConfig::for_step(step_secs, horizon),
            quantile: 0.9,
            min_probability: 0.05,
            onset_probability: 0.5,
            max_series: default_max_series(),
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.model.validate().map_err(|e| e.within("model"))?;
        if !(self.quantile > 0.5 && self.quantile < 1.0) {
            return Err(FieldError::new(
                "quantile",
                format!(
                    "{} is not in (0.5, 1): the peak to provision for lies above the median",
                    self.quantile
                ),
            ));
        }
        for (field, v) in [
            ("min_probability", self.min_probability),
            ("onset_probability", self.onset_probability),
        ] {
            if !(v > 0.0 && v < 1.0) {
                return Err(FieldError::new(field, format!("{v} is not in (0, 1)")));
            }
        }
        if !(1..=10_000_000).contains(&self.max_series) {
            return Err(FieldError::new("max_series", "must be 1..=10000000"));
        }
        Ok(())
    }
}

/// Whether a series is a service's total demand or one link's (caller → service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    /// All demand of a service.
    Service,
    /// Demand on one link, named `from->to`.
    Link,
}

impl SeriesKind {
    /// The kind of a series by its name.
    pub fn of(name: &str) -> SeriesKind {
        if name.contains("->") {
            SeriesKind::Link
        } else {
            SeriesKind::Service
        }
    }
}

/// Why a series is expected to overload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "cause")]
pub enum Reason {
    /// Its usual daily/weekly pattern peaks above capacity.
    Seasonal,
    /// A scheduled event raises demand.
    Event {
        /// Event kinds active at the peak.
        kinds: Vec<String>,
    },
    /// An unforecast change in progress.
    Anomaly {
        /// When it began.
        since: i64,
        /// Up or down.
        direction: Direction,
    },
}

/// One entry of the overload list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverloadRisk {
    /// Series name (service, or `from->to` for a link).
    pub series: String,
    /// Service or link.
    pub kind: SeriesKind,
    /// Capacity it is compared with (same units as the series).
    pub capacity: f64,
    /// Last observed demand.
    pub current: f64,
    /// Highest median forecast within the horizon.
    pub predicted_peak: f64,
    /// When that peak is expected (unix seconds).
    pub peak_ts: i64,
    /// The peak at the configured quantile (what to provision for).
    pub peak_at_quantile: f64,
    /// Expected increase over current demand (median peak − current).
    pub expected_increase: f64,
    /// Its uncertainty: the increase at the configured quantile and at its complement.
    pub increase_range: (f64, f64),
    /// Probability that demand exceeds capacity at some step within the horizon (the
    /// highest per-step probability).
    pub probability: f64,
    /// First time the per-step probability reaches the onset probability, if it does.
    pub onset_ts: Option<i64>,
    /// After the onset, the first time the per-step probability falls back under the onset
    /// probability: the expected end of the surge (`None`: not within the horizon).
    pub end_ts: Option<i64>,
    /// Why.
    pub reason: Reason,
    /// How much the model behind it has learned.
    pub confidence: Confidence,
}

/// One forecast point of a series, in its own units, events included.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SeriesForecast {
    /// Target time.
    pub ts: i64,
    /// Median.
    pub median: f64,
    /// Lower and upper bounds of the central interval at the configured quantile.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
    /// Event multiplier applied (1 = none).
    pub event_factor: f64,
}

#[derive(Debug, Clone)]
struct Tracked {
    model: SeasonalModel,
    events: EventMemory,
    capacity: Option<f64>,
    current: f64,
}

/// The entry of `series`, created empty if new.
fn tracked<'a>(
    all: &'a mut BTreeMap<String, Tracked>,
    model: &ModelConfig,
    series: &str,
) -> &'a mut Tracked {
    all.entry(series.to_string()).or_insert_with(|| Tracked {
        model: SeasonalModel::new(model),
        events: EventMemory::default(),
        capacity: None,
        current: 0.0,
    })
}

/// Forecasts for every series, events and capacities. Not thread-safe by itself; the
/// control plane wraps it in a mutex.
#[derive(Debug, Clone)]
pub struct Analyzer {
    config: AnalyzerConfig,
    events: Vec<ScheduledEvent>,
    series: BTreeMap<String, Tracked>,
    evicted: u64,
}

/// Whether [`Analyzer::set_capacity`] would take `capacity`: a positive number.
pub fn check_capacity(capacity: f64) -> Result<(), FieldError> {
    if capacity.is_finite() && capacity > 0.0 {
        Ok(())
    } else {
        Err(FieldError::new(
            "capacity",
            format!("{capacity} is not a positive number"),
        ))
    }
}

impl Analyzer {
    /// An analyzer with no series yet.
    pub fn new(config: AnalyzerConfig) -> Result<Analyzer, FieldError> {
        config.validate()?;
        Ok(Analyzer {
            config,
            events: Vec::new(),
            series: BTreeMap::new(),
            evicted: 0,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &AnalyzerConfig {
        &self.config
    }

    /// Adds an event to the calendar.
    pub fn add_event(&mut self, event: ScheduledEvent) -> Result<(), FieldError> {
        self.check_event(&event)?;
        self.events.push(event);
        Ok(())
    }

    /// Whether [`Analyzer::add_event`] would take `event` (for a caller that stores the
    /// calendar before it changes it).
    pub fn check_event(&self, event: &ScheduledEvent) -> Result<(), FieldError> {
        event.validate()?;
        if self.events.len() >= crate::events::MAX_EVENTS {
            return Err(FieldError::new(
                "events",
                format!(
                    "the calendar is full ({} events)",
                    crate::events::MAX_EVENTS
                ),
            ));
        }
        Ok(())
    }

    /// The calendar.
    pub fn events(&self) -> &[ScheduledEvent] {
        &self.events
    }

    fn tracked(&mut self, series: &str) -> &mut Tracked {
        self.make_room(series);
        tracked(&mut self.series, &self.config.model, series)
    }

    /// Time of the series' last observation (unix seconds), if it is tracked.
    pub fn last_observed(&self, series: &str) -> Option<i64> {
        self.series.get(series)?.model.last_ts()
    }

    /// Series evicted so far to stay within `max_series`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Before `series` is created: at the limit, evict the least recently observed tenth
    /// of the series without a capacity (once per tenth, so the cost is amortised).
    fn make_room(&mut self, series: &str) {
        if self.series.len() < self.config.max_series || self.series.contains_key(series) {
            return;
        }
        let mut idle: Vec<(i64, String)> = self
            .series
            .iter()
            .filter(|(_, t)| t.capacity.is_none())
            .map(|(name, t)| (t.model.last_ts().unwrap_or(i64::MIN), name.clone()))
            .collect();
        let n = (self.config.max_series / 10).max(1).min(idle.len());
        if n == 0 {
            return;
        }
        idle.select_nth_unstable(n - 1);
        for (_, name) in idle.into_iter().take(n) {
            self.series.remove(&name);
            self.evicted += 1;
        }
    }

    /// Sets the demand a series can take before it is overloaded (its units).
    pub fn set_capacity(&mut self, series: &str, capacity: f64) -> Result<(), FieldError> {
        check_capacity(capacity)?;
        self.tracked(series).capacity = Some(capacity);
        Ok(())
    }

    /// Learns one observation of `series`. Refused input changes nothing; a returned
    /// anomaly was flagged by this observation.
    pub fn observe(
        &mut self,
        series: &str,
        ts: i64,
        value: f64,
    ) -> Result<Option<AnomalyState>, ObserveError> {
        match self.series.get(series) {
            Some(t) => t.model.check(ts, value)?,
            // A refused first value must not create the series.
            None => check_value(value)?,
        }
        self.make_room(series);
        let config = &self.config.model;
        let events = &self.events;
        let t = tracked(&mut self.series, config, series);
        let factor = t.events.effect(events, series, ts).factor;
        let model = &t.model;
        t.events.record(events, series, ts, value, || {
            model.baseline_at(config, ts).unwrap_or(value)
        });
        let result = t.model.observe(config, ts, value / factor);
        t.current = value;
        result
    }

    /// The capacity set for `series`.
    pub fn capacity(&self, series: &str) -> Option<f64> {
        self.series.get(series)?.capacity
    }

    /// Names of the series known.
    pub fn series(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(String::as_str)
    }

    /// Forecast of `series` for the next `steps` steps (events included).
    pub fn forecast(&self, series: &str, steps: usize) -> Vec<SeriesForecast> {
        let Some(t) = self.series.get(series) else {
            return Vec::new();
        };
        let tr = self.config.model.transform;
        let z = normal_quantile(self.config.quantile);
        t.model
            .forecast(&self.config.model, steps)
            .into_iter()
            .map(|p| {
                let f = t.events.effect(&self.events, series, p.ts).factor;
                SeriesForecast {
                    ts: p.ts,
                    median: f * p.median,
                    low: f * p.quantile_at(tr, -z),
                    high: f * p.quantile_at(tr, z),
                    event_factor: f,
                }
            })
            .collect()
    }

    /// The anomaly in progress on `series`, if any.
    pub fn anomaly(&self, series: &str) -> Option<&AnomalyState> {
        self.series.get(series)?.model.anomaly()
    }

    /// What past occurrences of event `kind` showed on `series`.
    pub fn learned_uplift(&self, series: &str, kind: &str) -> Option<f64> {
        Some(self.series.get(series)?.events.learned(kind)?.uplift)
    }

    /// Series with a capacity that are expected to exceed it within the horizon, most
    /// likely first (then soonest, then largest increase).
    pub fn overload_risks(&self) -> Vec<OverloadRisk> {
        let c = &self.config;
        let tr = c.model.transform;
        let zq = normal_quantile(c.quantile);
        let mut out = Vec::new();
        for (name, t) in &self.series {
            let Some(capacity) = t.capacity else { continue };
            let points = t.model.forecast(&c.model, c.model.horizon);
            let mut best: Option<(usize, f64)> = None; // (index, median) of the peak
            let mut probability: f64 = 0.0;
            let mut onset = None;
            let mut end = None;
            let mut peak_hi: f64 = 0.0;
            let mut effects = Vec::with_capacity(points.len());
            for (i, p) in points.iter().enumerate() {
                let effect = t.events.effect(&self.events, name, p.ts);
                let f = effect.factor;
                let median = f * p.median;
                let prob = p.prob_above(tr, capacity / f);
                if best.is_none_or(|(_, m)| median > m) {
                    best = Some((i, median));
                }
                peak_hi = peak_hi.max(f * p.quantile_at(tr, zq));
                probability = probability.max(prob);
                if onset.is_none() && prob >= c.onset_probability {
                    onset = Some(p.ts);
                } else if onset.is_some() && end.is_none() && prob < c.onset_probability {
                    end = Some(p.ts);
                }
                effects.push(effect);
            }
            let Some((peak_i, peak)) = best else { continue };
            if probability < c.min_probability {
                continue;
            }
            let p = &points[peak_i];
            let f = effects[peak_i].factor;
            let reason = if let Some(a) = t.model.anomaly() {
                Reason::Anomaly {
                    since: a.since,
                    direction: a.direction,
                }
            } else if !effects[peak_i].kinds.is_empty() {
                Reason::Event {
                    kinds: effects[peak_i].kinds.clone(),
                }
            } else {
                Reason::Seasonal
            };
            out.push(OverloadRisk {
                series: name.clone(),
                kind: SeriesKind::of(name),
                capacity,
                current: t.current,
                predicted_peak: peak,
                peak_ts: p.ts,
                peak_at_quantile: peak_hi,
                expected_increase: peak - t.current,
                increase_range: (
                    f * p.quantile_at(tr, -zq) - t.current,
                    f * p.quantile_at(tr, zq) - t.current,
                ),
                probability,
                onset_ts: onset,
                end_ts: end,
                reason,
                confidence: t.model.confidence(),
            });
        }
        out.sort_by(|a, b| {
            b.probability
                .total_cmp(&a.probability)
                .then(
                    a.onset_ts
                        .unwrap_or(i64::MAX)
                        .cmp(&b.onset_ts.unwrap_or(i64::MAX)),
                )
                .then(b.expected_increase.total_cmp(&a.expected_increase))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_lie_strictly_between_0_and_1() {
        let base = AnalyzerConfig::for_step(3600, 6);
        assert!(base.validate().is_ok());
        type Set = fn(&mut AnalyzerConfig, f64);
        let fields: [(&str, Set); 2] = [
            ("min_probability", |c, v| c.min_probability = v),
            ("onset_probability", |c, v| c.onset_probability = v),
        ];
        for (field, set) in fields {
            for bad in [0.0, 1.0, f64::NAN] {
                let mut c = base.clone();
                set(&mut c, bad);
                let refused = c.validate().err().map(|e| e.field);
                assert_eq!(refused.as_deref(), Some(field), "{field} = {bad}");
            }
        }
    }
}
