//! Locating the reference parity fixtures and comparing tensors with them.
//!
//! The fixtures (numbers produced by the PyTorch reference) live outside the project:
//! in `$SAMUS_FIXTURES`, or in `../shared/fixtures` beside the workspace. Tests call
//! [`fixtures_dir`] and skip with a clear message when neither exists.

use std::path::PathBuf;

use candle_core::{DType, Result, Tensor};

/// Environment variable naming the fixture directory.
pub const FIXTURES_ENV: &str = "SAMUS_FIXTURES";

/// The fixture directory: `$SAMUS_FIXTURES`, else `../shared/fixtures` next to the
/// workspace root (found from `manifest_dir`, a crate's `CARGO_MANIFEST_DIR`).
pub fn fixtures_dir(manifest_dir: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(FIXTURES_ENV) {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    let mut dir = PathBuf::from(manifest_dir);
    loop {
        if dir.join("Cargo.lock").exists() || dir.join(".ci").is_dir() {
            let candidate = dir.join("..").join("shared").join("fixtures");
            return candidate.canonicalize().ok().filter(|c| c.is_dir());
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// [`fixtures_dir`] for tests: prints `skipped: fixtures not found ...` when there
/// are none, so that a skipped parity test says so.
pub fn fixtures_or_skip(manifest_dir: &str) -> Option<PathBuf> {
    let dir = fixtures_dir(manifest_dir);
    if dir.is_none() {
        eprintln!("skipped: fixtures not found (set {FIXTURES_ENV} or provide ../shared/fixtures)");
    }
    dir
}

/// `||a - b|| / ||b||` over the whole tensors (b is the reference).
pub fn relative_error(ours: &Tensor, reference: &Tensor) -> Result<f64> {
    if ours.dims() != reference.dims() {
        candle_core::bail!(
            "shape {:?} differs from the reference {:?}",
            ours.dims(),
            reference.dims()
        )
    }
    let a = ours.to_dtype(DType::F64)?;
    let b = reference.to_dtype(DType::F64)?;
    let diff = (a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if norm == 0.0 { diff } else { diff / norm })
}

/// Fraction of elements where `ours > 0` agrees with `reference > 0`.
pub fn sign_agreement(ours: &Tensor, reference: &Tensor) -> Result<f64> {
    let a = ours.gt(0.0)?;
    let b = reference.gt(0.0)?;
    let same = a
        .eq(&b)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(same / reference.elem_count().max(1) as f64)
}
