//! ATRE's controller in a closed loop ([`sim`]): the filter's own decision, windows,
//! controller and plan against a queueing model of the primary and the shadow, for every
//! mix of session and session-less traffic — the rules the real-Envoy tests check in
//! minutes, here in milliseconds and over hundreds of mixes.
//!
//! Each surge must be met the same way: one entry and one exit; the primary held within
//! ±0.1 of its target, second by second, once the controller settled (four seconds after a
//! step from calm to the surge: where every request carries a session, the backlog built
//! while the first pins are announced drains only at the headroom the target leaves, and
//! clients that wait on it show their demand only as it drains); the
//! shadow given the excess and only the excess (its share within 0.1 of
//! `1 − target/demand`); and no session sent back from the shadow to the primary before
//! the surge ends.
//!
//! Second by second applies where nothing but the controller is random — paced arrivals,
//! fixed service times and sessions that last, as in the real-Envoy tests. With churning
//! sessions, Poisson arrivals or
//! exponential service times the primary's queue wanders by itself: even the best constant
//! share sees seconds at 1.5–3.7× the target there (measured with this model), and the
//! share that holds a queueing primary at its target is larger than `1 − target/demand`.
//! Those runs must hold the target in the median and the mean (±0.15) and the shadow's
//! share within 0.15 of the ideal; their single seconds are the queue's, not the
//! controller's.

mod sim;

use proptest::prelude::*;
use shadowmesh_wire::RedirectState;
use sim::{Arrivals, Outcome, Scenario, ServiceTime, quantile};

/// The shipped target.
const TARGET: f64 = 0.8;
/// The controller is judged from this long after the onset: a step from calm to the surge
/// builds a backlog while the first pins are announced, and where (nearly) every request
/// has a session it drains only at the headroom the target leaves.
const SETTLE_S: f64 = 4.0;

/// What the surge of `sc` looked like, and every rule it broke.
fn judge(sc: &Scenario, out: &Outcome) -> (String, Vec<String>) {
    let onset = sc.phases_s[0];
    let end = onset + sc.phases_s[1];
    let settled = out.between(onset + SETTLE_S, end);
    let loads: Vec<f64> = settled.iter().map(|p| p.primary_load).collect();
    let (p5, p95) = (quantile(&loads, 0.05), quantile(&loads, 0.95));
    let mean = loads.iter().sum::<f64>() / loads.len() as f64;
    let requests: u64 = settled.iter().map(|p| p.requests).sum();
    let to_shadow: f64 = settled
        .iter()
        .map(|p| p.shadow_share * p.requests as f64)
        .sum();
    let share = to_shadow / requests as f64;
    let ideal = 1.0 - TARGET / sc.surge_demand();
    let summary = format!(
        "sessions {:.2} × {} keys, demand {:.2}: primary load p5 {p5:.3} mean {mean:.3} p95 {p95:.3}, \
         shadow share {share:.3} (ideal {ideal:.3}), transitions {:?}, held {}, moved {}, \
         bounces {}, knees {:?}",
        sc.session_share,
        sc.keys,
        sc.surge_demand(),
        out.transitions,
        out.held,
        out.sessions_moved,
        out.bounces.len(),
        out.knees,
    );
    let mut broken = Vec::new();
    match out.transitions.as_slice() {
        [
            (t_in, RedirectState::Redirecting),
            (t_out, RedirectState::Normal),
        ] => {
            if !(onset..onset + SETTLE_S).contains(t_in) {
                broken.push(format!(
                    "entered at {t_in:.2} s, the surge began at {onset} s"
                ));
            }
            if *t_out < end {
                broken.push(format!(
                    "left at {t_out:.2} s, before the surge ended at {end} s"
                ));
            }
        }
        other => broken.push(format!("not one entry and one exit: {other:?}")),
    }
    let median = quantile(&loads, 0.5);
    // The mean's and median's tolerance and the share's; second by second where only the
    // controller is random.
    let (mean_off, share_off) = if sc.is_smooth() {
        (0.1, 0.1)
    } else {
        (0.15, 0.15)
    };
    if sc.is_smooth() && (p5 < TARGET - 0.1 || p95 > TARGET + 0.1) {
        broken.push(format!(
            "primary load p5 {p5:.3} / p95 {p95:.3} outside {TARGET} ± 0.1: {loads:.2?}"
        ));
    }
    if (mean - TARGET).abs() > mean_off || (median - TARGET).abs() > mean_off {
        broken.push(format!(
            "primary load {mean:.3} on average, {median:.3} in the median: {loads:.2?}"
        ));
    }
    if (share - ideal).abs() > share_off {
        broken.push(format!("shadow share {share:.3}, ideal {ideal:.3}"));
    }
    if !out.bounces.is_empty() {
        broken.push(format!(
            "{} sessions went back to the primary mid-surge, e.g. {:?}",
            out.bounces.len(),
            &out.bounces[..out.bounces.len().min(3)]
        ));
    }
    (summary, broken)
}

