//! The warm-spare pool: what each spare is and where it is in its life.
//!
//! ```text
//!   Cold ──StartWarmup──► Warming ──(probe: warm)──► Warm ──Assign──► Assigned
//!    ▲                       │ (warm-up failed:                          │
//!    │                       │  back to Cold with a backoff)             │ Drain
//!    └────────Release─────────────────────────────── Draining ◄──────────┘
//! ```
//!
//! "Released" is the action that takes a spare from `Draining` (or from `Warming`/`Warm`
//! when its surge was called off) back to `Cold`: its endpoints leave the shadow cluster and
//! its provider stops it.

use crate::error::FieldError;
use serde::{Deserialize, Serialize};

/// A spare as configured: fixed facts about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpareSpec {
    /// Unique id.
    pub id: String,
    /// Where it serves once started (`ip:port`).
    pub address: String,
    /// Requests per second it serves when warm.
    pub capacity: f64,
    /// Concurrent requests it serves at capacity (for the filters' readiness record).
    pub max_in_flight: u32,
    /// Seconds from start until it is warm (the provider's estimate; the probe measures).
    pub warmup_secs: f64,
    /// Cost per second while it runs (warming, warm, assigned or draining).
    pub cost_per_sec: f64,
    /// Class or size, e.g. `small`, `large` (informational; cover picks by cost).
    #[serde(default)]
    pub class: String,
}

impl SpareSpec {
    /// Checks the fields; errors name them relative to the spare.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.id.is_empty() || self.id.len() > 100 {
            return Err(FieldError::new("id", "must be 1 to 100 characters"));
        }
        if self.address.is_empty() {
            return Err(FieldError::new("address", "must not be empty"));
        }
        positive("capacity", self.capacity)?;
        if self.max_in_flight == 0 {
            return Err(FieldError::new("max_in_flight", "must be at least 1"));
        }
        non_negative("warmup_secs", self.warmup_secs)?;
        non_negative("cost_per_sec", self.cost_per_sec)?;
        Ok(())
    }
}

pub(crate) fn positive(field: &str, v: f64) -> Result<(), FieldError> {
    if v.is_finite() && v > 0.0 && v < 1e12 {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{v} is not a positive number"),
        ))
    }
}

pub(crate) fn non_negative(field: &str, v: f64) -> Result<(), FieldError> {
    if v.is_finite() && (0.0..1e12).contains(&v) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{v} is not a non-negative number"),
        ))
    }
}

/// Where a spare is in its life. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SpareState {
    /// Not running. After a failed warm-up it is not tried again before `retry_after`.
    Cold {
        /// Earliest time it may be started again.
        retry_after: Option<f64>,
    },
    /// Started for `service`; not yet verified warm.
    Warming {
        /// The service it is for.
        service: String,
        /// When it was started.
        since: f64,
    },
    /// Verified warm by the probe; about to be assigned.
    Warm {
        /// The service it is for.
        service: String,
        /// When it was started.
        started: f64,
        /// When it was verified warm.
        since: f64,
    },
    /// In `service`'s shadow cluster and ready for redirected traffic.
    Assigned {
        /// The service it serves.
        service: String,
        /// When it was started.
        started: f64,
        /// When it was assigned.
        since: f64,
    },
    /// Readiness withdrawn: filters send nothing new; in-flight requests finish until
    /// `until`, when it is released.
    Draining {
        /// The service it served.
        service: String,
        /// When it was started.
        started: f64,
        /// When it was assigned.
        assigned: f64,
        /// When it is released.
        until: f64,
    },
}

impl SpareState {
    /// A spare that never ran.
    pub fn cold() -> SpareState {
        SpareState::Cold { retry_after: None }
    }

    /// The service it works for, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            SpareState::Cold { .. } => None,
            SpareState::Warming { service, .. }
            | SpareState::Warm { service, .. }
            | SpareState::Assigned { service, .. }
            | SpareState::Draining { service, .. } => Some(service),
        }
    }

    /// Whether it is running (and costing).
    pub fn is_running(&self) -> bool {
        !matches!(self, SpareState::Cold { .. })
    }

    /// Short name of the state (`cold`, `warming`, `warm`, `assigned`, `draining`).
    pub fn name(&self) -> &'static str {
        match self {
            SpareState::Cold { .. } => "cold",
            SpareState::Warming { .. } => "warming",
            SpareState::Warm { .. } => "warm",
            SpareState::Assigned { .. } => "assigned",
            SpareState::Draining { .. } => "draining",
        }
    }
}

