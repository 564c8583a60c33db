//! The events calendar: scheduled sales, campaigns, rollouts — anything known in advance
//! that changes demand for a while.
//!
//! An event has a kind, a start, a duration and either a **declared** uplift (×1.8 = 80%
//! more demand) or none, in which case the uplift **learned** from past occurrences of the
//! same kind on the same series is used. While an event runs, observations are divided by
//! its uplift before the model learns from them, so a sale does not teach the model that
//! every Tuesday is a sale; what was actually seen against the model's baseline becomes
//! the kind's learned uplift (an average over occurrences) when the event ends.

use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest event: ten years.
pub const MAX_EVENT_SECS: i64 = 10 * 366 * 86_400;
/// Largest declared uplift.
pub const MAX_UPLIFT: f64 = 1_000.0;
/// Most events a calendar holds: each is matched against every forecast step.
pub const MAX_EVENTS: usize = 10_000;
/// Latest start: the year 5000.
const MAX_START: i64 = 95_617_584_000;

/// One scheduled event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledEvent {
    /// Kind, e.g. `"sale"`, `"rollout"`: occurrences of a kind share a learned uplift.
    pub kind: String,
    /// Start (unix seconds).
    pub start: i64,
    /// Duration in seconds.
    pub duration_secs: i64,
    /// Declared demand multiplier (> 0); `None` = use what past occurrences showed.
    #[serde(default)]
    pub uplift: Option<f64>,
    /// Series it affects (`None` = all).
    #[serde(default)]
    pub series: Option<Vec<String>>,
}

impl ScheduledEvent {
    /// Whether `ts` falls inside the event.
    pub fn covers(&self, ts: i64) -> bool {
        ts >= self.start && ts < self.start.saturating_add(self.duration_secs)
    }

    /// Whether it applies to `series`.
    pub fn applies_to(&self, series: &str) -> bool {
        self.series
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == series))
    }

    /// Checks the fields; the error names the field. An event starts between 1970 and
    /// 5000, lasts at most [`MAX_EVENT_SECS`], has a kind of at most 64 characters and
    /// an uplift of at most [`MAX_UPLIFT`] (a multiplier beyond that is a typo, and would
    /// overflow the forecast).
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.kind.is_empty() || self.kind.len() > 64 {
            return Err(FieldError::new("kind", "must be 1 to 64 characters"));
        }
        if !(0..=MAX_START).contains(&self.start) {
            return Err(FieldError::new(
                "start",
                format!("{} is not a Unix time between 1970 and 5000", self.start),
            ));
        }
        if !(1..=MAX_EVENT_SECS).contains(&self.duration_secs) {
            return Err(FieldError::new(
                "duration_secs",
                format!(
                    "{} is not between 1 and {MAX_EVENT_SECS}",
                    self.duration_secs
                ),
            ));
        }
        if let Some(u) = self.uplift
            && !(u.is_finite() && u > 0.0 && u <= MAX_UPLIFT)
        {
            return Err(FieldError::new(
                "uplift",
                format!("{u} is not a multiplier in (0, {MAX_UPLIFT}]"),
            ));
        }
        if let Some(series) = &self.series
            && series.len() > 10_000
        {
            return Err(FieldError::new("series", "at most 10000 series"));
        }
        Ok(())
    }
}

/// What past occurrences of a kind showed on one series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LearnedUplift {
    /// Average demand multiplier.
    pub uplift: f64,
    /// Occurrences averaged.
    pub occurrences: u32,
}

/// An occurrence in progress on one series: actual demand against the model's baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    actual: f64,
    baseline: f64,
    end: i64,
}

impl Evidence {
    /// The ratio seen so far (1 when nothing yet).
    pub fn ratio(&self) -> f64 {
        if self.baseline + self.actual <= 0.0 {
            1.0
        } else {
            (self.actual + 1.0) / (self.baseline + 1.0)
        }
    }
}

/// Per-series event memory: learned uplifts by kind and occurrences in progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventMemory {
    learned: BTreeMap<String, LearnedUplift>,
    running: BTreeMap<String, Evidence>,
}

/// The event effect at one time on one series.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEffect {
    /// Combined multiplier (product over the events covering the time).
    pub factor: f64,
    /// Kinds contributing.
    pub kinds: Vec<String>,
}

impl EventMemory {
    /// Learned uplift of a kind, if any occurrence has ended.
    pub fn learned(&self, kind: &str) -> Option<LearnedUplift> {
        self.learned.get(kind).copied()
    }

    /// The uplift an event will have on this series: declared, else learned, else the
    /// running evidence of an occurrence in progress, else none (1).
    pub fn uplift(&self, e: &ScheduledEvent) -> f64 {
        e.uplift
            .or_else(|| self.learned.get(&e.kind).map(|l| l.uplift))
            .or_else(|| self.running.get(&e.kind).map(Evidence::ratio))
            .unwrap_or(1.0)
    }

    /// The effect of `events` at `ts` on `series`.
    pub fn effect(&self, events: &[ScheduledEvent], series: &str, ts: i64) -> EventEffect {
        let mut effect = EventEffect {
            factor: 1.0,
            kinds: Vec::new(),
        };
        for e in events
            .iter()
            .filter(|e| e.covers(ts) && e.applies_to(series))
        {
            effect.factor *= self.uplift(e);
            effect.kinds.push(e.kind.clone());
        }
        effect
    }

    /// Records `actual` demand against the model's baseline at `ts` (computed only if an
    /// event covers `ts`), and closes the occurrences that have ended into the learned
    /// uplifts.
    pub fn record(
        &mut self,
        events: &[ScheduledEvent],
        series: &str,
        ts: i64,
        actual: f64,
        baseline: impl FnOnce() -> f64,
    ) {
        let baseline = std::cell::LazyCell::new(baseline);
        let ended: Vec<String> = self
            .running
            .iter()
            .filter(|(_, ev)| ts >= ev.end)
            .map(|(k, _)| k.clone())
            .collect();
        for kind in ended {
            if let Some(ev) = self.running.remove(&kind) {
                let ratio = ev.ratio();
                let l = self.learned.entry(kind).or_insert(LearnedUplift {
                    uplift: ratio,
                    occurrences: 0,
                });
                l.occurrences += 1;
                // Average over occurrences, recent ones weighing at least a fifth.
                let w = 1.0 / f64::from(l.occurrences.min(5));
                l.uplift += w * (ratio - l.uplift);
            }
        }
        for e in events
            .iter()
            .filter(|e| e.covers(ts) && e.applies_to(series))
        {
            let ev = self.running.entry(e.kind.clone()).or_default();
            ev.end = e.start + e.duration_secs;
            ev.actual += actual;
            ev.baseline += *baseline;
        }
    }
}
