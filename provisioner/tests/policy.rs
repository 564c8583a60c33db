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
