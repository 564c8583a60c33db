//! Rolling-origin backtests: every model learns the series online, and from every origin
//! (each step after the training part, or every `origin_every` steps) forecasts the next
//! `horizon` steps, scored against what happened.
//!
//! * **MASE** — mean absolute error divided by the in-sample one-step error of the
//!   seasonal naive forecast (first season) over the training part: < 1 beats it.
//! * **sMAPE** — mean of 200·|y − ŷ| / (|y| + |ŷ|) (0 when both are 0).
//! * **Coverage** — share of actuals inside the model's central interval.
//!
//! Parameters of the Shadowmesh model and of Holt-Winters are chosen on the training part
//! only (grid search on the same rolling-origin MAE), then both run on unchanged.

use crate::baselines::{Forecaster, HoltWinters, Naive, Precomputed, SeasonalNaive, Shadowmesh};
use crate::data::GridSeries;
use crate::error::FieldError;
use crate::model::{ModelConfig, SeasonCombination, Transform};
use serde::Serialize;

/// What to evaluate.
#[derive(Debug, Clone, Serialize)]
pub struct BacktestConfig {
    /// Steps ahead (1..=horizon are all scored).
    pub horizon: usize,
    /// Coverage of the evaluated interval (e.g. 0.8).
    pub coverage: f64,
    /// Leading share of the series used to fit parameters and the MASE scale.
    pub train_fraction: f64,
    /// Score an origin every this many steps.
    pub origin_every: usize,
    /// Season lengths in steps (first = the MASE scale's and Holt-Winters' season).
    pub seasons: Vec<usize>,
    /// Fit parameters on the training part (else defaults / fixed baselines).
    pub fit: bool,
    /// Scheduled events and holidays the Shadowmesh model is told about (`--events`).
    #[serde(skip)]
    pub events: std::sync::Arc<Vec<crate::events::ScheduledEvent>>,
    /// Score the event days separately but do not tell the model about the events (the
    /// "without the calendar" side of a comparison).
    pub events_scored_only: bool,
    /// Fit only this way of combining seasons (else both are tried).
    pub combine: Option<SeasonCombination>,
}

/// Forecasts another tool made at the backtest's origins ([`origins`]): scored like the
/// built-in models, on exactly the same origins and horizons.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerForecasts {
    /// The peer's name in the table.
    pub model: String,
    /// Per origin, in the order of [`origins`]: the forecasts of steps 1..=horizon.
    pub forecasts: Vec<Vec<f64>>,
}

impl PeerForecasts {
    /// Whether these are forecasts of every step 1..=`horizon` at every one of `origins`,
    /// each a finite number within ±[`crate::data::MAX_VALUE`]; the error says where not.
    pub fn check(&self, origins: &[usize], horizon: usize) -> Result<(), String> {
        if self.forecasts.len() != origins.len() {
            return Err(format!(
                "{} answered {} origins of {}",
                self.model,
                self.forecasts.len(),
                origins.len()
            ));
        }
        for (origin, f) in origins.iter().zip(&self.forecasts) {
            if f.len() < horizon {
                return Err(format!(
                    "{} answered {} of {horizon} steps at origin {origin}",
                    self.model,
                    f.len()
                ));
            }
            if let Some(v) = f
                .iter()
                .find(|v| !v.is_finite() || v.abs() > crate::data::MAX_VALUE)
            {
                return Err(format!(
                    "{} forecast {v} at origin {origin}: not a finite number within ±{:e}",
                    self.model,
                    crate::data::MAX_VALUE
                ));
            }
        }
        Ok(())
    }
}

/// The origins a backtest of `values` scores: every `origin_every`-th step after the
/// training part that has a value and a step after it.
pub fn origins(values: &[Option<f64>], cfg: &BacktestConfig) -> Vec<usize> {
    let n = values.len();
    let train = train_steps(n, cfg);
    let every = cfg.origin_every.max(1);
    (0..n)
        .filter(|&t| is_origin(values, t, train, n, every))
        .collect()
}

