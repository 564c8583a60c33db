//! Real-time anomaly detection on forecast innovations: a two-sided CUSUM on standardised
//! innovations `u = ε/σ`, each clipped to ±`clip` so that one wild sample cannot raise an
//! alarm alone while a sustained shift does within a few samples:
//!
//! ```text
//! S⁺ ← max(0, S⁺ + min(u, clip) − k)      S⁻ ← max(0, S⁻ − max(u, −clip) − k)
//! alarm when S⁺ or S⁻ reaches h
//! ```
//!
//! With the defaults (k = 0.5, h = 5, clip = 3), a shift of 3σ or more is flagged on its
//! second sample, a shift of 2σ on its fourth, and an isolated outlier never. On an alarm
//! the model re-levels by the mean innovation since the run began, so the short-term
//! forecast follows the surge instead of learning it over hours.

use crate::error::FieldError;
use serde::{Deserialize, Serialize};

/// Detector settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CusumConfig {
    /// Allowance per sample, in σ.
    pub k: f64,
    /// Alarm threshold, in σ.
    pub h: f64,
    /// Per-sample contribution cap, in σ.
    pub clip: f64,
    /// Quiet samples (|u| < 2) after which a flagged anomaly is over.
    pub quiet_samples: u32,
}

impl Default for CusumConfig {
    fn default() -> Self {
        CusumConfig {
            k: 0.5,
            h: 5.0,
            clip: 3.0,
            quiet_samples: 12,
        }
    }
}

impl CusumConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.k.is_nan() || self.k < 0.0 {
            return Err(FieldError::new("k", "must be non-negative"));
        }
        if self.h.is_nan() || self.h <= 0.0 {
            return Err(FieldError::new("h", "must be positive"));
        }
        if self.clip.is_nan() || self.clip <= self.k {
            return Err(FieldError::new("clip", "must exceed k"));
        }
        Ok(())
    }
}

/// Direction of an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Demand above forecast: a surge.
    Up,
    /// Demand below forecast: a drop.
    Down,
}

/// A flagged anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyState {
    /// When the deviation began (first sample of the run).
    pub since: i64,
    /// When it was flagged.
    pub flagged_at: i64,
    /// Samples from its beginning to the alarm.
    pub samples_to_flag: u32,
    /// Up or down.
    pub direction: Direction,
    /// Mean innovation over the run, in the model's transformed units.
    pub magnitude: f64,
}

/// A shift the model should apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    /// Add this to the level.
    pub mean_innovation: f64,
    /// The anomaly to report.
    pub state: AnomalyState,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Run {
    sum: f64,
    innovations: f64,
    len: u32,
    since: i64,
}

impl Run {
    fn step(&mut self, contribution: f64, innovation: f64, ts: i64) -> f64 {
        if self.sum <= 0.0 {
            *self = Run {
                since: ts,
                ..Run::default()
            };
        }
        self.sum = (self.sum + contribution).max(0.0);
        self.innovations += innovation;
        self.len += 1;
        self.sum
    }
}

/// Two-sided CUSUM state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cusum {
    up: Run,
    down: Run,
    active: Option<AnomalyState>,
    quiet: u32,
}

impl Cusum {
    /// Feeds one standardised innovation `u` (and the raw innovation); returns a shift on
    /// an alarm.
    pub fn update(&mut self, c: &CusumConfig, ts: i64, u: f64, innovation: f64) -> Option<Shift> {
        let up = self.up.step(u.min(c.clip) - c.k, innovation, ts);
        let down = self.down.step(-u.max(-c.clip) - c.k, innovation, ts);
        if self.active.is_some() {
            self.quiet = if u.abs() < 2.0 { self.quiet + 1 } else { 0 };
            if self.quiet >= c.quiet_samples {
                self.active = None;
            }
        }
        let (run, direction) = if up >= c.h {
            (std::mem::take(&mut self.up), Direction::Up)
        } else if down >= c.h {
            (std::mem::take(&mut self.down), Direction::Down)
        } else {
            return None;
        };
        self.up = Run::default();
        self.down = Run::default();
        let mean = run.innovations / f64::from(run.len.max(1));
        let state = AnomalyState {
            since: run.since,
            flagged_at: ts,
            samples_to_flag: run.len,
            direction,
            magnitude: mean,
        };
        self.active = Some(state.clone());
        self.quiet = 0;
        Some(Shift {
            mean_innovation: mean,
            state,
        })
    }

    /// The anomaly in progress, if any.
    pub fn active(&self) -> Option<&AnomalyState> {
        self.active.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(c: &mut Cusum, us: &[f64]) -> Option<(usize, Shift)> {
        let cfg = CusumConfig::default();
        us.iter()
            .enumerate()
            .find_map(|(i, u)| c.update(&cfg, i as i64, *u, *u).map(|s| (i, s)))
    }

    #[test]
    fn sustained_shifts_are_flagged_within_a_few_samples_and_outliers_never() {
        assert_eq!(
            feed(&mut Cusum::default(), &[0.1, -0.2, 3.5, 3.5])
                .unwrap()
                .0,
            3
        );
        let (i, s) = feed(&mut Cusum::default(), &[0.0, 2.0, 2.0, 2.0, 2.0, 2.0]).unwrap();
        assert_eq!(i, 4, "2σ shift: fourth sample");
        assert_eq!(s.state.since, 1);
        assert_eq!(s.state.direction, Direction::Up);
        assert!((s.mean_innovation - 2.0).abs() < 1e-9);
        assert!(feed(&mut Cusum::default(), &[0.0, 50.0, 0.0, -0.3, 0.2, 0.0]).is_none());
        let (_, s) = feed(&mut Cusum::default(), &[-4.0, -4.0, -4.0]).unwrap();
        assert_eq!(s.state.direction, Direction::Down);
    }
}
