//! `samus demo`: the whole workflow offline in a few minutes (a synthetic dataset,
//! training the tiny model, evaluation, overlays), and the generated B-mode-like
//! image that `samus segment --demo` uses.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use image::{DynamicImage, GrayImage};
use indicatif::{ProgressBar, ProgressStyle};
use samus_data::{synth, DatasetOptions, Us30kSplit};
use samus_model::checkpoint::read_tensors;
use samus_model::SamusConfig;
use samus_train::evaluate::evaluate;
use samus_train::freeze::TrainableSet;
use samus_train::metrics::mask_metrics;
use samus_train::model::{BatchTensors, ModelKind, TrainModel};
use samus_train::trainer::{run_files_in, TrainOptions, Trainer};

use super::eval::print_report;
use super::train::parse_minutes;
use crate::support::images::sample_overlay;
use crate::support::output::check_output_folder;
use crate::support::output::Outputs;
use crate::support::RunContext;

/// A synthetic breast scan from [`samus_data::synth`] (the generator the demo
/// trains on) and a point inside its lesion (x, y): the label pixel nearest to the
/// lesion's centroid.
pub fn demo_image(seed: u64) -> (GrayImage, (f32, f32)) {
    let (image, label) = synth::generate(synth::Kind::Breast, seed, &synth::Difficulty::default());
    let inside: Vec<(f32, f32)> = label
        .enumerate_pixels()
        .filter(|(_, _, p)| p[0] > 0)
        .map(|(x, y, _)| (x as f32, y as f32))
        .collect();
    let centre = match inside.len() {
        0 => (image.width() as f32 / 2.0, image.height() as f32 / 2.0),
        n => {
            let (sx, sy) = inside
                .iter()
                .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
            let (cx, cy) = (sx / n as f32, sy / n as f32);
            inside
                .iter()
                .copied()
                .min_by(|a, b| {
                    let d = |p: &(f32, f32)| (p.0 - cx).powi(2) + (p.1 - cy).powi(2);
                    d(a).total_cmp(&d(b))
                })
                .unwrap_or((cx, cy))
        }
    };
    (image, centre)
}

/// The synthetic source the demo trains on.
const DEMO_DATASET: &str = "Breast-SynthBUSI";
/// Images per step while the demo trains.
const DEMO_BATCH: usize = 4;
/// Test images drawn as overlays.
const DEMO_OVERLAYS: usize = 8;
/// More epochs than the time limit allows: the limit ends the demo run.
const DEMO_MAX_EPOCHS: usize = 10_000;

/// Examples printed by `samus demo --help`.
pub const EXAMPLES: &str = "Examples:
  # Everything offline in about four minutes: data, training, evaluation, overlays
  samus demo

  # A longer run into another folder
  samus demo --out my-demo --minutes 10 --images 120";

/// Arguments of `samus demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the dataset, the run and the overlays (created).
    #[arg(long, value_name = "DIR", default_value = "samus-demo")]
    out: PathBuf,
    /// Minutes of training.
    #[arg(long, default_value_t = 3.0, value_parser = parse_minutes)]
    minutes: f64,
    /// Synthetic images per kind (70% train, 15% validation, 15% test).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(8..=5000))]
    images: u64,
    /// Seed of the data, the initial weights and the training order.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn split(root: &Path, part: &str, options: DatasetOptions) -> Result<Us30kSplit> {
    Ok(Us30kSplit::open(
        root,
        &format!("{part}-{DEMO_DATASET}"),
        options,
    )?)
}

/// Loads the run's best weights into the model's variables.
fn load_best(model: &TrainModel, run: &Path) -> Result<()> {
    let path = run.join("best.safetensors");
    let best = read_tensors(&path).with_context(|| format!("reading {}", path.display()))?;
    for (name, var) in model.vars() {
        if let Some(t) = best.get(&name) {
            var.set(t)?;
        }
    }
    Ok(())
}

/// Writes overlays (prediction tinted, the click drawn) of the first test images.
fn write_overlays(model: &TrainModel, test: &Us30kSplit, dir: &Path) -> Result<usize> {
    let outputs = Outputs::default();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let count = test.len().min(DEMO_OVERLAYS);
    let samples = (0..count)
        .map(|i| test.get(i))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let device = model.samus().device().clone();
    let masks = model.predict_masks(&BatchTensors::new(&samples, &device)?)?;
    for (sample, mask) in samples.iter().zip(masks) {
        let target: Vec<bool> = sample.mask.iter().map(|&m| m > 0).collect();
        let side = (target.len() as f64).sqrt() as usize;
        let dice = mask_metrics(&mask, &target, side, side).dice;
        let caption = format!("Dice {dice:.2} against the ground truth");
        let picture = sample_overlay(sample, &mask, &caption)?;
        let stem = Path::new(&sample.name)
            .file_stem()
            .map_or_else(|| sample.name.clone(), |s| s.to_string_lossy().into_owned());
        outputs.png(
            &DynamicImage::ImageRgb8(picture),
            &dir.join(format!("{stem}.png")),
        )?;
    }
    Ok(count)
}

