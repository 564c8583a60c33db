//! Boundaries of the core rules, each where a one-line change of the rule (a `<` for a
//! `<=`, a dropped term) would otherwise go unnoticed: found by a mutation review. The
//! policy's lead time, cheapest cover, contention, spend cap, backoff and cost.

use shadowmesh_provisioner::inputs::{ServiceLoad, StepInput, SurgeForecast};
use shadowmesh_provisioner::{
    Action, Decision, Mode, Provisioner, Settings, ShadowPool, SpareSpec, SpareState,
};

fn spare(id: &str, capacity: f64, warmup: f64, cost_per_hour: f64) -> SpareSpec {
    SpareSpec {
        id: id.into(),
        address: format!("10.0.0.{}:8080", id.len()),
        capacity,
        max_in_flight: 16,
        warmup_secs: warmup,
        cost_per_sec: cost_per_hour / 3_600.0,
        class: String::new(),
    }
}

fn settings() -> Settings {
    Settings {
        mode: Mode::Predictive,
        lead_margin_secs: 30.0,
        min_hold_secs: 120.0,
        release_hysteresis_secs: 60.0,
        release_below: 0.8,
        drain_secs: 10.0,
        spend_cap_per_hour: 1_000.0,
        degraded_request_cost: 0.01,
        horizon_secs: 3_600.0,
        reactive_trigger: 0.9,
        reactive_headroom: 0.2,
        failure_backoff_secs: 30.0,
    }
}

fn provisioner(settings: Settings, spares: Vec<SpareSpec>) -> Provisioner {
    Provisioner::new(settings, ShadowPool::new(spares).unwrap()).unwrap()
}

/// `checkout` at `demand` now, capacity 300, with a surge at `onset` peaking at `peak`.
fn input(now: f64, demand: f64, surge: Option<(f64, f64)>) -> StepInput {
    StepInput {
        now,
        services: vec![load("checkout", demand)],
        forecasts: surge
            .map(|(onset, peak)| forecast("checkout", onset, peak))
            .into_iter()
            .collect(),
    }
}

fn load(service: &str, demand: f64) -> ServiceLoad {
    ServiceLoad {
        service: service.into(),
        primary_capacity: 300.0,
        current_demand: demand,
    }
}

fn forecast(service: &str, onset: f64, peak: f64) -> SurgeForecast {
    SurgeForecast {
        service: service.into(),
        onset,
        end: Some(onset + 600.0),
        peak_median: peak * 0.95,
        peak_quantile: peak,
        quantile: 0.9,
        probability: 0.95,
        reason: "seasonal".into(),
        anomaly: false,
    }
}

fn started(decisions: &[Decision]) -> Vec<String> {
    decisions
        .iter()
        .filter_map(|d| match &d.action {
            Action::StartWarmup { spare, .. } => Some(spare.clone()),
            _ => None,
        })
        .collect()
}

fn state(p: &Provisioner, id: &str) -> String {
    p.pool().get(id).unwrap().state.name().to_string()
}

// ---- review kill tests ----

#[test]
fn a_spare_whose_warm_up_exactly_fits_counts_as_on_time() {
    // ready_by = 1000 - 30 = 970; "exact" is warm at 960 + 10 = 970, cheaper than "quick".
    let mut p = provisioner(
        settings(),
        vec![
            spare("exact", 200.0, 10.0, 1.0),
            spare("quick", 200.0, 0.0, 2.0),
        ],
    );
    assert_eq!(
        started(&p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))))),
        ["exact"]
    );
}

#[test]
fn fractional_need_is_covered_in_full() {
    use shadowmesh_provisioner::cover::{Candidate, cheapest_cover};
    let c = |id: &str, capacity: f64, cost: f64| Candidate {
        id: id.into(),
        capacity,
        cost,
    };
    let cover = cheapest_cover(&[c("a", 150.0, 1.0), c("b", 151.0, 2.0)], 150.5).unwrap();
    assert!(cover.capacity >= 150.5, "{cover:?}");
}

