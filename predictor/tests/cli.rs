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
