//! The optimiser loop: seeded batches, the reference loss, Adam/AdamW with the
//! learning-rate schedule, optional gradient clipping, evaluation with the best
//! checkpoint kept by Dice, a checkpoint at the end of every epoch, and exact resume.
//!
//! A run folder holds `last.safetensors` (every model tensor, reference names),
//! `optimizer.safetensors` (the Adam moments), `state.json` (step, next epoch, best
//! Dice, the loss of every step, the time spent), `best.safetensors` and
//! `metrics.csv` (one row per step and per evaluation, with the elapsed seconds) and
//! `curve.png` (loss and validation Dice against the step, redrawn every epoch). With
//! a weight average ([`TrainOptions::weight_average`]) the run also holds
//! `average.safetensors` (the averaged trainable tensors), `best.safetensors` is the
//! best of the average and `best_raw.safetensors` the best of the weights themselves.
//! Every file is written atomically, so an interrupted run keeps its last good
//! checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use samus_data::Us30kSplit;
use samus_model::checkpoint::{read_tensors, save_safetensors};
use serde::{Deserialize, Serialize};

use crate::average::WeightAverage;
use crate::curve::{write_curve_png, Metrics};
use crate::evaluate::evaluate;
use crate::loss::SegmentationLoss;
use crate::model::{BatchTensors, TrainModel};
use crate::optim::{Adam, AdamConfig};
use crate::schedule::{LrDecay, LrSchedule};
use crate::TrainError;

/// How a run trains.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Samples per step.
    pub batch_size: usize,
    /// Passes over the training split.
    pub epochs: usize,
    /// Stop after this many steps (whatever the epochs).
    pub max_steps: Option<usize>,
    /// Optimiser (reference: Adam, lr 5e-4).
    pub adam: AdamConfig,
    /// Linear warm-up steps before the decay (`None`: no warm-up).
    pub warmup: Option<usize>,
    /// The rate after the warm-up: constant (reference), poly or cosine decay over
    /// the run's steps or, with a time limit, over its time if that ends it first.
    pub decay: LrDecay,
    /// Largest global gradient norm; larger gradients are scaled down.
    pub grad_clip: Option<f64>,
    /// Evaluate on the validation split every this many epochs.
    pub eval_every: usize,
    /// The objective (reference: 0.2 BCE + 0.8 Dice).
    pub loss: SegmentationLoss,
    /// Stop once the run (all its sessions together) has trained this long; the
    /// epoch in progress is cut short, evaluated and checkpointed.
    pub time_limit: Option<Duration>,
    /// Keep an exponential moving average of the trainable weights with this decay
    /// ([`WeightAverage`]); the average is evaluated and kept as the best checkpoint,
    /// and the weights themselves are evaluated beside it. `None` (reference): no
    /// average.
    pub weight_average: Option<f64>,
}

impl Default for TrainOptions {
    /// The reference recipe: batch 8, 200 epochs, Adam lr 5e-4, constant rate.
    fn default() -> Self {
        Self {
            batch_size: 8,
            epochs: 200,
            max_steps: None,
            adam: AdamConfig::default(),
            warmup: None,
            decay: LrDecay::Constant,
            grad_clip: None,
            eval_every: 1,
            loss: SegmentationLoss::default(),
            time_limit: None,
            weight_average: None,
        }
    }
}

impl TrainOptions {
    /// Checks that the options can train: at least one sample per step, epoch and
    /// step, a positive finite learning rate, a positive finite clip norm, Adam's
    /// betas in `[0, 1)`, a positive `eps`, a finite non-negative weight decay and a
    /// non-zero time limit and a weight-average decay in `(0, 1)`. [`Trainer::new`]
    /// and [`Trainer::resume`] call it.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::Options(what));
        let a = &self.adam;
        if self.batch_size == 0 {
            return bad("the batch size is 0".into());
        }
        if self.epochs == 0 {
            return bad("0 epochs".into());
        }
        if self.max_steps == Some(0) {
            return bad("at most 0 steps".into());
        }
        if self.eval_every == 0 {
            return bad("evaluating every 0 epochs".into());
        }
        if !(a.lr.is_finite() && a.lr > 0.0) {
            return bad(format!("learning rate {} (need a positive number)", a.lr));
        }
        if let Some(clip) = self.grad_clip {
            if !(clip.is_finite() && clip > 0.0) {
                return bad(format!("gradient clip {clip} (need a positive norm)"));
            }
        }
        for (name, beta) in [("beta1", a.beta1), ("beta2", a.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return bad(format!("{name} {beta} (need 0 <= beta < 1)"));
            }
        }
        if !(a.eps.is_finite() && a.eps > 0.0) {
            return bad(format!("eps {} (need a positive number)", a.eps));
        }
        if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay {} (need a number >= 0)",
                a.weight_decay
            ));
        }
        if self.time_limit == Some(Duration::ZERO) {
            return bad("a time limit of 0".into());
        }
        if let Some(decay) = self.weight_average {
            if !(decay > 0.0 && decay < 1.0) {
                return bad(format!("weight-average decay {decay} (need 0 < decay < 1)"));
            }
        }
        Ok(())
    }
}

