//! The policy with known answers: lead time, cheapest cover, cost/benefit, contention,
//! spend cap, hysteresis and minimum hold, make-before-break, failures, reactive mode.

use shadowmesh_provisioner::inputs::{ServiceLoad, StepInput, SurgeForecast};
use shadowmesh_provisioner::{
    Action, Decision, LogEvent, Mode, Provisioner, ReasonKind, Settings, ShadowPool, SpareSpec,
    SpareState, Verdict,
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

#[test]
fn each_spare_starts_its_own_warm_up_plus_the_margin_before_the_onset() {
    // Need 450 − 300 = 150: a fast and a slow spare, both needed (100 each).
    let mut p = provisioner(
        settings(),
        vec![
            spare("fast", 100.0, 20.0, 1.0),
            spare("slow", 100.0, 90.0, 1.0),
        ],
    );
    let onset = 1_000.0;
    // slow: 1000 − 30 − 90 = 880; fast: 1000 − 30 − 20 = 950.
    assert!(
        p.step(&input(879.0, 100.0, Some((onset, 450.0))))
            .is_empty()
    );
    assert!(matches!(
        p.plan()[0].verdict,
        Verdict::Planned { first_start } if first_start == 880.0
    ));
    let d = p.step(&input(880.0, 100.0, Some((onset, 450.0))));
    assert_eq!(started(&d), ["slow"]);
    assert_eq!(d[0].reason, ReasonKind::LeadTime);
    assert!(started(&p.step(&input(949.0, 100.0, Some((onset, 450.0))))).is_empty());
    assert_eq!(
        started(&p.step(&input(950.0, 100.0, Some((onset, 450.0))))),
        ["fast"]
    );
    // Verified warm → assigned, before the onset by at least the margin.
    assert!(p.on_warm("slow", 970.0) && p.on_warm("fast", 968.0));
    let d = p.step(&input(970.0, 100.0, Some((onset, 450.0))));
    let assigned: Vec<_> = d
        .iter()
        .filter_map(|d| match &d.action {
            Action::Assign { spare, weight, .. } => Some((spare.clone(), *weight)),
            _ => None,
        })
        .collect();
    assert_eq!(
        assigned,
        [("fast".to_string(), 100), ("slow".to_string(), 100)]
    );
    assert!(970.0 <= onset - 30.0);
    assert_eq!(p.plan()[0].verdict, Verdict::Covered);
}

#[test]
fn a_spare_measured_slower_than_configured_is_started_earlier_next_time() {
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
    // First surge: started 10 s + 30 s margin ahead, but the probe takes 25 s.
    assert_eq!(
        started(&p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))))),
        ["a"]
    );
    assert!(p.on_warm("a", 985.0));
    assert_eq!(p.pool().get("a").unwrap().expected_warmup_secs(), 25.0);
    // Released after it, the next surge at 2,000 starts it 25 + 30 s ahead.
    p.step(&input(990.0, 100.0, Some((1_000.0, 450.0))));
    let mut t = 1_000.0;
    while p.pool().get("a").unwrap().state.is_running() {
        assert!(t < 2_000.0, "still running at {t}: never released");
        p.step(&input(t, 100.0, None));
        t += 5.0;
    }
    assert!(
        p.step(&input(1_944.0, 100.0, Some((2_000.0, 450.0))))
            .is_empty()
    );
    assert_eq!(
        started(&p.step(&input(1_945.0, 100.0, Some((2_000.0, 450.0))))),
        ["a"]
    );
}

#[test]
fn the_cover_is_the_cheapest_that_suffices_not_the_first_spares() {
    // Need 150. Listed first: two 100s for 10/h each (20/h); a 200 for 12/h; a 160 for 11/h.
    let mut p = provisioner(
        settings(),
        vec![
            spare("a", 100.0, 10.0, 10.0),
            spare("b", 100.0, 10.0, 10.0),
            spare("big", 200.0, 10.0, 12.0),
            spare("fit", 160.0, 10.0, 11.0),
        ],
    );
    let d = p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))));
    assert_eq!(started(&d), ["fit"]);
}

#[test]
fn a_surge_is_not_worth_a_spare_that_costs_more_than_the_loss_it_avoids() {
    let mut s = settings();
    s.degraded_request_cost = 1e-6;
    let mut p = provisioner(s, vec![spare("a", 200.0, 10.0, 100.0)]);
    let d = p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))));
    assert!(d.is_empty());
    let Verdict::NotWorthIt { benefit, cost } = p.plan()[0].verdict else {
        panic!("{:?}", p.plan()[0].verdict)
    };
    assert!(benefit < cost, "{benefit} vs {cost}");
    // A barely-over surge is not worth it either, at the usual price: its peak at q90 is
    // 305 (5 over capacity) and its median 250, so the expected excess is ~2.6 req/s —
    // ~15 worth of degraded requests over 600 s, against ~22 for the spare.
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 100.0)]);
    let mut unlikely = input(960.0, 100.0, Some((1_000.0, 305.0)));
    unlikely.forecasts[0].peak_median = 250.0;
    unlikely.forecasts[0].probability = 0.12;
    assert!(p.step(&unlikely).is_empty());
    assert!(matches!(p.plan()[0].verdict, Verdict::NotWorthIt { .. }));
}

