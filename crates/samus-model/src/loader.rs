//! The one way a [`Samus`] model is built from weights: [`Samus::load`] for the
//! common case, [`Samus::loader`] for the builder behind it.
//!
//! A SAMUS checkpoint must hold every tensor at the right shape. A SAM checkpoint
//! is converted (see [`crate::checkpoint`]): the SAMUS-only parts start freshly
//! initialised, and [`LoadReport::initialised`] lists them. Without a configuration
//! the loader infers one from the tensor shapes ([`infer_config`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::checkpoint::{
    convert_sam_tensors, detect_kind, infer_config, read_tensors, CheckpointKind, LoadReport,
    DEFAULT_INIT_SEED, ENCODER_MARKER,
};
use crate::config::SamusConfig;
use crate::error::{Error, Result};
use crate::samus::Samus;
use crate::weights::{MissingTensors, TensorProblem, TrainablePredicate, WeightStore};

/// Where a loader's tensors come from.
#[derive(Debug)]
enum Source {
    File(PathBuf),
    Tensors(HashMap<String, Tensor>),
}

/// Builds a [`Samus`] from a checkpoint file or from tensors in memory.
///
/// ```no_run
/// use candle_core::Device;
/// use samus_model::{Samus, SamusConfig};
///
/// # fn main() -> samus_model::Result<()> {
/// let (model, report) = Samus::loader("sam_vit_b_01ec64.pth")
///     .config(SamusConfig::vit_b())
///     .device(&Device::Cpu)
///     .load_with_report()?;
/// println!("{} tensors start untrained", report.initialised.len());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a loader does nothing until `load` is called"]
pub struct SamusLoader {
    source: Source,
    config: Option<SamusConfig>,
    device: Device,
    init_seed: u64,
}

impl Samus {
    /// Loads a SAMUS or SAM checkpoint (safetensors or PyTorch `.pth`) onto the CPU,
    /// with the configuration inferred from its tensor shapes.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::loader(path).load()
    }

    /// A loader for the checkpoint at `path`: set the configuration, the device or
    /// the seed of fresh tensors, then [`SamusLoader::load`].
    pub fn loader(path: impl AsRef<Path>) -> SamusLoader {
        SamusLoader::new(Source::File(path.as_ref().to_path_buf()))
    }

    /// A loader for checkpoint tensors already in memory (by reference name).
    pub fn loader_from_tensors(tensors: HashMap<String, Tensor>) -> SamusLoader {
        SamusLoader::new(Source::Tensors(tensors))
    }

    /// A model of `cfg` with every weight freshly initialised as the reference does
    /// (untrained: for demos, benchmarks and tests).
    pub fn random(cfg: &SamusConfig, seed: u64, device: &Device) -> Result<Self> {
        Ok(crate::train::random_weights(cfg, seed, device)?.0)
    }
}

impl SamusLoader {
    fn new(source: Source) -> Self {
        Self {
            source,
            config: None,
            device: Device::Cpu,
            init_seed: DEFAULT_INIT_SEED,
        }
    }

