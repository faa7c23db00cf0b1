//! `samus eval`: a checkpoint scored on a split, per dataset and class.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use samus_data::{DatasetOptions, Us30kSplit};
use samus_train::evaluate::{evaluate_with, EvalReport};
use samus_train::freeze::TrainableSet;
use samus_train::model::TrainModel;

use super::train::ModelArg;
use crate::support::model::Checkpoint;
use crate::support::output::Outputs;
use crate::support::report::{write_report, CaseCollector};
use crate::support::RunContext;

/// Examples shown by `samus eval --help`.
pub const EXAMPLES: &str = "\
Examples:
  samus eval --checkpoint runs/samus/best.safetensors --data datasets/US30K --split test
  samus eval --checkpoint runs/auto/best.safetensors --model autosamus --data datasets/US30K --split test --json";
/// Arguments of `samus eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint to evaluate (SAMUS, or AutoSAMUS with --model autosamus).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Model configuration (default: guessed from the checkpoint).
    #[arg(long, value_name = "PRESET|FILE")]
    config: Option<String>,
    /// Model to evaluate.
    #[arg(long, value_enum, default_value = "samus")]
    model: ModelArg,
    /// Dataset root in the US30K layout.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    split: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also write the per-dataset table as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Also write an HTML report into this folder (`index.html`: the table and the
    /// best and worst cases as overlays; opens in a browser without a server).
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

/// The report as CSV: one row per dataset/class and one for all images.
fn report_csv(report: &EvalReport) -> String {
    let opt = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
    let mut out = String::from("dataset,images,dice,iou,acc,se,sp,hd,hd95,hd_undefined\n");
    for (name, s) in report.rows() {
        out.push_str(&format!(
            "{name},{},{},{},{},{},{},{},{},{}\n",
            s.images,
            s.dice,
            s.iou,
            s.acc,
            s.se,
            s.sp,
            opt(s.hd),
            opt(s.hd95),
            s.hd_undefined
        ));
    }
    out
}

pub fn print_report(report: &EvalReport) {
    let hd = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    println!(
        "{:<40} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8}",
        "dataset/class", "images", "dice", "iou", "acc", "se", "sp", "hd", "hd95"
    );
    for (name, s) in report.rows() {
        println!(
            "{name:<40} {:>6} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>8} {:>8}",
            s.images,
            s.dice,
            s.iou,
            s.acc,
            s.se,
            s.sp,
            hd(s.hd),
            hd(s.hd95)
        );
    }
    println!("{:.2} images/s", report.images_per_s);
}

/// Runs `samus eval`.
pub fn run(args: EvalArgs, ctx: &RunContext) -> Result<()> {
    let outputs = Outputs::guarding([&args.checkpoint]);
    if let Some(path) = &args.csv {
        outputs.check(path)?;
    }
    let checkpoint = Checkpoint::read(&args.checkpoint, args.config.as_deref())?;
    let model = TrainModel::from_tensors(
        checkpoint.tensors,
        &checkpoint.config,
        args.model.into(),
        TrainableSet::Reference,
        &ctx.device,
    )?;
    let split = Us30kSplit::open(&args.data, &args.split, DatasetOptions::evaluation())?;
    let mut cases = CaseCollector::default();
    let report = evaluate_with(&model, &split, args.batch_size.max(1), |sample, pred, m| {
        if args.report.is_some() {
            cases.offer(sample, pred, m);
        }
    })?;
    if let Some(dir) = &args.report {
        let title = format!(
            "{} on {} / {}",
            args.checkpoint.display(),
            args.data.display(),
            args.split
        );
        write_report(&outputs, dir, &title, &report, &cases)?;
    }
    if let Some(path) = &args.csv {
        let text = report_csv(&report);
        outputs.bytes(path, text.as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}
