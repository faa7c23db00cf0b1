//! `samus eval --report DIR`: a self-contained HTML page (no server, no scripts) with
//! the per-dataset table and the best and worst cases drawn as overlays.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use image::DynamicImage;
use samus_data::Sample;
use samus_train::evaluate::EvalReport;
use samus_train::metrics::MaskMetrics;

use samus_train::evaluate::Scores;

use super::images::sample_overlay;
use super::output::Outputs;

/// Cases shown at each end (best and worst Dice).
pub const CASES_PER_END: usize = 4;

/// One drawn case.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    dataset: String,
    dice: f64,
    overlay: image::RgbImage,
}

/// Collects the best and worst cases while the evaluation runs, holding only
/// `2 * CASES_PER_END` overlays at a time.
#[derive(Debug, Default)]
pub struct CaseCollector {
    best: Vec<Case>,
    worst: Vec<Case>,
}

impl CaseCollector {
    /// Offers one evaluated sample.
    pub fn offer(&mut self, sample: &Sample, prediction: &[bool], metrics: &MaskMetrics) {
        let keep_best =
            self.best.len() < CASES_PER_END || self.best.iter().any(|c| c.dice < metrics.dice);
        let keep_worst =
            self.worst.len() < CASES_PER_END || self.worst.iter().any(|c| c.dice > metrics.dice);
        if !(keep_best || keep_worst) {
            return;
        }
        let Some(case) = draw_case(sample, prediction, metrics.dice) else {
            return;
        };
        if keep_best {
            self.best.push(case.clone());
            self.best.sort_by(|a, b| b.dice.total_cmp(&a.dice));
            self.best.truncate(CASES_PER_END);
        }
        if keep_worst {
            self.worst.push(case);
            self.worst.sort_by(|a, b| a.dice.total_cmp(&b.dice));
            self.worst.truncate(CASES_PER_END);
        }
    }
}

fn draw_case(sample: &Sample, prediction: &[bool], dice: f64) -> Option<Case> {
    let overlay = sample_overlay(sample, prediction, &format!("Dice {dice:.3}")).ok()?;
    Some(Case {
        name: sample.name.clone(),
        dataset: sample.dataset.clone(),
        dice,
        overlay,
    })
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// How [`score_cells`] writes numbers.
#[derive(Debug, Clone, Copy)]
pub struct CellFormat<'a> {
    /// Decimals of the means (`None`: as many as needed to read them back).
    pub decimals: Option<usize>,
    /// Decimals of the Hausdorff distances (`None`: as many as needed).
    pub hd_decimals: Option<usize>,
    /// What an undefined Hausdorff distance is written as.
    pub missing: &'a str,
}

/// One table row's cells after the name: images, Dice, IoU, accuracy, SE, SP, HD,
/// HD95, the way every report (terminal, CSV, HTML) writes them.
pub fn score_cells(s: &Scores, format: CellFormat) -> [String; 8] {
    let number = |v: f64, decimals: Option<usize>| match decimals {
        Some(d) => format!("{v:.d$}"),
        None => v.to_string(),
    };
    let hd = |v: Option<f64>| {
        v.map_or_else(
            || format.missing.to_string(),
            |v| number(v, format.hd_decimals),
        )
    };
    [
        s.images.to_string(),
        number(s.dice, format.decimals),
        number(s.iou, format.decimals),
        number(s.acc, format.decimals),
        number(s.se, format.decimals),
        number(s.sp, format.decimals),
        hd(s.hd),
        hd(s.hd95),
    ]
}

/// Writes `DIR/index.html` and `DIR/cases/*.png`.
pub fn write_report(
    outputs: &Outputs,
    dir: &Path,
    title: &str,
    report: &EvalReport,
    cases: &CaseCollector,
) -> Result<()> {
    let case_dir = dir.join("cases");
    std::fs::create_dir_all(&case_dir)
        .with_context(|| format!("cannot create {}", case_dir.display()))?;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th:first-child,td:first-child{{text-align:left}}figure{{display:inline-block;margin:6px}}\
         figcaption{{font-size:80%;max-width:256px;overflow-wrap:anywhere}}</style></head><body>\n\
         <h1>{t}</h1>\n<table><tr><th>dataset/class</th><th>images</th><th>Dice</th><th>IoU</th>\
         <th>acc</th><th>SE</th><th>SP</th><th>HD</th><th>HD95</th></tr>\n",
        t = escape(title)
    );
    let format = CellFormat {
        decimals: Some(4),
        hd_decimals: Some(2),
        missing: "-",
    };
    for (name, s) in report.rows() {
        let cells: String = score_cells(s, format)
            .iter()
            .map(|c| format!("<td>{c}</td>"))
            .collect();
        let _ = writeln!(html, "<tr><td>{}</td>{cells}</tr>", escape(name));
    }
    let _ = writeln!(html, "</table>\n<p>{:.2} images/s</p>", report.images_per_s);
    for (heading, list, tag) in [
        ("Best cases", &cases.best, "best"),
        ("Worst cases", &cases.worst, "worst"),
    ] {
        let _ = writeln!(html, "<h2>{heading}</h2>");
        for (i, case) in list.iter().enumerate() {
            let file = format!("{tag}_{i}.png");
            outputs.png(
                &DynamicImage::ImageRgb8(case.overlay.clone()),
                &case_dir.join(&file),
            )?;
            let _ = writeln!(
                html,
                "<figure><img src=\"cases/{file}\" width=\"256\" alt=\"{n}\">\
                 <figcaption>{d} / {n}: Dice {dice:.3}</figcaption></figure>",
                n = escape(&case.name),
                d = escape(&case.dataset),
                dice = case.dice
            );
        }
    }
    html.push_str("</body></html>\n");
    outputs.bytes(&dir.join("index.html"), html.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