/// Whether step `t` of `values[..end]` is an origin when origins start at `from` and
/// come every `every` steps: it has a value and a step after it. The one rule of
/// [`origins`] and of the scoring loop.
fn is_origin(values: &[Option<f64>], t: usize, from: usize, end: usize, every: usize) -> bool {
    t >= from && t + 1 < end && values[t].is_some() && (t - from).is_multiple_of(every)
}

fn train_steps(n: usize, cfg: &BacktestConfig) -> usize {
    ((n as f64 * cfg.train_fraction) as usize)
        .clamp(cfg.horizon + 1, n.saturating_sub(1).max(cfg.horizon + 1))
}

/// Scores of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelScore {
    /// Model.
    pub model: String,
    /// Mean absolute scaled error over all horizons.
    pub mase: f64,
    /// Per horizon h = 1..=H.
    pub mase_by_horizon: Vec<f64>,
    /// Symmetric MAPE, percent.
    pub smape: f64,
    /// Empirical coverage of the central interval, if the model has intervals.
    pub coverage: Option<f64>,
    /// MASE over the forecasts whose target lies inside a calendar event (`--events`).
    pub mase_on_events: Option<f64>,
    /// Forecasts scored.
    pub forecasts: u64,
}

/// A whole backtest.
#[derive(Debug, Clone, Serialize)]
pub struct BacktestReport {
    /// Grid steps in the series.
    pub steps: usize,
    /// Steps used for training.
    pub train_steps: usize,
    /// The MASE scale.
    pub scale: f64,
    /// Settings.
    pub config: BacktestConfig,
    /// The Shadowmesh model's configuration as fitted.
    pub shadowmesh: ModelConfig,
    /// Scores, Shadowmesh first.
    pub scores: Vec<ModelScore>,
}

#[derive(Debug, Clone, Default)]
struct Accum {
    abs: Vec<f64>,
    n: Vec<u64>,
    smape: f64,
    covered: u64,
    interval_n: u64,
    event_abs: f64,
    event_n: u64,
}

impl Accum {
    fn new(h: usize) -> Accum {
        Accum {
            abs: vec![0.0; h],
            n: vec![0; h],
            ..Accum::default()
        }
    }

    fn mae(&self) -> f64 {
        self.abs.iter().sum::<f64>() / self.n.iter().sum::<u64>().max(1) as f64
    }
}

/// Runs `models` over `values[..end]`, scoring origins in `[from, end)`; `in_event[t]`
/// marks the steps a calendar event covers (may be empty).
#[allow(clippy::too_many_arguments)]
fn evaluate(
    models: &mut [Box<dyn Forecaster + Send>],
    values: &[Option<f64>],
    from: usize,
    end: usize,
    horizon: usize,
    every: usize,
    coverage: Option<f64>,
    in_event: &[bool],
) -> Vec<Accum> {
    let mut acc: Vec<Accum> = models.iter().map(|_| Accum::new(horizon)).collect();
    for t in 0..end {
        for m in models.iter_mut() {
            m.observe(t, values[t]);
        }
        if !is_origin(values, t, from, end, every) {
            continue;
        }
        for (m, a) in models.iter().zip(acc.iter_mut()) {
            let fc = m.forecast(horizon);
            let intervals = coverage.and_then(|c| m.interval(horizon, c));
            for (h, f) in fc.iter().enumerate() {
                let Some(Some(y)) = values.get(t + h + 1).filter(|_| t + h + 1 < end) else {
                    continue;
                };
                let err = (y - f).abs();
                a.abs[h] += err;
                a.n[h] += 1;
                if in_event.get(t + h + 1).copied().unwrap_or(false) {
                    a.event_abs += err;
                    a.event_n += 1;
                }
                let denom = y.abs() + f.abs();
                if denom > 0.0 {
                    a.smape += 200.0 * err / denom;
                }
                if let Some((lo, hi)) = intervals.as_ref().and_then(|iv| iv.get(h)) {
                    a.interval_n += 1;
                    if *y >= *lo && *y <= *hi {
                        a.covered += 1;
                    }
                }
            }
        }
    }
    acc
}

