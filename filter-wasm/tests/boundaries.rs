//! Boundaries of the core rules, each where a one-line change of the rule (a `<` for a
//! `<=`, a dropped term) would otherwise go unnoticed: found by a mutation review.

use shadowmesh_filter::config::PluginConfig;
use shadowmesh_filter::control::{RedirectController, ShadowView, TickInput};
use shadowmesh_filter::decision::{RedirectDecision, Spreader, decide};
use shadowmesh_filter::plan::{RedirectPlan, SessionPins};
use shadowmesh_filter::window::ServiceWindow;
use shadowmesh_wire::{RedirectState, ShadowRecord};

fn redirecting(share: f64) -> RedirectPlan {
    RedirectPlan {
        state: RedirectState::Redirecting,
        share,
        plain_share: share,
        pins: SessionPins {
            before: share,
            after: share,
            from_ms: 0,
        },
        ..Default::default()
    }
}

#[test]
fn no_ready_shadow_falls_back() {
    let mut s = Spreader::default();
    assert_eq!(
        decide(&redirecting(1.0), 0, false, None, &mut s),
        RedirectDecision::Fallback
    );
}

#[test]
fn session_point_at_the_share_stays_on_primary() {
    let mut s = Spreader::default();
    assert_eq!(
        decide(&redirecting(0.5), 0, true, Some(0.5), &mut s),
        RedirectDecision::Primary
    );
}

#[test]
fn normal_state_never_redirects_sessionless_requests() {
    let mut s = Spreader::default();
    let plan = RedirectPlan {
        share: 0.9,
        plain_share: 0.9,
        ..Default::default()
    };
    assert!((0..100).all(|_| decide(&plan, 0, true, None, &mut s) == RedirectDecision::Primary));
}

fn config() -> PluginConfig {
    PluginConfig::parse(
        br#"{"tick_ms":100,"services":[{"name":"s","primary":{"cluster":"p","max_in_flight":10},
            "shadow":{"cluster":"sh","max_in_flight":10,"ready":false}}]}"#,
    )
    .unwrap()
}

#[test]
fn a_warm_record_with_zero_capacity_is_not_ready() {
    let c = config();
    let r = ShadowRecord {
        service: "s".into(),
        cluster: "c".into(),
        warm: true,
        max_in_flight: 0,
        generation: 1,
        expires_at_ms: None,
    };
    assert!(!ShadowView::resolve(&c.services[0].shadow, Some(&r), 0).ready);
}

#[test]
fn saturated_primary_without_ready_shadow_stays_normal() {
    let c = config();
    let svc = &c.services[0];
    let shadow = ShadowView::resolve(&svc.shadow, None, 0);
    assert!(!shadow.ready);
    let mut w = ServiceWindow::default();
    for _ in 0..100 {
        w.primary.latency.record(12_000);
    }
    w.close_span(1, 100, [1_200_000, 0]); // 12 in flight over the 100 ms tick
    let mut ctl = RedirectController::default();
    let plan = ctl.tick(
        &c,
        svc,
        &RedirectPlan::default(),
        TickInput {
            now_ms: 100,
            window: w,
            in_flight: [12, 0],
            shadow: &shadow,
        },
    );
    assert_eq!(plan.state, RedirectState::Normal);
}
