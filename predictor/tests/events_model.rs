//! The backtest's Shadowmesh model with an events calendar: event days neither teach the
//! baseline nor escape the forecast.

use shadowmesh_predictor::baselines::{Forecaster, Shadowmesh};
use shadowmesh_predictor::events::ScheduledEvent;
use shadowmesh_predictor::model::{ModelConfig, Transform};
use std::sync::Arc;

const T0: i64 = 1_700_006_400; // a midnight (UTC)

fn model_with(event_day: usize) -> Shadowmesh {
    let mut config = ModelConfig::for_step(3600, 24);
    config.transform = Transform::None;
    let events = Arc::new(vec![ScheduledEvent {
        kind: "sale".into(),
        start: T0 + (event_day as i64) * 86_400,
        duration_secs: 86_400,
        uplift: Some(2.0),
        series: None,
    }]);
    Shadowmesh::with_events(config, T0, events)
}

#[test]
fn a_declared_event_day_does_not_teach_the_baseline() {
    let event_day = 14;
    let mut m = model_with(event_day);
    // Constant 100, doubled on the event day (as declared), then a day of 100 again.
    for t in 0..(event_day + 2) * 24 {
        let y = if t / 24 == event_day { 200.0 } else { 100.0 };
        m.observe(t, Some(y));
    }
    let f = m.forecast(24);
    assert!(f.iter().all(|v| (v - 100.0).abs() < 3.0), "{f:?}");
}

#[test]
fn forecasts_and_intervals_inside_an_event_carry_its_uplift() {
    let event_day = 15;
    let mut m = model_with(event_day);
    for t in 0..event_day * 24 - 12 {
        m.observe(t, Some(100.0 + (t % 3) as f64));
    }
    // The horizon reaches 12 hours into the event.
    let f = m.forecast(24);
    let iv = m.interval(24, 0.8).unwrap();
    assert!(f[..11].iter().all(|v| *v < 150.0), "{f:?}");
    assert!(f[12..].iter().all(|v| *v > 150.0), "{f:?}");
    for (h, (lo, hi)) in iv.iter().enumerate() {
        assert!(lo <= &f[h] && &f[h] <= hi, "h={h}: {lo} ≤ {} ≤ {hi}", f[h]);
    }
}
