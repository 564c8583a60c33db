//! The redirect plan: how much of a service's traffic goes to its shadow, recomputed once
//! per tick by one elected worker and read by every worker.
//!
//! ## Why "excess share" and not "everything above a threshold"
//!
//! The naive rule — *primary load above threshold ⇒ send requests to the shadow* — moves
//! **all** traffic the moment the threshold is crossed. The primary then idles, its load
//! collapses below the threshold, all traffic swings back, and the system oscillates at
//! the tick frequency while the shadow (sized for the excess, not the whole) is flooded.
//!
//! Instead the plan estimates the *demand* `D`: the load the primary would carry alone.
//! With a share `s` already redirected, the primary sees `L = D·(1−s)`, so `D = L/(1−s)`.
//! The share that keeps the primary at its `target` is `1 − target/D`: exactly the excess.
//! The share moves towards it with a gain below one, which damps measurement noise, and
//! it is capped by how much more the shadow can take (`shadow_max`).
//!
//! Hysteresis keeps the *state* from flapping: redirection starts only when the primary
//! reaches `enter`, and ends only after the demand has stayed under `exit` for
//! `exit_hold_ticks` ticks. In between, the share follows demand smoothly, down to 0.

use crate::config::ServiceConfig;
use crate::load::LoadScore;
use serde::{Deserialize, Serialize};
use shadowmesh_wire::RedirectState;

/// The shared, per-service plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RedirectPlan {
    /// Normal or redirecting.
    pub state: RedirectState,
    /// Share of session-less traffic sent to the shadow, 0..=`max_share`.
    pub share: f64,
    /// Share of sessions pinned to the shadow: the highest `share` of this surge, so a
    /// session moved to the shadow stays there until the surge ends.
    pub session_share: f64,
    /// Counts surges; a new surge re-pins sessions from scratch.
    pub surge: u64,
    /// Consecutive ticks the demand has been below `exit`.
    pub below_exit_ticks: u32,
    /// Estimated demand (load the primary would carry alone) at the last update.
    pub demand: f64,
    /// Primary load score at the last update.
    pub primary_load: f64,
    /// Shadow load score at the last update.
    pub shadow_load: f64,
}

/// What the plan update sees each tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanInputs {
    /// Primary load over the last tick.
    pub primary: LoadScore,
    /// Shadow load over the last tick.
    pub shadow: LoadScore,
    /// Whether the shadow was ready during the last tick (if not, nothing was redirected,
    /// so the primary's load *is* the demand).
    pub shadow_ready: bool,
}

impl RedirectPlan {
    /// The plan for the next tick.
    pub fn next(&self, input: PlanInputs, svc: &ServiceConfig) -> RedirectPlan {
        let t = &svc.thresholds;
        let mut plan = *self;
        let applied = if input.shadow_ready { self.share } else { 0.0 };
        // (1 - applied) >= 1 - max_share; guard max_share = 1 against division by zero.
        let demand = input.primary.0 / (1.0 - applied).max(0.05);
        plan.demand = demand;
        plan.primary_load = input.primary.0;
        plan.shadow_load = input.shadow.0;

        match self.state {
            RedirectState::Normal => {
                if input.primary.0 >= t.enter && input.shadow_ready {
                    plan.state = RedirectState::Redirecting;
                    plan.surge += 1;
                    plan.below_exit_ticks = 0;
                    // Enter with the full excess at once: the surge is already here.
                    plan.share = excess_share(demand, t.target, svc.max_share);
                    plan.session_share = plan.share;
                }
            }
            RedirectState::Redirecting => {
                let mut want = excess_share(demand, t.target, svc.max_share);
                if input.shadow_ready && input.shadow.0 > 0.0 && applied > 0.0 {
                    // The shadow carries `shadow` load for `applied` share; scale to its limit.
                    want = want.min(applied * t.shadow_max / input.shadow.0);
                }
                plan.share =
                    (self.share + svc.gain * (want - self.share)).clamp(0.0, svc.max_share);
                if plan.share < 1e-3 {
                    plan.share = 0.0;
                }
                plan.session_share = self.session_share.max(plan.share);
                if demand < t.exit {
                    plan.below_exit_ticks += 1;
                } else {
                    plan.below_exit_ticks = 0;
                }
                if plan.below_exit_ticks >= t.exit_hold_ticks {
                    plan.state = RedirectState::Normal;
                    plan.share = 0.0;
                    plan.session_share = 0.0;
                    plan.below_exit_ticks = 0;
                }
            }
        }
        plan
    }
}

