//! `samus auto`: segment images without prompts with AutoSAMUS.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use image::DynamicImage;
use indicatif::{ProgressBar, ProgressStyle};
use samus_apg::AutoSamus;
use samus_model::Prediction;
use serde::Serialize;

use crate::support::images::{open_image, overlay};
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
      --out-dir out --overlay --json";

/// Image file extensions taken from folders.
const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

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
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct ImageSummary {
    image: String,
    width: u32,
    height: u32,
    mask: String,
    overlay: Option<String>,
    area: usize,
    mean_foreground_probability: f32,
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expands the `--image` arguments into files, in order, without repeats.
fn expand_inputs(specs: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for spec in specs {
        let path = Path::new(spec);
        let found: Vec<PathBuf> = if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list folder {spec}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                    })
                })
                .collect();
            entries.sort();
            entries
        } else if has_glob_chars(spec) && !path.exists() {
            let mut matches = Vec::new();
            for entry in glob::glob(spec).with_context(|| format!("bad glob pattern `{spec}`"))? {
                matches.push(entry.with_context(|| format!("cannot read a match of `{spec}`"))?);
            }
            matches.sort();
            matches
        } else if path.exists() {
            vec![path.to_path_buf()]
        } else {
            bail!("image {spec} does not exist");
        };
        if found.is_empty() {
            bail!("no images found in `{spec}`");
        }
        files.extend(found);
    }
    let mut seen = HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
    Ok(files)
}

/// `<out-dir>/<stem><suffix>.png`, refusing two inputs with the same stem.
fn output_names(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut seen: HashMap<String, &Path> = HashMap::new();
    files
        .iter()
        .map(|f| {
            let stem = f
                .file_stem()
                .and_then(|s| s.to_str())
                .with_context(|| format!("image {} has no usable file name", f.display()))?
                .to_string();
            if let Some(other) = seen.insert(stem.clone(), f) {
                bail!(
                    "images {} and {} would write the same mask `{stem}_mask.png`; run them separately",
                    other.display(),
                    f.display()
                );
            }
            Ok(stem)
        })
        .collect()
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

/// The mask's area and the mean foreground probability inside it.
fn summarise(prediction: &Prediction) -> Result<(usize, f32)> {
    let mask = prediction.best();
    let prob = candle_nn::ops::sigmoid(prediction.logits())?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (area, sum) = mask
        .image
        .as_raw()
        .iter()
        .zip(&prob)
        .filter(|(m, _)| **m > 0)
        .fold((0usize, 0f64), |(n, s), (_, p)| (n + 1, s + *p as f64));
    let mean = if area == 0 {
        0.0
    } else {
        (sum / area as f64) as f32
    };
    Ok((area, mean))
}

/// Runs `samus auto`.
pub fn run(args: AutoArgs, ctx: &RunContext) -> Result<()> {
    let files = expand_inputs(&args.images)?;
    let stems = output_names(&files)?;
    let mut outputs = Outputs::guarding(&files);
    for input in [&args.checkpoint, &args.apg].into_iter().flatten() {
        outputs.add_input(input);
    }
    let masks: Vec<(String, PathBuf)> = stems
        .iter()
        .flat_map(|stem| {
            let mask = (
                format!("mask of `{stem}`"),
                args.out_dir.join(format!("{stem}_mask.png")),
            );
            let overlay = args.overlay.then(|| {
                (
                    format!("overlay of `{stem}`"),
                    args.out_dir.join(format!("{stem}_overlay.png")),
                )
            });
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
    let model = load_model(&args, ctx)?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create output folder {}", args.out_dir.display()))?;
    let progress = ProgressBar::new(files.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images {elapsed_precise} {msg}")
            .context("progress bar template")?,
    );
    let mut summaries = Vec::with_capacity(files.len());
    let mut low_res = Vec::with_capacity(files.len());
    let mut ious = Vec::with_capacity(files.len());
    for (chunk_files, chunk_stems) in files
        .chunks(args.batch_size as usize)
        .zip(stems.chunks(args.batch_size as usize))
    {
        let images = chunk_files
            .iter()
            .map(|f| open_image(f))
            .collect::<Result<Vec<DynamicImage>>>()?;
        let segs = model.segment_images(&images)?;
        for ((file, stem), (image, seg)) in chunk_files
            .iter()
            .zip(chunk_stems)
            .zip(images.iter().zip(&segs))
        {
            let (area, mean) = summarise(seg)?;
            let (w, h) = (image.width(), image.height());
            let mask_img = &seg.best().image;
            let mask_path = args.out_dir.join(format!("{stem}_mask.png"));
            outputs.png(&DynamicImage::ImageLuma8(mask_img.clone()), &mask_path)?;
            let overlay_path = if args.overlay {
                let p = args.out_dir.join(format!("{stem}_overlay.png"));
                outputs.png(
                    &DynamicImage::ImageRgb8(overlay(image, mask_img, &[], None, None)),
                    &p,
                )?;
                Some(p.display().to_string())
            } else {
                None
            };
            let summary = ImageSummary {
                image: file.display().to_string(),
                width: w,
                height: h,
                mask: mask_path.display().to_string(),
                overlay: overlay_path,
                area,
                mean_foreground_probability: mean,
            };
            if !args.json {
                progress.suspend(|| {
                    outln!(
                        "{}: mask area {} px ({:.1}%), mean foreground probability {:.3} -> {}",
                        summary.image,
                        area,
                        100.0 * area as f64 / (w as f64 * h as f64),
                        mean,
                        summary.mask
                    )
                })?;
            }
            summaries.push(summary);
            low_res.push(seg.low_res_logits().clone());
            ious.push(Tensor::new(&[seg.best().iou], &Device::Cpu)?.unsqueeze(0)?);
            progress.inc(1);
        }
    }
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
            serde_json::to_string(&serde_json::json!({ "images": summaries }))?
        )?;
    }
    Ok(())
}
