//! Loading `timestamp,value` CSV series onto a regular grid.

use anyhow::{Context, Result, bail};
use chrono::{NaiveDate, NaiveDateTime};

/// A series on a regular grid: `values[i]` is at `t0 + i·step_secs` (`None` = missing).
#[derive(Debug, Clone, PartialEq)]
pub struct GridSeries {
    /// Unix time of the first step.
    pub t0: i64,
    /// Grid step.
    pub step_secs: i64,
    /// Values.
    pub values: Vec<Option<f64>>,
}

/// Parses `2010-09-20 12:00:00`, `2010-09-20T12:00:00`, `2007-12-10` or unix seconds.
pub fn parse_timestamp(s: &str) -> Result<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc().timestamp());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .context("midnight")?
            .and_utc()
            .timestamp());
    }
    bail!("unrecognised timestamp {s:?} (expected YYYY-MM-DD[ HH:MM:SS] or unix seconds)")
}

/// Reads a CSV whose first column is a timestamp and second a value (header required).
/// Rows must be in time order; empty values are missing.
pub fn read_csv(path: &std::path::Path, step_secs: Option<i64>) -> Result<GridSeries> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let mut points: Vec<(i64, Option<f64>)> = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let ts = parse_timestamp(row.get(0).unwrap_or_default())
            .with_context(|| format!("{}: row {}, column 1", path.display(), i + 2))?;
        let raw = row.get(1).unwrap_or_default().trim();
        let value = if raw.is_empty() {
            None
        } else {
            Some(raw.parse::<f64>().with_context(|| {
                format!(
                    "{}: row {}, column 2: {raw:?} is not a number",
                    path.display(),
                    i + 2
                )
            })?)
        };
        if let Some((last, _)) = points.last()
            && ts <= *last
        {
            bail!(
                "{}: row {}: timestamp not after the previous row",
                path.display(),
                i + 2
            );
        }
        points.push((ts, value));
    }
    if points.len() < 2 {
        bail!("{}: fewer than two rows", path.display());
    }
    let step = match step_secs {
        Some(s) => s,
        None => points
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .min()
            .unwrap_or(1),
    };
    if step <= 0 {
        bail!("step must be positive");
    }
    let t0 = points[0].0;
    let n = ((points.last().map(|p| p.0).unwrap_or(t0) - t0) / step) as usize + 1;
    let mut values = vec![None; n];
    for (ts, v) in points {
        values[((ts - t0) / step) as usize] = v;
    }
    Ok(GridSeries {
        t0,
        step_secs: step,
        values,
    })
}
