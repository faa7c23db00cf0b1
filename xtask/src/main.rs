//! `cargo xtask`: project automation for the SAMUS workspace.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use samus_core::fixtures::{fixtures_dir, FIXTURES_ENV};

/// Project automation for the SAMUS workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Check that the reference parity fixtures are present and print their folder
    /// (from $SAMUS_FIXTURES or ../shared/fixtures). CI runs this before the tests so
    /// that parity tests can never be skipped there.
    Fixtures,
}

/// The fixture files the parity tests read.
const FIXTURE_FILES: [&str; 8] = [
    "samus_tiny.json",
    "samus_tiny.safetensors",
    "samus_tiny_io.safetensors",
    "autosamus_tiny.json",
    "autosamus_tiny_apg.safetensors",
    "autosamus_tiny_io.safetensors",
    "transform_val_io.safetensors",
    "busi/benign0001.png",
];

fn check_fixtures() -> Result<PathBuf> {
    let Some(dir) = fixtures_dir(env!("CARGO_MANIFEST_DIR")) else {
        bail!("fixtures not found: set {FIXTURES_ENV} or place them in ../shared/fixtures beside the workspace");
    };
    let missing: Vec<&str> = FIXTURE_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        bail!("fixtures in {} lack: {}", dir.display(), missing.join(", "));
    }
    Ok(dir)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Fixtures => check_fixtures().map(|dir| println!("{}", dir.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
