//! The picture of a run: demand, the forecast band, the primary's capacity and the shadow
//! capacity on top; p99 latency against the SLO below. An SVG (`plotters`), readable in
//! any browser.

use crate::scenario::Sample;
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// Draws `samples` to `path` (SVG).
pub fn draw(
    path: &Path,
    title: &str,
    samples: &[Sample],
    capacity: f64,
    slo_ms: f64,
) -> Result<()> {
    let to_err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| to_err(&e))?;
    let (upper, lower) = root.split_vertically(500);
    let xmax = samples.len().max(1) as f64;
    let ymax = samples
        .iter()
        .map(|s| {
            s.demand
                .max(capacity + s.shadow_capacity)
                .max(s.forecast.map_or(0.0, |f| f.2))
        })
        .fold(capacity * 1.5, f64::max)
        * 1.1;
    let mut top = ChartBuilder::on(&upper)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(|e| to_err(&e))?;
    top.configure_mesh()
        .y_desc("requests / s")
        .x_desc("seconds")
        .draw()
        .map_err(|e| to_err(&e))?;
    // The forecast band, one polygon per stretch of seconds that have a forecast.
    let band = RGBColor(70, 130, 220);
    let mut stretch: Vec<(f64, f64, f64)> = Vec::new();
    let mut polygons = Vec::new();
    for s in samples {
        match s.forecast {
            Some((_, low, high)) => stretch.push((s.index as f64, low, high)),
            None if !stretch.is_empty() => polygons.push(std::mem::take(&mut stretch)),
            None => {}
        }
    }
    if !stretch.is_empty() {
        polygons.push(stretch);
    }
    for p in &polygons {
        let outline: Vec<(f64, f64)> = p
            .iter()
            .map(|(x, _, h)| (*x, *h))
            .chain(p.iter().rev().map(|(x, l, _)| (*x, *l)))
            .collect();
        top.draw_series(std::iter::once(Polygon::new(outline, band.mix(0.18))))
            .map_err(|e| to_err(&e))?;
    }
    top.draw_series(std::iter::once(Rectangle::new(
        [(0.0, 0.0), (0.0, 0.0)],
        band.mix(0.18).filled(),
    )))
    .map_err(|e| to_err(&e))?
    .label("forecast, 80% interval (made ahead by warm-up + margin)")
    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], band.mix(0.3).filled()));
    top.draw_series(LineSeries::new(
        samples
            .iter()
            .filter_map(|s| s.forecast.map(|f| (s.index as f64, f.0))),
        band.stroke_width(1),
    ))
    .map_err(|e| to_err(&e))?
    .label("forecast median")
    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], band));
    let shadow = RGBColor(40, 160, 80);
    top.draw_series(LineSeries::new(
        samples
            .iter()
            .map(|s| (s.index as f64, capacity + s.shadow_capacity)),
        shadow.stroke_width(2),
    ))
    .map_err(|e| to_err(&e))?
    .label("primary + shadow capacity")
    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], shadow.stroke_width(2)));
    top.draw_series(LineSeries::new(
        [(0.0, capacity), (xmax, capacity)],
        RED.stroke_width(2),
    ))
    .map_err(|e| to_err(&e))?
    .label("primary capacity")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED.stroke_width(2)));
    let served_by_shadow = RGBColor(240, 150, 40);
    top.draw_series(LineSeries::new(
        samples.iter().map(|s| (s.index as f64, s.shadow as f64)),
        served_by_shadow.stroke_width(1),
    ))
    .map_err(|e| to_err(&e))?
    .label("served by the shadow (req/s)")
    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], served_by_shadow));
    top.draw_series(LineSeries::new(
        samples.iter().map(|s| (s.index as f64, s.demand)),
        BLACK.stroke_width(2),
    ))
    .map_err(|e| to_err(&e))?
    .label("demand")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.stroke_width(2)));
    top.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| to_err(&e))?;

    let lmax = samples
        .iter()
        .map(|s| s.p99_ms)
        .fold(slo_ms * 4.0, f64::max)
        .max(10.0);
    let mut bottom = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, (1f64..lmax).log_scale())
        .map_err(|e| to_err(&e))?;
    bottom
        .configure_mesh()
        .y_desc("p99 ms (log)")
        .x_desc("seconds")
        .draw()
        .map_err(|e| to_err(&e))?;
    bottom
        .draw_series(LineSeries::new(
            [(0.0, slo_ms), (xmax, slo_ms)],
            RED.stroke_width(1),
        ))
        .map_err(|e| to_err(&e))?
        .label("latency objective")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    bottom
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.index as f64, s.p99_ms.max(1.0))),
            BLACK.stroke_width(1),
        ))
        .map_err(|e| to_err(&e))?
        .label("p99 latency per second")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
    bottom
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| to_err(&e))?;
    root.present().map_err(|e| to_err(&e))?;
    Ok(())
}
