//! `samus auto`: segment images without prompts with AutoSAMUS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use image::DynamicImage;
use samus_apg::AutoSamus;
use samus_data::measure::Measurements;
use serde::Serialize;

use crate::cmd::segment::parse_pixel_size;
use crate::support::archive::{
    announce_done, expand_inputs, job_summary, output_names, progress_bar, ArchiveArgs,
    ResultsTable, Unreadable,
};
use crate::support::calibration::{mm_cells, Calibration, MM_COLUMNS};
use crate::support::images::{area_and_mean_probability, open_image, overlay};
use crate::support::model::{warn_if_sam, Checkpoint, NO_CHECKPOINT};
use crate::support::output::{OutputKind, Outputs};
use crate::support::RunContext;

/// Examples shown by `samus auto --help`.
pub const EXAMPLES: &str = "\
Examples:
  # One image, SAMUS and APG weights in two files
  samus auto --checkpoint samus_vit_b.safetensors --apg apg.safetensors --image scan.png

  # A folder and a glob, masks and overlays into out/, a JSON summary
  samus auto --checkpoint autosamus_vit_b.safetensors --image scans/ --image 'more/*.png' \\
      --out-dir out --overlay --json

  # An archive split between 4 jobs (K = 0..3, e.g. a scheduler's array index);
  # run again after an interruption: finished images are skipped
  samus auto --checkpoint autosamus_vit_b.safetensors --image archive/ --out-dir out \\
      --num-parts 4 --part-id K

Each job writes out/results.csv (out/results-partK-of-N.csv when split): image
name, file, mask area, mean foreground probability, predicted IoU, seconds.";

/// Arguments of `samus auto`.
#[derive(Debug, Args)]
pub struct AutoArgs {
    /// AutoSAMUS checkpoint, or a SAMUS checkpoint (with --apg for the generator).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// APG checkpoint (prompt_generator.* and feature_adapter.* tensors).
    #[arg(long, value_name = "FILE")]
    apg: Option<PathBuf>,
    /// Model configuration: a preset (vit_b, vit_l, vit_h, tiny) or a JSON file.
    /// Default: guessed from the checkpoint's tensor shapes.
    #[arg(long, value_name = "PRESET|FILE")]
    config: Option<String>,
    /// Images: files, folders (their PNG, JPEG, BMP and TIFF files) or glob patterns.
    #[arg(long = "image", value_name = "IMG", required = true, num_args = 1..)]
    images: Vec<String>,
    /// Folder for the masks (`<name>_mask.png`) and overlays (`<name>_overlay.png`).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out_dir: PathBuf,
    /// Also write an overlay per image.
    #[arg(long)]
    overlay: bool,
    /// Write `low_res_logits` (N x 1 x 128 x 128) and `iou` (N x 1) of all images,
    /// in input order, as safetensors (the image paths are in its metadata).
    #[arg(long, value_name = "FILE")]
    save_logits: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    batch_size: u16,
    /// Pixel size in millimetres, `MM` or `X_MM,Y_MM`, for every image: adds the
    /// area in mm², the equivalent diameter, the perimeter and the fitted-ellipse
    /// circumference. A calibrated DICOM file gives its own.
    #[arg(long, value_name = "MM[,MM]", value_parser = parse_pixel_size)]
    pixel_size: Option<(f64, f64)>,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    archive: ArchiveArgs,
}

/// The columns of `samus auto`'s results table.
const RESULT_COLUMNS: [&str; 10] = [
    "name",
    "image",
    "area",
    "mean_probability",
    "predicted_iou",
    MM_COLUMNS[0],
    MM_COLUMNS[1],
    MM_COLUMNS[2],
    MM_COLUMNS[3],
    "seconds",
];

#[derive(Debug, Serialize)]
struct ImageSummary {
    image: String,
    width: u32,
    height: u32,
    mask: String,
    overlay: Option<String>,
    area: usize,
    mean_foreground_probability: f32,
    /// With a known pixel size.
    #[serde(skip_serializing_if = "Option::is_none")]
    measurements: Option<Measurements>,
}

