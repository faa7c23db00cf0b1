//! `samus bench`: how fast SAMUS runs here: the image encoder, the decoder per prompt
//! on a cached embedding, images per second and peak memory; with `--train`, one
//! training step ([`train`]).

mod train;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Tensor;
use clap::Args;
use image::DynamicImage;
use samus_model::checkpoint::DEFAULT_INIT_SEED;
use samus_model::preprocess::image_to_input;
use samus_model::{PointPrompt, PromptBatch, Prompts, Samus, SamusConfig};
use serde::Serialize;

use crate::cmd::demo::demo_image;
use crate::support::model::Checkpoint;
use crate::support::output::{OutputKind, Outputs};
use crate::support::RunContext;

/// Examples printed by `samus bench --help`.
pub const EXAMPLES: &str = "Examples:
  # ViT-B with random weights of the right shapes: no download needed
  samus bench --config vit_b --random-weights --iters 10

  # A real checkpoint, one thread, as JSON
  samus bench --checkpoint samus_vit_b.safetensors --threads 1 --json

  # Keep the random weights and one input/output pair for a peer implementation
  samus bench --random-weights --save-weights w.safetensors --write-io io.safetensors

  # One training step of the tiny configuration, batch 4, every parameter trainable
  samus bench --train --random-weights --config tiny --batch-size 4";

/// Prompts decoded on each cached embedding to time the decoder.
const PROMPTS_PER_IMAGE: usize = 10;
/// Untimed runs before the measurement (allocator and caches warm up).
const WARMUP_RUNS: usize = 1;
/// Images per training step of `--train`.
const DEFAULT_TRAIN_BATCH: u32 = 4;

/// Arguments of `samus bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Checkpoint to time (SAM or SAMUS); or use --random-weights.
    #[arg(long, value_name = "FILE", required_unless_present = "random_weights")]
    checkpoint: Option<PathBuf>,
    /// Model configuration: a preset (vit_b, vit_l, vit_h, tiny) or a JSON file
    /// (default with --random-weights: vit_b; else guessed from the checkpoint).
    #[arg(long, value_name = "PRESET|FILE")]
    config: Option<String>,
    /// Time a model with random weights of the configuration's shapes.
    #[arg(long, conflicts_with = "checkpoint")]
    random_weights: bool,
    /// Timed images (each: one encoder pass and 10 prompts); with --train, timed
    /// training steps.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    iters: u32,
    /// Time training steps instead (forward, loss, backward and Adam on one batch,
    /// every parameter trainable; default configuration with --random-weights:
    /// tiny). --write-io then writes the batch (`images`, `low_targets`,
    /// `point_coords`, `point_labels`).
    #[arg(long)]
    train: bool,
    /// Images per training step (with --train).
    #[arg(long, default_value_t = DEFAULT_TRAIN_BATCH, requires = "train",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    batch_size: u32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Also write the model's weights (reference names, safetensors), e.g. the random
    /// ones, for a peer implementation to load (`cargo xtask bench-compare`).
    #[arg(long, value_name = "FILE")]
    save_weights: Option<PathBuf>,
    /// Also write the benchmark's input and output (safetensors: `image` 1x1xSxS in
    /// [0, 1], `point_coords` 1x1x2 in the S frame, `point_labels` 1x1, and the
    /// single-mask `low_res_logits` and `iou` of that point).
    #[arg(long, value_name = "FILE")]
    write_io: Option<PathBuf>,
}

/// Median, fastest and slowest of a series, in seconds.
#[derive(Debug, Clone, Copy, Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(values: &mut [f64]) -> Spread {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Spread {
        median,
        min: values.first().copied().unwrap_or(f64::NAN),
        max: values.last().copied().unwrap_or(f64::NAN),
    }
}

