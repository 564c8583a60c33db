//! Behaviour of the Predictive Traffic Analyzer on synthetic series with known answers.

use shadowmesh_predictor::analyzer::{Analyzer, AnalyzerConfig, Reason, SeriesKind};
use shadowmesh_predictor::anomaly::Direction;
use shadowmesh_predictor::events::ScheduledEvent;
use shadowmesh_predictor::model::ObserveError;
use std::f64::consts::TAU;

const H: i64 = 3600;

/// Deterministic standard normal noise.
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u.ln()).sqrt() * (TAU * v).cos()
    }
}

/// Demand with a daily and a weekly cycle: 100 on average, ±50 over the day, weekends lower.
fn seasonal(hour: i64) -> f64 {
    let day = ((hour % 24) as f64 / 24.0 * TAU).sin();
    let weekend = if (hour / 24) % 7 >= 5 { 0.7 } else { 1.0 };
    (100.0 + 50.0 * day) * weekend
}

fn analyzer() -> Analyzer {
    Analyzer::new(AnalyzerConfig::for_step(H, 24)).unwrap()
}

fn feed(
    pta: &mut Analyzer,
    series: &str,
    hours: std::ops::Range<i64>,
    mut f: impl FnMut(i64) -> f64,
) {
    for h in hours {
        pta.observe(series, h * H, f(h)).unwrap();
    }
}

#[test]
fn pure_seasonality_is_recovered() {
    let mut pta = analyzer();
    let mut noise = Noise(7);
    feed(&mut pta, "s", 0..24 * 42, |h| {
        seasonal(h) + 2.0 * noise.normal()
    });
    let now = 24 * 42;
    let fc = pta.forecast("s", 24);
    assert_eq!(fc.len(), 24);
    for (i, p) in fc.iter().enumerate() {
        let truth = seasonal(now + i as i64);
        assert!(
            (p.median - truth).abs() < 0.06 * truth + 3.0,
            "h={} forecast {:.1} vs {truth:.1}",
            i + 1,
            p.median
        );
        assert!(p.low < p.median && p.median < p.high);
    }
    let c = pta.overload_risks();
    assert!(c.is_empty(), "no capacity set: nothing listed");
}

#[test]
fn a_declared_event_raises_the_forecast_inside_its_window_and_not_outside() {
    let mut with = analyzer();
    let mut without = analyzer();
    feed(&mut with, "s", 0..24 * 21, seasonal);
    feed(&mut without, "s", 0..24 * 21, seasonal);
    let now = 24 * 21;
    with.add_event(ScheduledEvent {
        kind: "sale".into(),
        start: (now + 6) * H,
        duration_secs: 4 * H,
        uplift: Some(2.0),
        series: None,
    })
    .unwrap();
    let (a, b) = (with.forecast("s", 24), without.forecast("s", 24));
    for (i, (pa, pb)) in a.iter().zip(&b).enumerate() {
        let inside = (now + 6..now + 10).contains(&(now + i as i64));
        let ratio = pa.median / pb.median;
        if inside {
            assert!((ratio - 2.0).abs() < 1e-9, "h={} inside: ×{ratio}", i + 1);
        } else {
            assert!((ratio - 1.0).abs() < 1e-9, "h={} outside: ×{ratio}", i + 1);
        }
    }
}

