//! `samus train`: SAMUS or AutoSAMUS trained on a split in the US30K layout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use samus_data::transform::Augmentation;
use samus_data::{DatasetOptions, Us30kSplit};
use samus_model::SamusConfig;
use samus_train::freeze::TrainableSet;
use samus_train::loss::SegmentationLoss;
use samus_train::model::{ModelKind, TrainModel};
use samus_train::optim::AdamConfig;
use samus_train::schedule::LrDecay;
use samus_train::trainer::{run_files_in, Finished, RunState, TrainOptions, Trainer};

use crate::support::model::Checkpoint;
use crate::support::output::check_output_folder;
use crate::support::RunContext;

/// Examples shown by `samus train --help`.
pub const EXAMPLES: &str = "\
Examples:
  # Train the SAMUS adapters from SAM ViT-B weights on US30K
  samus train --config vit_b --data datasets/US30K --init sam_vit_b_01ec64.pth --out runs/samus

  # A quick run of the tiny model from random weights on synthetic data
  samus synth --out datasets/synth --per-dataset 60
  samus train --config tiny --data datasets/synth --split train-Breast-SynthBUSI \\
      --val-split val-Breast-SynthBUSI --trainable all --batch-size 4 --epochs 5 --out runs/tiny

  # Continue an interrupted run where it stopped
  samus train --config tiny --data datasets/synth --split train-Breast-SynthBUSI --resume runs/tiny";

/// Most samples per step (`--batch-size` of train and eval).
pub const MAX_BATCH: usize = 4096;
/// Most epochs of a run (`--epochs`).
pub const MAX_EPOCHS: usize = 1_000_000;
/// Most steps of a run (`--max-steps`, `--warmup`).
pub const MAX_STEPS: usize = 1_000_000_000;
/// Largest decoded-image cache, in MiB (`--cache-mb`): 1 TiB.
pub const MAX_CACHE_MB: usize = 1 << 20;
/// Largest learning rate (`--lr`): Adam's steps are about this size per weight.
pub const MAX_LR: f64 = 1.0;

/// A whole number in `lo..=hi`, for a clap value parser.
fn count_in(text: &str, lo: usize, hi: usize) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        Ok(_) => Err(format!("`{text}` is out of range: give {lo} to {hi}")),
        Err(_) => Err(format!("`{text}` is not a whole number ({lo} to {hi})")),
    }
}

/// A batch size, 1 to [`MAX_BATCH`].
pub fn parse_batch_size(text: &str) -> Result<usize, String> {
    count_in(text, 1, MAX_BATCH)
}

fn parse_epochs(text: &str) -> Result<usize, String> {
    count_in(text, 1, MAX_EPOCHS)
}

fn parse_steps(text: &str) -> Result<usize, String> {
    count_in(text, 1, MAX_STEPS)
}

fn parse_warmup(text: &str) -> Result<usize, String> {
    count_in(text, 0, MAX_STEPS)
}

fn parse_eval_every(text: &str) -> Result<usize, String> {
    count_in(text, 1, MAX_EPOCHS)
}

fn parse_cache_mb(text: &str) -> Result<usize, String> {
    count_in(text, 0, MAX_CACHE_MB)
}

/// A learning rate: finite, above 0, at most [`MAX_LR`].
fn parse_lr(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(lr) if lr.is_finite() && lr > 0.0 && lr <= MAX_LR => Ok(lr),
        _ => Err(format!(
            "`{text}` is not a learning rate: give a number above 0 and at most {MAX_LR}"
        )),
    }
}

/// A gradient norm to clip to: finite and above 0 (0 would zero every gradient, a
/// negative norm flip their signs).
fn parse_clip(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && c > 0.0 => Ok(c),
        _ => Err(format!(
            "`{text}` is not a gradient norm: give a positive number (leave the flag out to not clip)"
        )),
    }
}

fn parse_ema(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(d) if d > 0.0 && d < 1.0 => Ok(d),
        _ => Err(format!(
            "`{text}` is not a decay: give a number between 0 and 1, such as 0.995 \
             (leave the flag out to keep no average)"
        )),
    }
}

/// Which model to train or evaluate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModelArg {
    /// SAMUS with click prompts.
    Samus,
    /// AutoSAMUS (SAMUS + auto prompt generator), no prompts.
    Autosamus,
}

impl From<ModelArg> for ModelKind {
    fn from(m: ModelArg) -> Self {
        match m {
            ModelArg::Samus => ModelKind::Samus,
            ModelArg::Autosamus => ModelKind::AutoSamus,
        }
    }
}

