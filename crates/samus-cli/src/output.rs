//! Writing results atomically: each file is written to a temporary file in the same
//! folder and renamed into place, so a failure never leaves a partial file.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;

/// Writes whatever `write` produces to `path`, atomically.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".samus-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    write(tmp.as_file_mut()).with_context(|| format!("cannot write {}", path.display()))?;
    tmp.as_file_mut()
        .flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes tensors (and optional string metadata) as a safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), (*t).clone()))
        .collect();
    samus_model::checkpoint::save_safetensors_atomic(path, &map, metadata)
        .with_context(|| format!("cannot write {}", path.display()))
}