#[test]
fn an_event_kind_learns_its_uplift_and_does_not_teach_the_baseline() {
    let mut pta = analyzer();
    let sale = |day: i64| ScheduledEvent {
        kind: "sale".into(),
        start: (day * 24 + 9) * H,
        duration_secs: 6 * H,
        uplift: None,
        series: Some(vec!["s".into()]),
    };
    for day in [14, 21] {
        pta.add_event(sale(day)).unwrap();
    }
    let in_sale = |h: i64| (h / 24 == 14 || h / 24 == 21) && (9..15).contains(&(h % 24));
    feed(&mut pta, "s", 0..24 * 27, |h| {
        seasonal(h) * if in_sale(h) { 1.8 } else { 1.0 }
    });
    let learned = pta.learned_uplift("s", "sale").unwrap();
    assert!((learned - 1.8).abs() < 0.15, "learned ×{learned}");

    // The next sale, announced without an uplift, is forecast with the learned one.
    let now = 24 * 27;
    pta.add_event(ScheduledEvent {
        start: (now + 9) * H,
        ..sale(0)
    })
    .unwrap();
    let fc = pta.forecast("s", 24);
    for (i, p) in fc.iter().enumerate() {
        let h = now + 1 + i as i64 - 1;
        let hour = (now + i as i64) % 24;
        let truth = seasonal(now + i as i64);
        let expected = if (9..15).contains(&hour) {
            truth * learned
        } else {
            truth
        };
        assert!(
            (p.median - expected).abs() < 0.08 * expected + 3.0,
            "h={} at {h}: {:.1} vs {expected:.1}",
            i + 1,
            p.median
        );
    }
    assert!(pta.overload_risks().is_empty());
}

#[test]
fn a_step_change_is_flagged_within_a_few_samples_and_the_forecast_follows() {
    let mut pta = analyzer();
    pta.set_capacity("s", 200.0).unwrap();
    let mut noise = Noise(11);
    feed(&mut pta, "s", 0..24 * 28, |h| {
        seasonal(h) + 2.0 * noise.normal()
    });
    let start = 24 * 28;
    let mut flagged = None;
    for h in start..start + 8 {
        let y = seasonal(h) * 1.8 + 2.0 * noise.normal();
        if let Some(a) = pta.observe("s", h * H, y).unwrap() {
            flagged.get_or_insert((h - start + 1, a));
        }
    }
    let (after, anomaly) = flagged.expect("the surge was never flagged");
    assert!(after <= 3, "flagged after {after} samples");
    assert_eq!(anomaly.direction, Direction::Up);
    assert_eq!(anomaly.since, start * H);
    let next = pta.forecast("s", 1)[0];
    let truth = seasonal(start + 8) * 1.8;
    assert!(
        (next.median - truth).abs() < 0.15 * truth,
        "short-term forecast {:.1} does not follow the new level {truth:.1}",
        next.median
    );
    let risks = pta.overload_risks();
    assert_eq!(risks.len(), 1);
    assert!(matches!(
        risks[0].reason,
        Reason::Anomaly {
            direction: Direction::Up,
            ..
        }
    ));
}

#[test]
fn a_lone_outlier_is_not_an_anomaly_and_barely_moves_the_forecast() {
    let mut pta = analyzer();
    let mut noise = Noise(5);
    feed(&mut pta, "s", 0..24 * 28, |h| {
        seasonal(h) + 2.0 * noise.normal()
    });
    let before = pta.forecast("s", 24);
    let t = 24 * 28;
    assert_eq!(pta.observe("s", t * H, seasonal(t) * 10.0).unwrap(), None);
    assert!(pta.anomaly("s").is_none());
    let after = pta.forecast("s", 24);
    // Beyond the short-term correction's reach the forecast is what it was (`before` is
    // one step older: its h+1 is `after`'s h).
    for (b, a) in before[12..].iter().zip(&after[11..]) {
        assert_eq!(b.ts, a.ts);
        assert!(
            (a.median / b.median - 1.0).abs() < 0.1,
            "{} vs {}",
            a.median,
            b.median
        );
    }
}