/// The model and the data of `samus train` and `samus eval`.
#[derive(Debug, Args)]
pub struct ModelAndData {
    /// Model configuration: a preset (vit_b, vit_l, vit_h, tiny) or a JSON file.
    /// Default: guessed from the checkpoint (--init, --checkpoint).
    #[arg(long, value_name = "PRESET|FILE")]
    pub config: Option<String>,
    /// Model to train or evaluate.
    #[arg(long, value_enum, default_value = "samus")]
    pub model: ModelArg,
    /// Dataset root in the US30K layout.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
}

/// Which parameters train.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TrainableArg {
    /// The reference set (SAMUS: CNN branch, adapters, global rel-pos; AutoSAMUS: the APG).
    Reference,
    /// Every parameter.
    All,
}

/// The objective of a run.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LossArg {
    /// 0.2 BCE-with-logits (pos_weight 2) + 0.8 (1 - Dice), the reference.
    BceDice,
    /// 1 - Dice.
    Dice,
    /// Focal loss, alpha 0.25, gamma 2.
    Focal,
}

impl From<LossArg> for SegmentationLoss {
    fn from(l: LossArg) -> Self {
        match l {
            LossArg::BceDice => SegmentationLoss::default(),
            LossArg::Dice => SegmentationLoss::Dice,
            LossArg::Focal => SegmentationLoss::Focal {
                alpha: 0.25,
                gamma: 2.0,
            },
        }
    }
}

/// The learning rate after the warm-up.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    /// The base rate to the end (the reference; the default without --warmup).
    Constant,
    /// `(1 - t)^0.9`, the reference's warm-up mode (the default with --warmup).
    Poly,
    /// `(1 + cos(pi t)) / 2`.
    Cosine,
}

impl From<ScheduleArg> for LrDecay {
    fn from(s: ScheduleArg) -> Self {
        match s {
            ScheduleArg::Constant => LrDecay::Constant,
            ScheduleArg::Poly => LrDecay::Poly,
            ScheduleArg::Cosine => LrDecay::Cosine,
        }
    }
}

/// The training augmentations.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AugmentArg {
    /// SPEC section 5: gamma, rotation +-30 degrees, scale 1-1.3, contrast 0.8-2, each
    /// with probability 0.5.
    Reference,
    /// The same transforms at probability 0.25 and about half the ranges (short runs
    /// from random weights).
    Light,
    /// Left-right mirror images only, with probability 0.5 (not in the reference).
    Mirror,
    /// None: every epoch sees the validation transform of each image.
    Off,
}

impl From<AugmentArg> for Option<Augmentation> {
    fn from(a: AugmentArg) -> Self {
        match a {
            AugmentArg::Reference => Some(Augmentation::default()),
            AugmentArg::Light => Some(Augmentation::light()),
            AugmentArg::Mirror => Some(Augmentation::mirror_only()),
            AugmentArg::Off => None,
        }
    }
}