fn excess_share(demand: f64, target: f64, max_share: f64) -> f64 {
    if demand <= target {
        0.0
    } else {
        (1.0 - target / demand).clamp(0.0, max_share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginConfig;

    fn svc() -> ServiceConfig {
        PluginConfig::parse(
            br#"{"services":[{"name":"s","primary":{"cluster":"p","max_in_flight":10},
                "shadow":{"cluster":"sh","max_in_flight":10,"ready":true},
                "thresholds":{"enter":0.9,"target":0.8,"exit":0.6,"exit_hold_ticks":3,"shadow_max":0.9},
                "gain":0.5}]}"#,
        )
        .unwrap()
        .services
        .remove(0)
    }

    /// Simulates a primary with the given demand: it sees demand × (1 − share).
    fn step(plan: &RedirectPlan, demand: f64, svc: &ServiceConfig) -> RedirectPlan {
        let applied = plan.share;
        plan.next(
            PlanInputs {
                primary: LoadScore(demand * (1.0 - applied)),
                shadow: LoadScore(demand * applied * 0.5),
                shadow_ready: true,
            },
            svc,
        )
    }

    #[test]
    fn redirects_only_the_excess_and_holds_primary_at_target() {
        let svc = svc();
        let mut plan = RedirectPlan::default();
        for _ in 0..30 {
            plan = step(&plan, 1.6, &svc);
        }
        assert_eq!(plan.state, RedirectState::Redirecting);
        assert!((plan.share - 0.5).abs() < 0.01, "share {}", plan.share);
        assert!(
            (plan.primary_load - 0.8).abs() < 0.02,
            "primary {}",
            plan.primary_load
        );
    }

    #[test]
    fn does_not_enter_below_enter_threshold() {
        let svc = svc();
        let mut plan = RedirectPlan::default();
        for _ in 0..10 {
            plan = step(&plan, 0.85, &svc);
        }
        assert_eq!(plan.state, RedirectState::Normal);
        assert_eq!(plan.share, 0.0);
    }

    #[test]
    fn leaves_only_after_demand_stays_low_and_does_not_flap() {
        let svc = svc();
        let mut plan = RedirectPlan::default();
        for _ in 0..10 {
            plan = step(&plan, 1.2, &svc);
        }
        // Demand hovers between target and enter: stays in, share small but no exit.
        for _ in 0..10 {
            plan = step(&plan, 0.7, &svc);
            assert_eq!(plan.state, RedirectState::Redirecting);
        }
        assert_eq!(plan.share, 0.0, "no excess at 0.7 demand");
        assert!(
            plan.session_share > 0.2,
            "sessions stay pinned for the surge"
        );
        let mut transitions = 0;
        let mut last = plan.state;
        for _ in 0..10 {
            plan = step(&plan, 0.5, &svc);
            if plan.state != last {
                transitions += 1;
                last = plan.state;
            }
        }
        assert_eq!(plan.state, RedirectState::Normal);
        assert_eq!(transitions, 1);
        assert_eq!(plan.session_share, 0.0);
    }

    /// Drives `plan` into redirection at demand 1.2 for a few ticks.
    fn redirecting(svc: &ServiceConfig, mut plan: RedirectPlan) -> RedirectPlan {
        for _ in 0..5 {
            plan = step(&plan, 1.2, svc);
        }
        assert_eq!(plan.state, RedirectState::Redirecting);
        plan
    }

    #[test]
    fn exit_waits_exactly_exit_hold_ticks() {
        let svc = svc();
        assert_eq!(svc.thresholds.exit_hold_ticks, 3);
        for surge in 1..=2 {
            let mut plan = redirecting(&svc, RedirectPlan::default());
            if surge == 2 {
                // A second surge holds just as long: nothing carried over from the first.
                plan = redirecting(&svc, plan_after_exit(&svc, plan));
            }
            for tick in 1..3 {
                plan = step(&plan, 0.5, &svc);
                assert_eq!(
                    plan.state,
                    RedirectState::Redirecting,
                    "surge {surge}: left after {tick} of 3 ticks below exit"
                );
            }
            plan = step(&plan, 0.5, &svc);
            assert_eq!(plan.state, RedirectState::Normal, "surge {surge}");
        }
    }

    fn plan_after_exit(svc: &ServiceConfig, mut plan: RedirectPlan) -> RedirectPlan {
        for _ in 0..svc.thresholds.exit_hold_ticks {
            plan = step(&plan, 0.5, svc);
        }
        assert_eq!(plan.state, RedirectState::Normal);
        plan
    }

    #[test]
    fn demand_back_above_exit_restarts_the_hold() {
        let svc = svc();
        let mut plan = redirecting(&svc, RedirectPlan::default());
        for demand in [0.5, 0.5, 0.7, 0.5, 0.5] {
            plan = step(&plan, demand, &svc);
            assert_eq!(
                plan.state,
                RedirectState::Redirecting,
                "the blip at 0.7 must restart the count of ticks below exit"
            );
        }
        plan = step(&plan, 0.5, &svc);
        assert_eq!(plan.state, RedirectState::Normal);
    }

    #[test]
    fn a_surge_right_after_an_exit_holds_as_long_as_the_first() {
        let svc = svc();
        let mut plan = plan_after_exit(&svc, redirecting(&svc, RedirectPlan::default()));
        assert_eq!(plan.below_exit_ticks, 0, "the count is reset on exit");
        // Re-enter with one hot tick, then straight back below exit.
        plan = step(&plan, 1.0, &svc);
        assert_eq!(plan.state, RedirectState::Redirecting);
        for tick in 1..3 {
            plan = step(&plan, 0.5, &svc);
            assert_eq!(
                plan.state,
                RedirectState::Redirecting,
                "left after {tick} of 3 ticks"
            );
        }
        assert_eq!(step(&plan, 0.5, &svc).state, RedirectState::Normal);
    }

    #[test]
    fn demand_exactly_at_exit_does_not_count_towards_leaving() {
        let svc = svc();
        let mut plan = redirecting(&svc, RedirectPlan::default());
        for _ in 0..10 {
            // Share 0 once the excess is gone, so the primary's load is the demand: 0.6.
            plan = plan.next(
                PlanInputs {
                    primary: LoadScore(0.6 * (1.0 - plan.share)),
                    shadow: LoadScore(0.0),
                    shadow_ready: true,
                },
                &svc,
            );
        }
        assert_eq!(
            plan.state,
            RedirectState::Redirecting,
            "exit means strictly below"
        );
    }

    #[test]
    fn the_entry_share_respects_max_share() {
        let mut svc = svc();
        svc.max_share = 0.3;
        let plan = RedirectPlan::default().next(
            PlanInputs {
                primary: LoadScore(4.0),
                shadow: LoadScore(0.0),
                shadow_ready: true,
            },
            &svc,
        );
        assert_eq!(plan.state, RedirectState::Redirecting);
        assert!(plan.share <= 0.3, "entered with share {}", plan.share);
    }

    #[test]
    fn the_share_grows_again_from_zero_while_pinned_sessions_load_the_shadow() {
        let svc = svc();
        let mut plan = redirecting(&svc, RedirectPlan::default());
        // The excess went away (share 0), sessions pinned to the shadow keep it busy.
        for _ in 0..20 {
            plan = plan.next(
                PlanInputs {
                    primary: LoadScore(0.7),
                    shadow: LoadScore(0.4),
                    shadow_ready: true,
                },
                &svc,
            );
        }
        assert_eq!(plan.share, 0.0);
        // Demand rises again: the share must follow.
        for _ in 0..5 {
            plan = plan.next(
                PlanInputs {
                    primary: LoadScore(1.6 * (1.0 - plan.share)),
                    shadow: LoadScore(0.4),
                    shadow_ready: true,
                },
                &svc,
            );
        }
        assert!(plan.share > 0.3, "share {}", plan.share);
    }

    #[test]
    fn with_the_shadow_gone_the_primary_load_is_the_demand() {
        let svc = svc();
        let mut plan = redirecting(&svc, RedirectPlan::default());
        plan.share = 0.5;
        let next = plan.next(
            PlanInputs {
                primary: LoadScore(1.0),
                shadow: LoadScore(0.0),
                shadow_ready: false,
            },
            &svc,
        );
        assert_eq!(
            next.demand, 1.0,
            "nothing was redirected: no share to divide by"
        );
    }

    #[test]
    fn shadow_headroom_caps_the_share() {
        let svc = svc();
        let mut plan = RedirectPlan::default();
        for _ in 0..20 {
            let applied = plan.share;
            // A weak shadow: each 10% of traffic is 45% of its capacity.
            plan = plan.next(
                PlanInputs {
                    primary: LoadScore(2.0 * (1.0 - applied)),
                    shadow: LoadScore(applied * 4.5),
                    shadow_ready: true,
                },
                &svc,
            );
        }
        assert!(plan.share <= 0.2 + 1e-3, "share {}", plan.share);
        assert!(plan.shadow_load <= 0.9 + 0.02);
    }

    #[test]
    fn no_ready_shadow_means_no_entry_and_demand_is_the_raw_load() {
        let svc = svc();
        let plan = RedirectPlan::default().next(
            PlanInputs {
                primary: LoadScore(1.5),
                shadow: LoadScore(0.0),
                shadow_ready: false,
            },
            &svc,
        );
        assert_eq!(plan.state, RedirectState::Normal);
        assert_eq!(plan.demand, 1.5);
    }
}