/// The `--json` report (the keys `samus bench` promises).
#[derive(Debug, Serialize)]
struct BenchReport {
    config: SamusConfig,
    iters: u32,
    threads: usize,
    /// The kernels' instruction set (`avx512`, `avx2` or `scalar`).
    isa: &'static str,
    /// The gemm crate's instruction set (candle's matrix products), which
    /// `SAMUS_ISA` does not choose.
    gemm_isa: &'static str,
    full_median_s: f64,
    encoder_median_s: f64,
    encoder_min_s: f64,
    encoder_max_s: f64,
    decoder_median_ms: f64,
    decoder_min_ms: f64,
    decoder_max_ms: f64,
    images_per_s: f64,
    peak_rss_mb: Option<f64>,
}

/// Peak resident memory of this process in MiB (Linux: `VmHWM`).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The model, its configuration and its weights by reference name.
fn load(
    args: &BenchArgs,
    ctx: &RunContext,
) -> Result<(Samus, SamusConfig, HashMap<String, Tensor>)> {
    if args.random_weights {
        let cfg = SamusConfig::from_name_or_path(args.config.as_deref().unwrap_or("vit_b"))?;
        let (mut model, tensors) =
            samus_model::train::random_weights(&cfg, DEFAULT_INIT_SEED, &ctx.device)?;
        // The weights are kept only for --save-weights; packing then frees the
        // unpacked copies of the rest, as a loaded model's.
        let tensors = if args.save_weights.is_some() {
            tensors
        } else {
            HashMap::new()
        };
        model.pack_for_inference()?;
        return Ok((model, cfg, tensors));
    }
    let Some(path) = &args.checkpoint else {
        bail!("give --checkpoint FILE or --random-weights");
    };
    let checkpoint = Checkpoint::read(path, args.config.as_deref())?;
    let cfg = checkpoint.config.clone();
    // The weights are written again only with --save-weights.
    let tensors = if args.save_weights.is_some() {
        checkpoint.tensors.clone()
    } else {
        HashMap::new()
    };
    let (mut model, _) = checkpoint.samus(ctx)?;
    model.pack_for_inference()?;
    Ok((model, cfg, tensors))
}

/// Runs the model once on the benchmark's image and first prompt and writes input and
/// output to `path` (`--write-io`).
fn write_io(
    model: &Samus,
    image: &DynamicImage,
    point: (f32, f32),
    path: &Path,
    outputs: &Outputs,
) -> Result<()> {
    let device = model.device();
    let size = model.config().img_size;
    let input = image_to_input(image, size, device)?;
    let grey = if input.dim(1)? == 1 {
        input.clone()
    } else {
        input.narrow(1, 0, 1)?
    };
    let scale = |v: f32, extent: u32| v * size as f32 / extent as f32;
    let coords = Tensor::from_vec(
        vec![
            scale(point.0, image.width()),
            scale(point.1, image.height()),
        ],
        (1, 1, 2),
        device,
    )?;
    let labels = Tensor::from_vec(vec![1i64], (1, 1), device)?;
    let prompts = PromptBatch {
        points: Some((&coords, &labels)),
        boxes: None,
        masks: None,
    };
    let out = model.forward(&input, &prompts, false)?;
    let tensors = HashMap::from([
        ("image".to_string(), grey),
        ("point_coords".to_string(), coords),
        ("point_labels".to_string(), labels),
        ("low_res_logits".to_string(), out.low_res_logits),
        ("iou".to_string(), out.iou),
    ]);
    outputs.safetensors(path, &tensors, None)
}

/// The outputs guard with `--save-weights` and `--write-io` checked before any
/// work (never onto the checkpoint, safetensors names).
fn planned_outputs(args: &BenchArgs) -> Result<Outputs> {
    let outputs = Outputs::guarding(args.checkpoint.iter());
    let planned: Vec<(&str, &Path, OutputKind)> = [
        ("--save-weights", &args.save_weights),
        ("--write-io", &args.write_io),
    ]
    .into_iter()
    .filter_map(|(flag, path)| Some((flag, path.as_deref()?, OutputKind::Safetensors)))
    .collect();
    outputs.plan(&planned)?;
    Ok(outputs)
}

