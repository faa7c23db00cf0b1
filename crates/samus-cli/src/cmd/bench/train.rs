//! `samus bench --train`: how long one training step takes here: forward, loss,
//! backward and the Adam update, on one fixed batch, with every parameter
//! trainable (the setting `cargo xtask bench-train` times against the PyTorch peer).
//!
//! The batch is the generated scans of `samus segment --demo` at the model's input
//! size, each with its click and a disc of tissue around it as the target; data
//! loading is not part of the step (`samus train` decodes on other threads).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use samus_model::checkpoint::DEFAULT_INIT_SEED;
use samus_model::SamusConfig;
use samus_train::freeze::TrainableSet;
use samus_train::loss::SegmentationLoss;
use samus_train::model::{BatchTensors, ModelKind, TrainModel};
use samus_train::optim::{Adam, AdamConfig};
use serde::Serialize;

use super::{demo_scan, peak_rss_mb, planned_outputs, spread, BenchArgs, WARMUP_RUNS};
use crate::support::model::Checkpoint;
use crate::support::RunContext;

/// Learning rate of the timed steps: the reference's single-dataset fine-tuning
/// rate (the value does not change the time a step takes).
pub const TRAIN_BENCH_LR: f64 = 1e-4;
/// Radius of the target disc around each click, in low-resolution pixels.
const TARGET_RADIUS: f32 = 20.0;

/// The `--json` report of `samus bench --train`.
#[derive(Debug, Serialize)]
struct TrainBenchReport {
    config: SamusConfig,
    iters: u32,
    batch_size: u32,
    threads: usize,
    /// The kernels' instruction set (`avx512`, `avx2` or `scalar`).
    isa: &'static str,
    /// The gemm crate's instruction set (candle's matrix products).
    gemm_isa: &'static str,
    trainable_parameters: usize,
    /// One step (forward, loss, backward, Adam), median seconds.
    train_step_median_s: f64,
    train_step_min_s: f64,
    train_step_max_s: f64,
    /// The loss of the first (warm-up) step, before any update: the same weights
    /// and batch give the same loss in a peer implementation.
    first_loss: f64,
    /// The loss of the second step, after one Adam update at `lr`.
    second_loss: f64,
    lr: f64,
    peak_rss_mb: Option<f64>,
}

/// Runs `samus bench --train`.
pub fn run(args: &BenchArgs, ctx: &RunContext) -> Result<()> {
    let outputs = planned_outputs(args)?;
    let (cfg, tensors) = weights(args, ctx)?;
    if let Some(path) = &args.save_weights {
        outputs.safetensors(path, &tensors, None)?;
    }
    let model = TrainModel::from_tensors(
        tensors,
        &cfg,
        ModelKind::Samus,
        TrainableSet::All,
        &ctx.device,
    )?;
    let vars = model.vars();
    let trainable_parameters = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let batch = demo_batch(&cfg, args.batch_size as usize, &ctx.device)?;
    if let Some(path) = &args.write_io {
        let tensors = HashMap::from([
            ("images".to_string(), batch.images.clone()),
            ("low_targets".to_string(), batch.low_targets.clone()),
            ("point_coords".to_string(), batch.points.clone()),
            ("point_labels".to_string(), batch.labels.clone()),
        ]);
        outputs.safetensors(path, &tensors, None)?;
    }
    let mut adam = Adam::new(
        vars,
        AdamConfig {
            lr: TRAIN_BENCH_LR,
            ..AdamConfig::default()
        },
    )?;
    let loss_fn = SegmentationLoss::default();
    let mut losses = Vec::new();
    let mut steps = Vec::new();
    for run in 0..WARMUP_RUNS + 1 + args.iters as usize {
        let start = Instant::now();
        let logits = model.low_res_logits(&batch)?;
        let loss = loss_fn.compute(&logits, &batch.low_targets)?;
        adam.backward_step(&loss)?;
        let seconds = start.elapsed().as_secs_f64();
        losses.push(f64::from(loss.to_scalar::<f32>()?));
        // The first step and the one after it are untimed (their losses are the
        // ones a peer checks).
        if run > WARMUP_RUNS {
            steps.push(seconds);
        }
    }
    if losses.iter().any(|l| !l.is_finite()) {
        bail!("the training step's loss is not finite: {losses:?}");
    }
    let step = spread(&mut steps);
    let report = TrainBenchReport {
        config: cfg,
        iters: args.iters,
        batch_size: args.batch_size,
        threads: candle_core::utils::get_num_threads(),
        isa: samus_core::cpu::Isa::selected().name(),
        gemm_isa: samus_core::cpu::Isa::gemm().name(),
        trainable_parameters,
        train_step_median_s: step.median,
        train_step_min_s: step.min,
        train_step_max_s: step.max,
        first_loss: losses[0],
        second_loss: losses[1],
        lr: TRAIN_BENCH_LR,
        peak_rss_mb: peak_rss_mb(),
    };
    if args.json {
        outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        outln!(
            "model       embed_dim {}, depth {}, {} threads, {} kernels (gemm crate {}), batch {}, {} trainable parameters",
            report.config.embed_dim,
            report.config.depth,
            report.threads,
            report.isa,
            report.gemm_isa,
            report.batch_size,
            report.trainable_parameters
        )?;
        outln!(
            "train step  median {:.3} s (min {:.3}, max {:.3}) over {} steps: forward, loss, backward, Adam",
            step.median,
            step.min,
            step.max,
            report.iters
        )?;
        outln!(
            "loss        {:.6} before the first update, {:.6} after it",
            report.first_loss,
            report.second_loss
        )?;
        if let Some(mb) = report.peak_rss_mb {
            outln!("peak RSS    {mb:.0} MiB")?;
        }
    }
    Ok(())
}

