//! `cargo xtask bench-compare`: SAMUS in Rust against the PyTorch peer, in one run.
//!
//! 1. `samus bench --random-weights --save-weights W --write-io IO --json` times our
//!    forward pass and keeps its random weights and one input/output pair;
//! 2. `bench/pytorch_reference.py --weights W --io IO --json` builds the same
//!    architecture in PyTorch, loads the same weights, checks its logits against ours
//!    and times the same forward with the same number of threads;
//! 3. the two reports are printed side by side with the speed ratio, and the task
//!    fails when the logits differ by more than the tolerance.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

/// Relative error of the logits (over the whole tensor) allowed between the two.
pub const DEFAULT_TOLERANCE: f64 = 1e-4;

/// Arguments of `cargo xtask bench-compare`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  cargo xtask bench-compare
  cargo xtask bench-compare --config tiny --iters 3
  cargo xtask bench-compare --rounds 3 --json
  SAMUS_PYTHON=~/venvs/torch/bin/python cargo xtask bench-compare --threads 4")]
pub struct BenchCompareArgs {
    /// Model configuration (a preset: vit_b, vit_l, vit_h, tiny).
    #[arg(long, default_value = "vit_b")]
    pub config: String,
    /// Threads for both implementations.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed images for both.
    #[arg(long, default_value_t = 5)]
    pub iters: u32,
    /// Rounds, each timing samus then PyTorch; the reports' figures are the medians
    /// over the rounds of each side, so that a slow minute of a shared machine
    /// falls on both sides (1 to 99).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..100))]
    pub rounds: u32,
    /// Python interpreter with torch, safetensors and numpy (default: $SAMUS_PYTHON,
    /// else python3).
    #[arg(long, value_name = "PATH")]
    pub python: Option<String>,
    /// Largest relative error of the logits that counts as the same result.
    #[arg(long, default_value_t = DEFAULT_TOLERANCE)]
    pub tolerance: f64,
    /// Folder for the shared weights and input/output files (default:
    /// target/bench-compare).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Hold both sides to AVX2 + FMA, as on a CPU without AVX-512: samus built
    /// without default features (the gemm crate without its AVX-512 kernels) and
    /// run with SAMUS_ISA=avx2; PyTorch with ATEN_CPU_CAPABILITY=avx2,
    /// MKL_ENABLE_INSTRUCTIONS=AVX2 and ONEDNN_MAX_CPU_ISA=AVX2.
    #[arg(long)]
    pub avx2: bool,
    /// Print one JSON object (`samus_full_s`, `samus_prompt_ms`, `pytorch_full_s`,
    /// `pytorch_prompt_ms`, `full_ratio`, `prompt_ratio`, `max_rel_error`,
    /// `threads`, `isa`, ...) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The numbers of one implementation's `--json` report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Encoder plus one prompt, median seconds.
    pub full_s: f64,
    /// Encoder alone, median seconds.
    pub encoder_s: f64,
    /// One more prompt on a cached embedding, median milliseconds.
    pub decoder_ms: f64,
    /// Threads it ran with.
    pub threads: usize,
}

/// The number under `key` in `who`'s `--json` report, or an error naming both.
pub(crate) fn report_number(report: &Value, who: &str, key: &str) -> Result<f64> {
    report
        .get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("{who}'s report has no number `{key}`"))
}

/// The string under `key` in `who`'s `--json` report, or an error naming both.
pub(crate) fn report_text(report: &Value, who: &str, key: &str) -> Result<String> {
    report
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("{who}'s report has no `{key}`"))
}

impl Timing {
    /// Reads the keys both reports share.
    pub fn from_report(report: &Value, who: &str) -> Result<Self> {
        let number = |key: &str| report_number(report, who, key);
        Ok(Self {
            full_s: number("full_median_s")?,
            encoder_s: number("encoder_median_s")?,
            decoder_ms: number("decoder_median_ms")?,
            threads: number("threads")? as usize,
        })
    }
}

/// The outcome of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Ours.
    pub rust: Timing,
    /// The PyTorch peer's.
    pub pytorch: Timing,
    /// Relative error of the PyTorch logits against ours.
    pub logits_rel_error: f64,
    /// The instruction set of our kernels (`samus bench`'s `isa`).
    pub isa: String,
    /// The gemm crate's instruction set (`samus bench`'s `gemm_isa`).
    pub gemm_isa: String,
}

