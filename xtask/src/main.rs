//! `cargo xtask`: project automation for the SAMUS workspace.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use samus_core::fixtures::{fixtures_dir, realdata_dir, FIXTURES_ENV, REALDATA_ENV};
use xtask::bench_compare::{self, BenchCompareArgs};
use xtask::bench_serve::{self, BenchServeArgs};
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
    /// Load-test `samus serve` on loopback (random ViT-B weights by default): one
    /// client alone beside 8 clients x 50 predicts on cached embeddings; p50/p99,
    /// errors and the server's peak memory; optionally clicks in headless Chromium.
    BenchServe(BenchServeArgs),
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

/// A folder of shared test data beside the workspace, and what must be in it.
struct SharedData {
    /// What it is called in messages.
    what: &'static str,
    /// The environment variable that names it.
    env: &'static str,
    /// Its folder under `../shared/`.
    folder: &'static str,
    /// The files the tests read.
    files: &'static [&'static str],
}

const FIXTURES: SharedData = SharedData {
    what: "fixtures",
    env: FIXTURES_ENV,
    folder: "fixtures",
    files: &FIXTURE_FILES,
};

const REALDATA: SharedData = SharedData {
    what: "real data",
    env: REALDATA_ENV,
    folder: "realdata",
    files: &REALDATA_FILES,
};

impl SharedData {
    /// `dir` (as `fixtures_dir` or `realdata_dir` found it), checked to hold every
    /// file.
    fn check(&self, dir: Option<PathBuf>) -> Result<PathBuf> {
        let Some(dir) = dir else {
            bail!(
                "{} not found: set {} or place it in ../shared/{} beside the workspace",
                self.what,
                self.env,
                self.folder
            );
        };
        let missing: Vec<&str> = self
            .files
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} in {} lacks: {}",
                self.what,
                dir.display(),
                missing.join(", ")
            );
        }
        Ok(dir)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Fixtures => {
            let manifest = env!("CARGO_MANIFEST_DIR");
            FIXTURES.check(fixtures_dir(manifest)).and_then(|fixtures| {
                let realdata = REALDATA.check(realdata_dir(manifest))?;
                println!("fixtures: {}", fixtures.display());
                println!("real data: {}", realdata.display());
                Ok(())
            })
        }
        Task::Download(args) => download::run(&args),
        Task::Train { args } => xtask::train::run(&args),
        Task::BenchCompare(args) => bench_compare::run(&args),
        Task::BenchTrain(args) => bench_train::run(&args),
        Task::BenchServe(args) => bench_serve::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