/// Arguments of `samus train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model_data: ModelAndData,
    /// Training split (a `MainPatient/<split>.txt` file).
    #[arg(long, default_value = "train")]
    split: String,
    /// Validation split, evaluated every --eval-every epochs (best checkpoint by Dice).
    #[arg(long, value_name = "SPLIT")]
    val_split: Option<String>,
    /// Starting weights: a SAM or SAMUS checkpoint (AutoSAMUS: may hold APG tensors).
    /// Without it the model starts from random weights.
    #[arg(long, value_name = "CHECKPOINT")]
    init: Option<PathBuf>,
    /// Which parameters train.
    #[arg(long, value_enum, default_value = "reference")]
    trainable: TrainableArg,
    /// Samples per step (1 to 4096).
    #[arg(long, default_value_t = 8, value_parser = parse_batch_size)]
    batch_size: usize,
    /// Learning rate (above 0, at most 1).
    #[arg(long, default_value_t = 5e-4, value_parser = parse_lr)]
    lr: f64,
    /// Passes over the training split (at least 1); resuming a run continues up to
    /// this many.
    #[arg(long, default_value_t = 200, value_parser = parse_epochs)]
    epochs: usize,
    /// Stop after this many steps (at least 1).
    #[arg(long, value_parser = parse_steps)]
    max_steps: Option<usize>,
    /// Stop after this many minutes of training (the run's sessions together); the
    /// epoch in progress is cut short, evaluated and checkpointed.
    #[arg(long, value_name = "MINUTES", value_parser = parse_minutes)]
    max_minutes: Option<f64>,
    /// Linear warm-up steps, then poly decay with AdamW (weight decay 0.1), as the
    /// reference's warm-up mode; without it plain Adam at a constant rate.
    #[arg(long, value_name = "STEPS", value_parser = parse_warmup)]
    warmup: Option<usize>,
    /// The rate after the warm-up; a decay runs over the run's steps or, with
    /// --max-minutes, over its time if that ends the run first. Default: poly with
    /// --warmup, else constant.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// Training augmentations.
    #[arg(long, value_enum, default_value = "reference")]
    augment: AugmentArg,
    /// Clip the global gradient norm to this value (a positive number; without the
    /// flag gradients are not clipped).
    #[arg(long, value_name = "NORM", value_parser = parse_clip)]
    grad_clip: Option<f64>,
    /// Keep an exponential moving average of the trained weights with this decay
    /// (between 0 and 1; 0.995 averages over about the last 200 steps). The average
    /// is evaluated and kept as best.safetensors; the weights themselves are
    /// evaluated beside it (metrics.csv's val_dice_raw) and kept as
    /// best_raw.safetensors.
    #[arg(long, value_name = "DECAY", value_parser = parse_ema)]
    ema: Option<f64>,
    /// Evaluate every this many epochs (at least 1).
    #[arg(long, default_value_t = 1, value_parser = parse_eval_every)]
    eval_every: usize,
    /// Objective: the reference 0.2 BCE (pos_weight 2) + 0.8 Dice, plain Dice, or focal
    /// (alpha 0.25, gamma 2).
    #[arg(long, value_enum, default_value = "bce-dice")]
    loss: LossArg,
    /// Seed of the data order, augmentations and prompts.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Run folder (checkpoints, state.json, metrics.csv).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "runs/samus",
        conflicts_with = "resume"
    )]
    out: PathBuf,
    /// Continue the run in this folder from its last checkpoint (its weights, unless
    /// --init gives others for the frozen parts), up to --epochs.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Skip unreadable samples (they are counted and reported) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// MiB of decoded training images kept in memory so that later epochs skip the
    /// PNG decoding (0 turns the cache off; at most 1048576).
    #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = parse_cache_mb)]
    cache_mb: usize,
}

/// The model to train: from `--init`; on `--resume` without `--init`, from the
/// run's `last.safetensors` (every tensor of the model); else random weights.
fn build_model(
    ctx: &RunContext,
    config: Option<&str>,
    init: Option<&PathBuf>,
    resume: Option<&Path>,
    kind: ModelKind,
    set: TrainableSet,
) -> Result<TrainModel> {
    let device = &ctx.device;
    let last = resume.map(|dir| dir.join("last.safetensors"));
    let (tensors, cfg) = match init.or(last.as_ref()) {
        Some(path) => {
            let checkpoint = Checkpoint::read(path, config)?;
            (checkpoint.tensors, checkpoint.config)
        }
        None => {
            let spec = config.context("without --init, pass --config to choose the model size")?;
            let cfg = SamusConfig::from_name_or_path(spec)?;
            eprintln!("note: no --init: starting from random weights");
            (
                samus_model::train::random_weights(&cfg, 1234, device)?.1,
                cfg,
            )
        }
    };
    Ok(TrainModel::from_tensors(tensors, &cfg, kind, set, device)?)
}

/// Checks `--out DIR` before any work: a folder that can be created or written,
/// holding no earlier run (whose files a fresh run would mix with its own).
fn check_new_run_folder(dir: &Path) -> Result<()> {
    check_output_folder("--out", dir, "the run folder")?;
    let found = run_files_in(dir);
    if !found.is_empty() {
        bail!(
            "--out {dir}: the folder already holds a training run ({files}); continue it \
             with --resume {dir}, or choose another --out",
            dir = dir.display(),
            files = found.join(", ")
        );
    }
    Ok(())
}

/// Checks `--resume DIR` before any work: a run folder with `state.json`, with
/// something left to train under `options`.
fn check_resume(dir: &Path, options: &TrainOptions) -> Result<()> {
    if !dir.is_dir() {
        bail!("--resume {}: no such run folder", dir.display());
    }
    if !dir.join("state.json").is_file() {
        bail!(
            "--resume {}: not a run folder (it holds no state.json); start a run with --out",
            dir.display()
        );
    }
    check_output_folder("--resume", dir, "the run folder")?;
    let state = RunState::read(dir)?;
    if let Some(finished) = state.finished(options) {
        let run = dir.display();
        match finished {
            Finished::Epochs { done } => {
                bail!("run {run} already finished {done} epochs; raise --epochs to continue")
            }
            Finished::Steps { done } => {
                bail!("run {run} already took {done} steps; raise --max-steps to continue")
            }
            Finished::Time { trained_s, .. } => bail!(
                "run {run} already trained {:.1} minutes; raise --max-minutes to continue",
                trained_s / 60.0
            ),
            _ => bail!("run {run}: {finished}"),
        }
    }
    Ok(())
}