#[test]
fn a_short_pool_serves_the_largest_loss_avoided_per_cost_first_and_logs_who_was_left_out() {
    let mut p = provisioner(settings(), vec![spare("only", 200.0, 10.0, 1.0)]);
    let step = StepInput {
        now: 960.0,
        services: vec![load("small", 100.0), load("big", 100.0)],
        forecasts: vec![
            forecast("small", 1_000.0, 350.0),
            forecast("big", 1_000.0, 480.0),
        ],
    };
    let d = p.step(&step);
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].action.service(),
        "big",
        "larger expected loss, same cost"
    );
    let small = p.plan().iter().find(|s| s.service == "small").unwrap();
    let Verdict::LeftOut { missing, why } = &small.verdict else {
        panic!("{:?}", small.verdict)
    };
    assert_eq!(*missing, 50.0);
    assert!(why.contains("pool exhausted"), "{why}");
    assert!(
        p.log().any(|l| l.service == "small"
            && matches!(&l.event, LogEvent::Verdict(Verdict::LeftOut { .. })))
    );
}

#[test]
fn the_spend_cap_bounds_what_runs_at_once() {
    let mut s = settings();
    s.spend_cap_per_hour = 15.0;
    let mut p = provisioner(
        s,
        vec![spare("a", 200.0, 10.0, 10.0), spare("b", 200.0, 10.0, 10.0)],
    );
    let step = StepInput {
        now: 960.0,
        services: vec![load("one", 100.0), load("two", 100.0)],
        forecasts: vec![
            forecast("one", 1_000.0, 450.0),
            forecast("two", 1_000.0, 450.0),
        ],
    };
    assert_eq!(
        p.step(&step).len(),
        1,
        "10/h fits under 15/h, 20/h does not"
    );
    assert!(p
        .plan()
        .iter()
        .any(|s| matches!(s.verdict, Verdict::SpendCap { would_spend_per_hour } if would_spend_per_hour == 20.0)));
}

/// Runs a surge to the assigned state; returns the provisioner at `t = 1_000`.
fn assigned_for_surge() -> Provisioner {
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
    assert_eq!(
        started(&p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))))),
        ["a"]
    );
    p.on_warm("a", 968.0);
    p.step(&input(970.0, 100.0, Some((1_000.0, 450.0))));
    assert_eq!(state(&p, "a"), "assigned");
    p
}

#[test]
fn release_waits_for_the_hysteresis_and_the_minimum_hold_then_drains_before_releasing() {
    let mut p = assigned_for_surge();
    // The surge: hot, then calm from t = 1,050 (assigned at 970; min hold until 1,090).
    p.step(&input(1_000.0, 420.0, None));
    let mut t = 1_050.0;
    // Calm for less than the 60 s hysteresis: kept.
    while t < 1_110.0 {
        assert!(p.step(&input(t, 100.0, None)).is_empty(), "released at {t}");
        t += 5.0;
    }
    // A blip above release_below restarts the hysteresis.
    assert!(p.step(&input(1_105.0, 260.0, None)).is_empty());
    let mut t = 1_110.0;
    while t < 1_170.0 {
        assert!(
            p.step(&input(t, 100.0, None)).is_empty(),
            "the blip did not restart the count"
        );
        t += 5.0;
    }
    // Calm for 60 s since 1,110: drain (readiness off) first...
    let d = p.step(&input(1_170.0, 100.0, None));
    assert!(
        matches!(&d[..], [Decision { action: Action::Drain { spare, .. }, reason: ReasonKind::SurgeOver, .. }] if spare == "a")
    );
    assert_eq!(state(&p, "a"), "draining");
    assert!(
        p.step(&input(1_175.0, 100.0, None)).is_empty(),
        "in-flight requests drain"
    );
    // ...then the release, after drain_secs.
    let d = p.step(&input(1_180.0, 100.0, None));
    assert!(
        matches!(&d[..], [Decision { action: Action::Release { spare, .. }, reason: ReasonKind::Drained, .. }] if spare == "a")
    );
    assert_eq!(state(&p, "a"), "cold");
}

