//! Locating the reference parity fixtures and the real scans, and comparing tensors
//! with the fixtures.
//!
//! The fixtures (numbers produced by the PyTorch reference) and the real data
//! (BUS-BRA, point-of-care files) live outside the project: in `$SAMUS_FIXTURES` /
//! `$SAMUS_REALDATA`, or in `../shared/fixtures` / `../shared/realdata` beside the
//! workspace. Tests call [`fixtures_or_skip`] / [`realdata_or_skip`] and skip with a
//! clear message when neither exists.

use std::path::PathBuf;

use candle_core::{DType, Result, Tensor};

/// Environment variable naming the fixture directory.
pub const FIXTURES_ENV: &str = "SAMUS_FIXTURES";

/// Environment variable naming the real-data directory (BUS-BRA, point-of-care files).
pub const REALDATA_ENV: &str = "SAMUS_REALDATA";

/// The fixture directory: `$SAMUS_FIXTURES`, else `../shared/fixtures` next to the
/// workspace root (found from `manifest_dir`, a crate's `CARGO_MANIFEST_DIR`).
pub fn fixtures_dir(manifest_dir: &str) -> Option<PathBuf> {
    shared_dir(FIXTURES_ENV, "fixtures", manifest_dir)
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

/// The real-data directory: `$SAMUS_REALDATA`, else `../shared/realdata` next to the
/// workspace root.
pub fn realdata_dir(manifest_dir: &str) -> Option<PathBuf> {
    shared_dir(REALDATA_ENV, "realdata", manifest_dir)
}

/// [`realdata_dir`] for tests: prints `skipped: real data not found ...` when there
/// is none.
pub fn realdata_or_skip(manifest_dir: &str) -> Option<PathBuf> {
    let dir = realdata_dir(manifest_dir);
    if dir.is_none() {
        eprintln!(
            "skipped: real data not found (set {REALDATA_ENV} or provide ../shared/realdata)"
        );
    }
    dir
}

/// `$env`, else `../shared/<name>` beside the workspace root found from
/// `manifest_dir`.
fn shared_dir(env: &str, name: &str, manifest_dir: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(env) {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    let mut dir = PathBuf::from(manifest_dir);
    loop {
        if dir.join("Cargo.lock").exists() || dir.join(".ci").is_dir() {
            let candidate = dir.join("..").join("shared").join(name);
            return candidate.canonicalize().ok().filter(|c| c.is_dir());
        }
        if !dir.pop() {
            return None;
        }
    }
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