/// Runs `samus train`.
pub fn run(args: TrainArgs, ctx: &RunContext) -> Result<()> {
    let set = match args.trainable {
        TrainableArg::Reference => TrainableSet::Reference,
        TrainableArg::All => TrainableSet::All,
    };
    let adam = match args.warmup {
        Some(_) => AdamConfig {
            lr: args.lr,
            ..AdamConfig::adamw()
        },
        None => AdamConfig {
            lr: args.lr,
            ..AdamConfig::default()
        },
    };
    let options = TrainOptions {
        batch_size: args.batch_size,
        epochs: args.epochs,
        max_steps: args.max_steps,
        adam,
        warmup: args.warmup,
        decay: args
            .schedule
            .unwrap_or(match args.warmup {
                Some(_) => ScheduleArg::Poly,
                None => ScheduleArg::Constant,
            })
            .into(),
        grad_clip: args.grad_clip,
        eval_every: args.eval_every,
        loss: args.loss.into(),
        time_limit: args
            .max_minutes
            .map(|m| std::time::Duration::from_secs_f64(m * 60.0)),
        weight_average: args.ema,
    };
    options.validate()?;
    match &args.resume {
        Some(dir) => check_resume(dir, &options)?,
        None => check_new_run_folder(&args.out)?,
    }
    let model = build_model(
        ctx,
        args.model_data.config.as_deref(),
        args.init.as_ref(),
        args.resume.as_deref(),
        args.model_data.model.into(),
        set,
    )?;
    let train_options = DatasetOptions {
        seed: args.seed,
        skip_bad: args.skip_bad,
        cache_bytes: args.cache_mb.saturating_mul(1 << 20),
        augmentation: args.augment.into(),
        ..DatasetOptions::training()
    };
    let train = Us30kSplit::open(&args.model_data.data, &args.split, train_options)?;
    let val = match &args.val_split {
        Some(split) => Some(Us30kSplit::open(
            &args.model_data.data,
            split,
            DatasetOptions {
                skip_bad: args.skip_bad,
                ..DatasetOptions::evaluation()
            },
        )?),
        None => None,
    };
    let mut trainer = match &args.resume {
        Some(dir) => Trainer::resume(&model, options, dir)?,
        None => Trainer::new(&model, options, &args.out)?,
    };
    let run_dir = args.resume.clone().unwrap_or(args.out.clone());
    let steps_per_epoch = train.len().div_ceil(args.batch_size);
    let total = args
        .max_steps
        .unwrap_or(args.epochs.saturating_mul(steps_per_epoch)) as u64;
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed_precise} {msg}")
            .context("progress bar template")?,
    );
    progress.set_position(trainer.state().step as u64);
    let start = Instant::now();
    let mut samples = 0usize;
    let state = trainer.run(&train, val.as_ref(), |s| {
        samples += s.samples;
        let rate = samples as f64 / start.elapsed().as_secs_f64().max(1e-9);
        progress.set_position(s.step as u64);
        progress.set_message(format!(
            "epoch {} loss {:.4} lr {:.2e} {rate:.1} img/s",
            s.epoch, s.loss, s.lr
        ));
    });
    progress.finish_and_clear();
    let state = state.with_context(|| format!("run {}", run_dir.display()))?;
    outln!(
        "trained {} steps ({} epochs); last loss {}; best validation Dice {}; run folder {}",
        state.step,
        state.epoch,
        state
            .losses
            .last()
            .map_or_else(|| "-".to_string(), |l| format!("{l:.4}")),
        state
            .best_dice
            .map_or_else(|| "-".to_string(), |d| format!("{d:.4}")),
        run_dir.display()
    )?;
    if let (Some(average), Some(raw)) = (state.best_dice, state.best_raw_dice) {
        outln!(
            "best validation Dice of the weight average {average:.4} (best.safetensors), \
             of the weights themselves {raw:.4} (best_raw.safetensors)"
        )?;
    }
    Ok(())
}

/// A positive, finite number of minutes.
pub fn parse_minutes(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 && m < 1e6 => Ok(m),
        _ => Err(format!("`{text}` is not a positive number of minutes")),
    }
}