    /// The model configuration (default: inferred from the tensor shapes).
    pub fn config(mut self, config: SamusConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// The device the weights go to (default: the CPU).
    pub fn device(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }

    /// The seed of the fresh initialisation of tensors a SAM checkpoint lacks
    /// (default [`DEFAULT_INIT_SEED`]).
    pub fn init_seed(mut self, seed: u64) -> Self {
        self.init_seed = seed;
        self
    }

    /// Builds the model for inference: as [`SamusLoader::load_with_report`], with
    /// the image encoder's weights then packed for this CPU and their unpacked
    /// copies dropped ([`Samus::pack_for_inference`]).
    pub fn load(self) -> Result<Samus> {
        let (mut model, report) = self.load_with_report()?;
        drop(report);
        model.pack_for_inference()?;
        Ok(model)
    }

    /// Builds the model and says what loading did (kind, configuration, tensors
    /// initialised or unused). The weights stay unpacked, as the report's tensors
    /// hold them too: drop the report, then call [`Samus::pack_for_inference`] for
    /// the memory and speed of [`SamusLoader::load`].
    pub fn load_with_report(self) -> Result<(Samus, LoadReport)> {
        let parts = self.into_parts()?;
        let (model, report, _) = parts.build(None)?;
        Ok((model, report))
    }

    /// The tensors, read and paired with a checked configuration, for crates that
    /// build more than SAMUS from one checkpoint (AutoSAMUS, training).
    pub fn into_parts(self) -> Result<LoadParts> {
        let (tensors, path) = match self.source {
            Source::File(path) => (read_tensors(&path)?, Some(path)),
            Source::Tensors(tensors) => (tensors, None),
        };
        let config = match self.config {
            Some(cfg) => cfg,
            None => infer_config(&tensors).ok_or_else(|| {
                Error::checkpoint(
                    path.as_deref(),
                    "cannot infer the model configuration from its tensor shapes; give one \
                     (a preset such as vit_b, or a JSON file)",
                )
            })?,
        };
        config.validate()?;
        Ok(LoadParts {
            tensors,
            config,
            device: self.device,
            init_seed: self.init_seed,
            path,
        })
    }
}

/// A checkpoint's tensors with the configuration and device to build them for (see
/// [`SamusLoader::into_parts`]).
#[derive(Debug)]
pub struct LoadParts {
    /// Every tensor of the checkpoint, by reference name.
    pub tensors: HashMap<String, Tensor>,
    /// The configuration, checked.
    pub config: SamusConfig,
    /// Where the weights go.
    pub device: Device,
    /// Seed of the fresh initialisation of missing SAMUS tensors.
    pub init_seed: u64,
    /// The checkpoint file (`None` for tensors given in memory).
    pub path: Option<PathBuf>,
}

impl LoadParts {
    /// Builds SAMUS from the tensors; those named by `trainable` become variables
    /// (training). The returned store lists them and gives every tensor at its
    /// current value.
    pub fn build(
        mut self,
        trainable: Option<TrainablePredicate>,
    ) -> Result<(Samus, LoadReport, WeightStore)> {
        let path = self.path.as_deref();
        let kind = detect_kind(&self.tensors).ok_or_else(|| {
            Error::checkpoint(
                path,
                format!(
                    "does not look like a SAM or SAMUS checkpoint: it has no tensor `{ENCODER_MARKER}`"
                ),
            )
        })?;
        let cfg = &self.config;
        let missing = match kind {
            CheckpointKind::Samus => MissingTensors::Error,
            CheckpointKind::Sam => {
                convert_sam_tensors(&mut self.tensors, cfg)?;
                MissingTensors::Initialise {
                    seed: self.init_seed,
                }
            }
        };
        let store = match trainable {
            Some(predicate) => WeightStore::with_trainable(self.tensors, missing, predicate),
            None => WeightStore::new(self.tensors, missing),
        };
        let model = Samus::build(store.var_builder(&self.device), cfg).map_err(|e| {
            let context = Some(
                format!(
                    "model configuration: embed_dim {}, depth {}, num_heads {}",
                    cfg.embed_dim, cfg.depth, cfg.num_heads
                )
                .into_boxed_str(),
            );
            match store.problem() {
                Some(TensorProblem::Missing { name, expected }) => Error::MissingTensor {
                    path: path.map(Path::to_path_buf),
                    name,
                    expected,
                    context,
                },
                Some(TensorProblem::Shape {
                    name,
                    expected,
                    found,
                }) => Error::TensorShape {
                    path: path.map(Path::to_path_buf),
                    name,
                    expected,
                    found,
                    context,
                },
                Some(TensorProblem::NonFinite { name, count, total }) => Error::NonFinite {
                    path: path.map(Path::to_path_buf),
                    name,
                    count,
                    total,
                },
                None => Error::checkpoint(path, e.to_string()),
            }
        })?;
        let report = LoadReport {
            config: cfg.clone(),
            tensors: store.requested_tensors(),
            kind,
            initialised: store.initialised(),
            unused: store.unused(),
        };
        Ok((model, report, store))
    }
}
