//! Finding the model: checkpoint files and configurations, with the errors users meet.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use samus_model::checkpoint::{infer_config, read_tensors};
use samus_model::SamusConfig;

/// What to do without a checkpoint.
pub const NO_CHECKPOINT: &str = "no --checkpoint given. Get SAM ViT-B weights with `cargo xtask download` \
(or any copy of sam_vit_b_01ec64.pth from the SAM release) and pass the path with --checkpoint, or pass a \
trained SAMUS checkpoint; to try the pipeline without weights run `samus segment --demo`";

/// Reads a checkpoint's tensors, saying how to get one when the file is absent.
pub fn read_checkpoint(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        bail!(
            "checkpoint {} does not exist. {NO_CHECKPOINT}",
            path.display()
        );
    }
    Ok(read_tensors(path)?)
}

/// The configuration from `--config` (preset or JSON file), else guessed from the
/// checkpoint's tensor shapes.
pub fn resolve_config(
    spec: Option<&str>,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<SamusConfig> {
    match spec {
        Some(spec) => Ok(SamusConfig::from_name_or_path(spec)?),
        None => infer_config(tensors).with_context(|| {
            format!(
                "checkpoint {}: cannot guess the model configuration from its tensors; pass --config",
                path.display()
            )
        }),
    }
}

/// A model-loading error, attributed to the checkpoint file.
pub fn checkpoint_error(path: &Path, error: samus_model::Error) -> anyhow::Error {
    let message = error.to_string().replace("checkpoint <in memory>: ", "");
    anyhow::anyhow!("checkpoint {}: {message}", path.display())
}