fn assert_holds(sc: &Scenario) -> Outcome {
    let out = sim::run(sc);
    let (summary, broken) = judge(sc, &out);
    eprintln!("{summary}");
    assert!(broken.is_empty(), "{sc:?}\n{summary}\n{broken:#?}");
    out
}

/// The matrix: 0, ½ and all of the traffic in sessions, 20 and 2,000 keys, a
/// surge to 1.5× the primary's capacity.
#[test]
fn every_mix_of_the_matrix_holds_the_primary_at_its_target() {
    for session_share in [0.0, 0.5, 1.0] {
        for keys in [20, 2_000] {
            let out = assert_holds(&Scenario::standard(session_share, keys, 600.0, 7));
            if session_share > 0.0 {
                assert!(out.sessions_moved > 0, "sessions took part of the excess");
            }
        }
    }
}

/// All traffic in sessions that write often: read-your-writes holds requests on the
/// primary while their writes are on their way to the shadows (fewer once a held session's
/// writes go to the relay at once), and the plan still moves exactly the excess —
/// measured, not meant — without sending any back.
#[test]
fn sessions_held_by_read_your_writes_are_made_up_for_not_lost() {
    let mut sc = Scenario::standard(1.0, 20, 650.0, 11);
    sc.write_share = 0.6;
    let out = assert_holds(&sc);
    assert!(out.held >= 10, "the rule held requests: {}", out.held);
}

/// Sessions that begin and end during the surge (a mean life of 3 s), busy and idle ones
/// (a power law).
#[test]
fn sessions_that_come_and_go_during_the_surge() {
    let mut sc = Scenario::standard(0.8, 500, 620.0, 3);
    sc.lifetime_s = Some(3.0);
    sc.skew = 0.8;
    assert_holds(&sc);
}

/// The controller lease moves to another worker just after the onset and mid-surge (a
/// worker stalled past the lease's three ticks): the new holder starts from the plan alone
/// and an empty window, and the surge is met all the same.
#[test]
fn a_lease_that_moves_mid_surge_changes_nothing() {
    for session_share in [0.0, 0.5, 1.0] {
        let mut sc = Scenario::standard(session_share, 20, 600.0, 23);
        sc.lease_moves_s = vec![4.15, 4.25, 11.0];
        assert_holds(&sc);
    }
}

/// One tick in five of every worker comes a tick late (a stalled event loop): a late worker
/// flushes two ticks' counts at once, a late lease holder plans a tick later. Rates taken
/// over each worker's own span see through it.
#[test]
fn stalled_workers_change_nothing() {
    for session_share in [0.0, 0.5, 1.0] {
        let mut sc = Scenario::standard(session_share, 200, 600.0, 29);
        sc.stall_share = 0.2;
        assert_holds(&sc);
    }
}

