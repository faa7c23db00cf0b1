//! Helpers shared by the `samus` binary's end-to-end tests.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `samus` binary with `args`.
pub fn samus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_samus"))
        .args(args)
        .output()
        .expect("the samus binary runs")
}

/// The standard error of a run, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A temporary path as `&str` for the command line.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// The fixture folder, or `None` after printing that the test is skipped.
pub fn fixtures() -> Option<PathBuf> {
    samus_core::fixtures::fixtures_or_skip(env!("CARGO_MANIFEST_DIR"))
}

/// A failure must be a non-zero exit with one `error:` line naming `needle`, no panic.
pub fn assert_clean_failure(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0].contains(needle),
        "error does not mention `{needle}`: {err}"
    );
}

/// The real-data folder, or `None` after printing that the test is skipped.
pub fn realdata() -> Option<PathBuf> {
    samus_core::fixtures::realdata_or_skip(env!("CARGO_MANIFEST_DIR"))
}

pub mod server;
