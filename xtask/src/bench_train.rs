//! `cargo xtask bench-train`: one training step of SAMUS in Rust against the PyTorch
//! peer, in one run.
//!
//! 1. `samus bench --train --random-weights --save-weights W --write-io IO --json`
//!    times our step (forward, loss, backward, Adam; every parameter trainable) and
//!    keeps its random weights and its batch;
//! 2. `bench/pytorch_reference.py --train --weights W --io IO --json` trains the
//!    same architecture from the same weights on the same batch with the same loss
//!    and optimiser;
//! 3. the two are printed side by side with the speed ratio; the task fails when
//!    the losses before the first update differ by more than the tolerance (the two
//!    did not compute the same thing).

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use crate::bench_compare::{
    alternate_rounds, pytorch_interpreter, report_number, report_text, workspace_root, Side,
};

/// Relative difference of the first losses allowed between the two.
pub const DEFAULT_LOSS_TOLERANCE: f64 = 1e-4;

/// Arguments of `cargo xtask bench-train`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  cargo xtask bench-train
  cargo xtask bench-train --batch-size 8 --iters 5 --json
  cargo xtask bench-train --rounds 3 --json
  SAMUS_PYTHON=~/venvs/torch/bin/python cargo xtask bench-train")]
pub struct BenchTrainArgs {
    /// Model configuration (a preset: tiny, vit_b, vit_l, vit_h).
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Images per step.
    #[arg(long, default_value_t = 4)]
    pub batch_size: u32,
    /// Threads for both implementations.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed steps for both (after two untimed ones).
    #[arg(long, default_value_t = 3)]
    pub iters: u32,
    /// Rounds, each timing samus then PyTorch; each side's figures are the medians
    /// over its rounds, so that a slow minute of a shared machine falls on both
    /// (1 to 99).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..100))]
    pub rounds: u32,
    /// Python interpreter with torch, safetensors and numpy (default: $SAMUS_PYTHON,
    /// else python3).
    #[arg(long, value_name = "PATH")]
    pub python: Option<String>,
    /// Largest relative difference of the first losses that counts as the same
    /// computation.
    #[arg(long, default_value_t = DEFAULT_LOSS_TOLERANCE)]
    pub tolerance: f64,
    /// Hold both sides to AVX2 + FMA, as on a CPU without AVX-512: samus built
    /// without default features (the gemm crate without its AVX-512 kernels) and
    /// run with SAMUS_ISA=avx2; PyTorch with ATEN_CPU_CAPABILITY=avx2,
    /// MKL_ENABLE_INSTRUCTIONS=AVX2 and ONEDNN_MAX_CPU_ISA=AVX2.
    #[arg(long)]
    pub avx2: bool,
    /// Print one JSON object (`samus_step_s`, `pytorch_step_s`, `step_ratio`,
    /// `samus_first_loss`, `pytorch_first_loss`, `loss_rel_difference`, `threads`,
    /// `isa`, ...) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of a training comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainComparison {
    /// Our median step, seconds.
    pub samus_step_s: f64,
    /// The PyTorch peer's median step, seconds.
    pub pytorch_step_s: f64,
    /// The losses before the first update: (ours, the peer's).
    pub first_loss: (f64, f64),
    /// The losses after one update: (ours, the peer's).
    pub second_loss: (f64, f64),
    /// Threads ours ran with.
    pub threads: usize,
    /// Images per step.
    pub batch_size: u64,
    /// The instruction set of our kernels.
    pub isa: String,
    /// The gemm crate's instruction set.
    pub gemm_isa: String,
}

impl TrainComparison {
    /// Builds the comparison from the two `--json` reports.
    pub fn from_reports(rust: &Value, pytorch: &Value) -> Result<Self> {
        let ours = |key| report_number(rust, "samus bench --train", key);
        let theirs = |key| report_number(pytorch, "pytorch_reference.py --train", key);
        let text = |key| report_text(rust, "samus bench --train", key);
        Ok(Self {
            samus_step_s: ours("train_step_median_s")?,
            pytorch_step_s: theirs("train_step_median_s")?,
            first_loss: (ours("first_loss")?, theirs("first_loss")?),
            second_loss: (ours("second_loss")?, theirs("second_loss")?),
            threads: ours("threads")? as usize,
            batch_size: ours("batch_size")? as u64,
            isa: text("isa")?,
            gemm_isa: text("gemm_isa")?,
        })
    }

    /// How many times faster our step is (above 1: ahead).
    pub fn speedup(&self) -> f64 {
        self.pytorch_step_s / self.samus_step_s
    }

