//! Latency CDFs as SVG: one panel per mode, kvsync against its reference.

use std::path::Path;

use plotters::prelude::*;

use crate::measure::ms;
use crate::report::LatencyRow;

pub fn cdf(path: &Path, rows: &[LatencyRow]) -> anyhow::Result<()> {
    let panels = rows.len().max(1);
    let root = SVGBackend::new(path, (640, 300 * panels as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels, 1));
    for (row, area) in rows.iter().zip(areas.iter()) {
        let all = row.subject.iter().chain(row.references.iter().flat_map(|r| &r.samples));
        let xmax = all.map(|d| ms(*d)).fold(0.0, f64::max).max(0.1) * 1.05;
        let names: Vec<&str> = row.references.iter().map(|r| r.name.as_str()).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{}: kvsync vs {}", row.mode, names.join(", ")), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..xmax, 0f64..1f64)?;
        chart.configure_mesh().x_desc("change-to-disk latency (ms)").y_desc("fraction").draw()?;
        const REF_COLORS: [RGBColor; 3] = [BLUE, GREEN, MAGENTA];
        let curves = std::iter::once((&row.subject, RED, "kvsync")).chain(
            row.references.iter().zip(REF_COLORS.iter().cycle()).map(|(r, c)| (&r.samples, *c, r.name.as_str())),
        );
        for (samples, color, label) in curves {
            let n = samples.len().max(1) as f64;
            let points: Vec<(f64, f64)> =
                samples.iter().enumerate().map(|(i, d)| (ms(*d), (i + 1) as f64 / n)).collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(label.to_string())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    }
    root.present()?;
    Ok(())
}
