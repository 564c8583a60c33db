//! Peers' forecasts are scored on exactly the backtest's own origins.

use shadowmesh_predictor::backtest::{self, BacktestConfig, PeerForecasts};
use shadowmesh_predictor::data::GridSeries;
use shadowmesh_predictor::model::ModelConfig;

fn setup() -> (GridSeries, BacktestConfig, ModelConfig) {
    let values: Vec<Option<f64>> = (0..24 * 7 * 4)
        .map(|h| {
            Some(
                100.0
                    + 50.0 * ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin()
                    + (h % 7) as f64,
            )
        })
        .collect();
    let series = GridSeries {
        t0: 1_700_000_000,
        step_secs: 3600,
        values,
    };
    let cfg = BacktestConfig {
        horizon: 6,
        coverage: 0.8,
        train_fraction: 0.25,
        origin_every: 24,
        seasons: vec![24, 168],
        fit: false,
        events: Default::default(),
        events_scored_only: false,
        combine: None,
    };
    (series, cfg, ModelConfig::for_step(3600, 6))
}

#[test]
fn a_peer_that_knew_the_future_scores_zero_and_the_origins_are_the_backtests() {
    let (series, cfg, model) = setup();
    let origins = backtest::origins(&series.values, &cfg);
    let train = (series.values.len() as f64 * cfg.train_fraction) as usize;
    assert_eq!(origins.first(), Some(&train));
    assert!(origins.windows(2).all(|w| w[1] - w[0] == 24));
    let oracle = PeerForecasts {
        model: "oracle".into(),
        forecasts: origins
            .iter()
            .map(|&t| {
                (1..=cfg.horizon)
                    .map(|h| series.values.get(t + h).copied().flatten().unwrap_or(0.0))
                    .collect()
            })
            .collect(),
    };
    let off = PeerForecasts {
        model: "off by one".into(),
        forecasts: origins
            .iter()
            .map(|&t| {
                (1..=cfg.horizon)
                    .map(|h| series.values[t + h - 1].unwrap())
                    .collect()
            })
            .collect(),
    };
    let report = backtest::run(&series, &cfg, model, vec![oracle, off]).unwrap();
    let score = |name: &str| report.scores.iter().find(|s| s.model == name).unwrap();
    assert_eq!(score("oracle").mase, 0.0);
    assert!(score("off by one").mase > 0.0);
    // Same origins and horizons as every other model.
    assert_eq!(score("oracle").forecasts, score("Shadowmesh").forecasts);
}

#[test]
fn a_peer_answering_other_origins_is_refused_naming_peers() {
    let (series, cfg, model) = setup();
    let short = PeerForecasts {
        model: "short".into(),
        forecasts: vec![vec![1.0; cfg.horizon]],
    };
    let err = backtest::run(&series, &cfg, model, vec![short]).unwrap_err();
    assert_eq!(err.field, "peers");
}

#[test]
fn origins_are_the_steps_evaluate_scores() {
    let (mut series, mut cfg, _) = setup();
    cfg.origin_every = 1;
    let train = (series.values.len() as f64 * cfg.train_fraction) as usize;
    series.values[train + 5] = None;
    let n = series.values.len();
    let at = backtest::origins(&series.values, &cfg);
    assert!(
        at.iter().all(|&t| t + 1 < n),
        "the last step has nothing after it"
    );
    assert!(at.iter().all(|&t| series.values[t].is_some()));
    assert_eq!(at.len(), n - 1 - train - 1);
}

#[test]
fn a_peer_with_every_origin_but_short_forecasts_is_refused() {
    let (series, cfg, model) = setup();
    let origins = backtest::origins(&series.values, &cfg);
    let short = PeerForecasts {
        model: "short".into(),
        forecasts: vec![vec![1.0; cfg.horizon - 1]; origins.len()],
    };
    let err = backtest::run(&series, &cfg, model, vec![short]).unwrap_err();
    assert_eq!(err.field, "peers");
}

#[test]
fn event_day_mase_is_the_error_on_event_targets_over_the_scale() {
    let (series, mut cfg, model) = setup();
    // One event covering grid steps [e0, e1).
    let (e0, e1) = (500usize, 530usize);
    let ts = |t: usize| series.t0 + t as i64 * series.step_secs;
    cfg.events = std::sync::Arc::new(vec![shadowmesh_predictor::events::ScheduledEvent {
        kind: "sale".into(),
        start: ts(e0),
        duration_secs: (e1 - e0) as i64 * series.step_secs,
        uplift: None,
        series: None,
    }]);
    let origins = backtest::origins(&series.values, &cfg);
    // Exactly right everywhere, off by exactly 1 on the event's steps.
    let peer = PeerForecasts {
        model: "off on events".into(),
        forecasts: origins
            .iter()
            .map(|&t| {
                (1..=cfg.horizon)
                    .map(|h| {
                        let target = t + h;
                        let y = series.values.get(target).copied().flatten().unwrap_or(0.0);
                        y + if (e0..e1).contains(&target) { 1.0 } else { 0.0 }
                    })
                    .collect()
            })
            .collect(),
    };
    let report = backtest::run(&series, &cfg, model, vec![peer]).unwrap();
    let s = report
        .scores
        .iter()
        .find(|s| s.model == "off on events")
        .unwrap();
    let on_events = s.mase_on_events.unwrap();
    assert!(
        (on_events - 1.0 / report.scale).abs() < 1e-9,
        "{on_events} vs 1/{}",
        report.scale
    );
}