/// The generated demo scan of `seed` at the model's input size `side` (so that
/// the figures time the model rather than the resizing of whatever size the
/// generator drew), with its click in that frame.
fn demo_scan(seed: u64, side: usize) -> (image::GrayImage, (f32, f32)) {
    let (scan, (x, y)) = demo_image(seed);
    let (sx, sy) = (
        side as f32 / scan.width() as f32,
        side as f32 / scan.height() as f32,
    );
    let resized = image::imageops::resize(
        &scan,
        side as u32,
        side as u32,
        image::imageops::FilterType::Triangle,
    );
    let last = side as f32 - 1.0;
    (resized, ((x * sx).min(last), (y * sy).min(last)))
}

/// Runs `samus bench`.
pub fn run(args: BenchArgs, ctx: &RunContext) -> Result<()> {
    if args.train {
        return train::run(&args, ctx);
    }
    let outputs = planned_outputs(&args)?;
    let (model, cfg, tensors) = load(&args, ctx)?;
    let (scan, (cx, cy)) = demo_scan(7, cfg.img_size);
    let image = DynamicImage::ImageLuma8(scan);
    if let Some(path) = &args.save_weights {
        outputs.safetensors(path, &tensors, None)?;
    }
    drop(tensors);
    if let Some(path) = &args.write_io {
        write_io(&model, &image, (cx, cy), path, &outputs)?;
    }
    let prompts: Vec<Prompts> = (0..PROMPTS_PER_IMAGE)
        .map(|i| Prompts::new().points([PointPrompt::foreground(cx + i as f32, cy)]))
        .collect();
    let (mut encoder, mut decoder, mut full) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..WARMUP_RUNS + args.iters as usize {
        let start = Instant::now();
        let embedding = model.embed(&image)?;
        let encoded = start.elapsed().as_secs_f64();
        let mut first = None;
        for prompt in &prompts {
            let t = Instant::now();
            model.predict(&embedding, prompt)?;
            let d = t.elapsed().as_secs_f64();
            first.get_or_insert(d);
            if run >= WARMUP_RUNS {
                decoder.push(d);
            }
        }
        if run >= WARMUP_RUNS {
            encoder.push(encoded);
            full.push(encoded + first.unwrap_or(0.0));
        }
    }
    let (enc, dec, all) = (
        spread(&mut encoder),
        spread(&mut decoder),
        spread(&mut full),
    );
    let report = BenchReport {
        config: cfg,
        iters: args.iters,
        threads: candle_core::utils::get_num_threads(),
        isa: samus_core::cpu::Isa::selected().name(),
        gemm_isa: samus_core::cpu::Isa::gemm().name(),
        full_median_s: all.median,
        encoder_median_s: enc.median,
        encoder_min_s: enc.min,
        encoder_max_s: enc.max,
        decoder_median_ms: dec.median * 1e3,
        decoder_min_ms: dec.min * 1e3,
        decoder_max_ms: dec.max * 1e3,
        images_per_s: 1.0 / all.median,
        peak_rss_mb: peak_rss_mb(),
    };
    if args.json {
        outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        outln!(
            "model       embed_dim {}, depth {}, {} threads, {} kernels (gemm crate {}), {} timed images",
            report.config.embed_dim,
            report.config.depth,
            report.threads,
            report.isa,
            report.gemm_isa,
            report.iters
        )?;
        outln!(
            "encoder     median {:.3} s (min {:.3}, max {:.3})",
            enc.median,
            enc.min,
            enc.max
        )?;
        outln!(
            "decoder     median {:.2} ms per prompt (min {:.2}, max {:.2})",
            report.decoder_median_ms,
            report.decoder_min_ms,
            report.decoder_max_ms
        )?;
        outln!(
            "full        median {:.3} s per image (encoder + one prompt), {:.2} images/s",
            all.median,
            report.images_per_s
        )?;
        if let Some(mb) = report.peak_rss_mb {
            outln!("peak RSS    {mb:.0} MiB")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_median() {
        let s = spread(&mut [3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&mut [4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert!(spread(&mut []).median.is_nan());
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().is_some_and(|mb| mb > 0.0));
        }
    }
}
