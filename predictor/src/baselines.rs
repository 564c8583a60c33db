//! Point forecasters the backtest compares: the Shadowmesh model and the classic
//! baselines (naive, seasonal naive, plain Holt-Winters), behind one trait.

use crate::events::{EventMemory, ScheduledEvent};
use crate::model::{ModelConfig, SeasonalModel, normal_quantile};

/// A model that learns one observation at a time and forecasts the next steps.
pub trait Forecaster {
    /// Name in reports.
    fn name(&self) -> String;
    /// Learns the value at grid step `t` (`None` = missing).
    fn observe(&mut self, t: usize, y: Option<f64>);
    /// Point forecasts for steps t+1 ..= t+`steps` after the last observed step.
    fn forecast(&self, steps: usize) -> Vec<f64>;
    /// Central intervals of `coverage` for the same steps, if the model has them.
    fn interval(&self, _steps: usize, _coverage: f64) -> Option<Vec<(f64, f64)>> {
        None
    }
}

/// Tomorrow = today: the last value.
#[derive(Debug, Default, Clone)]
pub struct Naive {
    last: f64,
}

impl Forecaster for Naive {
    fn name(&self) -> String {
        "naive".into()
    }
    fn observe(&mut self, _t: usize, y: Option<f64>) {
        if let Some(y) = y {
            self.last = y;
        }
    }
    fn forecast(&self, steps: usize) -> Vec<f64> {
        vec![self.last; steps]
    }
}

/// The value one season earlier.
#[derive(Debug, Clone)]
pub struct SeasonalNaive {
    label: String,
    history: Vec<Option<f64>>,
    t: usize,
    last: f64,
}

impl SeasonalNaive {
    /// With a season of `period` steps, called `label` in reports.
    pub fn new(period: usize, label: &str) -> SeasonalNaive {
        SeasonalNaive {
            label: label.to_string(),
            history: vec![None; period.max(1)],
            t: 0,
            last: 0.0,
        }
    }
}

impl Forecaster for SeasonalNaive {
    fn name(&self) -> String {
        format!("seasonal naive ({})", self.label)
    }
    fn observe(&mut self, t: usize, y: Option<f64>) {
        let m = self.history.len();
        self.history[t % m] = y;
        self.t = t;
        if let Some(y) = y {
            self.last = y;
        }
    }
    fn forecast(&self, steps: usize) -> Vec<f64> {
        let m = self.history.len();
        (1..=steps)
            .map(|h| {
                // The most recent past step in the same phase of the season.
                let back = m * h.div_ceil(m);
                self.history[(self.t + h + m * 1_000_000 - back) % m].unwrap_or(self.last)
            })
            .collect()
    }
}

/// Plain additive Holt-Winters (level, trend, one season) on the raw series; missing
/// values are replaced by its own one-step forecast.
#[derive(Debug, Clone)]
pub struct HoltWinters {
    alpha: f64,
    beta: f64,
    gamma: f64,
    season: Vec<f64>,
    level: f64,
    trend: f64,
    t: usize,
    seen: usize,
}

impl HoltWinters {
    /// With these smoothing rates and a season of `period` steps.
    pub fn new(alpha: f64, beta: f64, gamma: f64, period: usize) -> HoltWinters {
        HoltWinters {
            alpha,
            beta,
            gamma,
            season: vec![0.0; period.max(1)],
            level: 0.0,
            trend: 0.0,
            t: 0,
            seen: 0,
        }
    }

    /// Its parameters.
    pub fn params(&self) -> (f64, f64, f64) {
        (self.alpha, self.beta, self.gamma)
    }
}

impl Forecaster for HoltWinters {
    fn name(&self) -> String {
        format!(
            "Holt-Winters (α={}, β={}, γ={}, m={})",
            self.alpha,
            self.beta,
            self.gamma,
            self.season.len()
        )
    }
    fn observe(&mut self, t: usize, y: Option<f64>) {
        let m = self.season.len();
        let s = self.season[t % m];
        if self.seen == 0 {
            if let Some(y) = y {
                self.level = y;
                self.seen = 1;
                self.t = t;
            }
            return;
        }
        let fc = self.level + self.trend + s;
        let y = y.unwrap_or(fc);
        // Initial period: the season starts as deviations from the first level.
        if self.seen <= m {
            self.season[t % m] = y - self.level;
            self.seen += 1;
            self.t = t;
            return;
        }
        let level = self.alpha * (y - s) + (1.0 - self.alpha) * (self.level + self.trend);
        self.trend = self.beta * (level - self.level) + (1.0 - self.beta) * self.trend;
        self.season[t % m] = self.gamma * (y - level) + (1.0 - self.gamma) * s;
        self.level = level;
        self.seen += 1;
        self.t = t;
    }
    fn forecast(&self, steps: usize) -> Vec<f64> {
        let m = self.season.len();
        (1..=steps)
            .map(|h| (self.level + h as f64 * self.trend + self.season[(self.t + h) % m]).max(0.0))
            .collect()
    }
}