#[test]
fn invalid_input_is_rejected_with_a_clear_error_and_changes_nothing() {
    let mut pta = analyzer();
    feed(&mut pta, "s", 0..24 * 7, seasonal);
    let before = pta.forecast("s", 24);
    let t = 24 * 7 * H;
    let e = pta.observe("s", t, f64::NAN).unwrap_err();
    assert!(matches!(e, ObserveError::NotFinite(_)));
    assert!(e.to_string().contains("not a finite number"));
    assert_eq!(
        pta.observe("s", t, -3.0).unwrap_err(),
        ObserveError::Negative(-3.0)
    );
    let e = pta.observe("s", t - 2 * H, 5.0).unwrap_err();
    assert_eq!(
        e,
        ObserveError::OutOfOrder {
            last: t - H,
            got: t - 2 * H
        }
    );
    assert!(e.to_string().contains("not after the last observation"));
    assert!(
        pta.observe("s", t - H, 5.0).is_err(),
        "a duplicate timestamp"
    );
    assert!(pta.observe("new", 0, f64::INFINITY).is_err());
    assert_eq!(pta.forecast("s", 24), before, "the model is untouched");
    assert_eq!(
        pta.series().collect::<Vec<_>>(),
        ["s"],
        "no series from refused input"
    );
}

/// Share of observations inside the analyzer's 80% interval, forecasting 1–24 h ahead
/// every 6 hours over seven weeks after three weeks of history; `noise` draws the
/// multiplicative noise of each observation.
fn coverage_of_80_percent_intervals(mut noise: impl FnMut() -> f64) -> f64 {
    let mut pta = analyzer();
    let value = |h: i64, n: f64| (seasonal(h) * (1.0 + 0.1 * n)).max(0.0);
    feed(&mut pta, "s", 0..24 * 21, |h| value(h, noise()));
    let (mut inside, mut total) = (0, 0);
    let mut pending: Vec<(i64, f64, f64)> = Vec::new();
    for h in 24 * 21..24 * 70 {
        if h % 6 == 0 {
            for (i, p) in pta.forecast("s", 24).iter().enumerate() {
                pending.push((h + i as i64, p.low, p.high));
            }
        }
        let y = value(h, noise());
        pending.retain(|(t, lo, hi)| {
            if *t == h {
                total += 1;
                if y >= *lo && y <= *hi {
                    inside += 1;
                }
                false
            } else {
                true
            }
        });
        pta.observe("s", h * H, y).unwrap();
    }
    // The analyzer's interval is central at its quantile (0.9): an 80% interval.
    f64::from(inside) / f64::from(total)
}

#[test]
fn intervals_are_calibrated() {
    let mut noise = Noise(99);
    let coverage = coverage_of_80_percent_intervals(|| noise.normal());
    assert!(
        (0.75..=0.85).contains(&coverage),
        "80% interval covered {coverage:.3}"
    );
}

/// Real traffic has heavy tails: mostly quiet noise with occasional large deviations. A
/// normal interval sized by the error variance alone then covers too much (the rare large
/// errors inflate the variance); the adaptive scale must bring it back to 80%.
#[test]
fn intervals_stay_calibrated_under_heavy_tailed_noise() {
    let mut noise = Noise(7);
    // A contaminated normal: 90% N(0, 1), 10% N(0, 5²).
    let coverage = coverage_of_80_percent_intervals(|| {
        let wide = noise.uniform() < 0.1;
        noise.normal() * if wide { 5.0 } else { 1.0 }
    });
    assert!(
        (0.75..=0.85).contains(&coverage),
        "80% interval covered {coverage:.3} under heavy-tailed noise"
    );
}

#[test]
fn gaps_zeros_and_partial_history_are_handled() {
    let mut pta = analyzer();
    // Closed at night (zeros) and a two-day outage in the data.
    let shop = |h: i64| {
        if (8..20).contains(&(h % 24)) {
            seasonal(h)
        } else {
            0.0
        }
    };
    feed(&mut pta, "shop", 0..24, shop);
    let early = pta.overload_risks();
    assert!(early.is_empty());
    let c1 = pta.forecast("shop", 24);
    assert_eq!(c1.len(), 24, "useful after one day");
    feed(&mut pta, "shop", 24..24 * 10, shop);
    feed(&mut pta, "shop", 24 * 12..24 * 28, shop);
    let fc = pta.forecast("shop", 24);
    let now = 24 * 28;
    for (i, p) in fc.iter().enumerate() {
        let truth = shop(now + i as i64);
        assert!(p.median.is_finite() && p.low >= 0.0);
        assert!(
            (p.median - truth).abs() < 0.1 * truth + 3.0,
            "h={}: {:.1} vs {truth}",
            i + 1,
            p.median
        );
    }
    pta.set_capacity("shop", 1000.0).unwrap();
    let mut young = analyzer();
    feed(&mut young, "s", 0..24, seasonal);
    young.set_capacity("s", 1.0).unwrap();
    let mut old = analyzer();
    feed(&mut old, "s", 0..24 * 21, seasonal);
    old.set_capacity("s", 1.0).unwrap();
    let (y, o) = (&young.overload_risks()[0], &old.overload_risks()[0]);
    assert!(y.confidence.seasons_learned < 0.2, "{:?}", y.confidence);
    assert!(o.confidence.seasons_learned > 0.99, "{:?}", o.confidence);
}

