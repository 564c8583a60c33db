//! The forecasting model of one series: multiple seasonality, a level, a short-term
//! autoregressive correction, per-horizon error variance, and an anomaly detector — all
//! updated online in O(horizon) per observation, in bounded memory.
//!
//! In the transformed space `z = T(y)` (see [`Transform`]) the model is a double seasonal
//! Holt-Winters in error-correction form with an AR(1) adjustment (Taylor, 2003):
//!
//! ```text
//! one-step forecast   ẑ_t     = ℓ_{t-1} + S[t] + φ·r_{t-1}
//! innovation          ε_t     = z_t − ẑ_t
//! updates             ℓ ← ℓ + α·ε,   S_i[t] ← S_i[t] + γ_i·((z_t − ℓ_{t-1}) − S_i[t])
//! residual            r_t     = z_t − (ℓ_t + S[t])     (what the updated state misses)
//! h-step forecast     ẑ_{t+h} = ℓ_t + S[t+h] + φ^h·r_t
//! ```
//!
//! `S[t]` is the longest season's bucket (the hour of the week), blended with the shorter
//! seasons' (the hour of the day) while it has been seen fewer than three times, so a
//! week-old series already has a daily shape. Every season learns the same target — the
//! observation less the level — at its own rate; none has to explain another's residue.
//!
//! ```text
//! ```
//!
//! * **Seasons** are profiles of buckets (e.g. 24 hourly buckets for the day, 168 for the
//!   week); a bucket seen few times learns fast (`γ ≥ 1/visits`), so forecasts are useful
//!   after the first period and sharpen over the next ones.
//! * **Robustness**: innovations beyond `clip`·σ are clipped before they update the state,
//!   so a lone outlier cannot drag the level or a season; a *sustained* shift is caught by
//!   the CUSUM detector ([`crate::anomaly`]), which re-levels the model at once.
//! * **Intervals**: for every horizon h the model keeps an EWMA of squared h-step errors
//!   (computed from the last H levels and residuals, O(H) memory), so intervals widen with
//!   the horizon as the data says, not as a formula assumes. Quantiles are normal in `z`
//!   ([`statrs`]); an adaptive scale keeps the configured interval's empirical coverage on
//!   target. Quantiles map through the inverse transform unchanged.
//! * **Gaps** advance time without learning: the AR correction decays over missing steps.

use crate::anomaly::{AnomalyState, Cusum, CusumConfig};
use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

/// Variance-stabilising transform applied before modelling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// `z = y`.
    None,
    /// `z = ln(1 + y)`: multiplicative seasonality becomes additive; fits request rates.
    #[default]
    Log1p,
    /// `z = √y`: between the two, for counts.
    Sqrt,
}

impl Transform {
    /// `T(y)`.
    pub fn forward(self, y: f64) -> f64 {
        match self {
            Transform::None => y,
            Transform::Log1p => y.ln_1p(),
            Transform::Sqrt => y.sqrt(),
        }
    }

    /// `T⁻¹(z)`, clamped to non-negative demand.
    pub fn inverse(self, z: f64) -> f64 {
        match self {
            Transform::None => z,
            Transform::Log1p => z.exp_m1(),
            Transform::Sqrt => z.max(0.0).powi(2),
        }
        .max(0.0)
    }
}

/// One seasonal cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeasonSpec {
    /// Period in seconds (86,400 for daily, 604,800 for weekly).
    pub period_secs: i64,
    /// Buckets per period (24 = hourly over a day). A bucket is `period / buckets` long;
    /// at second resolution, use coarse buckets: the level and AR terms follow the rest.
    pub buckets: usize,
    /// Smoothing rate of the profile (γ), in (0, 1).
    pub rate: f64,
}

/// How one series is modelled. Shared by all series of an analyzer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Sampling step in seconds; observations are expected on this grid (gaps allowed).
    pub step_secs: i64,
    /// Seasonal cycles, e.g. daily and weekly.
    pub seasons: Vec<SeasonSpec>,
    /// Transform before modelling.
    pub transform: Transform,
    /// Level smoothing rate (α), in (0, 1).
    pub level_rate: f64,
    /// AR(1) coefficient of the residual (φ), in [0, 1).
    pub ar: f64,
    /// Horizons (in steps) whose error variance is tracked; forecasts reach this far.
    pub horizon: usize,
    /// Innovations are clipped to ±`clip`·σ before updating the state.
    pub clip: f64,
    /// Coverage of the interval the adaptive scale calibrates (e.g. 0.8).
    pub calibrate_coverage: f64,
    /// Anomaly detector.
    pub anomaly: CusumConfig,
    /// How the seasons combine.
    #[serde(default)]
    pub combine: SeasonCombination,
}

