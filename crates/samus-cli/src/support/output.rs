//! Writing results: every file goes through [`samus_core::atomic_write`] (a
//! temporary file renamed into place, the user's umask permissions), and
//! [`Outputs`] refuses to write onto a file the same command reads.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;
use image::{DynamicImage, ImageFormat};
use samus_core::atomic_write::{OutputGuard, WriteError};

/// The outputs of one command, guarded against its inputs.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    guard: OutputGuard,
}

impl Outputs {
    /// Outputs that must not overwrite any of `inputs` (files that do not exist are
    /// ignored; folders are not inputs).
    pub fn guarding<P: AsRef<Path>>(inputs: impl IntoIterator<Item = P>) -> Self {
        Self {
            guard: OutputGuard::new(inputs),
        }
    }

    /// Adds an input file read after the start.
    pub fn add_input(&mut self, input: &Path) {
        self.guard.add_input(input);
    }

    /// Fails when `path` is one of the inputs (check before long work).
    pub fn check(&self, path: &Path) -> Result<()> {
        Ok(self.guard.check(path)?)
    }

    /// Writes `bytes` to `path`.
    pub fn bytes(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        Ok(self.guard.write(path, bytes)?)
    }

    /// Writes an image as PNG.
    pub fn png(&self, image: &DynamicImage, path: &Path) -> Result<()> {
        let mut encoded = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut encoded), ImageFormat::Png)
            .map_err(|e| WriteError::Encode {
                path: path.to_path_buf(),
                message: format!("PNG encoding failed: {e}"),
            })?;
        self.bytes(path, &encoded)
    }

    /// Writes tensors (and optional string metadata) as a safetensors file.
    pub fn safetensors(
        &self,
        path: &Path,
        tensors: &HashMap<String, Tensor>,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<()> {
        self.check(path)?;
        Ok(samus_model::checkpoint::save_safetensors(
            path, tensors, metadata,
        )?)
    }

    /// [`Outputs::safetensors`] for a few named tensors.
    pub fn named_tensors(
        &self,
        path: &Path,
        tensors: &[(&str, &Tensor)],
        metadata: Option<HashMap<String, String>>,
    ) -> Result<()> {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.to_string(), (*t).clone()))
            .collect();
        self.safetensors(path, &map, metadata)
    }
}