#[test]
fn the_overload_list_is_prioritized_with_peak_onset_probability_and_reason() {
    let mut pta = analyzer();
    // Now is midnight; the daily peak (150 on weekdays) comes at 6:00.
    let now = 24 * 21;
    for (name, scale) in [("hot", 1.0), ("cold", 0.3), ("sale", 0.75)] {
        feed(&mut pta, name, 0..now, |h| seasonal(h) * scale);
    }
    feed(&mut pta, "edge->hot", 0..now, |h| seasonal(h) * 0.5);
    pta.set_capacity("hot", 120.0).unwrap(); // exceeded from ~3:00 to ~9:00
    pta.set_capacity("cold", 120.0).unwrap(); // never
    pta.set_capacity("sale", 120.0).unwrap(); // only with the event
    pta.set_capacity("edge->hot", 70.0).unwrap();
    pta.add_event(ScheduledEvent {
        kind: "campaign".into(),
        start: (now + 10) * H,
        duration_secs: 4 * H,
        uplift: Some(1.6),
        series: Some(vec!["sale".into()]),
    })
    .unwrap();
    let risks = pta.overload_risks();
    let names: Vec<_> = risks.iter().map(|r| r.series.as_str()).collect();
    assert!(!names.contains(&"cold"), "{names:?}");
    let hot = risks.iter().find(|r| r.series == "hot").unwrap();
    assert_eq!(hot.kind, SeriesKind::Service);
    assert_eq!(hot.reason, Reason::Seasonal);
    assert!(hot.probability > 0.95);
    assert!(
        (hot.predicted_peak - 150.0).abs() < 8.0,
        "{}",
        hot.predicted_peak
    );
    assert!((hot.peak_ts - (now + 6) * H).abs() <= H);
    let onset = hot.onset_ts.unwrap();
    assert!(
        onset > now * H && onset < hot.peak_ts,
        "onset before the peak"
    );
    // Exceeded from ~3:00 to ~9:00: the surge ends after the peak, around 9:00.
    let end = hot.end_ts.unwrap();
    assert!(
        end > hot.peak_ts && (end - (now + 9) * H).abs() <= 2 * H,
        "end {end}"
    );
    assert!(hot.expected_increase > 40.0 && hot.increase_range.0 < hot.expected_increase);
    assert!(hot.increase_range.1 > hot.expected_increase);
    let sale = risks.iter().find(|r| r.series == "sale").unwrap();
    assert_eq!(
        sale.reason,
        Reason::Event {
            kinds: vec!["campaign".into()]
        }
    );
    assert!(sale.onset_ts.unwrap() >= (now + 10) * H);
    // The campaign lasts 4 hours: the surge ends with it.
    assert!(sale.end_ts.unwrap() <= (now + 14) * H + H);
    let link = risks.iter().find(|r| r.series == "edge->hot").unwrap();
    assert_eq!(link.kind, SeriesKind::Link);
    for w in risks.windows(2) {
        assert!(
            w[0].probability >= w[1].probability,
            "sorted by probability"
        );
    }
    let json = serde_json::to_value(&risks).unwrap();
    assert!(json[0]["reason"]["cause"].is_string(), "{json}");
}

