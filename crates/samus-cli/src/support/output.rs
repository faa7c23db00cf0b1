//! Writing results: every file goes through [`samus_core::atomic_write`] (a
//! temporary file renamed into place, the user's umask permissions), and
//! [`Outputs`] refuses to write onto a file the same command reads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use image::{DynamicImage, ImageFormat};
use samus_core::atomic_write::{OutputGuard, WriteError};

/// What an output file holds: its name must say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A PNG image (`.png`).
    Png,
    /// A safetensors file (`.safetensors`).
    Safetensors,
}

impl OutputKind {
    fn extension(self) -> &'static str {
        match self {
            OutputKind::Png => "png",
            OutputKind::Safetensors => "safetensors",
        }
    }
}

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

    /// Checks every output of a command before any work starts: none is an input,
    /// no two are the same file, each one's folder exists, none is write-protected,
    /// and each name says what it holds. `outputs` are (flag, path, kind).
    pub fn plan(&self, outputs: &[(&str, &Path, OutputKind)]) -> Result<()> {
        let mut seen: Vec<(&str, PathBuf)> = Vec::new();
        for &(flag, path, kind) in outputs {
            check_output_file(self, flag, path)?;
            let want = kind.extension();
            let has = path.extension().and_then(|e| e.to_str());
            if !has.is_some_and(|e| e.eq_ignore_ascii_case(want)) {
                bail!(
                    "{flag} {}: this output is written as {}; name it *.{want}",
                    path.display(),
                    want.to_uppercase()
                );
            }
            if std::fs::metadata(path).is_ok_and(|m| m.permissions().readonly()) {
                bail!(
                    "{flag} {}: the file is write-protected (make it writable or choose another path)",
                    path.display()
                );
            }
            let dir = parent_folder(path);
            let canonical = std::fs::canonicalize(dir)
                .map(|d| d.join(path.file_name().unwrap_or_default()))
                .unwrap_or_else(|_| path.to_path_buf());
            if let Some((other, _)) = seen.iter().find(|(_, p)| *p == canonical) {
                bail!(
                    "{flag} and {other} name the same file {}; give each output its own path",
                    path.display()
                );
            }
            seen.push((flag, canonical));
        }
        Ok(())
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

/// The folder part of a path: its parent, `.` for a bare name.
fn parent_folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fails unless a file can be created in the folder `dir` (a probe file, removed).
fn probe_writable(flag: &str, path: &Path, dir: &Path) -> Result<()> {
    match tempfile::Builder::new()
        .prefix(".samus-write-check")
        .tempfile_in(dir)
    {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "{flag} {}: cannot write in the folder {} ({e})",
            path.display(),
            dir.display()
        ),
    }
}

/// Checks, before any work, that the output file `path` of `flag` can be written:
/// it is none of the command's inputs (`outputs`), not a folder, and its folder
/// exists and is writable.
pub fn check_output_file(outputs: &Outputs, flag: &str, path: &Path) -> Result<()> {
    outputs
        .check(path)
        .with_context(|| format!("{flag} {}", path.display()))?;
    if path.is_dir() {
        bail!("{flag} {}: is a folder; give a file name", path.display());
    }
    let dir = parent_folder(path);
    if !dir.is_dir() {
        bail!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    probe_writable(flag, path, dir)
}

/// Checks, before any work, that the output folder `dir` of `flag` (created when
/// absent, with its parents) can be written: it is not a file, nor is any of its
/// existing ancestors, and the nearest existing one is writable. `what` names the
/// folder in the message (`the run folder`, ...).
pub fn check_output_folder(flag: &str, dir: &Path, what: &str) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{flag} {} must be a folder ({what}), but a file of that name exists",
            dir.display()
        );
    }
    let mut existing = dir;
    while !existing.exists() {
        existing = parent_folder(existing);
    }
    if !existing.is_dir() {
        bail!(
            "{flag} {}: {} is a file, so the folder cannot be created",
            dir.display(),
            existing.display()
        );
    }
    probe_writable(flag, dir, existing)
}