/// Why a run has nothing left to train ([`RunState::finished`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Finished {
    /// Every epoch asked for is done.
    Epochs {
        /// Epochs done.
        done: usize,
    },
    /// `max_steps` is reached.
    Steps {
        /// Steps done.
        done: usize,
    },
    /// The time limit is used up.
    Time {
        /// Seconds trained, over every session of the run.
        trained_s: f64,
        /// The limit, in seconds.
        limit_s: f64,
    },
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Finished::Epochs { done } => write!(f, "the run already finished {done} epochs"),
            Finished::Steps { done } => {
                write!(f, "the run already took {done} steps, its step limit")
            }
            Finished::Time { trained_s, limit_s } => write!(
                f,
                "the run already trained {:.1} of its {:.1} minutes",
                trained_s / 60.0,
                limit_s / 60.0
            ),
        }
    }
}

/// Progress of a run, saved in `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimiser steps taken.
    pub step: usize,
    /// The next epoch to run.
    pub epoch: usize,
    /// Best validation Dice so far (of the weight average, when the run keeps one).
    pub best_dice: Option<f64>,
    /// Best validation Dice of the weights themselves, when the run keeps a weight
    /// average.
    #[serde(default)]
    pub best_raw_dice: Option<f64>,
    /// Updates the weight average has seen (0 without one).
    #[serde(default)]
    pub average_updates: u64,
    /// The loss of every step.
    pub losses: Vec<f32>,
    /// Seconds spent training and evaluating, over every session of the run.
    #[serde(default)]
    pub elapsed_s: f64,
}

impl RunState {
    /// Reads `state.json` of the run folder `run_dir`.
    pub fn read(run_dir: impl AsRef<Path>) -> Result<Self, TrainError> {
        let path = run_dir.as_ref().join(STATE);
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", path.display())))
    }

    /// Why a run in this state has nothing left to train under `options` (its
    /// epochs, `max_steps` or time limit used up), or `None` when it has.
    pub fn finished(&self, options: &TrainOptions) -> Option<Finished> {
        if self.epoch >= options.epochs {
            return Some(Finished::Epochs { done: self.epoch });
        }
        if options.max_steps.is_some_and(|m| self.step >= m) {
            return Some(Finished::Steps { done: self.step });
        }
        match options.time_limit {
            Some(limit) if self.elapsed_s >= limit.as_secs_f64() => Some(Finished::Time {
                trained_s: self.elapsed_s,
                limit_s: limit.as_secs_f64(),
            }),
            _ => None,
        }
    }
}

/// What a step reports to the caller (for progress bars).
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Steps taken, this one included.
    pub step: usize,
    /// The epoch.
    pub epoch: usize,
    /// The loss before the update.
    pub loss: f32,
    /// The learning rate used.
    pub lr: f64,
    /// Samples in the step.
    pub samples: usize,
}

const LAST: &str = "last.safetensors";
const BEST: &str = "best.safetensors";
const BEST_RAW: &str = "best_raw.safetensors";
const AVERAGE: &str = "average.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";
const METRICS: &str = "metrics.csv";
const CURVE: &str = "curve.png";

/// The files of a run that `run_dir` already holds (`state.json`, `metrics.csv`,
/// the checkpoints, the curve), in that order; empty for a new or empty folder.
pub fn run_files_in(run_dir: &Path) -> Vec<&'static str> {
    [
        STATE, METRICS, LAST, BEST, OPTIMIZER, AVERAGE, BEST_RAW, CURVE,
    ]
    .into_iter()
    .filter(|name| run_dir.join(name).exists())
    .collect()
}