#[test]
fn the_minimum_hold_keeps_a_spare_through_a_short_lull() {
    let mut p = assigned_for_surge();
    // Calm at once after the assignment at 970: hysteresis passes at 1,030, but the hold
    // lasts until 1,090.
    let mut t = 975.0;
    while t < 1_090.0 {
        let d = p.step(&input(t, 100.0, None));
        assert!(d.is_empty(), "released at {t} before the minimum hold");
        t += 5.0;
    }
    assert!(matches!(
        p.step(&input(1_090.0, 100.0, None))[0].action,
        Action::Drain { .. }
    ));
}

#[test]
fn a_spare_that_fails_to_warm_up_is_replaced_by_another_and_retried_after_a_backoff() {
    let mut p = provisioner(
        settings(),
        vec![
            spare("cheap", 200.0, 10.0, 1.0),
            spare("dear", 200.0, 10.0, 2.0),
        ],
    );
    assert_eq!(
        started(&p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))))),
        ["cheap"]
    );
    assert_eq!(
        p.on_failed("cheap", 965.0, "spawn: no such file")
            .as_deref(),
        Some("checkout")
    );
    assert!(matches!(
        p.pool().get("cheap").unwrap().state,
        SpareState::Cold { retry_after: Some(t) } if t == 995.0
    ));
    // The next step covers the service with the other spare (late: no time left).
    let d = p.step(&input(966.0, 100.0, Some((1_000.0, 450.0))));
    assert_eq!(started(&d), ["dear"]);
    assert!(
        p.log()
            .any(|l| matches!(&l.event, LogEvent::WarmupFailed { spare, .. } if spare == "cheap"))
    );
    // Fails too: nothing left until the first backoff ends, then the cheap one again.
    p.on_failed("dear", 967.0, "probe timed out");
    assert!(started(&p.step(&input(980.0, 100.0, Some((1_000.0, 450.0))))).is_empty());
    assert!(matches!(p.plan()[0].verdict, Verdict::LeftOut { .. }));
    assert_eq!(
        started(&p.step(&input(995.0, 100.0, Some((1_000.0, 450.0))))),
        ["cheap"]
    );
    // A second failure doubles its backoff.
    p.on_failed("cheap", 996.0, "again");
    assert!(matches!(
        p.pool().get("cheap").unwrap().state,
        SpareState::Cold { retry_after: Some(t) } if t == 996.0 + 60.0
    ));
}

#[test]
fn a_forecast_surge_that_does_not_come_releases_its_spare() {
    let mut p = assigned_for_surge();
    // The forecast keeps saying "surge from 1,000", but demand stays at 100: once the
    // onset is a margin (30 s) past, the forecast no longer holds the spare.
    let surge = Some((1_000.0, 450.0));
    let mut t = 975.0;
    let mut drained_at = None;
    while t < 1_300.0 && drained_at.is_none() {
        if p.step(&input(t, 100.0, surge))
            .iter()
            .any(|d| matches!(d.action, Action::Drain { .. }))
        {
            drained_at = Some(t);
        }
        t += 5.0;
    }
    // Calm from 1,030 (onset + margin), hysteresis 60 s: drained at 1,090.
    assert_eq!(drained_at, Some(1_090.0));
    // And nothing is started again for it.
    assert!(started(&p.step(&input(1_200.0, 100.0, surge))).is_empty());
}

#[test]
fn a_surge_called_off_before_assignment_releases_its_warming_spare() {
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
    p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))));
    assert_eq!(state(&p, "a"), "warming");
    // The forecast no longer shows the surge; calm for the hysteresis.
    p.step(&input(965.0, 100.0, None));
    let d = p.step(&input(1_025.0, 100.0, None));
    assert!(matches!(
        &d[..],
        [Decision {
            action: Action::Release { .. },
            reason: ReasonKind::CalledOff,
            ..
        }]
    ));
}

#[test]
fn reactive_mode_acts_only_on_current_load_and_sizes_with_headroom() {
    let mut s = settings();
    s.mode = Mode::Reactive;
    let mut p = provisioner(
        s,
        vec![
            spare("s100", 100.0, 10.0, 1.0),
            spare("s50", 50.0, 10.0, 1.0),
            spare("s200", 200.0, 10.0, 5.0),
        ],
    );
    // A forecast surge is ignored.
    assert!(
        p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))))
            .is_empty()
    );
    // 280 < 0.9 × 300: nothing. 300 ≥ 270: cover 300 × 1.2 − 300 = 60 → the 100.
    assert!(p.step(&input(1_000.0, 260.0, None)).is_empty());
    let d = p.step(&input(1_001.0, 300.0, None));
    assert_eq!(started(&d), ["s100"]);
    assert_eq!(d[0].reason, ReasonKind::Reactive);
}

