//! The one way every subcommand gets a model: [`Checkpoint::read`] reads the file
//! (saying how to get one when it is absent) and settles the configuration; then
//! [`Checkpoint::samus`], [`Checkpoint::auto`] or the training model build from it
//! on the [`RunContext`]'s device, with errors attributed to the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use samus_apg::auto_samus::is_apg_tensor;
use samus_apg::{AutoLoadReport, AutoSamus};
use samus_model::checkpoint::{infer_config, read_tensors, DEFAULT_INIT_SEED};
use samus_model::{CheckpointKind, LoadReport, Samus, SamusConfig};

use super::RunContext;

/// What to do without a checkpoint.
pub const NO_CHECKPOINT: &str = "no --checkpoint given. Get SAM ViT-B weights with `cargo xtask download` \
(or any copy of sam_vit_b_01ec64.pth from the SAM release) and pass the path with --checkpoint, or pass a \
trained SAMUS checkpoint; to try the pipeline without weights run `samus segment --demo`";

/// A checkpoint read from a file, with the configuration to build it for.
#[derive(Debug)]
pub struct Checkpoint {
    /// The file.
    pub path: PathBuf,
    /// Every tensor, by reference name.
    pub tensors: HashMap<String, Tensor>,
    /// From `--config`, else inferred from the tensor shapes.
    pub config: SamusConfig,
}

impl Checkpoint {
    /// Reads `path` and settles the configuration: `config` (a preset or a JSON
    /// file) when given, else the one the tensor shapes imply.
    pub fn read(path: &Path, config: Option<&str>) -> Result<Self> {
        let tensors = read_checkpoint_tensors(path)?;
        let config = match config {
            Some(spec) => SamusConfig::from_name_or_path(spec)?,
            None => infer_config(&tensors).with_context(|| {
                format!(
                    "checkpoint {}: cannot guess the model configuration from its tensors; pass --config",
                    path.display()
                )
            })?,
        };
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            config,
        })
    }

    /// Whether the checkpoint holds auto prompt generator tensors.
    pub fn has_apg(&self) -> bool {
        self.tensors.keys().any(|k| is_apg_tensor(k))
    }

    /// SAMUS on the context's device (SAM checkpoints converted).
    pub fn samus(self, ctx: &RunContext) -> Result<(Samus, LoadReport)> {
        let path = self.path;
        Samus::loader_from_tensors(self.tensors)
            .config(self.config)
            .device(&ctx.device)
            .init_seed(DEFAULT_INIT_SEED)
            .load_with_report()
            .map_err(|e| attributed(&path, e))
    }

    /// AutoSAMUS on the context's device, its APG from this checkpoint or from
    /// `apg`; without APG weights it fails, saying to pass `--apg`.
    pub fn auto(self, ctx: &RunContext, apg: Option<&Path>) -> Result<(AutoSamus, AutoLoadReport)> {
        match apg {
            Some(apg) if !apg.exists() => bail!("APG checkpoint {} does not exist", apg.display()),
            None if !self.has_apg() => bail!(
                "checkpoint {} holds no auto prompt generator (prompt_generator.*, feature_adapter.*); \
                 pass its weights with --apg FILE",
                self.path.display()
            ),
            _ => {}
        }
        let path = self.path;
        let mut loader = AutoSamus::loader_from_tensors(self.tensors)
            .config(self.config)
            .device(&ctx.device)
            .init_seed(DEFAULT_INIT_SEED);
        if let Some(apg) = apg {
            loader = loader.apg(apg);
        }
        loader.load_with_report().map_err(|e| attributed(&path, e))
    }
}

/// Reads a checkpoint's tensors, saying how to get one when the file is absent.
pub fn read_checkpoint_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        bail!(
            "checkpoint {} does not exist. {NO_CHECKPOINT}",
            path.display()
        );
    }
    Ok(read_tensors(path)?)
}

/// Warns that a plain SAM checkpoint leaves the SAMUS parts untrained.
pub fn warn_if_sam(path: &Path, report: &LoadReport) {
    if report.kind == CheckpointKind::Sam {
        eprintln!(
            "warning: {} is a plain SAM checkpoint: the SAMUS parts ({} tensors: CNN branch, adapters, \
             position adapter) are freshly initialised and UNTRAINED; use a trained SAMUS checkpoint for \
             real segmentation.",
            path.display(),
            report.initialised.len()
        );
    }
}

/// A model-loading error, attributed to the checkpoint file.
fn attributed(path: &Path, error: samus_model::Error) -> anyhow::Error {
    let error = error.with_path(path);
    if error.to_string().contains(&path.display().to_string()) {
        error.into()
    } else {
        anyhow::Error::new(error).context(format!("checkpoint {}", path.display()))
    }
}
