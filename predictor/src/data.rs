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

/// Most grid points a series may span: a typo in one timestamp (a year too far) must be an
/// error, not an allocation of gigabytes.
pub const MAX_GRID_POINTS: usize = 20_000_000;

/// Largest magnitude of a value: far beyond any request rate, small enough that sums and
/// squares of a series stay finite.
pub const MAX_VALUE: f64 = 1e15;

/// Unix times above this are taken as milliseconds (it is the year 5138 in seconds).
const UNIX_MS_ABOVE: i64 = 100_000_000_000;

/// Parses a timestamp into unix seconds: RFC 3339 / ISO 8601 with an offset
/// (`2010-09-20T12:00:00+02:00`, `…Z`), naive date-times taken as UTC (`2010-09-20 12:00:00`,
/// `2010-09-20T12:00`, fractional seconds allowed), dates (`2007-12-10`), unix seconds and
/// unix milliseconds (told apart by magnitude).
pub fn parse_timestamp(s: &str) -> Result<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(if n.unsigned_abs() > UNIX_MS_ABOVE as u64 {
            n.div_euclid(1_000)
        } else {
            n
        });
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
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
    bail!(
        "unrecognised timestamp {s:?} (expected RFC 3339, YYYY-MM-DD[ HH:MM[:SS]], unix seconds or milliseconds)"
    )
}

/// Largest CSV read (1 GiB: 20 million rows of a timestamp and a value fit well below).
pub const MAX_CSV_BYTES: u64 = 1 << 30;

/// Largest events calendar read (16 MiB: 10,000 events fit well below).
pub const MAX_EVENTS_BYTES: u64 = 16 << 20;

/// Reads a whole text file of at most `max` bytes.
fn read_bounded(path: &std::path::Path, max: u64) -> Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    if text.len() as u64 > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(text)
}

/// Reads a CSV whose first column is a timestamp and second a value (header required).
/// Rows must be in time order; empty values are missing.
pub fn read_csv(path: &std::path::Path, step_secs: Option<i64>) -> Result<GridSeries> {
    let text = read_bounded(path, MAX_CSV_BYTES)?;
    parse_csv(&text, step_secs).with_context(|| path.display().to_string())
}

/// Parses CSV text as [`read_csv`] does. Errors name the row (the header is row 1) and
/// the column; values must be finite, not negative and at most [`MAX_VALUE`]; no two rows
/// may fall on one grid step; the grid is at most [`MAX_GRID_POINTS`] long.
pub fn parse_csv(text: &str, step_secs: Option<i64>) -> Result<GridSeries> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut points: Vec<(i64, Option<f64>)> = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i + 2;
        let row = row.with_context(|| format!("row {line}"))?;
        let ts = parse_timestamp(row.get(0).unwrap_or_default())
            .with_context(|| format!("row {line}, column 1"))?;
        let raw = row.get(1).unwrap_or_default().trim();
        let value = if raw.is_empty() {
            None
        } else {
            let v = raw
                .parse::<f64>()
                .ok()
                .with_context(|| format!("row {line}, column 2: {raw:?} is not a number"))?;
            if !v.is_finite() {
                bail!("row {line}, column 2: {raw:?} is not a finite number");
            }
            if v.abs() > MAX_VALUE {
                bail!("row {line}, column 2: {raw:?} is beyond ±{MAX_VALUE:e}");
            }
            // Demand is never negative (and the model refuses it): say so here, by row,
            // instead of letting the baselines learn what the model skipped.
            if v < 0.0 {
                bail!("row {line}, column 2: {raw:?} is negative; demand is at least 0");
            }
            Some(v)
        };
        if let Some((last, _)) = points.last()
            && ts <= *last
        {
            bail!("row {line}: timestamp not after the previous row");
        }
        points.push((ts, value));
    }
    if points.len() < 2 {
        bail!("fewer than two rows");
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
        bail!("--step: {step} is not a positive number of seconds");
    }
    let t0 = points[0].0;
    let last = points.last().map(|p| p.0).unwrap_or(t0);
    let n = (last - t0) / step + 1;
    if n > MAX_GRID_POINTS as i64 {
        bail!(
            "the rows span {n} steps of {step} s (from {t0} to {last}); at most {MAX_GRID_POINTS}: a timestamp far from the others?"
        );
    }
    let mut values = vec![None; n as usize];
    let mut filled = vec![false; n as usize];
    for (i, (ts, v)) in points.into_iter().enumerate() {
        let at = ((ts - t0) / step) as usize;
        // Two rows on one grid step: one would silently replace the other.
        if std::mem::replace(&mut filled[at], true) {
            bail!(
                "row {}: falls on the same {step} s step as the row before it (a --step coarser than the data?)",
                i + 2
            );
        }
        values[at] = v;
    }
    Ok(GridSeries {
        t0,
        step_secs: step,
        values,
    })
}

/// Reads an events calendar: one event a line, either a date (`2014-01-27`: a whole-day
/// `holiday`) or `start,duration,kind` (`2014-12-24T18:00:00Z,6h,sale`; the duration in
/// seconds or with `s`, `m`, `h`, `d`). Blank lines and `#` comments are skipped; an error
/// names the line.
pub fn read_events(path: &std::path::Path) -> Result<Vec<crate::events::ScheduledEvent>> {
    let text = read_bounded(path, MAX_EVENTS_BYTES)?;
    parse_events(&text).with_context(|| format!("in {}", path.display()))
}

/// [`read_events`] on text.
pub fn parse_events(text: &str) -> Result<Vec<crate::events::ScheduledEvent>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let event = parse_event(line).with_context(|| format!("line {}: {line:?}", i + 1))?;
        if out.len() == crate::events::MAX_EVENTS {
            bail!(
                "line {}: more than {} events; a calendar holds at most that many",
                i + 1,
                crate::events::MAX_EVENTS
            );
        }
        out.push(event);
    }
    Ok(out)
}

fn parse_event(line: &str) -> Result<crate::events::ScheduledEvent> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let (start, duration_secs, kind) = match fields.as_slice() {
        [date] => (parse_timestamp(date)?, 86_400, "holiday".to_string()),
        [start, duration, kind] if !kind.is_empty() => (
            parse_timestamp(start)?,
            parse_duration(duration)?,
            kind.to_string(),
        ),
        _ => bail!("expected a date, or start,duration,kind"),
    };
    let event = crate::events::ScheduledEvent {
        kind,
        start,
        duration_secs,
        uplift: None,
        series: None,
    };
    event.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(event)
}

fn parse_duration(s: &str) -> Result<i64> {
    let (number, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: i64 = number.parse().with_context(|| format!("duration {s:?}"))?;
    let unit = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => bail!("duration {s:?}: the unit is one of s, m, h, d"),
    };
    let d = n
        .checked_mul(unit)
        .with_context(|| format!("duration {s:?} is too long"))?;
    if d <= 0 {
        bail!("duration {s:?} must be positive");
    }
    Ok(d)
}
