//! `samus segment`: one image, point and box prompts, a mask.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use image::{DynamicImage, GrayImage};
use samus_data::measure::Measurements;
use samus_model::{CheckpointKind, PointPrompt, Prediction, Prompts, Samus, SamusConfig};
use serde::Serialize;

use crate::cmd::demo::demo_image;
use crate::support::archive::ArchiveArgs;
use crate::support::calibration::{prompt_position, Calibration};
use crate::support::images::{mask_image, open_image, overlay};
use crate::support::model::{warn_if_sam, Checkpoint, NO_CHECKPOINT};
use crate::support::output::{OutputKind, Outputs};
use crate::support::RunContext;

mod archive;
mod prompt_file;
mod prompts;

use prompt_file::{label_map, read_prompts, PromptEntry};
pub use prompts::{parse_box, parse_point};

/// Examples shown by `samus segment --help`.
pub const EXAMPLES: &str = "\
Examples:
  # A point on a lesion, mask and overlay written next to the image
  samus segment --checkpoint samus_vit_b.safetensors --image scan.png \\
      --point 120,88 --out scan_mask.png --overlay scan_overlay.png

  # A box, three candidate masks, results as JSON
  samus segment --checkpoint samus_vit_b.safetensors --image scan.png \\
      --box 60,40,180,150 --multimask --json

  # Several structures at once (the image is encoded once): one mask per entry and,
  # from the class ids, a label map (e.g. CAMUS: LV 1, myocardium 2, LA 3)
  samus segment --checkpoint samus_camus.safetensors --image a4c.png \\
      --prompts structures.json --out a4c.png --overlay a4c_overlay.png

  # Try it without weights: a generated image and an untrained tiny model
  samus segment --demo --out demo_mask.png --overlay demo_overlay.png

  # A folder of scans, each with its own prompts (prompts/<stem>.json), masks and
  # label maps into out/, results in out/results.csv; split over 2 jobs, resumable
  samus segment --checkpoint samus_vit_b.safetensors --image scans/ \\
      --prompts prompts/ --out-dir out --num-parts 2 --part-id 0

Getting weights: `cargo xtask download` fetches SAM ViT-B (sam_vit_b_01ec64);
pass it with --checkpoint (the SAMUS parts then start untrained) or use a trained
SAMUS checkpoint.";