#[test]
fn an_anomaly_forecast_is_acted_on_from_current_load_not_its_extrapolation() {
    let mut p = provisioner(
        settings(),
        vec![
            spare("small", 100.0, 10.0, 1.0),
            spare("big", 400.0, 10.0, 2.0),
        ],
    );
    let mut anomaly = input(1_000.0, 200.0, Some((1_010.0, 700.0)));
    anomaly.forecasts[0].anomaly = true;
    assert!(
        p.step(&anomaly).is_empty(),
        "under the reactive trigger: nothing"
    );
    anomaly.now = 1_001.0;
    anomaly.services[0].current_demand = 280.0;
    // 280 ≥ 0.9 × 300: cover 280 × 1.2 − 300 = 36 with the small one, not 400 for a
    // q90 peak of 700.
    assert_eq!(started(&p.step(&anomaly)), ["small"]);
}

#[test]
fn a_surge_nobody_forecast_is_still_covered_in_predictive_mode() {
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
    assert!(
        p.step(&input(1_000.0, 290.0, None)).is_empty(),
        "not overloaded yet"
    );
    let d = p.step(&input(1_001.0, 400.0, None));
    assert_eq!(started(&d), ["a"]);
    assert_eq!(d[0].reason, ReasonKind::Reactive);
}

#[test]
fn settings_and_spares_are_validated_naming_the_field() {
    let mut s = settings();
    s.release_below = 0.0;
    let e = Provisioner::new(s, ShadowPool::default()).unwrap_err();
    assert_eq!(e.field, "release_below");
    let mut bad = spare("a", 100.0, 1.0, 1.0);
    bad.capacity = f64::NAN;
    let e = ShadowPool::new(vec![spare("x", 1.0, 1.0, 1.0), bad]).unwrap_err();
    assert_eq!(e.field, "spares[1].capacity");
    let e =
        ShadowPool::new(vec![spare("x", 1.0, 1.0, 1.0), spare("x", 1.0, 1.0, 1.0)]).unwrap_err();
    assert_eq!(e.field, "spares[1].id");
}

#[test]
fn the_state_survives_a_round_trip_through_json() {
    let p = assigned_for_surge();
    let json = serde_json::to_string(&p).unwrap();
    let back: Provisioner = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
}

// Boundaries of the rules, each where a one-line change (a `<` for a `<=`, a dropped
// term) would otherwise go unnoticed: found by a mutation review.

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

// Rules pinned by a second mutation review (scripts/mutants): each test names the rule a
// one-line change would break silently.

fn plan_of<'a>(p: &'a Provisioner, service: &str) -> &'a shadowmesh_provisioner::ServicePlan {
    p.plan()
        .iter()
        .find(|x| x.service == service)
        .unwrap_or_else(|| panic!("no plan for {service}: {:?}", p.plan()))
}

/// What covering `f` avoids: `E[(D − 300)⁺]` over the surge from `max(onset, now)` to
/// `end`, at 0.01 a degraded request.
fn forecast_benefit(f: &SurgeForecast, now: f64, end: f64) -> f64 {
    f.expected_excess(300.0) * (end - f.onset.max(now)) * 0.01
}

#[test]
fn a_forecast_without_an_end_lasts_to_the_horizon() {
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
    let mut step = input(900.0, 100.0, Some((1_000.0, 450.0)));
    step.forecasts[0].end = None;
    p.step(&step);
    let plan = plan_of(&p, "checkout");
    assert_eq!(plan.surge_end, Some(900.0 + 3_600.0));
    let want = forecast_benefit(&step.forecasts[0], 900.0, 4_500.0);
    assert!(
        (plan.expected_benefit - want).abs() < 1e-9,
        "{plan:?} vs {want}"
    );
}

#[test]
fn a_forecast_that_ended_or_stays_under_capacity_needs_nothing() {
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
    // Ended exactly now (demand still high enough that the surge is not merely overdue).
    let mut ended = input(1_600.0, 280.0, Some((1_000.0, 450.0)));
    ended.forecasts[0].end = Some(1_600.0);
    assert!(p.step(&ended).is_empty());
    assert!(p.plan().is_empty(), "{:?}", p.plan());
    // A peak at exactly the primary's capacity adds nothing.
    assert!(
        p.step(&input(900.0, 100.0, Some((1_000.0, 300.0))))
            .is_empty()
    );
    assert!(p.plan().is_empty(), "{:?}", p.plan());
    // Just over it does.
    p.step(&input(900.0, 100.0, Some((1_000.0, 301.0))));
    assert_eq!(plan_of(&p, "checkout").need, 1.0);
}

