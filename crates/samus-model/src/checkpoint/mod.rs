//! Reading checkpoints: SAMUS checkpoints with the reference names, and SAM ViT
//! checkpoints (safetensors or PyTorch `.pth` zip files) converted to SAMUS.
//!
//! Converting SAM to SAMUS (SPEC section 2): every SAM tensor whose name exists in
//! SAMUS is kept; `pos_embed` stays 64 x 64 (the position adapter shrinks it); the
//! relative-position tables of the global blocks are resampled from `2 * 64 - 1` to
//! `2 * G - 1` rows with linear interpolation; the SAMUS-only tensors (CNN branch,
//! adapters, position adapter) start freshly initialised as the reference does.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::Tensor;
use samus_core::resize::resize_linear_along;

use crate::config::SamusConfig;
use crate::error::{Error, Result};

mod pth;
mod safetensors_file;

/// A tensor that every SAMUS checkpoint has and SAM checkpoints lack.
pub const SAMUS_MARKER: &str = "image_encoder.cnn_embed.inc.conv.0.weight";
/// A tensor that every SAM and SAMUS checkpoint has.
pub const ENCODER_MARKER: &str = "image_encoder.patch_embed.proj.weight";
/// Seed of the fresh initialisation of the SAMUS-only tensors.
pub const DEFAULT_INIT_SEED: u64 = 1234;

/// What a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// A complete SAMUS model.
    Samus,
    /// A SAM model: the SAMUS-only parts are missing and start untrained.
    Sam,
}

/// What loading a checkpoint did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The configuration the model was built with (given, or inferred from the
    /// tensor shapes).
    pub config: SamusConfig,
    /// Every tensor of the loaded model by reference name (after conversion, fresh
    /// tensors included): what a SAMUS checkpoint of this model holds.
    pub tensors: HashMap<String, Tensor>,
    /// The checkpoint's kind.
    pub kind: CheckpointKind,
    /// Names that the checkpoint lacked and that were freshly initialised.
    pub initialised: Vec<String>,
    /// Checkpoint tensors that the model does not use.
    pub unused: Vec<String>,
}

fn checkpoint_error(path: &Path, message: impl Into<String>) -> Error {
    Error::checkpoint(Some(path), message)
}

/// The file formats a checkpoint can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    PthZip,
    PthLegacy,
}

fn sniff_format(path: &Path) -> Result<Format> {
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(Error::io(path))?;
    let n = file.read(&mut head).map_err(Error::io(path))?;
    if n >= 4 && head[..4] == *b"PK\x03\x04" {
        return Ok(Format::PthZip);
    }
    if n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Ok(Format::PthLegacy);
    }
    if n < 8 {
        return Err(checkpoint_error(
            path,
            "file is too short to be a checkpoint",
        ));
    }
    // A safetensors file opens with its header's length (little-endian u64) and the
    // header itself, a JSON object.
    let header_len = u64::from_le_bytes(head);
    let mut first = [0u8; 1];
    let json_follows = file.read(&mut first).map_err(Error::io(path))? == 1 && first[0] == b'{';
    let file_len = std::fs::metadata(path).map_err(Error::io(path))?.len();
    if !json_follows || header_len == 0 || header_len > file_len.saturating_sub(8) {
        return Err(checkpoint_error(
            path,
            "not a checkpoint: neither a safetensors file nor a PyTorch (.pth zip) file",
        ));
    }
    Ok(Format::Safetensors)
}

/// Reads every tensor of a safetensors or PyTorch zip (`.pth`) checkpoint to the CPU.
/// A `.pth` holding a dictionary with the state dict under `model` or `state_dict` is
/// read too.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    match sniff_format(path)? {
        Format::Safetensors => safetensors_file::read(path).map_err(|why| {
            checkpoint_error(path, format!("not a readable safetensors file: {why}"))
        }),
        Format::PthZip => pth::read_pth(path),
        Format::PthLegacy => Err(checkpoint_error(
            path,
            "legacy (non-zip) PyTorch format; re-save it in Python with \
             `torch.save(torch.load(path), new_path)` (PyTorch >= 1.6 writes the zip format) \
             and load the new file",
        )),
    }
}

/// Tells a SAMUS checkpoint from a SAM one; `None` if it is neither.
pub fn detect_kind(tensors: &HashMap<String, Tensor>) -> Option<CheckpointKind> {
    if tensors.contains_key(SAMUS_MARKER) {
        Some(CheckpointKind::Samus)
    } else if tensors.contains_key(ENCODER_MARKER) {
        Some(CheckpointKind::Sam)
    } else {
        None
    }
}

/// Resamples a `(L, C)` relative-position table to `len` rows (linear,
/// `align_corners=False`), as the reference does when loading SAM weights.
pub fn resample_rel_pos(table: &Tensor, len: usize) -> candle_core::Result<Tensor> {
    resize_linear_along(table, 0, len)
}

/// Converts SAM tensors in place for SAMUS of `cfg`: resamples the global blocks'
/// relative-position tables to `2 * G - 1` rows.
pub fn convert_sam_tensors(
    tensors: &mut HashMap<String, Tensor>,
    cfg: &SamusConfig,
) -> candle_core::Result<()> {
    let len = 2 * cfg.grid_size() - 1;
    for &i in &cfg.global_attn_indexes {
        for axis in ["h", "w"] {
            let name = format!("image_encoder.blocks.{i}.attn.rel_pos_{axis}");
            if let Some(t) = tensors.get(&name) {
                if t.dim(0)? != len {
                    let resampled = resample_rel_pos(t, len)?;
                    tensors.insert(name, resampled);
                }
            }
        }
    }
    Ok(())
}

/// Guesses the configuration of a SAM or SAMUS checkpoint from its tensor shapes:
/// the width from the patch embedding, the depth from the block indexes, the head
/// width from the relative-position tables, and the global blocks as those whose
/// tables are longer than a window's. Other values take the SAMUS defaults.
pub fn infer_config(tensors: &HashMap<String, Tensor>) -> Option<SamusConfig> {
    let embed_dim = tensors.get(ENCODER_MARKER)?.dims().first().copied()?;
    let prefix = "image_encoder.blocks.";
    let depth = tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()?
        + 1;
    let mut cfg = SamusConfig {
        embed_dim,
        depth,
        num_heads: 1,
        global_attn_indexes: Vec::new(),
        ..SamusConfig::vit_b()
    };
    let window_len = 2 * cfg.window_size - 1;
    for i in 0..depth {
        let table = tensors.get(&format!("{prefix}{i}.attn.rel_pos_h"))?;
        let (len, head_dim) = table.dims2().ok()?;
        if head_dim == 0 || embed_dim % head_dim != 0 {
            return None;
        }
        cfg.num_heads = embed_dim / head_dim;
        if len != window_len {
            cfg.global_attn_indexes.push(i);
        }
    }
    cfg.validate().ok().map(|_| cfg)
}

/// Writes tensors as a safetensors file atomically (through
/// [`samus_core::atomic_write`]: a crash never leaves a partial checkpoint).
pub fn save_safetensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let contiguous = tensors
        .iter()
        .map(|(k, t)| Ok((k.as_str(), t.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(contiguous.iter().map(|(k, t)| (*k, t)), metadata)
        .map_err(|e| Error::checkpoint(Some(path), format!("cannot serialise: {e}")))?;
    Ok(samus_core::atomic_write::write_atomic(path, &bytes)?)
}
