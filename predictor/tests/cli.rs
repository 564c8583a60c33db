//! `predictor backtest` end to end on a CSV written by the test.

use std::fmt::Write as _;
use std::process::Command;

fn predictor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_predictor"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn backtest_prints_every_model_and_the_shadowmesh_model_wins_on_seasonal_data() {
    let dir = std::env::temp_dir().join(format!("predictor-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("series.csv");
    let mut csv = String::from("timestamp,value\n");
    let mut noise = 0.0f64;
    let mut x = 12345u64;
    for h in 0..24 * 7 * 10 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        // Persistent noise (weather-like) on a daily and weekly cycle.
        noise = 0.9 * noise + 10.0 * u;
        let day = ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
        let week = if (h / 24) % 7 >= 5 { 0.6 } else { 1.0 };
        let v = ((100.0 + 60.0 * day) * week + noise).max(0.0);
        writeln!(csv, "{},{v:.2}", 1_700_000_000 + h * 3600).unwrap();
    }
    std::fs::write(&path, csv).unwrap();
    let out = predictor(&[
        "backtest",
        "--csv",
        path.to_str().unwrap(),
        "--origin-every",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mase = |model: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("| {model}")))
            .unwrap_or_else(|| panic!("{model} missing:\n{text}"));
        line.split('|').nth(2).unwrap().trim().parse().unwrap()
    };
    let ours = mase("Shadowmesh");
    assert!(ours < mase("seasonal naive (m=168)"), "{text}");
    assert!(ours < mase("seasonal naive (m=24)"), "{text}");
    assert!(ours < mase("Holt-Winters"), "{text}");
    assert!(ours < mase("naive"), "{text}");
    assert!(text.contains("80% coverage"));

    std::fs::write(
        &path,
        "timestamp,value\n2020-01-01 00:00:00,1\nyesterday,2\n",
    )
    .unwrap();
    let out = predictor(&["backtest", "--csv", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("row 3") && err.contains("yesterday"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `predictor backtest` on `csv` text with `args`; (success, stderr).
fn backtest_on(name: &str, csv: &str, args: &[&str]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("predictor-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("series.csv");
    std::fs::write(&path, csv).unwrap();
    let mut all = vec!["backtest", "--csv", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = predictor(&all);
    std::fs::remove_dir_all(&dir).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hourly(values: impl IntoIterator<Item = String>) -> String {
    let mut csv = String::from("timestamp,value\n");
    for (h, v) in values.into_iter().enumerate() {
        writeln!(csv, "{},{v}", 1_700_000_000 + h as i64 * 3600).unwrap();
    }
    csv
}

/// A daily wave on a slow trend (so the seasonal-naive error, the MASE scale, is not 0).
fn wavy(h: usize) -> String {
    let day = (h as f64 / 24.0 * std::f64::consts::TAU).sin();
    format!("{:.1}", 100.0 + 50.0 * day + 0.1 * h as f64)
}

#[test]
fn fewer_rows_than_the_horizon_is_an_error_naming_the_flag() {
    let (ok, err) = backtest_on("short", &hourly((0..10).map(wavy)), &["--horizon", "24"]);
    assert!(!ok);
    assert!(
        err.contains("--horizon") && err.contains("10 steps"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_timestamp_far_from_the_others_is_an_error_not_an_allocation() {
    let csv = "timestamp,value\n1700000000,1\n1700003600,2\n99999999999,3\n";
    let (ok, err) = backtest_on("gap", csv, &[]);
    assert!(!ok);
    assert!(err.contains("steps") && err.contains("at most"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn values_that_are_not_finite_or_absurd_name_their_row() {
    for (bad, why) in [("NaN", "finite"), ("inf", "finite"), ("1e308", "beyond")] {
        let mut rows: Vec<String> = (0..24 * 14).map(wavy).collect();
        rows[40] = bad.into();
        let (ok, err) = backtest_on("nan", &hourly(rows), &[]);
        assert!(!ok, "{bad} accepted");
        assert!(err.contains("row 42") && err.contains(why), "{bad}: {err}");
    }
}

#[test]
fn a_run_that_scores_no_forecast_says_so_and_fails() {
    // Values only in the training part (the first half): no origin has actuals.
    let rows: Vec<String> = (0..24 * 14)
        .map(|h| if h < 24 * 4 { wavy(h) } else { String::new() })
        .collect();
    let (ok, err) = backtest_on("unscored", &hourly(rows), &["--no-fit", "--train", "0.5"]);
    assert!(!ok);
    assert!(err.contains("no forecast was scored"), "{err}");
}

#[test]
fn a_constant_series_has_no_mase_scale_and_says_so() {
    let (ok, err) = backtest_on(
        "flat",
        &hourly((0..24 * 14).map(|_| "7".into())),
        &["--no-fit"],
    );
    assert!(!ok);
    assert!(
        err.contains("--train") && err.contains("MASE scale"),
        "{err}"
    );
}

#[test]
fn bench_with_zero_ticks_or_series_is_an_error_naming_the_flag() {
    for flag in ["--ticks", "--series", "--horizon"] {
        let out = predictor(&["bench", flag, "0"]);
        assert!(!out.status.success(), "{flag} 0 accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && !err.contains("panicked"), "{err}");
    }
}

/// Hourly weekly-seasonal data in which `holiday_days` (day indices) run at half demand.
fn series_with_holidays(dir: &std::path::Path, holiday_days: &[i64]) -> std::path::PathBuf {
    let path = dir.join("holidays.csv");
    let mut csv = String::from("timestamp,value\n");
    let mut x = 99u64;
    for h in 0..24 * 7 * 12 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let day = ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
        let week = if (h / 24) % 7 >= 5 { 0.6 } else { 1.0 };
        let holiday = if holiday_days.contains(&(h / 24)) {
            0.5
        } else {
            1.0
        };
        let v = (100.0 + 60.0 * day) * week * holiday + 4.0 * u;
        writeln!(csv, "{},{v:.2}", 1_699_920_000 + h * 3600).unwrap();
    }
    std::fs::write(&path, csv).unwrap();
    path
}

fn event_day_mase(text: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with("| Shadowmesh"))
        .unwrap_or_else(|| panic!("no Shadowmesh row:\n{text}"));
    line.split('|').nth(6).unwrap().trim().parse().unwrap()
}

#[test]
fn the_events_calendar_lowers_the_error_on_event_days() {
    let dir = std::env::temp_dir().join(format!("predictor-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Weekdays (1_699_920_000 is a Tuesday, 2023-11-14 00:00 UTC), two in the training part.
    let days = [1, 8, 22, 29, 36, 43, 50, 57, 64, 71];
    let csv = series_with_holidays(&dir, &days);
    let calendar = dir.join("holidays.txt");
    let mut text = String::from("# weekday holidays\n");
    for d in days {
        let date = chrono_free_date(1_699_920_000 + d * 86_400);
        writeln!(text, "{date}").unwrap();
    }
    std::fs::write(&calendar, text).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "backtest",
            "--csv",
            csv.to_str().unwrap(),
            "--origin-every",
            "6",
            "--events",
            calendar.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = predictor(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let told = event_day_mase(&run(&[]));
    let blind = event_day_mase(&run(&["--events-scored-only"]));
    assert!(
        told < 0.8 * blind,
        "with the calendar {told}, without {blind}"
    );
}

/// `YYYY-MM-DD` of a unix time (days since the epoch → civil date).
fn chrono_free_date(ts: i64) -> String {
    let z = ts.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[test]
fn a_bad_events_line_or_an_unknown_peer_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("predictor-bad-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = series_with_holidays(&dir, &[]);
    let calendar = dir.join("bad.txt");
    std::fs::write(&calendar, "2023-11-15\n2023-11-20,3x,sale\n").unwrap();
    let out = predictor(&[
        "backtest",
        "--csv",
        csv.to_str().unwrap(),
        "--events",
        calendar.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--events") && err.contains("line 2"), "{err}");
    let out = predictor(&[
        "backtest",
        "--csv",
        csv.to_str().unwrap(),
        "--peers",
        "prophet",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--peers") && err.contains("prophet"), "{err}");
}