/// A load generator on a busy host stalls (a tick or two) and then sends what it owes at
/// once: arrivals come in a gap and a burst, anywhere in the onset — before the first pins,
/// between them, as the backlog drains. A pinned session cannot be taken back, so the
/// demand sessions are pinned on must let the two cancel, or a burst pins more sessions
/// than the excess for the rest of the surge: where the plan kept the highest of an
/// average over 300 ms (and counted a tick without arrivals as the backlog's load), 5 of
/// these 48 runs held the primary at 0.42–0.7 (with stalls of 250–400 ms, 18 of 72 more;
/// now 5, where a stall at the entry leaves a backlog no right share drains in time).
#[test]
fn a_load_generator_that_stalls_in_the_onset_and_catches_up_changes_nothing() {
    let mut failures = Vec::new();
    for keys in [20, 2_000] {
        for session_share in [0.5, 1.0] {
            for stall_ms in [100.0, 200.0] {
                for after_s in [0.05, 0.15, 0.35, 0.6, 1.0, 1.5] {
                    let mut sc = Scenario::standard(session_share, keys, 600.0, 5);
                    sc.client_stalls = vec![(sc.phases_s[0] + after_s, stall_ms)];
                    let out = sim::run(&sc);
                    let (summary, broken) = judge(&sc, &out);
                    if !broken.is_empty() {
                        failures.push(format!(
                            "{stall_ms} ms at +{after_s} s: {summary}: {broken:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Poisson arrivals and exponential service times: bursts by chance on both sides.
#[test]
fn random_arrivals_and_service_times() {
    for session_share in [0.0, 0.5, 1.0] {
        let mut sc = Scenario::standard(session_share, 200, 600.0, 17);
        sc.arrivals = Arrivals::Poisson;
        sc.primary.1 = ServiceTime::Exponential(20.0);
        sc.shadow.1 = ServiceTime::Exponential(20.0);
        assert_holds(&sc);
    }
}

/// The trap the shipped configuration set: `max_in_flight` 16 on a primary that serves 8
/// at once puts the 0.8 target (12.8 in flight) inside its queue. The capacity check finds
/// the knee at ≈ 8 and the controller holds the primary below it.
#[test]
fn a_max_in_flight_above_the_knee_is_found_and_the_target_held_below_it() {
    let mut failures = Vec::new();
    for (share, keys) in [(0.0, 20), (0.5, 200), (1.0, 20), (1.0, 2_000)] {
        let mut sc = Scenario::standard(share, keys, 600.0, 5);
        sc.primary_max_in_flight = 16;
        sc.phases_s = [4.0, 20.0, 6.0];
        // The primary is seen calm before the surge: its unloaded latency.
        let out = sim::run(&sc);
        let (summary, _) = judge(&sc, &out);
        eprintln!("{summary}");
        if !out.knees.first().is_some_and(|k| (7.0..=9.0).contains(k)) {
            failures.push(format!("{share} × {keys}: knee found: {:?}", out.knees));
        }
        // Once it is found, the primary is held at the target of what it really serves.
        let onset = sc.phases_s[0];
        let late: Vec<f64> = out
            .between(onset + 8.0, onset + sc.phases_s[1])
            .iter()
            .map(|p| p.primary_load)
            .collect();
        let (p5, p95) = (quantile(&late, 0.05), quantile(&late, 0.95));
        if !(p5 >= TARGET - 0.1 && p95 <= TARGET + 0.1) {
            failures.push(format!(
                "{share} × {keys}: after the knee: p5 {p5:.3} p95 {p95:.3} of {late:.2?}"
            ));
        }
        if out.transitions.len() != 2 {
            failures.push(format!("{share} × {keys}: {:?}", out.transitions));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

proptest! {
    // A fixed seed: the same 48 mixes every run, so a change that breaks one is seen at
    // once and a run that passes is not luck. `a_thousand_mixes` casts the wider net.
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x05ee_da7e_0020),
        .. ProptestConfig::default()
    })]

    /// Any mix: any share of sessions, few or many keys (equally busy, or among many some
    /// busier), long-lived or churning, writing little or much, a surge from 1.25× to 2×
    /// the primary's capacity, paced or Poisson arrivals, fixed or exponential service
    /// times, one to four workers, up to a fifth of their ticks late.
    #[test]
    fn any_traffic_mix_holds_the_primary_and_moves_only_the_excess(
        session_share in 0.0f64..=1.0,
        keys in prop::sample::select(vec![20usize, 50, 200, 2_000]),
        skew in 0.0f64..0.6,
        churn in prop::option::of(30.0f64..120.0),
        write_share in 0.0f64..0.5,
        demand in 1.25f64..2.0,
        poisson in any::<bool>(),
        exponential in any::<bool>(),
        workers in 1usize..=4,
        stalls in 0.0f64..0.2,
        seed in any::<u64>(),
    ) {
        let mut sc = Scenario::standard(session_share, keys, demand * 400.0, seed);
        // Busy and idle sessions among many: among 20, a skewed one carries a tenth of
        // the traffic, a step no threshold can split.
        sc.skew = if keys >= 200 { skew } else { 0.0 };
        sc.lifetime_s = churn;
        sc.write_share = write_share;
        sc.workers = workers;
        sc.stall_share = stalls;
        if poisson {
            sc.arrivals = Arrivals::Poisson;
        }
        if exponential {
            sc.primary.1 = ServiceTime::Exponential(20.0);
            sc.shadow.1 = ServiceTime::Exponential(20.0);
        }
        let out = sim::run(&sc);
        let (summary, broken) = judge(&sc, &out);
        prop_assert!(broken.is_empty(), "{:?}\n{}\n{:#?}", sc, summary, broken);
    }
}

/// A thousand random mixes of the proptest's kind, each judged, every broken one listed
/// (`cargo test --release -p shadowmesh-filter --test closed_loop -- --ignored`; `SURVEY=n`
/// for another count): the long run behind the 48 cases `scripts/test` runs. At most one
/// in 200 may break: on the final build 2 of 1,000 did, both where nearly every request is
/// in a session, arrivals are Poisson, service times exponential, demand 1.8× the primary
/// and a sixth of the workers' ticks late — one ran at 0.98 in the median, one at 0.61.
#[test]
#[ignore]
fn a_thousand_mixes() {
    // `SURVEY_SEED`: another thousand.
    let seed = std::env::var("SURVEY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(42);
    let mut rng = fastrand::Rng::with_seed(seed);
    let n: usize = std::env::var("SURVEY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    // `SURVEY_ONLY=117 SIM_TRACE=1`: one mix of the survey, traced tick by tick.
    let only: Option<usize> = std::env::var("SURVEY_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut broken_runs = Vec::new();
    for i in 0..n {
        let keys = [20usize, 50, 200, 2_000][rng.usize(..4)];
        let demand = 1.25 + 0.75 * rng.f64();
        let mut sc = Scenario::standard(rng.f64(), keys, demand * 400.0, rng.u64(..));
        sc.skew = if keys >= 200 { 0.6 * rng.f64() } else { 0.0 };
        sc.lifetime_s = rng.bool().then(|| 30.0 + 90.0 * rng.f64());
        sc.write_share = 0.5 * rng.f64();
        sc.workers = 1 + rng.usize(..4);
        sc.stall_share = 0.2 * rng.f64();
        if rng.bool() {
            sc.arrivals = Arrivals::Poisson;
        }
        if rng.bool() {
            sc.primary.1 = ServiceTime::Exponential(20.0);
            sc.shadow.1 = ServiceTime::Exponential(20.0);
        }
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let out = sim::run(&sc);
        let (summary, broken) = judge(&sc, &out);
        if !broken.is_empty() {
            eprintln!("#{i} {sc:?}\n  {summary}\n  {broken:?}");
            broken_runs.push(i);
        }
    }
    eprintln!("{} of {n} broken: {broken_runs:?}", broken_runs.len());
    assert!(
        broken_runs.len() * 200 <= n,
        "{} of {n} broken: {broken_runs:?}",
        broken_runs.len()
    );
}

/// The unloaded latency is learned from calm ticks only, and a primary held at the target
/// of a `max_in_flight` above what it serves is not calm, however little is sent: with
/// random arrivals it queues at the concurrency a calm tick allows (0.6 × 16 is above its
/// 8 servers), and a latency learned there would rise with the queue and hide the knee.
#[test]
fn a_primary_held_inside_its_queue_does_not_teach_its_unloaded_latency() {
    let mut failures = Vec::new();
    for seed in 1..=6 {
        let mut sc = Scenario::standard(0.5, 20, 600.0, seed);
        sc.primary_max_in_flight = 16;
        sc.phases_s = [4.0, 14.0, 6.0];
        sc.arrivals = Arrivals::Poisson;
        let out = sim::run(&sc);
        let learned = out.plan_at_surge_end.unloaded_latency_ms;
        if !(19.0..=21.0).contains(&learned) {
            failures.push(format!(
                "seed {seed}: unloaded latency {learned:.2} ms of 20"
            ));
        }
        if !out.knees.first().is_some_and(|k| (7.0..=9.5).contains(k)) {
            failures.push(format!("seed {seed}: knees {:?}", out.knees));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