/// The configuration and the weights: random ones of the configuration's shapes
/// (default `tiny`), or a checkpoint's.
fn weights(args: &BenchArgs, ctx: &RunContext) -> Result<(SamusConfig, HashMap<String, Tensor>)> {
    if args.random_weights {
        let cfg = SamusConfig::from_name_or_path(args.config.as_deref().unwrap_or("tiny"))?;
        let (_, tensors) =
            samus_model::train::random_weights(&cfg, DEFAULT_INIT_SEED, &ctx.device)?;
        return Ok((cfg, tensors));
    }
    let Some(path) = &args.checkpoint else {
        bail!("give --checkpoint FILE or --random-weights");
    };
    let checkpoint = Checkpoint::read(path, args.config.as_deref())?;
    Ok((checkpoint.config, checkpoint.tensors))
}

/// `batch` generated scans at the model's input size, each with its click and a
/// disc around the click as the low-resolution target.
fn demo_batch(cfg: &SamusConfig, batch: usize, device: &Device) -> Result<BatchTensors> {
    let side = cfg.img_size;
    let low = side / 2;
    let (mut images, mut targets, mut points, mut labels) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..batch {
        let (scan, (cx, cy)) = demo_scan(7 + i as u64, side);
        images.extend(scan.as_raw().iter().map(|&v| f32::from(v) / 255.0));
        points.extend([cx, cy]);
        labels.push(1f32);
        let (lx, ly) = (cx / 2.0, cy / 2.0);
        targets.extend((0..low * low).map(|p| {
            let (px, py) = ((p % low) as f32 + 0.5, (p / low) as f32 + 0.5);
            let inside = (px - lx).powi(2) + (py - ly).powi(2) <= TARGET_RADIUS.powi(2);
            f32::from(u8::from(inside))
        }));
    }
    Ok(BatchTensors {
        images: Tensor::from_vec(images, (batch, 1, side, side), device)?,
        low_targets: Tensor::from_vec(targets, (batch, 1, low, low), device)?,
        points: Tensor::from_vec(points, (batch, 1, 2), device)?,
        labels: Tensor::from_vec(labels, (batch, 1), device)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_batch_has_the_training_shapes_and_a_target_under_each_click() {
        let cfg = SamusConfig::tiny();
        let batch = demo_batch(&cfg, 3, &Device::Cpu).unwrap();
        assert_eq!(batch.images.dims(), &[3, 1, 256, 256]);
        assert_eq!(batch.low_targets.dims(), &[3, 1, 128, 128]);
        let points = batch
            .points
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let targets = batch
            .low_targets
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in 0..3 {
            let (x, y) = (points[2 * i] / 2.0, points[2 * i + 1] / 2.0);
            let at = i * 128 * 128 + (y as usize) * 128 + x as usize;
            assert_eq!(targets[at], 1.0, "no target under click {i}");
            let area: f32 = targets[i * 128 * 128..(i + 1) * 128 * 128].iter().sum();
            assert!(area > 100.0 && area < 128.0 * 128.0 / 2.0, "area {area}");
        }
    }
}