/// Arguments of `samus segment`.
#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// SAMUS or SAM checkpoint (.safetensors, or a PyTorch .pth zip file).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Model configuration: a preset (vit_b, vit_l, vit_h, tiny) or a JSON file.
    /// Default: guessed from the checkpoint's tensor shapes.
    #[arg(long, value_name = "PRESET|FILE")]
    config: Option<String>,
    /// Image to segment (PNG, JPEG, BMP or TIFF; grey or colour, 8 or 16 bit); with
    /// --out-dir, a folder or a glob pattern.
    #[arg(long, value_name = "FILE", required_unless_present = "demo")]
    image: Option<PathBuf>,
    /// Point prompt in image pixels, `x,y` or `x,y,label` (label 1 foreground,
    /// the default, or 0 background). Repeat for several points.
    #[arg(long = "point", value_name = "X,Y[,LABEL]", value_parser = parse_point, allow_hyphen_values = true)]
    points: Vec<PointPrompt>,
    /// Box prompt in image pixels.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1", value_parser = parse_box, allow_hyphen_values = true)]
    bbox: Option<[f32; 4]>,
    /// Several prompt sets from a JSON file, one mask each (`<out>_<name>.png`), the
    /// image encoded once; entries with a `class_id` are also painted into a label map.
    /// Format: `[{"name": "lv", "class_id": 1, "points": [[x, y], [x, y, 0]], "box": [x0, y0, x1, y1]}, ...]`.
    /// With --out-dir: one such file for every image, or a folder of `<stem>.json`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["points", "bbox"])]
    prompts: Option<PathBuf>,
    /// Where to write the label map of a --prompts file (pixel = class id, overlaps to
    /// the most confident entry). Default: `<out>_labels.png` when an entry has a class id.
    #[arg(long, value_name = "FILE", requires = "prompts")]
    label_map: Option<PathBuf>,
    /// Predict three candidate masks; the one with the highest predicted IoU is written.
    #[arg(long)]
    multimask: bool,
    /// Where to write the binary mask (PNG at the image's size).
    #[arg(long, value_name = "FILE", default_value = "mask.png")]
    out: PathBuf,
    /// Also write the image with the mask tinted and the prompts drawn.
    #[arg(long, value_name = "FILE")]
    overlay: Option<PathBuf>,
    /// Also write `low_res_logits` (1 x K x 128 x 128) and `iou` (1 x K) as safetensors.
    #[arg(long, value_name = "FILE")]
    save_logits: Option<PathBuf>,
    /// Pixel size in millimetres, `MM` or `X_MM,Y_MM`: adds the area in mm², the
    /// equivalent diameter, the perimeter and the fitted-ellipse circumference. A
    /// DICOM file with an ultrasound calibration or Pixel Spacing gives its own.
    #[arg(long, value_name = "MM[,MM]", value_parser = parse_pixel_size)]
    pixel_size: Option<(f64, f64)>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Segment a generated ultrasound-like image; without --checkpoint, with an
    /// untrained tiny model (shows the pipeline, not real segmentation).
    #[arg(long)]
    demo: bool,
    /// Archive mode: segment every image of the --image folder or glob with
    /// --prompts, writing `<stem>_<entry>.png`, `<stem>_labels.png` and results.csv
    /// (name, entry, image, area, mean probability, predicted IoU, seconds) here.
    #[arg(long, value_name = "DIR", requires = "prompts", conflicts_with = "out")]
    out_dir: Option<PathBuf>,
    #[command(flatten)]
    archive: ArchiveArgs,
}

#[derive(Debug, Serialize)]
struct MaskSummary {
    index: usize,
    iou: f32,
    area: usize,
    /// With a known pixel size.
    #[serde(skip_serializing_if = "Option::is_none")]
    measurements: Option<Measurements>,
}

/// `--pixel-size`: one size for both axes, or x then y; positive millimetres.
pub fn parse_pixel_size(text: &str) -> std::result::Result<(f64, f64), String> {
    let parse = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0 && *v < 1000.0)
            .ok_or_else(|| format!("`{text}`: give millimetres per pixel, e.g. 0.1 or 0.1,0.12"))
    };
    match text.split_once(',') {
        Some((x, y)) => Ok((parse(x)?, parse(y)?)),
        None => parse(text).map(|v| (v, v)),
    }
}

#[derive(Debug, Serialize)]
struct SegmentReport {
    image: String,
    width: u32,
    height: u32,
    checkpoint: Option<String>,
    untrained: bool,
    masks: Vec<MaskSummary>,
    selected: usize,
    out: String,
    overlay: Option<String>,
    logits: Option<String>,
    /// Millimetres per pixel (x, y) the measurements use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pixel_size_mm: Option<[f64; 2]>,
    /// Where the pixel size came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pixel_size_source: Option<&'static str>,
}

/// Demo weights are seeded so that the demo is repeatable.
const DEMO_SEED: u64 = 7;

fn load_model(args: &SegmentArgs, ctx: &RunContext) -> Result<(Samus, bool)> {
    let Some(path) = &args.checkpoint else {
        if !args.demo {
            bail!(NO_CHECKPOINT);
        }
        let cfg = match &args.config {
            Some(spec) => SamusConfig::from_name_or_path(spec)?,
            None => SamusConfig::tiny(),
        };
        eprintln!(
            "warning: demo mode: the {}-wide model has random, UNTRAINED weights, so the mask \
             is not a real segmentation. Get weights with `cargo xtask download` and pass --checkpoint.",
            cfg.embed_dim
        );
        return Ok((Samus::random(&cfg, DEMO_SEED, &ctx.device)?, true));
    };
    let (mut model, report) = Checkpoint::read(path, args.config.as_deref())?.samus(ctx)?;
    warn_if_sam(path, &report);
    let was_sam = report.kind == CheckpointKind::Sam;
    // The report holds every tensor: without it, packing frees the unpacked copies.
    drop(report);
    model.pack_for_inference()?;
    Ok((model, was_sam))
}

