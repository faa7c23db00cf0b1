//! `cargo xtask`: project automation for the SAMUS workspace.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use samus_core::fixtures::{fixtures_dir, realdata_dir, FIXTURES_ENV, REALDATA_ENV};
use xtask::bench_compare::{self, BenchCompareArgs};
use xtask::bench_train::{self, BenchTrainArgs};
use xtask::download::{self, DownloadArgs};

/// Project automation for the SAMUS workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Check that the reference parity fixtures and the real data are present and
    /// print their folders (from $SAMUS_FIXTURES / $SAMUS_REALDATA or
    /// ../shared/fixtures / ../shared/realdata). CI runs this before the tests so that
    /// parity and real-data tests can never be skipped there.
    Fixtures,
    /// Download an original SAM checkpoint (vit_b, vit_l or vit_h) from the Hugging Face
    /// Hub into the standard HF cache, verify it, and print its local path.
    Download(DownloadArgs),
    /// `samus train` with every flag passed through; without --init or --resume, the
    /// SAM checkpoint of the configuration (vit_b by default) is downloaded first.
    #[command(
        disable_help_flag = true,
        after_help = "Examples:\n  cargo xtask train --data datasets/US30K --out runs/samus\n  cargo xtask train --config vit_l --data datasets/US30K --batch-size 4\n  cargo xtask train --help     # samus train's flags"
    )]
    Train {
        /// Arguments for `samus train`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Time SAMUS against the PyTorch peer (bench/pytorch_reference.py) on the same
    /// random weights and input, check that both give the same logits, and print the
    /// speed ratio. Needs a Python with torch, safetensors and numpy.
    BenchCompare(BenchCompareArgs),
    /// Time one training step (tiny configuration, batch 4, every parameter
    /// trainable) against the PyTorch peer on the same random weights and batch,
    /// check that both start from the same loss, and print the speed ratio. Needs a
    /// Python with torch, safetensors and numpy.
    BenchTrain(BenchTrainArgs),
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

/// The real-data files the tests read.
const REALDATA_FILES: [&str; 5] = [
    "BUSBRA/bus_data.csv",
    "BUSBRA/5-fold-cv.csv",
    "BUSBRA/Images/bus_0001-l.png",
    "BUSBRA/Masks/mask_0001-l.png",
    "BUSBRA/LICENSE.txt",
];

fn check_realdata() -> Result<PathBuf> {
    let Some(dir) = realdata_dir(env!("CARGO_MANIFEST_DIR")) else {
        bail!("real data not found: set {REALDATA_ENV} or place it in ../shared/realdata beside the workspace");
    };
    let missing: Vec<&str> = REALDATA_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "real data in {} lacks: {}",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(dir)
}

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
        Task::Fixtures => check_fixtures().and_then(|fixtures| {
            let realdata = check_realdata()?;
            println!("fixtures: {}", fixtures.display());
            println!("real data: {}", realdata.display());
            Ok(())
        }),
        Task::Download(args) => download::run(&args),
        Task::Train { args } => xtask::train::run(&args),
        Task::BenchCompare(args) => bench_compare::run(&args),
        Task::BenchTrain(args) => bench_train::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