/// Trains a [`TrainModel`] into a run folder.
#[derive(Debug)]
pub struct Trainer<'m> {
    model: &'m TrainModel,
    optimizer: Adam,
    options: TrainOptions,
    run_dir: PathBuf,
    state: RunState,
    /// The step of the last checkpoint in the run folder (`None`: none yet).
    saved_step: Option<usize>,
    /// The moving average of the weights, when the options ask for one.
    average: Option<WeightAverage>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl<'m> Trainer<'m> {
    /// A fresh run in `run_dir` (created); [`TrainError::Options`] when the options
    /// cannot train ([`TrainOptions::validate`]).
    ///
    /// A folder that already holds a run ([`run_files_in`]) is refused with
    /// [`TrainError::RunExists`]: a fresh run never mixes its files with an old one.
    pub fn new(
        model: &'m TrainModel,
        options: TrainOptions,
        run_dir: impl AsRef<Path>,
    ) -> Result<Self, TrainError> {
        let run_dir = run_dir.as_ref();
        let found = run_files_in(run_dir);
        if !found.is_empty() {
            return Err(TrainError::RunExists {
                dir: run_dir.to_path_buf(),
                files: found,
            });
        }
        let mut trainer = Self::open(model, options, run_dir)?;
        if let Some(decay) = trainer.options.weight_average {
            trainer.average = Some(WeightAverage::new(&model.vars(), decay, 0)?);
        }
        Ok(trainer)
    }

    /// The run folder `run_dir` (created), with fresh progress and optimiser and no
    /// weight average yet ([`Trainer::new`] starts one, [`Trainer::resume`] reads it).
    fn open(
        model: &'m TrainModel,
        options: TrainOptions,
        run_dir: &Path,
    ) -> Result<Self, TrainError> {
        options.validate()?;
        let run_dir = run_dir.to_path_buf();
        std::fs::create_dir_all(&run_dir).map_err(io_error(&run_dir))?;
        let optimizer = Adam::new(model.vars(), options.adam)?;
        Ok(Self {
            model,
            optimizer,
            options,
            run_dir,
            state: RunState::default(),
            saved_step: None,
            average: None,
        })
    }

    /// Continues the run in `run_dir` from its last checkpoint: the trainable
    /// tensors, the optimiser moments, the weight average and the progress are
    /// restored, so the run goes on exactly as if it had not stopped. A run resumed
    /// with a weight average that it did not keep before starts one from its weights.
    pub fn resume(
        model: &'m TrainModel,
        options: TrainOptions,
        run_dir: impl AsRef<Path>,
    ) -> Result<Self, TrainError> {
        let mut trainer = Self::open(model, options, run_dir.as_ref())?;
        let dir = trainer.run_dir.clone();
        trainer.state = RunState::read(&dir)?;
        trainer.saved_step = Some(trainer.state.step);
        trainer.drop_metrics_after(trainer.state.step)?;
        let weights = read_tensors(dir.join(LAST))?;
        for (name, var) in model.vars() {
            let t = weights.get(&name).ok_or_else(|| {
                TrainError::Resume(format!("{} lacks `{name}`", dir.join(LAST).display()))
            })?;
            var.set(t)?;
        }
        let optimizer_state = read_tensors(dir.join(OPTIMIZER))?;
        trainer
            .optimizer
            .load_state(&optimizer_state)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", dir.join(OPTIMIZER).display())))?;
        // An average saved by an earlier session continues only if the sessions
        // since kept it (a session without one counts no updates).
        match trainer.options.weight_average {
            None => trainer.state.average_updates = 0,
            Some(decay) => {
                let vars = model.vars();
                let path = dir.join(AVERAGE);
                trainer.average = Some(if path.is_file() && trainer.state.average_updates > 0 {
                    let saved = read_tensors(&path)?;
                    WeightAverage::from_saved(&vars, &saved, decay, trainer.state.average_updates)
                        .map_err(|e| TrainError::Resume(format!("{}: {e}", path.display())))?
                } else {
                    trainer.state.average_updates = 0;
                    WeightAverage::new(&vars, decay, 0)?
                });
            }
        }
        Ok(trainer)
    }

    /// The run's progress.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    fn schedule(&self, steps_per_epoch: usize) -> LrSchedule {
        LrSchedule {
            warmup: self.options.warmup.unwrap_or(0),
            decay: self.options.decay,
            total_steps: self
                .options
                .max_steps
                .unwrap_or(self.options.epochs.saturating_mul(steps_per_epoch)),
        }
    }

    fn clip(&self, grads: &mut candle_core::backprop::GradStore) -> Result<(), TrainError> {
        let Some(max_norm) = self.options.grad_clip else {
            return Ok(());
        };
        let vars = self.model.vars();
        let mut total = 0f64;
        for (_, var) in &vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        let norm = total.sqrt();
        if norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for (_, var) in &vars {
                if let Some(g) = grads.remove(var.as_tensor()) {
                    grads.insert(var.as_tensor(), (g * scale)?);
                }
            }
        }
        Ok(())
    }

    /// The first trainable tensor holding a NaN or an infinity, if any.
    fn non_finite_weight(&self) -> Result<Option<String>, TrainError> {
        let vars = self.model.vars();
        // One sum over every tensor first (one transfer from the device); only a
        // non-finite total looks for the tensor.
        let mut total: Option<Tensor> = None;
        for (_, var) in &vars {
            let s = var
                .as_tensor()
                .sum_all()?
                .to_dtype(candle_core::DType::F32)?;
            total = Some(match total {
                None => s,
                Some(t) => (t + s)?,
            });
        }
        let Some(total) = total else {
            return Ok(None);
        };
        if total.to_scalar::<f32>()?.is_finite() {
            return Ok(None);
        }
        for (name, var) in &vars {
            let s = var
                .as_tensor()
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            if !s.is_finite() {
                return Ok(Some(name.clone()));
            }
        }
        Ok(None)
    }

    /// Runs the remaining epochs (or until `max_steps`), calling `on_step` after every
    /// step. Stops with [`TrainError::NonFinite`] on a NaN or infinite loss and with
    /// [`TrainError::NonFiniteWeights`] when an update makes the weights NaN or
    /// infinite, keeping the last good checkpoint. A run with nothing left to train
    /// ([`RunState::finished`]) is [`TrainError::Finished`], and nothing is written.
    pub fn run(
        &mut self,
        train: &Us30kSplit,
        val: Option<&Us30kSplit>,
        mut on_step: impl FnMut(&StepInfo),
    ) -> Result<RunState, TrainError> {
        if let Some(finished) = self.state.finished(&self.options) {
            return Err(TrainError::Finished(finished));
        }
        let device = self.model.samus().device().clone();
        let vars = self.model.vars();
        let steps_per_epoch = train.len().div_ceil(self.options.batch_size.max(1));
        let schedule = self.schedule(steps_per_epoch);
        let session = Instant::now();
        let before = self.state.elapsed_s;
        let elapsed = move || before + session.elapsed().as_secs_f64();
        let limit = self.options.time_limit.map(|d| d.as_secs_f64());
        let out_of_time = move |elapsed: f64| limit.is_some_and(|limit| elapsed >= limit);
        while self.state.epoch < self.options.epochs && !out_of_time(self.state.elapsed_s) {
            let epoch = self.state.epoch;
            for batch in train.batches(self.options.batch_size, epoch as u64) {
                if self.steps_done() || out_of_time(elapsed()) {
                    break;
                }
                let batch = batch?;
                if batch.samples.is_empty() {
                    continue;
                }
                let tensors = BatchTensors::new(&batch.samples, &device)?;
                let logits = self.model.low_res_logits(&tensors)?;
                let loss = self.options.loss.compute(&logits, &tensors.low_targets)?;
                let value = loss.to_scalar::<f32>()?;
                if !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: self.state.step + 1,
                        loss: value,
                        checkpoint: self.saved_step,
                    });
                }
                let time_fraction = limit.map(|limit| elapsed() / limit);
                let lr = schedule.rate(self.options.adam.lr, self.state.step, time_fraction);
                self.optimizer.config.lr = lr;
                let mut grads = loss.backward()?;
                self.clip(&mut grads)?;
                self.optimizer.step(&grads)?;
                if let Some(tensor) = self.non_finite_weight()? {
                    return Err(TrainError::NonFiniteWeights {
                        step: self.state.step + 1,
                        tensor,
                        checkpoint: self.saved_step,
                    });
                }
                if let Some(average) = &mut self.average {
                    average.update(&vars)?;
                    self.state.average_updates = average.updates();
                }
                self.state.step += 1;
                self.state.losses.push(value);
                self.append_metrics(&format!(
                    "{},{epoch},{:.1},{value},{lr},",
                    self.state.step,
                    elapsed()
                ))?;
                on_step(&StepInfo {
                    step: self.state.step,
                    epoch,
                    loss: value,
                    lr,
                    samples: batch.samples.len(),
                });
            }
            self.state.epoch += 1;
            let stopping = self.steps_done() || out_of_time(elapsed());
            if let Some(val) = val {
                if self
                    .state
                    .epoch
                    .is_multiple_of(self.options.eval_every.max(1))
                    || stopping
                {
                    let (dice, raw_dice) = self.evaluate_and_keep_best(val, &vars)?;
                    let raw = raw_dice.map(|d| format!(",{d}")).unwrap_or_default();
                    self.append_metrics(&format!(
                        "{},{epoch},{:.1},,,{dice}{raw}",
                        self.state.step,
                        elapsed()
                    ))?;
                }
            }
            self.state.elapsed_s = elapsed();
            self.checkpoint()?;
            self.draw_curve()?;
            if stopping {
                break;
            }
        }
        Ok(self.state.clone())
    }

    /// Evaluates on `val` and keeps the best checkpoint: the Dice of the weight
    /// average and of the weights themselves (`best.safetensors` and
    /// `best_raw.safetensors`) when the run keeps an average, else of the weights
    /// (`best.safetensors`, no second Dice).
    fn evaluate_and_keep_best(
        &mut self,
        val: &Us30kSplit,
        vars: &[(String, candle_core::Var)],
    ) -> Result<(f64, Option<f64>), TrainError> {
        let batch_size = self.options.batch_size;
        let raw = evaluate(self.model, val, batch_size)?.overall.dice;
        let Some(average) = &self.average else {
            if self.state.best_dice.is_none_or(|best| raw > best) {
                self.state.best_dice = Some(raw);
                self.save_model(BEST)?;
            }
            return Ok((raw, None));
        };
        if self.state.best_raw_dice.is_none_or(|best| raw > best) {
            self.state.best_raw_dice = Some(raw);
            self.save_model(BEST_RAW)?;
        }
        let swapped = average.swap_in(vars)?;
        // The best average is written while it is in the model; the weights go back
        // before any error is passed on.
        let kept = evaluate(self.model, val, batch_size).and_then(|report| {
            let dice = report.overall.dice;
            let better = self.state.best_dice.is_none_or(|best| dice > best);
            if better {
                self.save_model(BEST)?;
            }
            Ok((dice, better))
        });
        WeightAverage::restore(vars, swapped)?;
        let (dice, better) = kept?;
        if better {
            self.state.best_dice = Some(dice);
        }
        Ok((dice, Some(raw)))
    }

    /// Whether `max_steps` is reached.
    fn steps_done(&self) -> bool {
        self.options.max_steps.is_some_and(|m| self.state.step >= m)
    }

    fn save_model(&self, name: &str) -> Result<(), TrainError> {
        save_safetensors(&self.run_dir.join(name), &self.model.tensors(), None)?;
        Ok(())
    }

    /// Writes `last.safetensors`, `optimizer.safetensors`, `average.safetensors` (with
    /// a weight average) and `state.json`.
    pub fn checkpoint(&mut self) -> Result<(), TrainError> {
        self.save_model(LAST)?;
        if let Some(average) = &self.average {
            save_safetensors(&self.run_dir.join(AVERAGE), &average.tensors(), None)?;
        }
        let state: HashMap<String, Tensor> = self.optimizer.state()?;
        save_safetensors(&self.run_dir.join(OPTIMIZER), &state, None)?;
        let json = serde_json::to_string_pretty(&self.state)
            .map_err(|e| TrainError::Resume(e.to_string()))?;
        samus_core::atomic_write::write_atomic(&self.run_dir.join(STATE), json.as_bytes())?;
        self.saved_step = Some(self.state.step);
        Ok(())
    }

    /// Redraws `curve.png` from `metrics.csv`.
    fn draw_curve(&self) -> Result<(), TrainError> {
        let metrics = Metrics::read(&self.run_dir.join(METRICS))?;
        write_curve_png(&metrics, &self.run_dir.join(CURVE))
    }

    /// Drops the rows of `metrics.csv` written after the checkpoint of `step` (by a
    /// run stopped in the middle of an epoch), which the resumed run trains again.
    fn drop_metrics_after(&self, step: usize) -> Result<(), TrainError> {
        let path = self.run_dir.join(METRICS);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(&path)(e)),
        };
        let mut kept = String::with_capacity(text.len());
        for (i, row) in text.lines().enumerate() {
            let row_step = row.split(',').next().and_then(|s| s.parse::<usize>().ok());
            if i == 0 || row_step.is_none_or(|s| s <= step) {
                kept.push_str(row);
                kept.push('\n');
            }
        }
        if kept != text {
            samus_core::atomic_write::write_atomic(&path, kept.as_bytes())?;
        }
        Ok(())
    }

    /// Adds a row to `metrics.csv`: the whole file is written again atomically (it
    /// holds one short row per epoch), so a crash never leaves half a row.
    fn append_metrics(&self, row: &str) -> Result<(), TrainError> {
        let path = self.run_dir.join(METRICS);
        let mut text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "step,epoch,elapsed_s,loss,lr,val_dice,val_dice_raw\n".to_string()
            }
            Err(e) => return Err(io_error(&path)(e)),
        };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(row);
        text.push('\n');
        samus_core::atomic_write::write_atomic(&path, text.as_bytes())?;
        Ok(())
    }
}