#[test]
fn configuration_errors_name_the_field() {
    let mut c = AnalyzerConfig::for_step(H, 24);
    c.model.seasons[1].buckets = 97;
    let e = Analyzer::new(c).unwrap_err();
    assert_eq!(e.field, "model.seasons[1].buckets");
    let mut c = AnalyzerConfig::for_step(H, 24);
    c.quantile = 1.5;
    assert_eq!(Analyzer::new(c).unwrap_err().field, "quantile");
    // A quantile at or below the median would provision below the expected peak (and turn
    // the interval around it inside out).
    for q in [0.5, 0.3, f64::NAN] {
        let mut c = AnalyzerConfig::for_step(H, 24);
        c.quantile = q;
        assert_eq!(Analyzer::new(c).unwrap_err().field, "quantile", "{q}");
    }
    let mut c = AnalyzerConfig::for_step(H, 24);
    c.quantile = 0.51;
    assert!(Analyzer::new(c).is_ok());
    let mut pta = analyzer();
    let e = pta
        .add_event(ScheduledEvent {
            kind: "x".into(),
            start: 0,
            duration_secs: 3600,
            uplift: Some(-1.0),
            series: None,
        })
        .unwrap_err();
    assert_eq!(e.field, "uplift");
    assert_eq!(
        pta.set_capacity("s", f64::NAN).unwrap_err().field,
        "capacity"
    );
}

#[test]
fn series_are_bounded_and_configured_ones_stay() {
    let mut config = AnalyzerConfig::for_step(H, 24);
    config.max_series = 100;
    let mut pta = Analyzer::new(config).unwrap();
    pta.set_capacity("checkout", 100.0).unwrap();
    pta.observe("checkout", 0, 10.0).unwrap();
    // A flood of invented series, each observed once.
    for i in 0..1_000 {
        pta.observe(&format!("forged-{i}"), H * (i + 1), 1.0)
            .unwrap();
    }
    assert!(pta.series().count() <= 100);
    assert!(pta.evicted() >= 900);
    assert!(
        pta.series().any(|s| s == "checkout"),
        "a series with a capacity stays"
    );
    assert!(pta.series().any(|s| s == "forged-999"), "the newest stay");
}

#[test]
fn absurd_events_are_refused_naming_the_field() {
    let mut pta = analyzer();
    let event = |start: i64, duration_secs: i64, uplift: f64| ScheduledEvent {
        kind: "sale".into(),
        start,
        duration_secs,
        uplift: Some(uplift),
        series: None,
    };
    for (e, field) in [
        (event(0, i64::MAX, 2.0), "duration_secs"),
        (event(i64::MAX, 60, 2.0), "start"),
        (event(0, 60, 1e300), "uplift"),
        (event(0, 60, f64::NAN), "uplift"),
    ] {
        assert_eq!(pta.add_event(e).unwrap_err().field, field);
    }
    assert!(pta.events().is_empty());
    // At the limits: accepted, and the forecast stays finite.
    pta.add_event(event(
        0,
        shadowmesh_predictor::events::MAX_EVENT_SECS,
        1_000.0,
    ))
    .unwrap();
    feed(&mut pta, "s", 0..48, seasonal);
    assert!(
        pta.forecast("s", 24)
            .iter()
            .all(|p| p.median.is_finite() && p.high.is_finite())
    );
}

#[test]
fn the_events_calendar_is_bounded_and_a_full_one_names_the_field() {
    let mut pta = analyzer();
    let event = |i: i64| ScheduledEvent {
        kind: "sale".into(),
        start: 1_900_000_000 + i * H,
        duration_secs: H,
        uplift: Some(2.0),
        series: None,
    };
    let max = shadowmesh_predictor::events::MAX_EVENTS;
    for i in 0..max as i64 {
        pta.add_event(event(i)).unwrap();
    }
    let full = pta.add_event(event(max as i64)).unwrap_err();
    assert_eq!(full.field, "events");
    assert_eq!(pta.events().len(), max);
}