fn summaries(prediction: &Prediction, pixel_size: Option<&Calibration>) -> Vec<MaskSummary> {
    prediction
        .masks()
        .iter()
        .map(|m| MaskSummary {
            index: m.index,
            iou: m.iou,
            area: m.area(),
            measurements: pixel_size.and_then(|c| c.measure(&m.image)),
        })
        .collect()
}

/// The predicted IoUs as a `1 x K` tensor (for `--save-logits`).
fn iou_tensor(prediction: &Prediction) -> Result<Tensor> {
    let iou = prediction.iou();
    let k = iou.len();
    Ok(Tensor::from_vec(iou, (1, k), &Device::Cpu)?)
}

/// Runs `samus segment`.
pub fn run(args: SegmentArgs, ctx: &RunContext) -> Result<()> {
    if let Some(out_dir) = &args.out_dir {
        return archive::run(&args, out_dir, ctx);
    }
    if args.archive.num_parts != 1 || args.archive.part_id != 0 || args.archive.overwrite {
        bail!(
            "--num-parts, --part-id and --overwrite split and resume a folder: add --out-dir DIR"
        );
    }
    let config_file = args.config.as_ref().map(PathBuf::from);
    let outputs = Outputs::guarding(
        [&args.image, &args.checkpoint, &args.prompts, &config_file]
            .into_iter()
            .flatten(),
    );
    let mut planned = vec![("--out", args.out.as_path(), OutputKind::Png)];
    if let Some(path) = &args.overlay {
        planned.push(("--overlay", path, OutputKind::Png));
    }
    if let Some(path) = &args.save_logits {
        planned.push(("--save-logits", path, OutputKind::Safetensors));
    }
    if let Some(path) = &args.label_map {
        planned.push(("--label-map", path, OutputKind::Png));
    }
    outputs.plan(&planned)?;
    let (image, image_name, points) = match (&args.image, args.demo) {
        (Some(path), _) => (
            open_image(path)?,
            path.display().to_string(),
            args.points.clone(),
        ),
        (None, _) => {
            let (img, (cx, cy)) = demo_image(DEMO_SEED);
            let points = if args.points.is_empty() && args.bbox.is_none() {
                vec![PointPrompt::foreground(cx, cy)]
            } else {
                args.points.clone()
            };
            (
                DynamicImage::ImageLuma8(img),
                "<demo image>".to_string(),
                points,
            )
        }
    };
    if let Some(path) = &args.prompts {
        let entries = read_prompts(path)?;
        // Each entry's mask (and the default label map) beside --out.
        let beside_out: Vec<(String, PathBuf)> = entries
            .iter()
            .map(|e| {
                (
                    format!("--out (entry `{}`)", e.name),
                    beside(&args.out, &e.name),
                )
            })
            .chain(
                (args.label_map.is_none() && entries.iter().any(|e| e.class_id.is_some()))
                    .then(|| ("--out (label map)".to_string(), beside(&args.out, "labels"))),
            )
            .collect();
        let mut all = planned.clone();
        all.retain(|(flag, _, _)| *flag != "--out");
        all.extend(
            beside_out
                .iter()
                .map(|(flag, path)| (flag.as_str(), path.as_path(), OutputKind::Png)),
        );
        outputs.plan(&all)?;
        let (model, untrained) = load_model(&args, ctx)?;
        let job = PromptFileJob {
            args: &args,
            model: &model,
            untrained,
            image: &image,
            image_name: &image_name,
            outputs: &outputs,
        };
        return job.run(&entries);
    }
    if points.is_empty() && args.bbox.is_none() {
        bail!("give at least one prompt: --point x,y, --box x0,y0,x1,y1 or --prompts FILE.json");
    }
    let (model, untrained) = load_model(&args, ctx)?;
    let embedding = model.embed(&image)?;
    let prediction = model.predict(
        &embedding,
        &Prompts::new()
            .points(points.iter().copied())
            .maybe_bbox(args.bbox)
            .multimask(args.multimask),
    )?;
    let pixel_size = Calibration::of(
        args.pixel_size,
        args.image.as_deref(),
        prompt_position(&points, args.bbox),
    )?;
    let summaries = summaries(&prediction, pixel_size.as_ref());
    let best = prediction.best();
    let selected = best.index;
    let (w, h) = (image.width(), image.height());
    let mask = &best.image;
    outputs.png(&DynamicImage::ImageLuma8(mask.clone()), &args.out)?;
    if let Some(path) = &args.overlay {
        let caption = format!("predicted IoU {:.3}", best.iou);
        let picture = overlay(&image, mask, &points, args.bbox, Some(&caption));
        outputs.png(&DynamicImage::ImageRgb8(picture), path)?;
    }
    if let Some(path) = &args.save_logits {
        outputs.named_tensors(
            path,
            &[
                ("low_res_logits", prediction.low_res_logits()),
                ("iou", &iou_tensor(&prediction)?),
            ],
            None,
        )?;
    }
    let report = SegmentReport {
        image: image_name,
        width: w,
        height: h,
        checkpoint: args.checkpoint.as_ref().map(|p| p.display().to_string()),
        untrained,
        masks: summaries,
        selected,
        out: args.out.display().to_string(),
        overlay: args.overlay.as_ref().map(|p| p.display().to_string()),
        logits: args.save_logits.as_ref().map(|p| p.display().to_string()),
        pixel_size_mm: pixel_size.map(|c| [c.mm.0, c.mm.1]),
        pixel_size_source: pixel_size.map(|c| c.source),
    };
    if args.json {
        outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        for m in &report.masks {
            let mark = if m.index == selected {
                " (written)"
            } else {
                ""
            };
            let physical = m.measurements.map_or_else(String::new, |v| {
                format!(
                    " = {:.2} mm2, equivalent diameter {:.2} mm, perimeter {:.2} mm, \
                     ellipse circumference {:.2} mm",
                    v.area_mm2,
                    v.equivalent_diameter_mm,
                    v.perimeter_mm,
                    v.ellipse_circumference_mm
                )
            });
            outln!(
                "mask {}: predicted IoU {:.4}, area {} px{physical}{mark}",
                m.index,
                m.iou,
                m.area
            )?;
        }
        outln!("mask written to {}", report.out)?;
        if let Some(p) = &report.overlay {
            outln!("overlay written to {p}")?;
        }
        if let Some(p) = &report.logits {
            outln!("logits written to {p}")?;
        }
    }
    Ok(())
}