/// How several seasons make the seasonal component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeasonCombination {
    /// Each season learns the whole seasonal shape; the longest one's bucket is used once
    /// it has been seen a few times, the shorter ones' until then.
    #[default]
    Nested,
    /// Each season learns what the shorter ones leave (the weekly season: how a weekday
    /// differs from the daily shape); the component is their sum. The daily shape learns
    /// from every day, the weekly deviations from every week.
    Additive,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

fn rate(field: &str, v: f64) -> Result<(), FieldError> {
    if v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(bad(field, format!("{v} is not in (0, 1)")))
    }
}

/// Seconds in a day.
pub const DAY: i64 = 86_400;
/// Seconds in a week.
pub const WEEK: i64 = 7 * DAY;

impl ModelConfig {
    /// Defaults for a series sampled every `step_secs`: a daily shape at the data's own
    /// resolution (at most 1,440 buckets: one a minute) plus weekly deviations per hour
    /// (168 buckets: how a weekday differs from the daily shape rarely needs finer),
    /// combined additively; log transform, horizon `horizon` steps. ≈ 8 KB per series at
    /// minute resolution, ≈ 1 KB at hourly.
    pub fn for_step(step_secs: i64, horizon: usize) -> ModelConfig {
        // The most buckets up to `max` that still divide the period evenly.
        let buckets = |period: i64, max: i64| {
            let want = (period / step_secs.max(1)).clamp(1, max);
            (1..=want).rev().find(|b| period % b == 0).unwrap_or(1) as usize
        };
        ModelConfig {
            step_secs,
            seasons: vec![
                SeasonSpec {
                    period_secs: DAY,
                    buckets: buckets(DAY, 1_440),
                    rate: 0.1,
                },
                SeasonSpec {
                    period_secs: WEEK,
                    buckets: buckets(WEEK, 168),
                    rate: 0.1,
                },
            ],
            transform: Transform::Log1p,
            level_rate: 0.01,
            ar: 0.8,
            horizon,
            clip: 3.0,
            calibrate_coverage: 0.8,
            anomaly: CusumConfig::default(),
            combine: SeasonCombination::Additive,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(1..=86_400).contains(&self.step_secs) {
            return Err(bad("step_secs", "must be 1..=86400 seconds"));
        }
        for (i, s) in self.seasons.iter().enumerate() {
            if s.period_secs > 10 * 366 * 86_400 {
                return Err(bad(
                    format!("seasons[{i}].period_secs"),
                    "is longer than ten years",
                ));
            }
            if s.period_secs < 2 * self.step_secs {
                return Err(bad(
                    format!("seasons[{i}].period_secs"),
                    format!("{} is shorter than two steps", s.period_secs),
                ));
            }
            if s.buckets == 0 || s.buckets > 100_000 {
                return Err(bad(format!("seasons[{i}].buckets"), "must be 1..=100000"));
            }
            if s.period_secs % s.buckets as i64 != 0 {
                return Err(bad(
                    format!("seasons[{i}].buckets"),
                    format!("{} does not divide the period {}", s.buckets, s.period_secs),
                ));
            }
            rate(&format!("seasons[{i}].rate"), s.rate)?;
        }
        rate("level_rate", self.level_rate)?;
        if !(0.0..1.0).contains(&self.ar) {
            return Err(bad("ar", format!("{} is not in [0, 1)", self.ar)));
        }
        if self.horizon == 0 || self.horizon > 10_000 {
            return Err(bad("horizon", "must be 1..=10000 steps"));
        }
        if self.clip.is_nan() || self.clip < 1.0 {
            return Err(bad("clip", "must be at least 1"));
        }
        rate("calibrate_coverage", self.calibrate_coverage)?;
        self.anomaly.validate().map_err(|e| e.within("anomaly"))
    }
}

/// Why an observation was refused. The model is unchanged by a refused observation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObserveError {
    /// NaN or infinite.
    #[error("value {0} is not a finite number")]
    NotFinite(f64),
    /// Demand cannot be negative.
    #[error("value {0} is negative")]
    Negative(f64),
    /// Beyond any demand (and beyond what the model's sums keep finite).
    #[error("value {0} is beyond {MAX_DEMAND:e}")]
    TooLarge(f64),
    /// At or before the last accepted observation.
    #[error("timestamp {got} is not after the last observation at {last}")]
    OutOfOrder {
        /// The last accepted timestamp.
        last: i64,
        /// The refused one.
        got: i64,
    },
}

