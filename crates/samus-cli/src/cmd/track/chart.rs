//! `areas.png`: the mask area of every segmented frame against time (or frame
//! number), drawn with plotters, with the largest and smallest areas marked.

use anyhow::{anyhow, Result};
use image::RgbImage;
use plotters::prelude::*;
use samus_train::curve::{register_font, FONT_NAME};

use super::FrameArea;

/// Width and height of the chart in pixels.
pub const CHART_SIZE: (u32, u32) = (900, 420);

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("areas.png: {e:?}")
}

/// The chart of `rows` (sorted by frame); areas in mm² when `calibrated`.
pub fn render(rows: &[FrameArea], calibrated: bool) -> Result<RgbImage> {
    register_font().map_err(plot_error)?;
    let (w, h) = CHART_SIZE;
    let mut pixels = vec![255u8; (w * h * 3) as usize];
    let timed = rows.iter().all(|r| r.time_s.is_some());
    let x_of = |r: &FrameArea| {
        if timed {
            r.time_s.unwrap_or_default()
        } else {
            f64::from(r.frame)
        }
    };
    let points: Vec<(f64, f64)> = rows.iter().map(|r| (x_of(r), r.area())).collect();
    let (x0, x1) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (x0, x1) = if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 1.0, x0 + 1.0)
    };
    let top = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let largest = rows.iter().max_by(|a, b| a.area().total_cmp(&b.area()));
    let smallest = rows
        .iter()
        .filter(|r| r.area_px > 0)
        .min_by(|a, b| a.area().total_cmp(&b.area()));
    {
        let root = BitMapBackend::with_buffer(&mut pixels, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("mask area over the loop", (FONT_NAME, 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0.0..top)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(if timed { "time (s)" } else { "frame" })
            // The embedded font is ASCII only.
            .y_desc(if calibrated {
                "area (mm^2)"
            } else {
                "area (px)"
            })
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT_NAME, 13))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                BLUE.stroke_width(2),
            ))
            .map_err(plot_error)?;
        for (row, colour, label) in [(largest, RED, "largest"), (smallest, GREEN, "smallest")] {
            let Some(row) = row else { continue };
            let at = (x_of(row), row.area());
            chart
                .draw_series([Circle::new(at, 6, colour.filled())])
                .map_err(plot_error)?;
            // The label sits above and right of its marker, clear of the line.
            chart
                .draw_series([EmptyElement::at(at)
                    + Text::new(
                        format!("{label}: frame {}", row.frame),
                        (10, -22),
                        (FONT_NAME, 14).into_font().color(&colour),
                    )])
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    RgbImage::from_raw(w, h, pixels).ok_or_else(|| anyhow!("areas.png: the chart buffer is short"))
}