/// What to do after the demo: train on real data from SAM's weights.
fn next_steps(train_images: usize) -> String {
    format!(
        "\nThis model saw {train_images} synthetic images. To train on real data:\n\
         \x20 1. assemble US30K as datasets/README.md explains;\n\
         \x20 2. cargo xtask download    # SAM ViT-B weights from the Hugging Face hub\n\
         \x20 3. cargo xtask train --data datasets/US30K --out runs/samus\n\
         \x20    (downloads the weights itself when needed; the flags are samus train's)\n\
         docs/TRAINING.md has the recipe and what to expect."
    )
}

/// Runs `samus demo`.
pub fn run(args: DemoArgs, ctx: &RunContext) -> Result<()> {
    check_output_folder("--out", &args.out, "the demo folder")?;
    let data = args.out.join("data");
    let run_dir = args.out.join("run");
    if !run_files_in(&run_dir).is_empty() {
        bail!(
            "--out {}: the folder already holds a demo (its training run is in {}); \
             choose another --out",
            args.out.display(),
            run_dir.display()
        );
    }
    let overlays = args.out.join("overlays");
    outln!(
        "1/4  writing {} synthetic ultrasound images per kind to {}",
        args.images,
        data.display()
    )?;
    samus_data::synth::write_dataset(&data, args.images as usize, args.seed)
        .with_context(|| format!("writing the synthetic dataset to {}", data.display()))?;
    let train_options = DatasetOptions {
        seed: args.seed,
        ..DatasetOptions::training()
    };
    let train = split(&data, "train", train_options)?;
    let val = split(&data, "val", DatasetOptions::evaluation())?;
    let test = split(&data, "test", DatasetOptions::evaluation())?;

    let cfg = SamusConfig::tiny();
    let device = ctx.device.clone();
    let (_, tensors) = samus_model::train::random_weights(&cfg, args.seed, &device)?;
    let model =
        TrainModel::from_tensors(tensors, &cfg, ModelKind::Samus, TrainableSet::All, &device)?;
    outln!(
        "2/4  training the tiny SAMUS from random weights on {} images for {} min \
         (the same loop as `samus train`)",
        train.len(),
        args.minutes
    )?;
    let options = TrainOptions {
        batch_size: DEMO_BATCH,
        epochs: DEMO_MAX_EPOCHS,
        time_limit: Some(Duration::from_secs_f64(args.minutes * 60.0)),
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(&model, options, &run_dir)?;
    let progress = ProgressBar::new((args.minutes * 60.0).round() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {elapsed_precise} {msg}")
            .context("progress bar template")?,
    );
    let start = Instant::now();
    let state = trainer.run(&train, Some(&val), |s| {
        progress.set_position(start.elapsed().as_secs());
        progress.set_message(format!(
            "step {} epoch {} loss {:.4}",
            s.step,
            s.epoch + 1,
            s.loss
        ));
    })?;
    progress.finish_and_clear();
    outln!(
        "     {} steps, best validation Dice {}",
        state.step,
        state
            .best_dice
            .map_or_else(|| "-".into(), |d| format!("{d:.3}"))
    )?;

    outln!(
        "3/4  evaluating the best checkpoint on {} held-out test images",
        test.len()
    )?;
    load_best(&model, &run_dir)?;
    let report = evaluate(&model, &test, DEMO_BATCH)?;
    print_report(&report)?;

    let written = write_overlays(&model, &test, &overlays)?;
    outln!(
        "4/4  wrote {written} overlays to {}; the run (checkpoints, metrics.csv, curve.png) is in {}",
        overlays.display(),
        run_dir.display()
    )?;
    outln!("{}", next_steps(train.len()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_point_lies_on_the_lesion_of_a_repeatable_image() {
        let (img, (cx, cy)) = demo_image(3);
        let (_, label) = synth::generate(synth::Kind::Breast, 3, &synth::Difficulty::default());
        assert!(label.get_pixel(cx as u32, cy as u32)[0] > 0);
        assert_eq!(demo_image(3).0, img);
        assert_ne!(demo_image(4).0, img);
    }
}