/// Learned profile of one season.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeasonState {
    values: Vec<f32>,
    visits: Vec<u8>,
}

impl SeasonState {
    /// Mean of the buckets seen so far (`None` before any).
    fn seen_mean(&self) -> Option<f64> {
        let (sum, n) = self
            .values
            .iter()
            .zip(&self.visits)
            .filter(|(_, v)| **v > 0)
            .fold((0.0, 0u32), |(s, n), (x, _)| (s + f64::from(*x), n + 1));
        (n > 0).then(|| sum / f64::from(n))
    }

    /// Lowers every bucket seen so far by `by` (one never seen holds no deviation).
    fn shift_seen(&mut self, by: f64) {
        for (x, v) in self.values.iter_mut().zip(&self.visits) {
            if *v > 0 {
                *x -= by as f32;
            }
        }
    }
}

/// A fixed ring of the last `n` values, newest last.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ring {
    values: Vec<f32>,
    next: usize,
    len: usize,
}

impl Ring {
    fn new(n: usize) -> Ring {
        Ring {
            values: vec![0.0; n],
            next: 0,
            len: 0,
        }
    }

    fn push(&mut self, v: f64) {
        let n = self.values.len();
        self.values[self.next] = v as f32;
        self.next = (self.next + 1) % n;
        self.len = (self.len + 1).min(n);
    }

    /// The value pushed `ago` pushes before the newest (0 = newest).
    fn get(&self, ago: usize) -> Option<f64> {
        let n = self.values.len();
        (ago < self.len).then(|| f64::from(self.values[(self.next + n - 1 - ago) % n]))
    }
}

/// One point of a forecast, in the series' own units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ForecastPoint {
    /// Target time (unix seconds).
    pub ts: i64,
    /// Steps ahead.
    pub h: usize,
    /// Median.
    pub median: f64,
    /// In the transformed space: centre and standard deviation (for probabilities).
    pub z_mean: f64,
    /// Standard deviation in the transformed space (already calibrated).
    pub z_sd: f64,
}

/// How much to trust a series' forecasts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Confidence {
    /// Observations learned from.
    pub samples: u64,
    /// Fraction of every season's buckets seen at least twice (1 = all seasons learned).
    pub seasons_learned: f64,
    /// Current scale of the intervals relative to the raw error estimate.
    pub interval_scale: f64,
}

/// The model of one series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeasonalModel {
    last_ts: Option<i64>,
    samples: u64,
    level: f64,
    residual: f64,
    seasons: Vec<SeasonState>,
    /// ℓ and r at each of the last H steps (for h-step errors).
    past_levels: Ring,
    past_residuals: Ring,
    /// EWMA of squared h-step errors, h = 1..=H.
    var: Vec<f32>,
    var_samples: u32,
    scale: f64,
    cusum: Cusum,
}

/// Innovations whose variance is not known yet are trusted as they come for this many
/// samples, then clipping and anomaly detection start.
const WARMUP: u32 = 24;
/// Visits after which a season's bucket is trusted on its own.
const TRUSTED_VISITS: f64 = 3.0;
/// Smallest σ, relative to the forecast's magnitude in the transformed space.
const SD_FLOOR: f64 = 0.005;
/// Slowest rate of the variance EWMAs.
const VAR_RATE: f64 = 0.02;
/// Step of the adaptive interval scale.
const SCALE_RATE: f64 = 0.02;

impl SeasonalModel {
    /// An empty model for `config` (assumed valid).
    pub fn new(config: &ModelConfig) -> SeasonalModel {
        SeasonalModel {
            last_ts: None,
            samples: 0,
            level: 0.0,
            residual: 0.0,
            seasons: config
                .seasons
                .iter()
                .map(|s| SeasonState {
                    values: vec![0.0; s.buckets],
                    visits: vec![0; s.buckets],
                })
                .collect(),
            past_levels: Ring::new(config.horizon),
            past_residuals: Ring::new(config.horizon),
            var: vec![0.0; config.horizon],
            var_samples: 0,
            scale: 1.0,
            cusum: Cusum::default(),
        }
    }

