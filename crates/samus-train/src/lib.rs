//! Training and evaluation of SAMUS.
//!
//! Researchers train SAMUS and AutoSAMUS with this crate (through `cargo xtask train`)
//! instead of the Python reference. It holds the reference objective,
//! [`loss::bce_dice_loss`]: `0.2 * BCE-with-logits(pos_weight 2) + 0.8 * (1 - Dice)`
//! on the low-resolution logits, and the trainable sets ([`freeze`]), chosen from the
//! model's structure, that a `WeightStore` hands out as variables.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use samus_train::loss::{bce_dice_loss, LossWeights};
//!
//! # fn main() -> candle_core::Result<()> {
//! let logits = Tensor::new(&[[[[4f32, -4.0], [4.0, -4.0]]]], &Device::Cpu)?;
//! let target = Tensor::new(&[[[[1f32, 0.0], [1.0, 0.0]]]], &Device::Cpu)?;
//! let loss = bce_dice_loss(&logits, &target, LossWeights::default())?.to_scalar::<f32>()?;
//! assert!(loss < 0.05);
//! # Ok(())
//! # }
//! ```

pub mod average;
pub mod curve;
pub mod evaluate;
pub mod freeze;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod schedule;
pub mod trainer;

/// Everything that can stop training or evaluation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A sample could not be read.
    #[error(transparent)]
    Data(#[from] samus_data::Error),
    /// The model or a checkpoint could not be loaded or written.
    #[error(transparent)]
    Model(#[from] samus_model::Error),
    /// A run folder file could not be written (see [`samus_core::atomic_write`]).
    #[error(transparent)]
    Write(#[from] samus_core::atomic_write::WriteError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error("the loss is {loss} at step {step}; stopping ({})", kept(.checkpoint))]
    NonFinite {
        /// The step whose loss was not finite (1-based, as in `metrics.csv`).
        step: usize,
        /// The loss.
        loss: f32,
        /// The step of the last checkpoint in the run folder, which is left as it
        /// was; `None` when the run has written none yet.
        checkpoint: Option<usize>,
    },
    /// An update made a trainable tensor NaN or infinite (a learning rate or gradient
    /// out of range); the last good checkpoint is kept.
    #[error("the weights became NaN or infinite at step {step} (`{tensor}`); stopping ({})", kept(.checkpoint))]
    NonFiniteWeights {
        /// The step whose update broke the weights (1-based, as in `metrics.csv`).
        step: usize,
        /// The first tensor found non-finite.
        tensor: String,
        /// The step of the last checkpoint in the run folder, which is left as it
        /// was; `None` when the run has written none yet.
        checkpoint: Option<usize>,
    },
    /// The run has nothing left to do: its epochs, steps or time are used up.
    #[error("nothing to train: {0}")]
    Finished(trainer::Finished),
    /// The training options are out of range.
    #[error("invalid training options: {0}")]
    Options(String),
    /// A run folder file could not be written or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A fresh run was asked for in a folder that already holds a run.
    #[error(
        "{} already holds a training run ({}); resume it, or choose another run folder",
        dir.display(),
        files.join(", ")
    )]
    RunExists {
        /// The run folder.
        dir: std::path::PathBuf,
        /// The run files found in it.
        files: Vec<&'static str>,
    },
    /// A run cannot be resumed.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// The training curve could not be read or drawn.
    #[error("training curve: {0}")]
    Curve(String),
}

/// What a non-finite stop says about the run folder's checkpoint.
fn kept(checkpoint: &Option<usize>) -> String {
    match checkpoint {
        Some(step) => format!("the last checkpoint, from step {step}, is kept"),
        None => "no checkpoint was written".to_string(),
    }
}
