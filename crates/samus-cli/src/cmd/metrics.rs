//! `samus metrics`: score a folder of predicted masks against a folder of ground truth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use samus_train::evaluate::Scores;
use samus_train::metrics::{mask_metrics, MaskMetrics};
use serde::Serialize;

use crate::support::images::open_image;

/// Examples shown by `samus metrics --help`.
pub const EXAMPLES: &str = "\
Examples:
  # Score any tool's masks (PNG, matched by file name; non-zero pixels are foreground)
  samus metrics --pred out/masks --gt data/labels

  # Per-image entries and means as JSON
  samus metrics --pred out/masks --gt data/labels --json";

/// Arguments of `samus metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Folder of predicted mask PNGs.
    #[arg(long, value_name = "DIR")]
    pred: PathBuf,
    /// Folder of ground-truth mask PNGs with the same file names.
    #[arg(long, value_name = "DIR")]
    gt: PathBuf,
    /// Print per-image entries and the means as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct ImageEntry {
    name: String,
    #[serde(flatten)]
    metrics: MaskMetrics,
}

fn png_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"))
        {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                out.insert(name.to_string(), path.clone());
            }
        }
    }
    Ok(out)
}

fn read_mask(path: &Path) -> Result<(Vec<bool>, u32, u32)> {
    let img = open_image(path)?.to_luma8();
    let (w, h) = img.dimensions();
    Ok((img.pixels().map(|p| p[0] > 0).collect(), w, h))
}

/// Runs `samus metrics`.
pub fn run(args: MetricsArgs) -> Result<()> {
    let preds = png_files(&args.pred)?;
    let gts = png_files(&args.gt)?;
    if let Some(name) = preds.keys().find(|n| !gts.contains_key(*n)) {
        bail!(
            "prediction {name} has no ground truth in {}",
            args.gt.display()
        );
    }
    if let Some(name) = gts.keys().find(|n| !preds.contains_key(*n)) {
        bail!(
            "ground truth {name} has no prediction in {}",
            args.pred.display()
        );
    }
    if preds.is_empty() {
        bail!("no PNG masks in {}", args.pred.display());
    }
    let mut entries = Vec::with_capacity(preds.len());
    for (name, pred_path) in &preds {
        let (pred, w, h) = read_mask(pred_path)?;
        let (gt, gw, gh) = read_mask(&gts[name])?;
        if (w, h) != (gw, gh) {
            bail!("{name}: prediction is {w}x{h} but the ground truth is {gw}x{gh}");
        }
        entries.push(ImageEntry {
            name: name.clone(),
            metrics: mask_metrics(&pred, &gt, w as usize, h as usize),
        });
    }
    let metrics: Vec<MaskMetrics> = entries.iter().map(|e| e.metrics).collect();
    let means = Scores::from_metrics(&metrics);
    if args.json {
        outln!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "images": entries, "mean": means }))?
        )?;
        return Ok(());
    }
    let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    outln!(
        "{:<32} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8}",
        "image",
        "dice",
        "iou",
        "acc",
        "se",
        "sp",
        "hd",
        "hd95"
    )?;
    for e in &entries {
        let x = &e.metrics;
        outln!(
            "{:<32} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>8} {:>8}",
            e.name,
            x.dice,
            x.iou,
            x.acc,
            x.se,
            x.sp,
            fmt(x.hd),
            fmt(x.hd95)
        )?;
    }
    outln!(
        "{:<32} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>8} {:>8}",
        format!("mean of {}", means.images),
        means.dice,
        means.iou,
        means.acc,
        means.se,
        means.sp,
        fmt(means.hd),
        fmt(means.hd95)
    )?;
    if means.hd_undefined > 0 {
        outln!(
            "HD undefined (an empty mask) for {} image(s); the HD means leave them out",
            means.hd_undefined
        )?;
    }
    Ok(())
}