/// The Shadowmesh model as a [`Forecaster`] on a regular grid starting at `t0`, with an
/// events calendar handled as the analyzer does: observations inside an event are divided
/// by its uplift (declared, or learned from its kind's past occurrences) before the model
/// learns, and forecasts inside one are multiplied by it.
#[derive(Debug, Clone)]
pub struct Shadowmesh {
    /// Its configuration.
    pub config: ModelConfig,
    model: SeasonalModel,
    t0: i64,
    /// The calendar, sorted by start.
    events: std::sync::Arc<Vec<ScheduledEvent>>,
    /// Longest event: the ones covering `ts` start within this before it.
    longest: i64,
    memory: EventMemory,
}

/// The events of `sorted` (by start; none longer than `longest`) that may cover `ts`: a
/// binary search, not a scan — a backtest asks at every step of every candidate model.
fn near(sorted: &[ScheduledEvent], longest: i64, ts: i64) -> &[ScheduledEvent] {
    let from = sorted.partition_point(|e| e.start <= ts.saturating_sub(longest));
    let to = sorted.partition_point(|e| e.start <= ts);
    &sorted[from.min(to)..to]
}

/// The series name events are matched against in a backtest (one series).
const SERIES: &str = "backtest";

impl Shadowmesh {
    /// A fresh model; grid step `t` is unix time `t0 + t·step`.
    pub fn new(config: ModelConfig, t0: i64) -> Shadowmesh {
        Shadowmesh::with_events(config, t0, std::sync::Arc::default())
    }

    /// A fresh model that knows the calendar `events`.
    pub fn with_events(
        config: ModelConfig,
        t0: i64,
        events: std::sync::Arc<Vec<ScheduledEvent>>,
    ) -> Shadowmesh {
        let events = if events.is_sorted_by_key(|e| e.start) {
            events
        } else {
            let mut sorted = (*events).clone();
            sorted.sort_by_key(|e| e.start);
            std::sync::Arc::new(sorted)
        };
        Shadowmesh {
            model: SeasonalModel::new(&config),
            config,
            t0,
            longest: events.iter().map(|e| e.duration_secs).max().unwrap_or(0),
            events,
            memory: EventMemory::default(),
        }
    }

    fn factor(&self, ts: i64) -> f64 {
        if self.events.is_empty() {
            return 1.0;
        }
        let near = near(&self.events, self.longest, ts);
        self.memory.effect(near, SERIES, ts).factor
    }
}

impl Forecaster for Shadowmesh {
    fn name(&self) -> String {
        "Shadowmesh".into()
    }
    fn observe(&mut self, t: usize, y: Option<f64>) {
        if let Some(y) = y {
            let ts = self.t0 + t as i64 * self.config.step_secs;
            let factor = self.factor(ts);
            if !self.events.is_empty() {
                let (model, config) = (&self.model, &self.config);
                let near = near(&self.events, self.longest, ts);
                self.memory.record(near, SERIES, ts, y, || {
                    model.baseline_at(config, ts).unwrap_or(y)
                });
            }
            // The backtest feeds clean, ordered data; a refusal would be a bug there.
            let _ = self.model.observe(&self.config, ts, y / factor);
        }
    }
    fn forecast(&self, steps: usize) -> Vec<f64> {
        self.model
            .forecast(&self.config, steps)
            .iter()
            .map(|p| p.median * self.factor(p.ts))
            .collect()
    }
    fn interval(&self, steps: usize, coverage: f64) -> Option<Vec<(f64, f64)>> {
        let z = normal_quantile(0.5 + coverage / 2.0);
        let tr = self.config.transform;
        Some(
            self.model
                .forecast(&self.config, steps)
                .iter()
                .map(|p| {
                    let f = self.factor(p.ts);
                    (p.quantile_at(tr, -z) * f, p.quantile_at(tr, z) * f)
                })
                .collect(),
        )
    }
}

/// Forecasts made elsewhere (a peer library), looked up by origin.
pub struct Precomputed {
    name: String,
    by_origin: std::collections::HashMap<usize, Vec<f64>>,
    t: usize,
}

impl Precomputed {
    /// `forecasts`: (origin, forecasts of steps 1..=H).
    pub fn new(name: String, forecasts: impl IntoIterator<Item = (usize, Vec<f64>)>) -> Self {
        Precomputed {
            name,
            by_origin: forecasts.into_iter().collect(),
            t: 0,
        }
    }
}

impl Forecaster for Precomputed {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn observe(&mut self, t: usize, _: Option<f64>) {
        self.t = t;
    }
    fn forecast(&self, steps: usize) -> Vec<f64> {
        self.by_origin
            .get(&self.t)
            .map(|f| f[..steps.min(f.len())].to_vec())
            .unwrap_or_default()
    }
}