    /// Bytes this model holds (state and heap), for capacity planning.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .seasons
                .iter()
                .map(|s| s.values.capacity() * 4 + s.visits.capacity())
                .sum::<usize>()
            + (self.past_levels.values.capacity()
                + self.past_residuals.values.capacity()
                + self.var.capacity())
                * 4
    }

    /// Timestamp of the last accepted observation.
    pub fn last_ts(&self) -> Option<i64> {
        self.last_ts
    }

    /// Observations learned from.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    fn bucket(spec: &SeasonSpec, ts: i64) -> usize {
        let width = spec.period_secs / spec.buckets as i64;
        (ts.rem_euclid(spec.period_secs) / width) as usize
    }

    /// The seasonal component at `ts`: the longest season's bucket, blended with the
    /// shorter seasons' while that bucket has been seen fewer than [`TRUSTED_VISITS`] times
    /// (a new week borrows the average day).
    fn seasonal(&self, config: &ModelConfig, ts: i64) -> f64 {
        if config.combine == SeasonCombination::Additive {
            return config
                .seasons
                .iter()
                .zip(&self.seasons)
                .map(|(spec, s)| f64::from(s.values[Self::bucket(spec, ts)]))
                .sum();
        }
        let mut value = 0.0;
        for (spec, s) in config.seasons.iter().zip(&self.seasons) {
            let b = Self::bucket(spec, ts);
            let trust = (f64::from(s.visits[b]) / TRUSTED_VISITS).min(1.0);
            value += trust * (f64::from(s.values[b]) - value);
        }
        value
    }

    /// Checks an observation without learning from it.
    pub fn check(&self, ts: i64, y: f64) -> Result<(), ObserveError> {
        check_value(y)?;
        if let Some(last) = self.last_ts
            && ts <= last
        {
            return Err(ObserveError::OutOfOrder { last, got: ts });
        }
        Ok(())
    }

    /// The one-step median forecast for `ts` (before observing it), in the series' units.
    pub fn baseline_at(&self, config: &ModelConfig, ts: i64) -> Option<f64> {
        let last = self.last_ts?;
        let h = ((ts - last) / config.step_secs).max(1);
        let z = self.level
            + self.seasonal(config, ts)
            + config.ar.powi(h.min(i32::MAX as i64) as i32) * self.residual;
        Some(config.transform.inverse(z))
    }

    /// Learns from `y` observed at `ts`. Refused input changes nothing.
    pub fn observe(
        &mut self,
        config: &ModelConfig,
        ts: i64,
        y: f64,
    ) -> Result<Option<AnomalyState>, ObserveError> {
        self.check(ts, y)?;
        let z = config.transform.forward(y);
        let Some(last) = self.last_ts else {
            self.last_ts = Some(ts);
            self.samples = 1;
            self.level = z;
            self.past_levels.push(self.level);
            self.past_residuals.push(0.0);
            return Ok(None);
        };
        // Missing steps: time passes, nothing is learned, the AR correction decays.
        let steps = ((ts - last) / config.step_secs).max(1) as usize;
        for _ in 1..steps.min(config.horizon + 1) {
            self.residual *= config.ar;
            self.past_levels.push(self.level);
            self.past_residuals.push(self.residual);
        }
        if steps > config.horizon {
            self.residual *= config.ar.powi((steps - config.horizon - 1) as i32);
        }

        let seasonal = self.seasonal(config, ts);
        let base = self.level + seasonal;
        let innovation = z - (base + config.ar * self.residual);
        self.learn_variance(config, z, seasonal);
        // A floor on σ: a perfectly regular series must not turn rounding into anomalies.
        let sd = (f64::from(self.var[0]).max(0.0).sqrt()).max(SD_FLOOR * base.abs().max(1.0));
        let warmed = self.var_samples > WARMUP;

        // Detect only where the model knows what to expect: before the season's bucket is
        // learned, every first weekend would look like an anomaly.
        let knows_season = config
            .seasons
            .iter()
            .zip(&self.seasons)
            .all(|(spec, s)| f64::from(s.visits[Self::bucket(spec, ts)]) >= TRUSTED_VISITS);
        let mut anomaly = None;
        if warmed
            && knows_season
            && let Some(shift) = self
                .cusum
                .update(&config.anomaly, ts, innovation / sd, innovation)
        {
            // A sustained change: re-level at once instead of learning it slowly; the
            // short-term correction restarts from there.
            self.level += shift.mean_innovation;
            anomaly = Some(shift.state);
        }
        let bound = config.clip * sd;
        let clipped = if warmed {
            innovation.clamp(-bound, bound)
        } else {
            innovation
        };
        if anomaly.is_none() {
            let previous = self.level;
            self.level += config.level_rate * clipped;
            // Seasons learn what the AR term cannot: their deviations are bounded by the
            // longest horizon's error, not the (AR-corrected) one-step error.
            let season_bound = config.clip
                * self
                    .var
                    .iter()
                    .map(|v| f64::from(*v).max(0.0).sqrt())
                    .fold(sd, f64::max);
            self.touch_seasons(config, ts, z - previous, season_bound);
            self.renormalize(config.combine);
        }
        // What the updated state still does not explain carries into the next steps
        // (decaying by φ per step); an outlier's excess is not carried.
        let left = z - (self.level + self.seasonal(config, ts));
        self.residual = if warmed && anomaly.is_none() {
            left.clamp(-bound, bound)
        } else {
            left
        };
        self.samples += 1;
        self.last_ts = Some(ts);
        self.past_levels.push(self.level);
        self.past_residuals.push(self.residual);
        Ok(anomaly)
    }

    /// Moves every season's bucket at `ts` towards `target` (the observation less the
    /// level, clipped), each at its own rate — faster while a bucket has few visits.
    fn touch_seasons(&mut self, config: &ModelConfig, ts: i64, target: f64, bound: f64) {
        let additive = config.combine == SeasonCombination::Additive;
        // Additive: each season learns what the others do not explain.
        let mut others = if additive {
            self.seasonal(config, ts)
        } else {
            0.0
        };
        for (spec, s) in config.seasons.iter().zip(&mut self.seasons) {
            let b = Self::bucket(spec, ts);
            let visits = s.visits[b];
            let own = f64::from(s.values[b]);
            others -= if additive { own } else { 0.0 };
            let current = own + others;
            let gamma = spec.rate.max(1.0 / (f64::from(visits) + 1.0));
            let step = if visits == 0 {
                target - current
            } else {
                (target - current).clamp(-bound, bound)
            };
            let next = own + gamma * step;
            s.values[b] = next as f32;
            s.visits[b] = visits.saturating_add(1);
            others += if additive { next } else { 0.0 };
        }
    }

    /// Keeps the shortest season's mean (over the buckets seen) at zero by moving it into
    /// the level, shifting every season alike so forecasts are unchanged. The level then
    /// *is* the mean demand, and profiles learned while the level was still settling stay
    /// consistent with it.
    fn renormalize(&mut self, combine: SeasonCombination) {
        if combine == SeasonCombination::Additive {
            // Each season's mean is the level's: the deviations of each stay centred.
            for s in &mut self.seasons {
                if let Some(mean) = s.seen_mean() {
                    self.level += mean;
                    s.shift_seen(mean);
                }
            }
            return;
        }
        let Some(mean) = self.seasons.first().and_then(SeasonState::seen_mean) else {
            return;
        };
        self.level += mean;
        for s in &mut self.seasons {
            s.shift_seen(mean);
        }
    }

    /// Updates the per-horizon error variance and the adaptive interval scale with `z`
    /// observed now, from the forecasts the model made 1..=H steps ago.
    fn learn_variance(&mut self, config: &ModelConfig, z: f64, seasonal: f64) {
        let rate = (1.0 / (f64::from(self.var_samples) + 1.0)).max(VAR_RATE);
        let q = normal_quantile(0.5 + config.calibrate_coverage / 2.0);
        let (mut misses, mut checked) = (0u32, 0u32);
        let mut phi_h = 1.0;
        for h in 1..=config.horizon {
            phi_h *= config.ar;
            let (Some(l), Some(r)) = (self.past_levels.get(h - 1), self.past_residuals.get(h - 1))
            else {
                break;
            };
            let err = z - (l + seasonal + phi_h * r);
            let v = f64::from(self.var[h - 1]);
            if self.var_samples > WARMUP && v > 0.0 {
                checked += 1;
                if err.abs() > q * self.scale * v.sqrt() {
                    misses += 1;
                }
                // Robust: one wild error moves the variance by a bounded amount.
                let cap = 25.0 * v;
                self.var[h - 1] = (v + rate * ((err * err).min(cap) - v)) as f32;
            } else {
                self.var[h - 1] = (v + rate * (err * err - v)) as f32;
            }
        }
        if checked > 0 {
            // Adaptive calibration: widen when the interval misses more often than it
            // should, narrow when less.
            let miss_rate = f64::from(misses) / f64::from(checked);
            let target = 1.0 - config.calibrate_coverage;
            self.scale = (self.scale
                * (SCALE_RATE * (miss_rate - target) / target.max(0.01)).exp())
            .clamp(0.25, 8.0);
        }
        self.var_samples = self.var_samples.saturating_add(1);
    }

    /// Forecasts `h` = 1..=`steps` steps after the last observation (`steps` at most the
    /// configured horizon). Empty before the first observation.
    pub fn forecast(&self, config: &ModelConfig, steps: usize) -> Vec<ForecastPoint> {
        let Some(last) = self.last_ts else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(steps.min(config.horizon));
        let mut phi_h = 1.0;
        for h in 1..=steps.min(config.horizon) {
            phi_h *= config.ar;
            let ts = last + h as i64 * config.step_secs;
            let z_mean = self.level + self.seasonal(config, ts) + phi_h * self.residual;
            let var = f64::from(self.var[h - 1]);
            // Until errors at this horizon have been seen, borrow the widest known one.
            let var = if var > 0.0 {
                var
            } else {
                self.var.iter().map(|v| f64::from(*v)).fold(0.0, f64::max)
            };
            out.push(ForecastPoint {
                ts,
                h,
                median: config.transform.inverse(z_mean),
                z_mean,
                z_sd: var.sqrt() * self.scale,
            });
        }
        out
    }

    /// How much to trust the forecasts.
    pub fn confidence(&self) -> Confidence {
        let (learned, total) = self.seasons.iter().fold((0usize, 0usize), |(l, t), s| {
            (
                l + s.visits.iter().filter(|v| **v >= 2).count(),
                t + s.visits.len(),
            )
        });
        Confidence {
            samples: self.samples,
            seasons_learned: if total == 0 {
                1.0
            } else {
                learned as f64 / total as f64
            },
            interval_scale: self.scale,
        }
    }

    /// The anomaly currently flagged, if any.
    pub fn anomaly(&self) -> Option<&AnomalyState> {
        self.cusum.active()
    }
}

