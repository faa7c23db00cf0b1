//! `samus auto`: segment images without prompts with AutoSAMUS.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use image::DynamicImage;
use indicatif::{ProgressBar, ProgressStyle};
use samus_apg::{read_apg_tensors, AutoSamus, Segmentation};
use samus_model::checkpoint::DEFAULT_INIT_SEED;
use serde::Serialize;

use crate::images::{mask_image, open_image, overlay, save_png};
use crate::model_source::{checkpoint_error, read_checkpoint, resolve_config, NO_CHECKPOINT};
use crate::output::write_safetensors;

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

fn load_model(args: &AutoArgs, device: &Device) -> Result<AutoSamus> {
    let Some(path) = &args.checkpoint else {
        bail!(NO_CHECKPOINT);
    };
    let mut tensors = read_checkpoint(path)?;
    let cfg = resolve_config(args.config.as_deref(), &tensors, path)?;
    let has_apg = tensors
        .keys()
        .any(|k| samus_apg::auto_samus::is_apg_tensor(k));
    if let Some(apg) = &args.apg {
        if !apg.exists() {
            bail!("APG checkpoint {} does not exist", apg.display());
        }
        tensors.extend(read_apg_tensors(apg)?);
    } else if !has_apg {
        bail!(
            "checkpoint {} holds no auto prompt generator (prompt_generator.*, feature_adapter.*); \
             pass its weights with --apg FILE",
            path.display()
        );
    }
    let (model, report) = AutoSamus::from_tensors(tensors, &cfg, device, DEFAULT_INIT_SEED)
        .map_err(|e| checkpoint_error(path, e))?;
    if report.samus.kind == samus_model::CheckpointKind::Sam {
        eprintln!(
            "warning: {} is a plain SAM checkpoint: the SAMUS parts are UNTRAINED, so the masks are not real segmentations",
            path.display()
        );
    }
    Ok(model)
}

fn summarise(seg: &Segmentation) -> Result<(Vec<u8>, usize, f32)> {
    let mask = seg.mask.flatten_all()?.to_vec1::<u8>()?;
    let prob = candle_nn::ops::sigmoid(&seg.logits)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (area, sum) = mask
        .iter()
        .zip(&prob)
        .filter(|(m, _)| **m > 0)
        .fold((0usize, 0f64), |(n, s), (_, p)| (n + 1, s + *p as f64));
    let mean = if area == 0 {
        0.0
    } else {
        (sum / area as f64) as f32
    };
    Ok((mask, area, mean))
}

/// Runs `samus auto`.
pub fn run(args: AutoArgs) -> Result<()> {
    let device = crate::device::selected();
    let files = expand_inputs(&args.images)?;
    let stems = output_names(&files)?;
    let model = load_model(&args, &device)?;
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
        let segs = model.segment(&images)?;
        for ((file, stem), (image, seg)) in chunk_files
            .iter()
            .zip(chunk_stems)
            .zip(images.iter().zip(&segs))
        {
            let (mask, area, mean) = summarise(seg)?;
            let (w, h) = (image.width(), image.height());
            let mask_img = mask_image(&mask, w, h)?;
            let mask_path = args.out_dir.join(format!("{stem}_mask.png"));
            save_png(&DynamicImage::ImageLuma8(mask_img.clone()), &mask_path)?;
            let overlay_path = if args.overlay {
                let p = args.out_dir.join(format!("{stem}_overlay.png"));
                save_png(
                    &DynamicImage::ImageRgb8(overlay(image, &mask_img, &[], None, None)),
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
                    println!(
                        "{}: mask area {} px ({:.1}%), mean foreground probability {:.3} -> {}",
                        summary.image,
                        area,
                        100.0 * area as f64 / (w as f64 * h as f64),
                        mean,
                        summary.mask
                    )
                });
            }
            summaries.push(summary);
            low_res.push(seg.low_res_logits.clone());
            ious.push(seg.iou.clone());
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    if let Some(path) = &args.save_logits {
        let logits = Tensor::cat(&low_res, 0)?;
        let iou = Tensor::cat(&ious, 0)?;
        let names: Vec<&str> = summaries.iter().map(|s| s.image.as_str()).collect();
        let metadata = HashMap::from([("images".to_string(), serde_json::to_string(&names)?)]);
        write_safetensors(
            path,
            &[("low_res_logits", &logits), ("iou", &iou)],
            Some(metadata),
        )?;
        if !args.json {
            println!("logits written to {}", path.display());
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "images": summaries }))?
        );
    }
    Ok(())
}