#[test]
fn an_anomaly_acts_from_the_reactive_trigger_and_a_plain_surge_from_capacity() {
    let spares = || vec![spare("a", 200.0, 10.0, 1.0)];
    let mut anomaly = input(1_000.0, 269.0, Some((1_010.0, 700.0)));
    anomaly.forecasts[0].anomaly = true;
    let mut p = provisioner(settings(), spares());
    assert!(p.step(&anomaly).is_empty(), "269 < 0.9 × 300");
    anomaly.services[0].current_demand = 270.0;
    assert_eq!(started(&p.step(&anomaly)), ["a"], "270 = 0.9 × 300");
    // The anomaly is another service's: this one acts only when over its capacity.
    let mut other = input(1_000.0, 280.0, None);
    other.forecasts = vec![forecast("search", 1_010.0, 700.0)];
    other.forecasts[0].anomaly = true;
    let mut p = provisioner(settings(), spares());
    assert!(p.step(&other).is_empty());
    other.services[0].current_demand = 300.0;
    assert!(p.step(&other).is_empty(), "at capacity is not over it");
    other.services[0].current_demand = 300.5;
    assert_eq!(started(&p.step(&other)), ["a"]);
}

#[test]
fn a_reactive_need_lasts_the_longer_of_hold_and_hysteresis_and_is_worth_the_excess() {
    let mut s = settings();
    s.mode = Mode::Reactive;
    let mut p = provisioner(s.clone(), vec![spare("a", 200.0, 10.0, 1.0)]);
    p.step(&input(1_000.0, 400.0, None));
    let plan = plan_of(&p, "checkout");
    // 400 × 1.2 − 300 = 180 needed now, until now + max(min hold 120, hysteresis 60).
    assert!((plan.need - 180.0).abs() < 1e-9, "{plan:?}");
    assert_eq!(plan.ready_by, Some(1_000.0));
    assert_eq!(plan.surge_end, Some(1_120.0));
    // The 100 req/s over capacity, for those 120 s, at 0.01.
    assert!((plan.expected_benefit - 120.0).abs() < 1e-9, "{plan:?}");
    s.release_hysteresis_secs = 500.0;
    let mut p = provisioner(s, vec![spare("a", 200.0, 10.0, 1.0)]);
    p.step(&input(1_000.0, 400.0, None));
    assert_eq!(plan_of(&p, "checkout").surge_end, Some(1_500.0));
}

#[test]
fn load_now_above_a_later_forecast_is_covered_now() {
    // A forecast at 1,000 (add 50, ready by 970) and, at 0, demand of 400 over capacity:
    // the current need (400 × 1.2 − 300 = 180) is bigger and the forecast not yet due.
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
    let d = p.step(&input(0.0, 400.0, Some((1_000.0, 350.0))));
    assert_eq!(started(&d), ["a"]);
    assert_eq!(d[0].reason, ReasonKind::Reactive);
    let plan = plan_of(&p, "checkout");
    assert!((plan.need - 180.0).abs() < 1e-9, "{plan:?}");
    assert_eq!(plan.ready_by, Some(0.0));
}

#[test]
fn a_due_forecast_and_load_now_merge_into_the_larger_of_each() {
    // At 980 the forecast (onset 1,000, ready by 970) is due: the needs merge — the larger
    // capacity, the larger benefit, the forecast's ready-by and end.
    let mut p = provisioner(settings(), vec![spare("a", 400.0, 10.0, 1.0)]);
    let step = input(980.0, 310.0, Some((1_000.0, 600.0)));
    p.step(&step);
    let plan = plan_of(&p, "checkout");
    assert!(
        (plan.need - 300.0).abs() < 1e-9,
        "forecast's 300 over now's 72: {plan:?}"
    );
    assert_eq!(plan.ready_by, Some(970.0));
    assert_eq!(plan.surge_end, Some(1_600.0));
    let f = forecast_benefit(&step.forecasts[0], 980.0, 1_600.0);
    assert!((plan.expected_benefit - f).abs() < 1e-9, "{plan:?} vs {f}");
    // The same with a small forecast: now's need (400 × 1.2 − 300 = 180) is larger, and
    // so is its benefit (100 over × 120 s × 0.01 = 120).
    let mut p = provisioner(settings(), vec![spare("a", 400.0, 10.0, 1.0)]);
    let step = input(980.0, 400.0, Some((1_000.0, 310.0)));
    p.step(&step);
    let plan = plan_of(&p, "checkout");
    assert!((plan.need - 180.0).abs() < 1e-9, "{plan:?}");
    assert_eq!(plan.ready_by, Some(970.0));
    assert_eq!(plan.surge_end, Some(1_600.0));
    assert!((plan.expected_benefit - 120.0).abs() < 1e-9, "{plan:?}");
}

#[test]
fn a_spare_whose_warm_up_ends_exactly_at_ready_by_is_on_time_not_late() {
    // ready_by = 1,000 − 30 = 970; warm-up 30 from 940 ends exactly then.
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 30.0, 1.0)]);
    let d = p.step(&input(940.0, 100.0, Some((1_000.0, 450.0))));
    assert_eq!(started(&d), ["a"]);
    assert_eq!(d[0].reason, ReasonKind::LeadTime);
    // One second later it cannot be warm in time: started at once, logged late.
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 30.0, 1.0)]);
    let d = p.step(&input(941.0, 100.0, Some((1_000.0, 450.0))));
    assert_eq!(started(&d), ["a"]);
    assert_eq!(d[0].reason, ReasonKind::Late);
}