/// Mean |y_t − y_{t−m}| over `values[..end]`; NaN when undefined (no pair, or all equal).
fn seasonal_scale(values: &[Option<f64>], m: usize, end: usize) -> f64 {
    let (sum, n) = (m..end).fold((0.0, 0u64), |(s, n), t| match (values[t], values[t - m]) {
        (Some(a), Some(b)) => (s + (a - b).abs(), n + 1),
        _ => (s, n),
    });
    if n == 0 || sum == 0.0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Picks the candidate with the lowest training MAE, two threads at a time.
fn best_of<C: Clone + Send + Sync>(
    candidates: &[C],
    build: impl Fn(&C) -> Box<dyn Forecaster + Send> + Sync,
    values: &[Option<f64>],
    from: usize,
    end: usize,
    horizon: usize,
) -> C {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    let chunk = candidates.len().div_ceil(threads).max(1);
    let scores: Vec<(usize, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = candidates
            .chunks(chunk)
            .enumerate()
            .map(|(ci, part)| {
                let build = &build;
                s.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let mut m = vec![build(c)];
                            let a = evaluate(&mut m, values, from, end, horizon, 3, None, &[]);
                            (ci * chunk + i, a[0].mae())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let best = scores
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |b| b.0);
    candidates[best].clone()
}

/// Which steps of `series` an event covers: each event marks where its steps begin and
/// end, one pass adds them up — O(steps + events), whatever the calendar's size.
fn event_steps(series: &GridSeries, events: &[crate::events::ScheduledEvent]) -> Vec<bool> {
    let n = series.values.len();
    let step = series.step_secs;
    // The first step at or after `ts`, within 0..=n.
    let step_at = |ts: i64| {
        let d = ts.saturating_sub(series.t0);
        usize::try_from(d.saturating_add(step - 1).div_euclid(step)).map_or(0, |i| i.min(n))
    };
    let mut edges = vec![0i64; n + 1];
    for e in events {
        let (from, to) = (
            step_at(e.start),
            step_at(e.start.saturating_add(e.duration_secs)),
        );
        if from < to {
            edges[from] += 1;
            edges[to] -= 1;
        }
    }
    let mut open = 0;
    edges[..n]
        .iter()
        .map(|d| {
            open += d;
            open > 0
        })
        .collect()
}

/// The Shadowmesh parameter grid around `base`.
fn shadowmesh_grid(base: &ModelConfig, only: Option<SeasonCombination>) -> Vec<ModelConfig> {
    let mut out = Vec::new();
    let combines = match only {
        Some(c) => vec![c],
        None => vec![SeasonCombination::Nested, SeasonCombination::Additive],
    };
    for combine in combines {
        for transform in [Transform::Log1p, Transform::Sqrt, Transform::None] {
            for level in [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4] {
                for season in [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5] {
                    for ar in [0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999] {
                        let mut c = base.clone();
                        c.combine = combine;
                        c.transform = transform;
                        c.level_rate = level;
                        c.ar = ar;
                        for s in &mut c.seasons {
                            s.rate = season;
                        }
                        out.push(c);
                    }
                }
            }
        }
    }
    out
}

/// Runs the backtest of the Shadowmesh model (configured like `model`) and the baselines.
///
/// Errors name the setting (`horizon`, `train`, `csv`) when the series is too short for
/// it, when no forecast could be scored, or when the MASE scale is undefined (a training
/// part without any seasonal change, e.g. constant).
pub fn run(
    series: &GridSeries,
    cfg: &BacktestConfig,
    model: ModelConfig,
    peers: Vec<PeerForecasts>,
) -> Result<BacktestReport, FieldError> {
    let values = &series.values;
    let n = values.len();
    if cfg.horizon == 0 {
        return Err(FieldError::new("horizon", "must be at least 1"));
    }
    if n < cfg.horizon + 2 {
        return Err(FieldError::new(
            "horizon",
            format!(
                "the series has {n} steps; a horizon of {} needs at least {}",
                cfg.horizon,
                cfg.horizon + 2
            ),
        ));
    }
    let train = train_steps(n, cfg);
    let m = cfg.seasons.first().copied().unwrap_or(1).max(1);
    // Fitting scores origins after one longest season of warm-up.
    let warm = cfg
        .seasons
        .iter()
        .copied()
        .max()
        .unwrap_or(m)
        .min(train / 2);

    let told = if cfg.events_scored_only {
        std::sync::Arc::default()
    } else {
        cfg.events.clone()
    };
    let shadowmesh = if cfg.fit {
        best_of(
            &shadowmesh_grid(&model, cfg.combine),
            |c| Box::new(Shadowmesh::with_events(c.clone(), series.t0, told.clone())),
            values,
            warm,
            train,
            cfg.horizon,
        )
    } else {
        model
    };
    let hw = if cfg.fit {
        let mut grid = Vec::new();
        for a in [0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6] {
            for b in [0.0, 0.01, 0.05] {
                for g in [0.02, 0.05, 0.1, 0.2, 0.4] {
                    grid.push((a, b, g));
                }
            }
        }
        best_of(
            &grid,
            |&(a, b, g)| Box::new(HoltWinters::new(a, b, g, m)),
            values,
            warm,
            train,
            cfg.horizon,
        )
    } else {
        (0.2, 0.01, 0.1)
    };

    let mut models: Vec<Box<dyn Forecaster + Send>> = vec![
        Box::new(Shadowmesh::with_events(shadowmesh.clone(), series.t0, told)),
        Box::new(HoltWinters::new(hw.0, hw.1, hw.2, m)),
        Box::new(Naive::default()),
    ];
    for s in &cfg.seasons {
        models.push(Box::new(SeasonalNaive::new(*s, &format!("m={s}"))));
    }
    let at = origins(values, cfg);
    for p in peers {
        p.check(&at, cfg.horizon)
            .map_err(|message| FieldError::new("peers", message))?;
        models.push(Box::new(Precomputed::new(
            p.model,
            at.iter().copied().zip(p.forecasts),
        )));
    }
    let scale = seasonal_scale(values, m, train);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(FieldError::new(
            "train",
            format!(
                "the first {train} steps have no seasonal-naive error (m = {m}): the MASE scale is undefined — a constant or mostly missing series?"
            ),
        ));
    }
    let in_event = event_steps(series, &cfg.events);
    let acc = evaluate(
        &mut models,
        values,
        train,
        n,
        cfg.horizon,
        cfg.origin_every.max(1),
        Some(cfg.coverage),
        &in_event,
    );
    let scores = models
        .iter()
        .zip(acc)
        .map(|(model, a)| {
            let total = a.n.iter().sum::<u64>();
            ModelScore {
                model: model.name(),
                mase: a.mae() / scale,
                mase_by_horizon: a
                    .abs
                    .iter()
                    .zip(&a.n)
                    // NaN (null in JSON): a horizon never scored is no score, not 0.
                    .map(|(s, n)| {
                        if *n == 0 {
                            f64::NAN
                        } else {
                            s / *n as f64 / scale
                        }
                    })
                    .collect(),
                smape: a.smape / total.max(1) as f64,
                coverage: (a.interval_n > 0).then(|| a.covered as f64 / a.interval_n as f64),
                mase_on_events: (a.event_n > 0).then(|| a.event_abs / a.event_n as f64 / scale),
                forecasts: total,
            }
        })
        .collect::<Vec<ModelScore>>();
    if scores.first().is_none_or(|s| s.forecasts == 0) {
        return Err(FieldError::new(
            "csv",
            format!(
                "no forecast was scored: after the {train} training steps no origin has an actual value within the horizon"
            ),
        ));
    }
    Ok(BacktestReport {
        steps: n,
        train_steps: train,
        scale,
        config: cfg.clone(),
        shadowmesh,
        scores,
    })
}