/// One spare: its spec and its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spare {
    /// What it is.
    pub spec: SpareSpec,
    /// Where it is in its life.
    pub state: SpareState,
    /// Consecutive failed warm-ups (the retry backoff doubles with each; a verified warm-up
    /// resets it).
    pub failures: u32,
    /// The warm-up the probe measured last time (start → verified warm).
    #[serde(default)]
    pub measured_warmup_secs: Option<f64>,
}

impl Spare {
    /// The warm-up to plan with: the configured one, or the last measured if longer —
    /// a spare that proved slower than promised is started earlier next time.
    pub fn expected_warmup_secs(&self) -> f64 {
        self.spec
            .warmup_secs
            .max(self.measured_warmup_secs.unwrap_or(0.0))
    }
}

/// All spares, in configuration order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowPool {
    spares: Vec<Spare>,
}

impl ShadowPool {
    /// A pool of cold spares; errors name the spare (`spares[2].capacity`).
    pub fn new(specs: Vec<SpareSpec>) -> Result<ShadowPool, FieldError> {
        for (i, s) in specs.iter().enumerate() {
            s.validate()
                .map_err(|e| e.within(&format!("spares[{i}]")))?;
            if specs[..i].iter().any(|o| o.id == s.id) {
                return Err(FieldError::new(
                    format!("spares[{i}].id"),
                    format!("{:?} is listed twice", s.id),
                ));
            }
        }
        Ok(ShadowPool {
            spares: specs
                .into_iter()
                .map(|spec| Spare {
                    spec,
                    state: SpareState::cold(),
                    failures: 0,
                    measured_warmup_secs: None,
                })
                .collect(),
        })
    }

    /// Every spare.
    pub fn spares(&self) -> &[Spare] {
        &self.spares
    }

    /// One spare by id.
    pub fn get(&self, id: &str) -> Option<&Spare> {
        self.spares.iter().find(|s| s.spec.id == id)
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Spare> {
        self.spares.iter_mut().find(|s| s.spec.id == id)
    }

    /// Spares working for `service` (warming, warm, assigned or draining).
    pub fn of_service<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Spare> + 'a {
        self.spares
            .iter()
            .filter(move |s| s.state.service() == Some(service))
    }

    /// Carries over the state of every spare of `saved` that this pool still has (by id);
    /// returns the saved spares that are gone from this pool but were running, for the
    /// caller to stop.
    pub fn resume_from(&mut self, saved: &ShadowPool) -> Vec<Spare> {
        let mut gone = Vec::new();
        for old in &saved.spares {
            match self.get_mut(&old.spec.id) {
                Some(s) => {
                    s.state = old.state.clone();
                    s.failures = old.failures;
                    s.measured_warmup_secs = old.measured_warmup_secs;
                }
                None if old.state.is_running() => gone.push(old.clone()),
                None => {}
            }
        }
        gone
    }