#[test]
fn a_cover_partly_started_is_covered_not_planned() {
    // Need 150: a slow spare starts now (940 = 970 − 30), a fast one is planned for 960.
    let mut p = provisioner(
        settings(),
        vec![
            spare("slow", 100.0, 30.0, 1.0),
            spare("fast", 100.0, 10.0, 1.0),
        ],
    );
    let d = p.step(&input(940.0, 100.0, Some((1_000.0, 450.0))));
    assert_eq!(started(&d), ["slow"]);
    let plan = plan_of(&p, "checkout");
    assert_eq!(plan.planned, [("fast".to_string(), 960.0)]);
    assert_eq!(plan.verdict, Verdict::Covered);
}

#[test]
fn what_runs_already_is_costed_until_released() {
    // `a` (360 an hour = 0.1 a second) is assigned at 970; at 1,000 its cost is the rest
    // of the surge (end 1,600) plus the minimum hold and the drain: 0.1 × (600 + 120 + 10).
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 360.0)]);
    p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))));
    p.on_warm("a", 968.0);
    p.step(&input(970.0, 100.0, Some((1_000.0, 450.0))));
    p.step(&input(1_000.0, 400.0, Some((1_000.0, 450.0))));
    let plan = plan_of(&p, "checkout");
    assert_eq!(plan.verdict, Verdict::Covered);
    assert_eq!(state(&p, "a"), "assigned");
    assert!((plan.expected_cost - 73.0).abs() < 1e-9, "{plan:?}");
}

#[test]
fn an_overdue_surge_holds_while_demand_is_not_calm() {
    // At 1,100 the surge (onset 1,000) is overdue by more than the margin. It still holds
    // while demand is at or above release_below × capacity (240); below, it is dropped.
    for (demand, holds) in [(280.0, true), (240.0, true), (239.0, false)] {
        let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
        let d = p.step(&input(1_100.0, demand, Some((1_000.0, 450.0))));
        assert_eq!(started(&d).len(), usize::from(holds), "demand {demand}");
    }
}

fn verdicts_logged(p: &Provisioner, service: &str) -> Vec<Verdict> {
    p.log()
        .filter(|e| e.service == service)
        .filter_map(|e| match &e.event {
            LogEvent::Verdict(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_service_with_running_spares_stays_in_the_plan_and_verdicts_are_logged_on_change() {
    let mut p = assigned_for_surge();
    assert_eq!(p.plan().len(), 1, "one plan per service: {:?}", p.plan());
    // The forecast is gone and demand is calm: no need, but the spare still runs.
    for t in [1_000.0, 1_005.0, 1_010.0] {
        p.step(&input(t, 100.0, None));
        let plan = plan_of(&p, "checkout");
        assert_eq!((plan.need, plan.provided), (0.0, 200.0));
        assert_eq!(plan.verdict, Verdict::Covered, "at {t}");
    }
    assert_eq!(p.plan().len(), 1);
    // Calm for the hysteresis (60 s from 1,000): releasing, though held until 1,090.
    p.step(&input(1_060.0, 100.0, None));
    assert_eq!(plan_of(&p, "checkout").verdict, Verdict::Releasing);
    assert_eq!(state(&p, "a"), "assigned");
    // Drained at 1,090, released at 1,100: the service leaves the plan, idle once.
    for t in [1_090.0, 1_100.0, 1_105.0, 1_110.0] {
        p.step(&input(t, 100.0, None));
    }
    assert_eq!(state(&p, "a"), "cold");
    assert!(p.plan().is_empty(), "{:?}", p.plan());
    let verdicts = verdicts_logged(&p, "checkout");
    assert_eq!(
        verdicts.iter().map(verdict_name).collect::<Vec<_>>(),
        ["covered", "releasing", "idle"],
        "one line per change: {verdicts:?}"
    );
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Idle => "idle",
        Verdict::Planned { .. } => "planned",
        Verdict::Covered => "covered",
        Verdict::LeftOut { .. } => "left_out",
        Verdict::NotWorthIt { .. } => "not_worth_it",
        Verdict::SpendCap { .. } => "spend_cap",
        Verdict::Releasing => "releasing",
    }
}

#[test]
fn the_spend_cap_must_be_a_positive_number_and_settings_are_kept() {
    for bad in [0.0, -1.0, f64::NAN] {
        let mut s = settings();
        s.spend_cap_per_hour = bad;
        let e = Provisioner::new(s, ShadowPool::default()).unwrap_err();
        assert_eq!(e.field, "spend_cap_per_hour", "{bad}");
    }
    let p = provisioner(settings(), vec![]);
    assert_eq!(p.settings(), &settings());
}

#[test]
fn a_forecast_due_now_merges_with_load_now_rather_than_yielding_to_it() {
    // At 970 the forecast (onset 1,000) is due exactly: load now (400 → 180 needed) is
    // larger than the forecast's 10, but the two merge — the forecast's end, not a reactive
    // start.
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 0.0, 1.0)]);
    let d = p.step(&input(970.0, 400.0, Some((1_000.0, 310.0))));
    assert_eq!(started(&d), ["a"]);
    assert_ne!(d[0].reason, ReasonKind::Reactive);
    let plan = plan_of(&p, "checkout");
    assert_eq!(
        (plan.ready_by, plan.surge_end),
        (Some(970.0), Some(1_600.0))
    );
    assert!((plan.need - 180.0).abs() < 1e-9);
}