impl Comparison {
    /// Builds the comparison from the two `--json` reports; the PyTorch report must
    /// hold `max_rel_error` (it compared its logits with ours).
    pub fn from_reports(rust: &Value, pytorch: &Value) -> Result<Self> {
        let logits_rel_error = pytorch
            .get("max_rel_error")
            .and_then(Value::as_f64)
            .context("the PyTorch report has no `max_rel_error`: it did not compare logits")?;
        let timing = Timing::from_report(rust, "samus bench")?;
        let text = |key: &str| report_text(rust, "samus bench", key);
        Ok(Self {
            rust: timing,
            pytorch: Timing::from_report(pytorch, "pytorch_reference.py")?,
            logits_rel_error,
            isa: text("isa")?,
            gemm_isa: text("gemm_isa")?,
        })
    }

    /// The `--json` report: one object with both implementations' medians, the
    /// ratios (above 1: ours is faster), the logits' error, threads and ISA.
    pub fn json(&self) -> Value {
        serde_json::json!({
            "samus_full_s": self.rust.full_s,
            "samus_encoder_s": self.rust.encoder_s,
            "samus_prompt_ms": self.rust.decoder_ms,
            "pytorch_full_s": self.pytorch.full_s,
            "pytorch_encoder_s": self.pytorch.encoder_s,
            "pytorch_prompt_ms": self.pytorch.decoder_ms,
            "full_ratio": self.speedup(),
            "prompt_ratio": self.pytorch.decoder_ms / self.rust.decoder_ms,
            "max_rel_error": self.logits_rel_error,
            "threads": self.rust.threads,
            "isa": self.isa,
            "gemm_isa": self.gemm_isa,
        })
    }

    /// How many times faster ours is for the full forward (above 1: ahead).
    pub fn speedup(&self) -> f64 {
        self.pytorch.full_s / self.rust.full_s
    }

    /// The side-by-side table.
    pub fn table(&self) -> String {
        let row = |name: &str, ours: f64, theirs: f64, unit: &str| {
            format!(
                "{name:<22}{ours:>10.3} {unit:<3}{theirs:>10.3} {unit:<3}{:>8.2}x\n",
                theirs / ours
            )
        };
        let mut out = format!(
            "{:<22}{:>14}{:>14}{:>9}\n",
            "", "samus (Rust)", "PyTorch", "ratio"
        );
        out += &row(
            "full (encoder + 1)",
            self.rust.full_s,
            self.pytorch.full_s,
            "s",
        );
        out += &row("encoder", self.rust.encoder_s, self.pytorch.encoder_s, "s");
        out += &row(
            "per extra prompt",
            self.rust.decoder_ms,
            self.pytorch.decoder_ms,
            "ms",
        );
        out += &format!(
            "threads {} / {}; samus kernels {} (gemm crate {}); logits relative error {:.2e}\n",
            self.rust.threads, self.pytorch.threads, self.isa, self.gemm_isa, self.logits_rel_error
        );
        out
    }
}

/// The workspace root (xtask's parent folder).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// Runs `command`, returning its standard output parsed as JSON (the last line that
/// parses, so that warnings before it do not matter).
pub(crate) fn json_output(mut command: Command, what: &str) -> Result<Value> {
    let output = command
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .with_context(|| format!("{what} printed no JSON report:\n{stdout}"))
}

/// The Python interpreter of the PyTorch peer: `given`, else `$SAMUS_PYTHON`, else
/// `python3`; fails, saying what to install, when it cannot import torch,
/// safetensors and numpy.
pub(crate) fn pytorch_interpreter(given: Option<&str>) -> Result<String> {
    let python = given
        .map(str::to_string)
        .or_else(|| std::env::var("SAMUS_PYTHON").ok())
        .unwrap_or_else(|| "python3".to_string());
    let probe = Command::new(&python)
        .args(["-c", "import torch, safetensors, numpy"])
        .output()
        .with_context(|| format!("cannot start Python `{python}`"))?;
    if !probe.status.success() {
        bail!(
            "`{python}` cannot import torch, safetensors and numpy: install them \
             (`pip install torch safetensors numpy`, see docs/PERFORMANCE.md) or name \
             another interpreter with --python or SAMUS_PYTHON"
        );
    }
    Ok(python)
}

