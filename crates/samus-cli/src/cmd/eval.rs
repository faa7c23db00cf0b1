//! `samus eval`: a checkpoint scored on a split, per dataset and class.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use samus_data::{DatasetOptions, Us30kSplit};
use samus_train::evaluate::{evaluate_with, EvalReport};
use samus_train::freeze::TrainableSet;
use samus_train::model::{ModelKind, TestTimeAugmentation, TrainModel};

use super::train::{parse_batch_size, ModelAndData};
use crate::support::model::Checkpoint;
use crate::support::output::Outputs;
use crate::support::output::{check_output_file, check_output_folder};
use crate::support::report::{score_cells, write_report, CaseCollector, CellFormat};
use crate::support::RunContext;

/// Examples shown by `samus eval --help`.
pub const EXAMPLES: &str = "\
Examples:
  samus eval --checkpoint runs/samus/best.safetensors --data datasets/US30K --split test
  samus eval --checkpoint runs/samus/best.safetensors --data datasets/US30K --split test --tta flip
  samus eval --checkpoint runs/auto/best.safetensors --model autosamus --data datasets/US30K --split test --json";
/// Arguments of `samus eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint to evaluate (SAMUS, or AutoSAMUS with --model autosamus).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    #[command(flatten)]
    model_data: ModelAndData,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    split: String,
    /// Images per forward pass (1 to 4096).
    #[arg(long, default_value_t = 8, value_parser = parse_batch_size)]
    batch_size: usize,
    /// Test-time augmentation: `flip` also predicts the left-right mirror image (the
    /// click mirrored with it) and keeps the pixels whose mean probability exceeds 0.5;
    /// twice the time.
    #[arg(long, value_enum, default_value = "none")]
    tta: TtaArg,
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

/// Values of `--tta`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TtaArg {
    /// The image as it is.
    None,
    /// The image and its mirror image, probabilities averaged.
    Flip,
}

impl From<TtaArg> for TestTimeAugmentation {
    fn from(arg: TtaArg) -> Self {
        match arg {
            TtaArg::None => TestTimeAugmentation::None,
            TtaArg::Flip => TestTimeAugmentation::HorizontalFlip,
        }
    }
}

/// The report as CSV: one row per dataset/class and one for all images.
fn report_csv(report: &EvalReport) -> String {
    let format = CellFormat {
        decimals: None,
        hd_decimals: None,
        missing: "",
    };
    let mut out = String::from(
        "dataset,images,dice,iou,acc,se,sp,hd,hd95,hd_undefined,circumference_error_mm\n",
    );
    for (name, s) in report.rows() {
        let cells = score_cells(s, format).join(",");
        let circumference = s
            .circumference_error_mm
            .map_or_else(String::new, |e| e.to_string());
        out.push_str(&format!(
            "{name},{cells},{},{circumference}\n",
            s.hd_undefined
        ));
    }
    out
}

/// Prints the report as a table.
pub fn print_report(report: &EvalReport) -> Result<()> {
    let format = CellFormat {
        decimals: Some(4),
        hd_decimals: Some(2),
        missing: "-",
    };
    let widths = [6, 7, 7, 7, 7, 7, 8, 8, 9];
    // The circumference error (mm) is shown when some images have a pixel size.
    let measured = report.overall.circumference_images > 0;
    let row = |name: &str, cells: &[String]| {
        let cells: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        outln!("{name:<40} {}", cells.join(" "))
    };
    let mut header = ["images", "dice", "iou", "acc", "se", "sp", "hd", "hd95"]
        .map(String::from)
        .to_vec();
    if measured {
        header.push("hc_err_mm".to_string());
    }
    row("dataset/class", &header)?;
    for (name, s) in report.rows() {
        let mut cells = score_cells(s, format).to_vec();
        if measured {
            cells.push(
                s.circumference_error_mm
                    .map_or_else(|| "-".to_string(), |e| format!("{e:.2}")),
            );
        }
        row(name, &cells)?;
    }
    outln!("{:.2} images/s", report.images_per_s)
}

/// Runs `samus eval`.
pub fn run(args: EvalArgs, ctx: &RunContext) -> Result<()> {
    let outputs = Outputs::guarding([&args.checkpoint]);
    if let Some(path) = &args.csv {
        check_output_file(&outputs, "--csv", path)?;
    }
    if let Some(dir) = &args.report {
        check_output_folder("--report", dir, "the report folder")?;
    }
    let checkpoint = Checkpoint::read(&args.checkpoint, args.model_data.config.as_deref())?;
    let kind: ModelKind = args.model_data.model.into();
    if kind == ModelKind::AutoSamus && !checkpoint.has_apg() {
        bail!(
            "checkpoint {} holds no auto prompt generator (prompt_generator.*, feature_adapter.*); \
             evaluate it with --model samus, or train AutoSAMUS from it first",
            args.checkpoint.display()
        );
    }
    let model = TrainModel::from_tensors(
        checkpoint.tensors,
        &checkpoint.config,
        kind,
        TrainableSet::Reference,
        &ctx.device,
    )?;
    let split = Us30kSplit::open(
        &args.model_data.data,
        &args.split,
        DatasetOptions::evaluation(),
    )?;
    let mut cases = CaseCollector::default();
    let report = evaluate_with(
        &model,
        &split,
        args.batch_size,
        args.tta.into(),
        |sample, pred, m| {
            if args.report.is_some() {
                cases.offer(sample, pred, m);
            }
        },
    )?;
    if let Some(dir) = &args.report {
        let title = format!(
            "{} on {} / {}",
            args.checkpoint.display(),
            args.model_data.data.display(),
            args.split
        );
        write_report(&outputs, dir, &title, &report, &cases)?;
    }
    if let Some(path) = &args.csv {
        let text = report_csv(&report);
        outputs.bytes(path, text.as_bytes())?;
    }
    if args.json {
        outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        print_report(&report)?;
    }
    Ok(())
}