/// Checks a value any series would accept: finite and not negative.
pub fn check_value(y: f64) -> Result<(), ObserveError> {
    if !y.is_finite() {
        return Err(ObserveError::NotFinite(y));
    }
    if y < 0.0 {
        return Err(ObserveError::Negative(y));
    }
    if y > MAX_DEMAND {
        return Err(ObserveError::TooLarge(y));
    }
    Ok(())
}

/// Largest demand a series takes (req/s): far beyond any service, small enough that the
/// model's sums and squares stay finite.
pub const MAX_DEMAND: f64 = 1e15;

/// Standard normal quantile.
pub fn normal_quantile(p: f64) -> f64 {
    Normal::standard().inverse_cdf(p.clamp(1e-9, 1.0 - 1e-9))
}

/// Standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    Normal::standard().cdf(x)
}

impl ForecastPoint {
    /// The `p`-quantile in the series' units (`z` = the standard normal `p`-quantile).
    pub fn quantile_at(&self, transform: Transform, z: f64) -> f64 {
        transform.inverse(self.z_mean + z * self.z_sd)
    }

    /// The `p`-quantile in the series' units.
    pub fn quantile(&self, transform: Transform, p: f64) -> f64 {
        self.quantile_at(transform, normal_quantile(p))
    }

    /// Probability that demand exceeds `threshold` (series' units).
    pub fn prob_above(&self, transform: Transform, threshold: f64) -> f64 {
        if self.z_sd <= 0.0 {
            return if self.median > threshold { 1.0 } else { 0.0 };
        }
        1.0 - normal_cdf((transform.forward(threshold.max(0.0)) - self.z_mean) / self.z_sd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field a refused configuration names.
    fn refused(config: &ModelConfig) -> Option<String> {
        config.validate().err().map(|e| e.field)
    }

    #[test]
    fn every_rate_lies_strictly_between_0_and_1() {
        let base = ModelConfig::for_step(3600, 6);
        assert_eq!(refused(&base), None);
        type Set = fn(&mut ModelConfig, f64);
        let fields: [(&str, Set); 3] = [
            ("seasons[0].rate", |c, v| c.seasons[0].rate = v),
            ("level_rate", |c, v| c.level_rate = v),
            ("calibrate_coverage", |c, v| c.calibrate_coverage = v),
        ];
        for (field, set) in fields {
            for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
                let mut c = base.clone();
                set(&mut c, bad);
                assert_eq!(refused(&c).as_deref(), Some(field), "{field} = {bad}");
            }
            let mut c = base.clone();
            set(&mut c, 0.5);
            assert_eq!(refused(&c), None, "{field} = 0.5");
        }
    }

    #[test]
    fn a_season_has_at_most_100000_buckets() {
        // 100,000 buckets of 36 s divide a 3,600,000 s period; 200,000 of 18 s too, but
        // are refused.
        let mut c = ModelConfig::for_step(1, 6);
        c.seasons = vec![SeasonSpec {
            period_secs: 3_600_000,
            buckets: 100_000,
            rate: 0.1,
        }];
        assert_eq!(refused(&c), None);
        c.seasons[0].buckets = 200_000;
        assert_eq!(refused(&c).as_deref(), Some("seasons[0].buckets"));
    }

    #[test]
    fn a_season_spans_two_steps_and_the_horizon_at_most_10000() {
        let mut c = ModelConfig::for_step(3600, 6);
        c.seasons[0].period_secs = 3600;
        c.seasons[0].buckets = 1;
        assert_eq!(refused(&c).as_deref(), Some("seasons[0].period_secs"));
        c.seasons[0].period_secs = 7200;
        assert_eq!(refused(&c), None);
        c.horizon = 20_000;
        assert_eq!(refused(&c).as_deref(), Some("horizon"));
        c.horizon = 10_000;
        assert_eq!(refused(&c), None);
    }

    #[test]
    fn a_ring_gives_back_the_last_values_newest_first() {
        let mut ring = Ring::new(3);
        assert_eq!(ring.get(0), None);
        for v in 1..=5 {
            ring.push(f64::from(v));
        }
        let got: Vec<Option<f64>> = (0..4).map(|ago| ring.get(ago)).collect();
        assert_eq!(got, vec![Some(5.0), Some(4.0), Some(3.0), None]);
    }

    #[test]
    fn memory_grows_by_five_bytes_a_bucket_and_twelve_a_horizon_step() {
        // A bucket: its f32 deviation and its u8 visit count. A horizon step: a past level,
        // a past residual and an error variance, f32 each.
        let bytes = |buckets: usize, horizon: usize| {
            let mut c = ModelConfig::for_step(3600, horizon);
            c.seasons.truncate(1);
            c.seasons[0].buckets = buckets;
            SeasonalModel::new(&c).memory_bytes()
        };
        assert_eq!(bytes(48, 6) - bytes(24, 6), 24 * 5);
        assert_eq!(bytes(24, 16) - bytes(24, 6), 10 * 12);
    }

    #[test]
    fn a_nested_season_borrows_the_shorter_one_until_its_bucket_is_trusted() {
        // Daily bucket at 10 (trusted), weekly at 20 seen once of the three it takes: a
        // third of the way from the day's 10 to the week's 20.
        let mut config = ModelConfig::for_step(3600, 6);
        config.combine = SeasonCombination::Nested;
        let mut m = SeasonalModel::new(&config);
        m.seasons[0].values[0] = 10.0;
        m.seasons[0].visits[0] = 3;
        m.seasons[1].values[0] = 20.0;
        m.seasons[1].visits[0] = 1;
        assert!((m.seasonal(&config, 0) - (10.0 + 10.0 / 3.0)).abs() < 1e-4);
        m.seasons[1].visits[0] = 3;
        assert!((m.seasonal(&config, 0) - 20.0).abs() < 1e-4);
    }

    #[test]
    fn renormalizing_moves_the_seasons_means_into_the_level_and_changes_no_forecast() {
        // Daily buckets 0 and 1 at 4 and 8, weekly ones at 2, all seen (and trusted): the
        // level takes the daily mean 6 (and, additively, the weekly 2 too).
        for (combine, level) in [
            (SeasonCombination::Additive, 108.0),
            (SeasonCombination::Nested, 106.0),
        ] {
            let mut config = ModelConfig::for_step(3600, 6);
            config.combine = combine;
            let mut m = SeasonalModel::new(&config);
            m.level = 100.0;
            for (b, v) in [(0, 4.0), (1, 8.0)] {
                m.seasons[0].values[b] = v;
                m.seasons[0].visits[b] = 3;
                m.seasons[1].values[b] = 2.0;
                m.seasons[1].visits[b] = 3;
            }
            // Where every season's bucket was seen (an unseen one holds no deviation: it
            // is forecast at the level, the mean).
            let forecast = |m: &SeasonalModel, ts| m.level + m.seasonal(&config, ts);
            let before: Vec<f64> = [0, 3600].iter().map(|ts| forecast(&m, *ts)).collect();
            m.renormalize(combine);
            let after: Vec<f64> = [0, 3600].iter().map(|ts| forecast(&m, *ts)).collect();
            assert!(
                (m.level - level).abs() < 1e-4,
                "{combine:?}: level {}",
                m.level
            );
            for (b, a) in before.iter().zip(&after) {
                assert!((b - a).abs() < 1e-4, "{combine:?}: {before:?} → {after:?}");
            }
        }
    }

    #[test]
    fn a_value_is_refused_above_the_largest_demand_not_at_it() {
        assert_eq!(check_value(MAX_DEMAND), Ok(()));
        assert_eq!(check_value(0.0), Ok(()));
        assert_eq!(
            check_value(2.0 * MAX_DEMAND),
            Err(ObserveError::TooLarge(2.0 * MAX_DEMAND))
        );
    }

    #[test]
    fn a_point_s_probability_above_a_threshold_follows_its_spread() {
        let point = |z_mean: f64, z_sd: f64| ForecastPoint {
            ts: 0,
            h: 1,
            median: z_mean,
            z_mean,
            z_sd,
        };
        // A spread of 1 around 10: half above 10, about 84% above 9, 16% above 11.
        let p = point(10.0, 1.0);
        assert!((p.prob_above(Transform::None, 10.0) - 0.5).abs() < 1e-9);
        assert!((p.prob_above(Transform::None, 9.0) - 0.841).abs() < 1e-3);
        assert!((p.prob_above(Transform::None, 11.0) - 0.159).abs() < 1e-3);
        // No spread: certain either way.
        let p = point(10.0, 0.0);
        assert_eq!(p.prob_above(Transform::None, 9.0), 1.0);
        assert_eq!(p.prob_above(Transform::None, 10.0), 0.0);
    }

    #[test]
    fn a_model_counts_the_observations_it_learned_from_not_the_refused() {
        let config = ModelConfig::for_step(3600, 6);
        let mut m = SeasonalModel::new(&config);
        for h in 0..5i64 {
            m.observe(&config, h * 3600, 100.0).unwrap();
        }
        assert!(m.observe(&config, 5 * 3600, -1.0).is_err());
        assert_eq!(m.samples(), 5);
    }

    #[test]
    fn additive_seasons_stay_centred_and_unseen_buckets_stay_zero() {
        let config = ModelConfig::for_step(3600, 6);
        assert_eq!(config.combine, SeasonCombination::Additive);
        let mut m = SeasonalModel::new(&config);
        let mut x = 7u64;
        for h in 0..30i64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let noise = (x >> 40) as f64 / (1u64 << 24) as f64;
            let y = 100.0 + 40.0 * ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
            m.observe(&config, h * 3600, y + 10.0 * noise).unwrap();
        }
        for s in &m.seasons {
            let seen: Vec<f64> = s
                .values
                .iter()
                .zip(&s.visits)
                .filter(|(_, v)| **v > 0)
                .map(|(x, _)| f64::from(*x))
                .collect();
            let mean = seen.iter().sum::<f64>() / seen.len() as f64;
            assert!(
                mean.abs() < 1e-4,
                "a season's mean belongs to the level: {mean}"
            );
            assert!(
                s.values
                    .iter()
                    .zip(&s.visits)
                    .all(|(x, v)| *v > 0 || *x == 0.0),
                "a bucket never seen holds no deviation"
            );
        }
    }

    #[test]
    fn default_buckets_follow_the_step_and_divide_the_period() {
        let at = |step: i64| {
            let c = ModelConfig::for_step(step, 6);
            c.validate().unwrap();
            (c.seasons[0].buckets, c.seasons[1].buckets)
        };
        assert_eq!(
            at(60),
            (1_440, 168),
            "minutes: a bucket a minute, weekdays per hour"
        );
        assert_eq!(at(1_800), (48, 168));
        assert_eq!(at(3_600), (24, 168));
        // 86,400 / 420 = 205.7: the most buckets that divide the day evenly.
        assert_eq!(at(420).0, 200);
        assert_eq!(at(1), (1_440, 168));
    }
}