#[test]
fn a_reactive_need_of_exactly_nothing_is_no_need() {
    // Headroom 0, trigger 0.9: demand at capacity crosses the trigger and needs
    // 300 × 1.0 − 300 = 0 — nothing to plan.
    let mut s = settings();
    s.mode = Mode::Reactive;
    s.reactive_headroom = 0.0;
    let mut p = provisioner(s, vec![spare("a", 200.0, 10.0, 1.0)]);
    assert!(p.step(&input(1_000.0, 300.0, None)).is_empty());
    assert!(p.plan().is_empty(), "{:?}", p.plan());
    assert_eq!(started(&p.step(&input(1_001.0, 301.0, None))), ["a"]);
}

#[test]
fn a_surge_ready_within_warm_up_plus_margin_blocks_the_release() {
    // `a` (warm-up 10) is assigned at 970 and calm from 1,000; at 1,100 hysteresis (60) and
    // hold (120) have passed. The next surge's ready-by (onset − 30) within 10 + 30 s of now
    // keeps it; one second further, it is drained.
    for (ready_in, drained) in [(40.0, false), (41.0, true)] {
        let mut p = assigned_for_surge();
        p.step(&input(1_000.0, 100.0, None));
        let onset = 1_100.0 + ready_in + 30.0;
        let d = p.step(&input(1_100.0, 100.0, Some((onset, 450.0))));
        let drains = d.iter().any(|d| matches!(d.action, Action::Drain { .. }));
        assert_eq!(drains, drained, "next surge ready in {ready_in} s");
    }
}

#[test]
fn demand_at_exactly_release_below_is_not_calm() {
    let mut p = assigned_for_surge();
    for t in (0..40).map(|i| 1_000.0 + 10.0 * f64::from(i)) {
        let d = p.step(&input(t, 240.0, None));
        assert!(
            !d.iter().any(|d| matches!(d.action, Action::Drain { .. })),
            "drained at {t}: 240 = 0.8 × 300 is not under it"
        );
    }
    assert_eq!(state(&p, "a"), "assigned");
}

#[test]
fn contention_weighs_what_is_still_missing_not_the_whole_need() {
    // `zeta` already has `a0` (100) assigned and needs 150: 50 missing, which the one free
    // spare covers. `alpha` needs 150 and the free spare alone cannot cover it. Weighed on
    // what is missing, zeta comes first and gets the spare (alpha would by name).
    let mut p = provisioner(
        settings(),
        vec![spare("a0", 100.0, 10.0, 1.0), spare("f1", 100.0, 10.0, 2.0)],
    );
    let zeta = |onset: f64, peak: f64| forecast("zeta", onset, peak);
    let first = StepInput {
        now: 960.0,
        services: vec![load("zeta", 100.0)],
        forecasts: vec![zeta(1_000.0, 400.0)],
    };
    assert_eq!(started(&p.step(&first)), ["a0"]);
    p.on_warm("a0", 965.0);
    let second = StepInput {
        now: 970.0,
        services: vec![load("alpha", 100.0), load("zeta", 100.0)],
        forecasts: vec![forecast("alpha", 1_000.0, 450.0), zeta(1_000.0, 450.0)],
    };
    let d = p.step(&second);
    let f1: Vec<_> = d
        .iter()
        .filter(|d| matches!(d.action, Action::StartWarmup { .. }) && d.action.spare() == "f1")
        .map(|d| d.action.service().to_string())
        .collect();
    assert_eq!(f1, ["zeta"], "{d:?}");
    assert!(matches!(
        plan_of(&p, "alpha").verdict,
        Verdict::LeftOut { missing, .. } if (missing - 150.0).abs() < 1e-9
    ));
}

