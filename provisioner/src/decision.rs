//! What the policy decides: actions with their reasons, and the decision log.

use serde::{Deserialize, Serialize};

/// Something to do to a spare now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Start the spare (its provider brings it up; a probe verifies it warm).
    StartWarmup {
        /// Spare id.
        spare: String,
        /// The service it will serve.
        service: String,
    },
    /// Put the (verified warm) spare into the service's shadow cluster with `weight` and
    /// publish the service's readiness: filters may redirect to it.
    Assign {
        /// Spare id.
        spare: String,
        /// The service.
        service: String,
        /// Load-balancing weight in the shadow cluster (its capacity, 1–10,000).
        weight: u32,
    },
    /// Withdraw the spare's readiness first (make-before-break): filters stop sending new
    /// requests; in-flight ones finish before it is released.
    Drain {
        /// Spare id.
        spare: String,
        /// The service it served.
        service: String,
    },
    /// Remove the spare's endpoint from the shadow cluster and stop it.
    Release {
        /// Spare id.
        spare: String,
        /// The service it served or was meant for.
        service: String,
    },
}

impl Action {
    /// The spare it acts on.
    pub fn spare(&self) -> &str {
        match self {
            Action::StartWarmup { spare, .. }
            | Action::Assign { spare, .. }
            | Action::Drain { spare, .. }
            | Action::Release { spare, .. } => spare,
        }
    }

    /// The service it concerns.
    pub fn service(&self) -> &str {
        match self {
            Action::StartWarmup { service, .. }
            | Action::Assign { service, .. }
            | Action::Drain { service, .. }
            | Action::Release { service, .. } => service,
        }
    }
}

/// Why, in a word (a metric label) — the sentence is in [`Decision::why`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonKind {
    /// Started so it is warm before the forecast onset by the lead margin.
    LeadTime,
    /// Started at once: the onset is nearer than its warm-up.
    Late,
    /// Demand is over the trigger now (reactive mode, or a surge nobody forecast).
    Reactive,
    /// Verified warm: assigned.
    Warm,
    /// The surge is over (calm for the hysteresis, held the minimum).
    SurgeOver,
    /// The surge it was started for is no longer forecast; it never took traffic.
    CalledOff,
    /// The drain time has passed.
    Drained,
}

impl ReasonKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonKind::LeadTime => "lead_time",
            ReasonKind::Late => "late",
            ReasonKind::Reactive => "reactive",
            ReasonKind::Warm => "warm",
            ReasonKind::SurgeOver => "surge_over",
            ReasonKind::CalledOff => "called_off",
            ReasonKind::Drained => "drained",
        }
    }
}

/// One decided action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When it was decided (Unix seconds).
    pub at: f64,
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
    /// Why, in a word.
    pub reason: ReasonKind,
    /// Why, in a sentence.
    pub why: String,
}

/// A verdict on a service's need, logged when it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// No surge forecast or under way.
    Idle,
    /// Spares are planned to start later (warm-up plus margin before the onset).
    Planned {
        /// When the first planned spare starts.
        first_start: f64,
    },
    /// Enough capacity is warming, warm or assigned.
    Covered,
    /// Not enough free spares: served partly, or not at all.
    LeftOut {
        /// Capacity (req/s) it still lacks.
        missing: f64,
        /// Why.
        why: String,
    },
    /// The expected loss avoided is smaller than the spares would cost.
    NotWorthIt {
        /// Expected loss avoided.
        benefit: f64,
        /// What covering it would cost.
        cost: f64,
    },
    /// Covering it would exceed the spend cap.
    SpendCap {
        /// Cost per hour it would bring the pool to.
        would_spend_per_hour: f64,
    },
    /// Calm after a surge: spares are being drained and released.
    Releasing,
}

/// One line of the decision log: an action or a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When (Unix seconds).
    pub at: f64,
    /// The service.
    pub service: String,
    /// What happened.
    pub event: LogEvent,
}

/// What a log line says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogEvent {
    /// An action was decided.
    Decision(Decision),
    /// The verdict on the service's need changed.
    Verdict(Verdict),
    /// A spare failed to warm up; it is retried after a backoff, another spare is tried.
    WarmupFailed {
        /// Spare id.
        spare: String,
        /// The provider's or the probe's error.
        error: String,
        /// Earliest retry (Unix seconds).
        retry_after: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_s_metric_label_is_its_json_name() {
        for kind in [
            ReasonKind::LeadTime,
            ReasonKind::Late,
            ReasonKind::Reactive,
            ReasonKind::Warm,
            ReasonKind::SurgeOver,
            ReasonKind::CalledOff,
            ReasonKind::Drained,
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(format!("\"{}\"", kind.as_str()), json);
        }
    }

    #[test]
    fn every_action_names_its_spare_and_service() {
        let spare = || "s1".to_string();
        let service = || "checkout".to_string();
        for action in [
            Action::StartWarmup {
                spare: spare(),
                service: service(),
            },
            Action::Assign {
                spare: spare(),
                service: service(),
                weight: 3,
            },
            Action::Drain {
                spare: spare(),
                service: service(),
            },
            Action::Release {
                spare: spare(),
                service: service(),
            },
        ] {
            assert_eq!((action.spare(), action.service()), ("s1", "checkout"));
        }
    }
}