/// One entry's result in the `--prompts` report.
#[derive(Debug, Serialize)]
struct EntryReport {
    name: String,
    class_id: Option<u8>,
    iou: f32,
    area: usize,
    out: String,
    /// With a known pixel size.
    #[serde(skip_serializing_if = "Option::is_none")]
    measurements: Option<Measurements>,
}

/// The `--prompts` report.
#[derive(Debug, Serialize)]
struct PromptFileReport {
    image: String,
    width: u32,
    height: u32,
    checkpoint: Option<String>,
    untrained: bool,
    entries: Vec<EntryReport>,
    label_map: Option<String>,
    overlay: Option<String>,
}

/// `<dir>/<stem>_<suffix>.png` beside `out`.
fn beside(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "mask".to_string(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}_{suffix}.png"))
}

/// What `--prompts` works on.
struct PromptFileJob<'a> {
    args: &'a SegmentArgs,
    model: &'a Samus,
    untrained: bool,
    image: &'a DynamicImage,
    image_name: &'a str,
    outputs: &'a Outputs,
}

impl PromptFileJob<'_> {
    /// Segments every entry of a prompts file on the image encoded once.
    fn run(&self, entries: &[PromptEntry]) -> Result<()> {
        let Self {
            args,
            model,
            untrained,
            image,
            image_name,
            outputs,
        } = *self;
        let (w, h) = (image.width(), image.height());
        let embedding = model.embed(image)?;
        let mut reports = Vec::with_capacity(entries.len());
        let mut logits = Vec::with_capacity(entries.len());
        let mut union = vec![0u8; (w * h) as usize];
        let mut all_points = Vec::new();
        for entry in entries {
            let prediction = model
                .predict(&embedding, &entry.prompts(args.multimask))
                .with_context(|| format!("prompt entry `{}`", entry.name))?;
            let best = prediction.best();
            let path = beside(&args.out, &entry.name);
            outputs.png(&DynamicImage::ImageLuma8(best.image.clone()), &path)?;
            for (u, m) in union.iter_mut().zip(best.image.as_raw()) {
                *u |= u8::from(*m > 0);
            }
            all_points.extend(entry.points.iter().copied());
            logits.push(prediction.best_logits()?);
            let calibration = Calibration::of(
                args.pixel_size,
                args.image.as_deref(),
                prompt_position(&entry.points, entry.bbox),
            )?;
            reports.push(EntryReport {
                name: entry.name.clone(),
                class_id: entry.class_id,
                iou: best.iou,
                area: best.area(),
                out: path.display().to_string(),
                measurements: calibration.and_then(|c| c.measure(&best.image)),
            });
        }
        let label_path = match (
            &args.label_map,
            entries.iter().any(|e| e.class_id.is_some()),
        ) {
            (Some(path), _) => Some(path.clone()),
            (None, true) => Some(beside(&args.out, "labels")),
            (None, false) => None,
        };
        if let Some(path) = &label_path {
            let labels = GrayImage::from_raw(w, h, label_map(entries, &logits))
                .context("label map size does not match the image")?;
            outputs.png(&DynamicImage::ImageLuma8(labels), path)?;
        }
        if let Some(path) = &args.overlay {
            let caption = reports
                .iter()
                .map(|e| format!("{} {:.2}", e.name, e.iou))
                .collect::<Vec<_>>()
                .join("  ");
            let picture = overlay(
                image,
                &mask_image(&union, w, h)?,
                &all_points,
                None,
                Some(&caption),
            );
            outputs.png(&DynamicImage::ImageRgb8(picture), path)?;
        }
        let report = PromptFileReport {
            image: image_name.to_string(),
            width: w,
            height: h,
            checkpoint: args.checkpoint.as_ref().map(|p| p.display().to_string()),
            untrained,
            entries: reports,
            label_map: label_path.map(|p| p.display().to_string()),
            overlay: args.overlay.as_ref().map(|p| p.display().to_string()),
        };
        if args.json {
            outln!("{}", serde_json::to_string(&report)?)?;
        } else {
            for e in &report.entries {
                let class = e
                    .class_id
                    .map_or_else(String::new, |c| format!(" class {c}"));
                let physical = e.measurements.map_or_else(String::new, |m| {
                    format!(
                        " ({:.1} mm², circumference {:.1} mm)",
                        m.area_mm2, m.ellipse_circumference_mm
                    )
                });
                outln!(
                    "{}{class}: predicted IoU {:.4}, area {} px{physical} -> {}",
                    e.name,
                    e.iou,
                    e.area,
                    e.out
                )?;
            }
            if let Some(p) = &report.label_map {
                outln!("label map written to {p}")?;
            }
            if let Some(p) = &report.overlay {
                outln!("overlay written to {p}")?;
            }
        }
        Ok(())
    }
}