    /// Relative difference of the losses before the first update.
    pub fn loss_rel_difference(&self) -> f64 {
        let (a, b) = self.first_loss;
        (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
    }

    /// The `--json` report.
    pub fn json(&self) -> Value {
        serde_json::json!({
            "samus_step_s": self.samus_step_s,
            "pytorch_step_s": self.pytorch_step_s,
            "step_ratio": self.speedup(),
            "samus_first_loss": self.first_loss.0,
            "pytorch_first_loss": self.first_loss.1,
            "samus_second_loss": self.second_loss.0,
            "pytorch_second_loss": self.second_loss.1,
            "loss_rel_difference": self.loss_rel_difference(),
            "batch_size": self.batch_size,
            "threads": self.threads,
            "isa": self.isa,
            "gemm_isa": self.gemm_isa,
        })
    }

    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<26}{:>14}{:>14}{:>9}\n",
            "", "samus (Rust)", "PyTorch", "ratio"
        );
        out += &format!(
            "{:<26}{:>12.3} s{:>12.3} s{:>8.2}x\n",
            format!("train step (batch {})", self.batch_size),
            self.samus_step_s,
            self.pytorch_step_s,
            self.speedup()
        );
        out += &format!(
            "{:<26}{:>14.6}{:>14.6}\n{:<26}{:>14.6}{:>14.6}\n",
            "loss before the update",
            self.first_loss.0,
            self.first_loss.1,
            "loss after one update",
            self.second_loss.0,
            self.second_loss.1
        );
        out += &format!(
            "threads {}; samus kernels {} (gemm crate {}); first losses differ by {:.2e} (relative)\n",
            self.threads,
            self.isa,
            self.gemm_isa,
            self.loss_rel_difference()
        );
        out
    }
}

/// Runs `cargo xtask bench-train`.
pub fn run(args: &BenchTrainArgs) -> Result<()> {
    let root = workspace_root();
    let dir = root.join("target").join("bench-train");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let weights = dir.join(format!("{}_random.safetensors", args.config));
    let io = dir.join(format!("{}_batch.safetensors", args.config));
    let (threads, iters, batch) = (
        args.threads.to_string(),
        args.iters.to_string(),
        args.batch_size.to_string(),
    );
    let python = pytorch_interpreter(args.python.as_deref())?;
    let held = crate::HeldTo::from_flag(args.avx2);
    let ours = || {
        let (mut ours, _) = held.samus_command();
        ours.current_dir(&root)
            .args([
                "--threads",
                &threads,
                "bench",
                "--train",
                "--random-weights",
            ])
            .args(["--json", "--config", &args.config, "--iters", &iters])
            .args(["--batch-size", &batch])
            .arg("--save-weights")
            .arg(&weights)
            .arg("--write-io")
            .arg(&io);
        ours
    };
    let peer = || {
        let mut peer = Command::new(&python);
        held.hold_peer(&mut peer);
        peer.arg(root.join("bench").join("pytorch_reference.py"))
            .args(["--train", "--config", &args.config])
            .args(["--threads", &threads, "--iters", &iters])
            .arg("--weights")
            .arg(&weights)
            .arg("--io")
            .arg(&io)
            .arg("--json");
        peer
    };
    eprintln!(
        "training steps of samus (Rust) and the PyTorch peer ({python}), {threads} threads each"
    );
    let (rust, pytorch) = alternate_rounds(
        args.rounds,
        Side::new("samus bench --train", &ours),
        Side::new("pytorch_reference.py --train", &peer),
    )?;

    held.check_report(&rust)?;
    let comparison = TrainComparison::from_reports(&rust, &pytorch)?;
    if args.json {
        println!("{}", comparison.json());
    } else {
        print!("{}", comparison.table());
    }
    // A NaN difference fails too.
    let same = comparison.loss_rel_difference() <= args.tolerance;
    if !same {
        bail!(
            "the losses before the first update differ: {} against {} (relative {:.3e} > {:.1e})",
            comparison.first_loss.0,
            comparison.first_loss.1,
            comparison.loss_rel_difference(),
            args.tolerance
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reports() -> (Value, Value) {
        (
            json!({"train_step_median_s": 2.0, "first_loss": 0.75, "second_loss": 0.7,
                   "threads": 2, "batch_size": 4, "isa": "avx2",
                   "gemm_isa": "avx2"}),
            json!({"train_step_median_s": 3.0, "first_loss": 0.750003, "second_loss": 0.7,
                   "threads": 2}),
        )
    }

    #[test]
    fn ratio_losses_and_table_come_from_the_reports() {
        let (rust, pytorch) = reports();
        let c = TrainComparison::from_reports(&rust, &pytorch).unwrap();
        assert!((c.speedup() - 1.5).abs() < 1e-12);
        assert!((c.loss_rel_difference() - 4e-6).abs() < 1e-9);
        let table = c.table();
        assert!(
            table.contains("1.50x") && table.contains("batch 4"),
            "{table}"
        );
        assert!(
            table.contains("avx2") && table.contains("4.00e-6"),
            "{table}"
        );
        let j = c.json();
        for key in [
            "samus_step_s",
            "pytorch_step_s",
            "step_ratio",
            "loss_rel_difference",
            "isa",
            "gemm_isa",
        ] {
            assert!(j.get(key).is_some(), "{key} missing from {j}");
        }
        assert_eq!(j["pytorch_step_s"], json!(3.0));
    }

    #[test]
    fn a_report_without_a_key_names_it() {
        let (mut rust, pytorch) = reports();
        rust.as_object_mut().unwrap().remove("first_loss");
        let err = TrainComparison::from_reports(&rust, &pytorch)
            .unwrap_err()
            .to_string();
        assert!(err.contains("first_loss") && err.contains("samus"), "{err}");
    }
}