    /// Cost per second of every running spare.
    pub fn running_cost_per_sec(&self) -> f64 {
        self.spares
            .iter()
            .filter(|s| s.state.is_running())
            .map(|s| s.spec.cost_per_sec)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> SpareSpec {
        SpareSpec {
            id: id.into(),
            address: "10.0.0.1:8080".into(),
            capacity: 100.0,
            max_in_flight: 8,
            warmup_secs: 20.0,
            cost_per_sec: 0.5,
            class: String::new(),
        }
    }

    fn field_of(s: SpareSpec) -> Option<String> {
        s.validate().err().map(|e| e.field)
    }

    #[test]
    fn a_spec_is_refused_naming_the_field() {
        assert_eq!(field_of(spec("a")), None);
        assert_eq!(field_of(spec(&"i".repeat(100))), None, "100 characters");
        assert_eq!(field_of(spec(&"i".repeat(101))).as_deref(), Some("id"));
        assert_eq!(field_of(spec("")).as_deref(), Some("id"));
        let with = |f: fn(&mut SpareSpec)| {
            let mut s = spec("a");
            f(&mut s);
            field_of(s)
        };
        assert_eq!(with(|s| s.address.clear()).as_deref(), Some("address"));
        assert_eq!(
            with(|s| s.max_in_flight = 0).as_deref(),
            Some("max_in_flight")
        );
        assert_eq!(with(|s| s.max_in_flight = 1), None);
        for bad in [0.0, -1.0, 1e12, f64::NAN, f64::INFINITY] {
            assert_eq!(with_capacity(bad).as_deref(), Some("capacity"), "{bad}");
        }
        assert_eq!(with_capacity(1e-3), None);
        assert_eq!(with_capacity(999_999_999_999.0), None);
        for bad in [-1e-9, 1e12, f64::NAN, f64::INFINITY] {
            let mut s = spec("a");
            s.warmup_secs = bad;
            assert_eq!(field_of(s).as_deref(), Some("warmup_secs"), "{bad}");
            let mut s = spec("a");
            s.cost_per_sec = bad;
            assert_eq!(field_of(s).as_deref(), Some("cost_per_sec"), "{bad}");
        }
        assert_eq!(with(|s| s.warmup_secs = 0.0), None, "no warm-up is fine");
        assert_eq!(with(|s| s.cost_per_sec = 0.0), None, "a free spare is fine");
    }

    fn with_capacity(capacity: f64) -> Option<String> {
        let mut s = spec("a");
        s.capacity = capacity;
        field_of(s)
    }

    #[test]
    fn states_name_their_service_and_whether_they_cost() {
        let service = || "checkout".to_string();
        let states = [
            (SpareState::cold(), "cold", None),
            (
                SpareState::Warming {
                    service: service(),
                    since: 1.0,
                },
                "warming",
                Some("checkout"),
            ),
            (
                SpareState::Warm {
                    service: service(),
                    started: 1.0,
                    since: 2.0,
                },
                "warm",
                Some("checkout"),
            ),
            (
                SpareState::Assigned {
                    service: service(),
                    started: 1.0,
                    since: 2.0,
                },
                "assigned",
                Some("checkout"),
            ),
            (
                SpareState::Draining {
                    service: service(),
                    started: 1.0,
                    assigned: 2.0,
                    until: 3.0,
                },
                "draining",
                Some("checkout"),
            ),
        ];
        for (state, name, of) in states {
            assert_eq!(state.name(), name);
            assert_eq!(state.service(), of, "{name}");
            assert_eq!(state.is_running(), of.is_some(), "{name}");
        }
        assert_eq!(SpareState::cold(), SpareState::Cold { retry_after: None });
    }

    #[test]
    fn resuming_keeps_states_by_id_and_hands_back_running_spares_that_left() {
        let mut saved =
            ShadowPool::new(vec![spec("kept"), spec("gone-running"), spec("gone-cold")]).unwrap();
        let running = SpareState::Assigned {
            service: "checkout".into(),
            started: 5.0,
            since: 30.0,
        };
        for s in &mut saved.spares {
            if s.spec.id != "gone-cold" {
                s.state = running.clone();
            }
        }
        saved.spares[0].failures = 2;
        saved.spares[0].measured_warmup_secs = Some(41.0);
        let mut pool = ShadowPool::new(vec![spec("new"), spec("kept")]).unwrap();
        let gone = pool.resume_from(&saved);
        let gone: Vec<&str> = gone.iter().map(|s| s.spec.id.as_str()).collect();
        assert_eq!(gone, ["gone-running"], "the cold one needs no stopping");
        let kept = pool.get("kept").unwrap();
        assert_eq!(kept.state, running);
        assert_eq!((kept.failures, kept.measured_warmup_secs), (2, Some(41.0)));
        assert_eq!(
            kept.expected_warmup_secs(),
            41.0,
            "measured slower than configured"
        );
        assert_eq!(pool.get("new").unwrap().state, SpareState::cold());
        assert_eq!(pool.get("new").unwrap().expected_warmup_secs(), 20.0);
        assert_eq!(pool.running_cost_per_sec(), 0.5, "only `kept` runs");
        assert_eq!(pool.of_service("checkout").count(), 1);
        assert_eq!(pool.of_service("other").count(), 0);
    }
}