/// One report of several rounds: every number the median of its values over the
/// rounds (the upper middle one for an even count), anything else as the first
/// round gave it.
pub(crate) fn median_report(reports: &[Value]) -> Value {
    let Some(Value::Object(first)) = reports.first() else {
        return reports.first().cloned().unwrap_or(Value::Null);
    };
    let mut merged = first.clone();
    for (key, value) in merged.iter_mut() {
        let mut numbers: Vec<f64> = reports
            .iter()
            .filter_map(|r| r.get(key).and_then(Value::as_f64))
            .collect();
        if value.is_f64() && numbers.len() == reports.len() {
            numbers.sort_by(f64::total_cmp);
            *value = serde_json::json!(numbers[numbers.len() / 2]);
        }
    }
    Value::Object(merged)
}

/// One side of an alternation: what it is called and the command that prints its
/// JSON report.
pub(crate) struct Side<'a> {
    /// The name in progress lines and errors (`samus bench`, ...).
    pub what: &'a str,
    /// A fresh command for each round.
    pub command: &'a dyn Fn() -> Command,
}

impl<'a> Side<'a> {
    /// The side `what`, run by `command`.
    pub fn new(what: &'a str, command: &'a dyn Fn() -> Command) -> Self {
        Self { what, command }
    }
}

/// Runs `rounds` rounds of `ours` then `peer` and returns each side's reports merged
/// into one ([`median_report`]), so that a slow minute of a shared machine falls on
/// both sides.
pub(crate) fn alternate_rounds(rounds: u32, ours: Side, peer: Side) -> Result<(Value, Value)> {
    let (mut ours_reports, mut peer_reports) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (side, reports) in [(&ours, &mut ours_reports), (&peer, &mut peer_reports)] {
            eprintln!("round {round}/{rounds}: {} ...", side.what);
            reports.push(json_output((side.command)(), side.what)?);
        }
    }
    Ok((median_report(&ours_reports), median_report(&peer_reports)))
}