#[test]
fn fewer_spares_beat_less_capacity_on_equal_cost() {
    use shadowmesh_provisioner::cover::{Candidate, cheapest_cover};
    let c = |id: &str, capacity: f64, cost: f64| Candidate {
        id: id.into(),
        capacity,
        cost,
    };
    let pool = [c("x", 100.0, 4.0), c("y", 100.0, 4.0), c("one", 250.0, 8.0)];
    assert_eq!(cheapest_cover(&pool, 150.0).unwrap().ids, ["one"]);
}

#[test]
fn contention_is_by_value_per_cost_not_value() {
    let mut p = provisioner(settings(), vec![spare("only", 200.0, 10.0, 1.0)]);
    let mut long = forecast("long", 1_000.0, 380.0);
    long.end = Some(1_000.0 + 3_600.0);
    let step = StepInput {
        now: 960.0,
        services: vec![load("short", 100.0), load("long", 100.0)],
        forecasts: vec![forecast("short", 1_000.0, 480.0), long],
    };
    let d = p.step(&step);
    let b = |s: &str| {
        p.plan()
            .iter()
            .find(|x| x.service == s)
            .unwrap()
            .expected_benefit
    };
    eprintln!("benefit short {} long {}", b("short"), b("long"));
    assert!(b("long") > b("short"));
    assert_eq!(d[0].action.service(), "short");
}

#[test]
fn no_release_when_the_next_surge_is_within_warm_up_plus_margin() {
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 90.0, 1.0)]);
    assert_eq!(
        started(&p.step(&input(880.0, 100.0, Some((1_000.0, 450.0))))),
        ["a"]
    );
    assert!(p.on_warm("a", 960.0));
    p.step(&input(970.0, 100.0, Some((1_000.0, 450.0))));
    assert_eq!(state(&p, "a"), "assigned");
    // The next surge at 1,200 (ready by 1,170): within 90 s warm-up + 30 s margin from 1,090.
    let mut t = 975.0;
    while t < 1_200.0 {
        let d = p.step(&input(t, 100.0, Some((1_200.0, 450.0))));
        assert!(
            !d.iter().any(|d| matches!(d.action, Action::Drain { .. })),
            "drained at {t}"
        );
        t += 5.0;
    }
}

#[test]
fn a_verified_warm_up_resets_the_backoff() {
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
    p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))));
    p.on_failed("a", 965.0, "x");
    assert_eq!(
        started(&p.step(&input(995.0, 100.0, Some((1_000.0, 450.0))))),
        ["a"]
    );
    assert!(p.on_warm("a", 1_000.0));
    p.on_failed("a", 1_001.0, "y");
    assert!(matches!(
        p.pool().get("a").unwrap().state,
        SpareState::Cold { retry_after: Some(t) } if t == 1_031.0
    ));
}

#[test]
fn an_overdue_surge_holds_for_the_margin_past_its_onset() {
    let mut s = settings();
    s.min_hold_secs = 0.0;
    let mut p = provisioner(s, vec![spare("a", 200.0, 10.0, 1.0)]);
    p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))));
    p.on_warm("a", 968.0);
    p.step(&input(970.0, 100.0, Some((1_000.0, 450.0))));
    let mut t = 975.0;
    let mut drained_at = None;
    while t < 1_300.0 && drained_at.is_none() {
        if p.step(&input(t, 100.0, Some((1_000.0, 450.0))))
            .iter()
            .any(|d| matches!(d.action, Action::Drain { .. }))
        {
            drained_at = Some(t);
        }
        t += 5.0;
    }
    assert_eq!(drained_at, Some(1_090.0));
}

#[test]
fn spending_exactly_the_cap_is_allowed() {
    let mut s = settings();
    s.spend_cap_per_hour = 36.0;
    let mut p = provisioner(s, vec![spare("a", 200.0, 10.0, 36.0)]);
    assert_eq!(
        started(&p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))))),
        ["a"]
    );
}

#[test]
fn a_spare_costs_until_released_including_the_drain() {
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 3_600.0)]);
    p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))));
    // runs from 960 to the end 1,600 + min hold 120 + drain 10 = 770 s at 1/s.
    assert!(
        (p.plan()[0].expected_cost - 770.0).abs() < 1e-6,
        "{}",
        p.plan()[0].expected_cost
    );
}