#[test]
fn a_partial_cover_is_worth_the_share_of_the_loss_it_avoids() {
    // Need 200 (peak 500), one free spare of 100: it avoids half the loss. Its cost (a
    // spare run from 960 to the end 1,600, the hold and the drain: 770 s) sits between
    // half and all of it.
    let step = input(960.0, 100.0, Some((1_000.0, 500.0)));
    let whole = {
        let mut p = provisioner(settings(), vec![spare("big", 300.0, 10.0, 1.0)]);
        p.step(&step);
        plan_of(&p, "checkout").expected_benefit
    };
    let cost_per_hour = 3_600.0 * 0.75 * whole / 770.0;
    let mut p = provisioner(settings(), vec![spare("half", 100.0, 10.0, cost_per_hour)]);
    assert!(p.step(&step).is_empty());
    match plan_of(&p, "checkout").verdict {
        Verdict::NotWorthIt { benefit, cost } => {
            assert!((benefit - whole / 2.0).abs() < 1e-6, "{benefit} vs {whole}");
            assert!((cost - 0.75 * whole).abs() < 1e-6);
        }
        ref v => panic!("{v:?}"),
    }
    // A quarter of the cost: worth it, started, and left out of the other 100.
    let mut s = settings();
    s.spend_cap_per_hour = f64::MAX;
    let mut p = provisioner(s, vec![spare("half", 100.0, 10.0, cost_per_hour / 3.0)]);
    assert_eq!(started(&p.step(&step)), ["half"]);
    assert!(matches!(
        plan_of(&p, "checkout").verdict,
        Verdict::LeftOut { missing, .. } if (missing - 100.0).abs() < 1e-9
    ));
}

#[test]
fn a_spare_warm_in_time_beats_a_cheaper_one_that_would_be_late() {
    // ready_by 970; at 960 `slow` (60 s) cannot be warm by then, `fast` (5 s) can.
    let mut p = provisioner(
        settings(),
        vec![
            spare("slow", 200.0, 60.0, 1.0),
            spare("fast", 200.0, 5.0, 2.0),
        ],
    );
    let d = p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))));
    assert!(started(&d).is_empty(), "fast starts at 965: {d:?}");
    assert_eq!(
        plan_of(&p, "checkout").planned,
        [("fast".to_string(), 965.0)]
    );
    // With no spare in time, the cheapest is started at once, late.
    let mut p = provisioner(settings(), vec![spare("slow", 200.0, 60.0, 1.0)]);
    let d = p.step(&input(960.0, 100.0, Some((1_000.0, 450.0))));
    assert_eq!(started(&d), ["slow"]);
    assert_eq!(d[0].reason, ReasonKind::Late);
}

#[test]
fn an_overload_now_is_not_left_waiting_for_a_larger_forecast_surge() {
    // At 800 demand is 320, over capacity (needs 320 × 1.2 − 300 = 84 now); a surge at
    // 1,000 needs 150 by 970. The larger need is covered now, not planned for 960.
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
    let d = p.step(&input(800.0, 320.0, Some((1_000.0, 450.0))));
    assert_eq!(started(&d), ["a"]);
    let plan = plan_of(&p, "checkout");
    assert_eq!((plan.need, plan.ready_by), (150.0, Some(800.0)));
    assert_eq!(
        plan.surge_end,
        Some(1_600.0),
        "until the forecast surge ends"
    );
}

#[test]
fn an_overload_now_as_large_as_the_coming_surge_is_acted_on_now() {
    // Now 400 × 1.2 − 300 = 180; the surge at 1,000 needs 480 − 300 = 180 too.
    let mut p = provisioner(settings(), vec![spare("a", 200.0, 10.0, 1.0)]);
    let d = p.step(&input(0.0, 400.0, Some((1_000.0, 480.0))));
    assert_eq!(started(&d), ["a"]);
    assert_eq!(d[0].reason, ReasonKind::Reactive);
}

#[test]
fn a_surge_worth_exactly_what_its_cover_costs_is_covered() {
    // A certain peak of 377 (no spread) over capacity 300 for the 600 s surge, at 0.5 a
    // degraded request: 77 × 600 × 0.5 = 23,100. The spare (30 a second) runs from 960 to
    // the end, the hold and the drain: 30 × 770 = 23,100. A tie goes to acting.
    let mut s = settings();
    s.degraded_request_cost = 0.5;
    s.spend_cap_per_hour = f64::MAX;
    let mut step = input(960.0, 100.0, Some((1_000.0, 377.0)));
    step.forecasts[0].peak_median = 377.0;
    let mut p = provisioner(s, vec![spare("a", 100.0, 10.0, 30.0 * 3_600.0)]);
    assert_eq!(started(&p.step(&step)), ["a"]);
    let plan = plan_of(&p, "checkout");
    assert_eq!(
        (plan.expected_benefit, plan.expected_cost),
        (23_100.0, 23_100.0)
    );
}