fn load_model(args: &AutoArgs, ctx: &RunContext) -> Result<AutoSamus> {
    let Some(path) = &args.checkpoint else {
        bail!(NO_CHECKPOINT);
    };
    let checkpoint = Checkpoint::read(path, args.config.as_deref())?;
    let (mut model, report) = checkpoint.auto(ctx, args.apg.as_deref())?;
    warn_if_sam(path, &report.samus);
    // The report holds every tensor: without it, packing frees the unpacked copies.
    drop(report);
    model.pack_for_inference()?;
    Ok(model)
}

/// Runs `samus auto`.
pub fn run(args: AutoArgs, ctx: &RunContext) -> Result<()> {
    args.archive.validate()?;
    let all_files = expand_inputs(&args.images)?;
    // Names are checked over the whole folder, so that every part agrees.
    let all_stems = output_names(&all_files)?;
    let mut results = ResultsTable::open(
        args.archive.results_path(&args.out_dir),
        &RESULT_COLUMNS,
        1,
        args.archive.overwrite,
    )?;
    let mask_of = |stem: &str| args.out_dir.join(format!("{stem}_mask.png"));
    let overlay_of = |stem: &str| args.out_dir.join(format!("{stem}_overlay.png"));
    let done = |stem: &str| {
        results.contains(&[stem])
            && mask_of(stem).is_file()
            && (!args.overlay || overlay_of(stem).is_file())
    };
    let (mut files, mut stems) = (Vec::new(), Vec::new());
    let mut skipped = 0usize;
    for (file, stem) in args
        .archive
        .select(&all_files)
        .into_iter()
        .zip(args.archive.select(&all_stems))
    {
        if done(&stem) {
            skipped += 1;
        } else {
            files.push(file);
            stems.push(stem);
        }
    }
    if skipped > 0 && args.save_logits.is_some() {
        bail!(
            "--save-logits needs every image's logits, but {skipped} image(s) are already done in {}: add --overwrite, or drop --save-logits",
            args.out_dir.display()
        );
    }
    let mut outputs = Outputs::guarding(&all_files);
    for input in [&args.checkpoint, &args.apg].into_iter().flatten() {
        outputs.add_input(input);
    }
    let masks: Vec<(String, PathBuf)> = stems
        .iter()
        .flat_map(|stem| {
            let mask = (format!("mask of `{stem}`"), mask_of(stem));
            let overlay = args
                .overlay
                .then(|| (format!("overlay of `{stem}`"), overlay_of(stem)));
            std::iter::once(mask).chain(overlay)
        })
        .collect();
    let mut planned: Vec<(&str, &Path, OutputKind)> = Vec::new();
    if let Some(path) = &args.save_logits {
        planned.push(("--save-logits", path, OutputKind::Safetensors));
    }
    // The masks go into --out-dir, which is created when missing.
    if args.out_dir.is_dir() {
        planned.extend(
            masks
                .iter()
                .map(|(what, path)| (what.as_str(), path.as_path(), OutputKind::Png)),
        );
    }
    outputs.plan(&planned)?;
    announce_done(skipped, &args.out_dir, args.json);
    if files.is_empty() {
        if !args.json {
            outln!("nothing to do: every image of this part is done")?;
        } else {
            outln!(
                "{}",
                serde_json::json!({ "images": [], "skipped": skipped })
            )?;
        }
        return Ok(());
    }
    let model = load_model(&args, ctx)?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create output folder {}", args.out_dir.display()))?;
    let progress = progress_bar(files.len())?;
    let mut summaries = Vec::with_capacity(files.len());
    let mut low_res = Vec::with_capacity(files.len());
    let mut ious = Vec::with_capacity(files.len());
    let mut failed = Unreadable::default();
    for (chunk_files, chunk_stems) in files
        .chunks(args.batch_size as usize)
        .zip(stems.chunks(args.batch_size as usize))
    {
        let start = Instant::now();
        // An unreadable file is reported and passed over, so that one broken scan
        // cannot stop an archive (a rerun tries it again).
        let mut readable = Vec::with_capacity(chunk_files.len());
        let mut images = Vec::with_capacity(chunk_files.len());
        for (file, stem) in chunk_files.iter().zip(chunk_stems) {
            match open_image(file) {
                Ok(image) => {
                    readable.push((file, stem));
                    images.push(image);
                }
                Err(e) => failed.pass_over(&progress, &e),
            }
        }
        if images.is_empty() {
            continue;
        }
        let segs = model.segment_images(&images)?;
        let seconds = start.elapsed().as_secs_f64() / images.len() as f64;
        for ((file, stem), (image, seg)) in readable.into_iter().zip(images.iter().zip(&segs)) {
            let (area, mean) = area_and_mean_probability(&seg.best().image, &seg.best_logits()?);
            let (w, h) = (image.width(), image.height());
            let mask_img = &seg.best().image;
            let mask_path = mask_of(stem);
            outputs.png(&DynamicImage::ImageLuma8(mask_img.clone()), &mask_path)?;
            let overlay_path = if args.overlay {
                let p = overlay_of(stem);
                outputs.png(
                    &DynamicImage::ImageRgb8(overlay(image, mask_img, &[], None, None)),
                    &p,
                )?;
                Some(p.display().to_string())
            } else {
                None
            };
            let iou = seg.best().iou;
            let calibration = Calibration::of(args.pixel_size, Some(file), (f64::NAN, f64::NAN))?;
            let measurements = calibration.and_then(|c| c.measure(mask_img));
            let summary = ImageSummary {
                image: file.display().to_string(),
                width: w,
                height: h,
                mask: mask_path.display().to_string(),
                overlay: overlay_path,
                area,
                mean_foreground_probability: mean,
                measurements,
            };
            if !args.json {
                let physical = measurements.map_or_else(String::new, |m| {
                    format!(
                        ", {:.1} mm² (circumference {:.1} mm)",
                        m.area_mm2, m.ellipse_circumference_mm
                    )
                });
                progress.suspend(|| {
                    outln!(
                        "{}: mask area {} px ({:.1}%){physical}, mean foreground probability {:.3} -> {}",
                        summary.image,
                        area,
                        100.0 * area as f64 / (w as f64 * h as f64),
                        mean,
                        summary.mask
                    )
                })?;
            }
            let mut row = vec![
                stem.clone(),
                summary.image.clone(),
                area.to_string(),
                format!("{mean:.6}"),
                format!("{iou:.6}"),
            ];
            row.extend(mm_cells(measurements.as_ref()));
            row.push(format!("{seconds:.4}"));
            results.insert(row);
            summaries.push(summary);
            if args.save_logits.is_some() {
                low_res.push(seg.low_res_logits().clone());
                ious.push(Tensor::new(&[iou], &Device::Cpu)?.unsqueeze(0)?);
            }
            progress.inc(1);
        }
        results.flush_now_and_then(&outputs)?;
    }
    results.flush(&outputs)?;
    progress.finish_and_clear();
    if let Some(path) = &args.save_logits {
        let logits = Tensor::cat(&low_res, 0)?;
        let iou = Tensor::cat(&ious, 0)?;
        let names: Vec<&str> = summaries.iter().map(|s| s.image.as_str()).collect();
        let metadata = HashMap::from([("images".to_string(), serde_json::to_string(&names)?)]);
        outputs.named_tensors(
            path,
            &[("low_res_logits", &logits), ("iou", &iou)],
            Some(metadata),
        )?;
        if !args.json {
            outln!("logits written to {}", path.display())?;
        }
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "images": summaries,
                "skipped": skipped,
                "failed": failed.messages(),
                "results": results.path().display().to_string(),
            }))?
        )?;
    } else {
        outln!("{}", job_summary(summaries.len(), skipped, results.path()))?;
    }
    failed.finish()
}