/// Runs `cargo xtask bench-compare`.
pub fn run(args: &BenchCompareArgs) -> Result<()> {
    let root = workspace_root();
    let dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| root.join("target").join("bench-compare"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let weights = dir.join(format!("{}_random.safetensors", args.config));
    let io = dir.join(format!("{}_io.safetensors", args.config));
    let (threads, iters) = (args.threads.to_string(), args.iters.to_string());

    let python = pytorch_interpreter(args.python.as_deref())?;
    let held = crate::HeldTo::from_flag(args.avx2);
    let script = root.join("bench").join("pytorch_reference.py");
    let ours = || {
        let (mut ours, _) = held.samus_command();
        ours.current_dir(&root)
            .args(["--threads", &threads, "bench", "--random-weights", "--json"])
            .args(["--config", &args.config, "--iters", &iters])
            .arg("--save-weights")
            .arg(&weights)
            .arg("--write-io")
            .arg(&io);
        ours
    };
    let peer = || {
        let mut peer = Command::new(&python);
        held.hold_peer(&mut peer);
        peer.arg(&script)
            .args(["--config", &args.config, "--threads", &threads])
            .args(["--iters", &iters, "--json"])
            .arg("--weights")
            .arg(&weights)
            .arg("--io")
            .arg(&io);
        peer
    };
    eprintln!("samus (Rust) and the PyTorch peer ({python}), {threads} threads each");
    let (rust, pytorch) = alternate_rounds(
        args.rounds,
        Side::new("samus bench", &ours),
        Side::new("pytorch_reference.py", &peer),
    )?;

    held.check_report(&rust)?;
    let comparison = Comparison::from_reports(&rust, &pytorch)?;
    if args.json {
        println!("{}", comparison.json());
    } else {
        print!("{}", comparison.table());
    }
    // A NaN error fails too.
    let same = comparison.logits_rel_error <= args.tolerance;
    if !same {
        bail!(
            "the logits differ: relative error {:.3e} > {:.1e}",
            comparison.logits_rel_error,
            args.tolerance
        );
    }
    let speedup = comparison.speedup();
    if args.json {
        return Ok(());
    }
    if speedup >= 1.0 {
        println!("samus is {speedup:.2}x faster than PyTorch, with the same logits");
    } else {
        println!(
            "samus is {:.2}x slower than PyTorch, with the same logits",
            1.0 / speedup
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A command printing `{"t": <next of values>}`, one value a call.
    fn printing(values: &'static [f64]) -> impl Fn() -> Command {
        let next = std::cell::Cell::new(0);
        move || {
            let i = next.get();
            next.set(i + 1);
            let mut c = Command::new("echo");
            c.arg(format!("{{\"t\": {:.1}}}", values[i]));
            c
        }
    }

    #[test]
    fn rounds_alternate_and_each_side_keeps_its_medians() {
        let (ours, peer) = (printing(&[3.0, 1.0, 2.0]), printing(&[10.0, 30.0, 20.0]));
        let (a, b) =
            alternate_rounds(3, Side::new("ours", &ours), Side::new("peer", &peer)).unwrap();
        assert_eq!((a["t"].as_f64(), b["t"].as_f64()), (Some(2.0), Some(20.0)));

        let (ours, failing) = (printing(&[1.0]), || Command::new("false"));
        let error = alternate_rounds(1, Side::new("ours", &ours), Side::new("the peer", &failing))
            .unwrap_err();
        assert!(error.to_string().starts_with("the peer failed"), "{error}");
    }

    fn report(full: f64, encoder: f64, decoder: f64) -> Value {
        json!({"full_median_s": full, "encoder_median_s": encoder, "decoder_median_ms": decoder, "threads": 2, "isa": "avx2", "gemm_isa": "avx512"})
    }

    #[test]
    fn rounds_merge_into_medians_of_each_number() {
        let rounds = [
            report(2.0, 1.9, 25.0),
            report(3.0, 2.9, 12.0),
            report(2.5, 2.4, 30.0),
        ];
        let merged = median_report(&rounds);
        assert_eq!(merged["full_median_s"], json!(2.5));
        assert_eq!(merged["encoder_median_s"], json!(2.4));
        assert_eq!(merged["decoder_median_ms"], json!(25.0));
        // Integers and text stay as the first round gave them.
        assert_eq!(merged["threads"], json!(2));
        assert_eq!(merged["isa"], json!("avx2"));
        assert_eq!(median_report(&rounds[..1]), rounds[0]);
    }

    #[test]
    fn ratio_and_table_come_from_the_reports() {
        let mut theirs = report(2.5, 2.4, 20.0);
        theirs["max_rel_error"] = json!(3e-6);
        let c = Comparison::from_reports(&report(2.0, 1.9, 25.0), &theirs).unwrap();
        assert!((c.speedup() - 1.25).abs() < 1e-12);
        let table = c.table();
        assert!(table.contains("1.25x"), "{table}");
        assert!(table.contains("0.80x"), "{table}");
        assert!(
            table.contains("3.00e-6") && table.contains("avx2"),
            "{table}"
        );
        // The JSON report holds the keys the issue names, computed from the reports.
        let j = c.json();
        for key in [
            "samus_full_s",
            "samus_prompt_ms",
            "pytorch_full_s",
            "pytorch_prompt_ms",
            "full_ratio",
            "prompt_ratio",
            "max_rel_error",
            "threads",
            "isa",
            "gemm_isa",
        ] {
            assert!(j.get(key).is_some(), "{key} missing from {j}");
        }
        assert_eq!(j["samus_full_s"], json!(2.0));
        assert_eq!(j["pytorch_prompt_ms"], json!(20.0));
        assert!((j["prompt_ratio"].as_f64().unwrap() - 0.8).abs() < 1e-12);
        assert_eq!(j["isa"], json!("avx2"));
        assert_eq!(j["gemm_isa"], json!("avx512"));
    }

    #[test]
    fn a_report_without_logit_check_or_keys_is_an_error() {
        let err = Comparison::from_reports(&report(1.0, 1.0, 1.0), &report(1.0, 1.0, 1.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_rel_error"), "{err}");
        let mut theirs = report(1.0, 1.0, 1.0);
        theirs["max_rel_error"] = json!(0.0);
        let err = Comparison::from_reports(&json!({"threads": 2}), &theirs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("full_median_s"), "{err}");
    }
}
