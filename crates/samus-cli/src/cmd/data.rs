//! `samus data`: import public releases and folders into the US30K layout, and
//! check such a layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use samus_data::check::{check_dataset, CheckReport};
use samus_data::import::{import_dataset, FolderLayout, ImportFormat, ImportOptions, ImportReport};

/// Examples shown by `samus data --help`.
pub const EXAMPLES: &str = "\
Examples:
  # Import the BUS-BRA release, split by case (patient), into datasets/US30K
  samus data import busbra ~/Downloads/BUSBRA --out datasets/US30K

  # The same with the release's own 5-fold partition, fold 1 as the test set
  samus data import busbra ~/Downloads/BUSBRA --out datasets/US30K \\
      --folds-from ~/Downloads/BUSBRA/5-fold-cv.csv --fold 1

  # Your own scans and masks (masks/<stem>_seg.png, target stored as 255)
  samus data import folder ~/scans --out datasets/US30K --dataset Liver-Mine \\
      --images 'img/*.png' --masks 'masks/{stem}_seg.png' --map 255=1

  # Validate a US30K folder: per-dataset counts, then every problem found
  samus data check datasets/US30K

  # The same as JSON (exit code 1 when there are problems)
  samus data check datasets/US30K --json";

/// Arguments of `samus data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

/// The examples of `samus data import --help`, and the layouts it reads.
pub const IMPORT_EXAMPLES: &str = "\
Formats (the layout of each public release; datasets/README.md has the details):
  busi    Dataset_BUSI_with_GT/{benign,malignant,normal}/NAME.png, NAME_mask*.png (united)
  busbra  Images/bus_NNNN-s.png, Masks/mask_NNNN-s.png, bus_data.csv (case = patient)
  hc18    training_set/NNN_HC.png, NNN_HC_Annotation.png (ellipse, filled), pixel-size CSV
  tn3k    trainval-image/, trainval-mask/, test-image/, test-mask/ (test kept as test)
  ddti    N.xml (case, TI-RADS, polygon outlines) and N_M.jpg
  tg3k    thyroid-image/, thyroid-mask/
  udiat   original/, GT/
  camus   patientNNNN/patientNNNN_{2CH,4CH}_{ED,ES}[_gt].nii.gz or .mhd (4 classes)
  folder  --images GLOB --masks TEMPLATE [--map V=C] [--classes N]

Examples:
  samus data import busbra ~/Downloads/BUSBRA --out datasets/US30K
  samus data import busi ~/Downloads/Dataset_BUSI_with_GT --out datasets/US30K --skip-empty
  samus data import tn3k ~/Downloads/tn3k --out datasets/US30K \\
      --folds-from ~/Downloads/tn3k/tn3k-trainval-fold0.json
  samus data import folder ~/scans --out datasets/US30K --dataset Liver-Mine \\
      --images 'img/*.png' --masks 'masks/{stem}_seg.png' --map 255=1

Importing again changes nothing; another --dataset joins the same root.";

/// Arguments of `samus data import`.
#[derive(Debug, Args)]
struct ImportArgs {
    /// The source layout: busi, busbra, hc18, tn3k, ddti, tg3k, udiat, camus or folder.
    #[arg(value_name = "FORMAT")]
    format: ImportFormat,
    /// The folder the release was unpacked into.
    #[arg(value_name = "SRC")]
    src: PathBuf,
    /// The US30K root to write into (created if needed; other datasets in it are kept).
    #[arg(long, value_name = "ROOT")]
    out: PathBuf,
    /// The dataset folder (default: the format's, e.g. Breast-BUSBRA).
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// Validation fraction of all samples (default 0.1; 0 where the release or the
    /// folds file fixes validation).
    #[arg(long, value_name = "F")]
    val: Option<f64>,
    /// Test fraction of all samples (default 0.2; 0 where the release or the folds
    /// file fixes the test set).
    #[arg(long, value_name = "F")]
    test: Option<f64>,
    /// Seed of the patient-level split.
    #[arg(long, value_name = "S", default_value_t = 1234)]
    seed: u64,
    /// A folds file that fixes the split: a CSV like BUS-BRA's 5-fold-cv.csv (with
    /// --fold), or a JSON with train/val/test lists like TN3K's and TG3K's.
    #[arg(long, value_name = "FILE")]
    folds_from: Option<PathBuf>,
    /// The test fold of a folds CSV (1-based).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    fold: Option<u32>,
    /// Leave out images whose label is empty (BUSI's normal scans); by default they
    /// are imported as negatives.
    #[arg(long)]
    skip_empty: bool,
    /// folder format: the images, a glob relative to SRC (e.g. 'img/*.png').
    #[arg(long, value_name = "GLOB")]
    images: Option<String>,
    /// folder format: an image's mask(s) relative to SRC, with {stem} for its file
    /// stem (e.g. 'masks/{stem}_seg.png'; a glob unites several masks).
    #[arg(long, value_name = "TEMPLATE")]
    masks: Option<String>,
    /// folder format: mask value to class id, e.g. 255=1 (repeat, or comma-separate).
    #[arg(long, value_name = "V=C", value_delimiter = ',', value_parser = parse_mapping)]
    map: Vec<(u8, u8)>,
    /// folder format: classes, background included.
    #[arg(long, value_name = "N", default_value_t = 2)]
    classes: u32,
    /// Print the import report and the check report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `V=C`: a mask value and the class id it becomes.
fn parse_mapping(s: &str) -> std::result::Result<(u8, u8), String> {
    let (v, c) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not VALUE=CLASS (e.g. 255=1)"))?;
    let byte = |t: &str, what: &str| {
        t.trim()
            .parse::<u8>()
            .map_err(|_| format!("{what} `{t}` in `{s}` is not a number from 0 to 255"))
    };
    Ok((byte(v, "value")?, byte(c, "class id")?))
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Import a public release (BUSI, BUS-BRA, HC18, TN3K, DDTI, TG3K, UDIAT, CAMUS) or
    /// any folder of scans and masks into a US30K root, split by patient; ends with
    /// the `data check` report.
    #[command(after_help = IMPORT_EXAMPLES)]
    Import(Box<ImportArgs>),
    /// Check a dataset folder in the US30K layout (class.json, split files, image and
    /// label pairs) and print per-dataset counts and problems.
    #[command(after_help = EXAMPLES)]
    Check {
        /// The dataset root (holding MainPatient/).
        #[arg(value_name = "DIR")]
        root: PathBuf,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `samus data`.
pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Import(args) => run_import(*args),
        DataCommand::Check { root, json } => {
            if !root.is_dir() {
                bail!("{} is not a folder", root.display());
            }
            let report = check_dataset(&root);
            if json {
                outln!("{}", serde_json::to_string(&report)?)?;
            } else {
                print_check(&report)?;
            }
            finish_check(&report, &root, json)
        }
    }
}

fn run_import(args: ImportArgs) -> Result<()> {
    let folder = match (args.format, args.images, args.masks) {
        (ImportFormat::Folder, Some(images), Some(masks)) => Some(FolderLayout {
            images,
            masks,
            map: args.map.iter().copied().collect::<BTreeMap<u8, u8>>(),
            classes: args.classes,
        }),
        (ImportFormat::Folder, _, _) => {
            bail!("the folder format needs --images GLOB and --masks TEMPLATE (see --help)")
        }
        (format, images, masks) => {
            if images.is_some() || masks.is_some() || !args.map.is_empty() {
                bail!("--images, --masks and --map are for the folder format, not {format}");
            }
            None
        }
    };
    let options = ImportOptions {
        dataset: args.dataset,
        val: args.val,
        test: args.test,
        seed: args.seed,
        folds_from: args.folds_from,
        fold: args.fold,
        skip_empty: args.skip_empty,
        folder,
    };
    let report = import_dataset(args.format, &args.src, &args.out, &options)?;
    let check = check_dataset(&args.out);
    if args.json {
        let both = serde_json::json!({ "import": report, "check": check });
        outln!("{}", serde_json::to_string(&both)?)?;
    } else {
        print_import(&report, &args.src, &args.out)?;
        outln!("")?;
        print_check(&check)?;
    }
    finish_check(&check, &args.out, args.json)
}

fn print_import(report: &ImportReport, src: &Path, root: &Path) -> Result<()> {
    outln!(
        "imported {} from {} into {}: {} sample(s) ({} written, {} unchanged), {} negative(s){}",
        report.format,
        src.display(),
        root.join(&report.dataset).display(),
        report.imported(),
        report.written,
        report.unchanged,
        report.negatives,
        report
            .patients
            .map(|p| format!(", {p} patient(s)"))
            .unwrap_or_default()
    )?;
    let splits: Vec<String> = ["train", "val", "test"]
        .iter()
        .map(|s| format!("{s} {}", report.splits.get(*s).copied().unwrap_or(0)))
        .collect();
    outln!("splits (by patient): {}", splits.join(", "))?;
    if !report.unknown_in_folds.is_empty() {
        outln!(
            "the folds file names {} id(s) that the source lacks, e.g. {}",
            report.unknown_in_folds.len(),
            report.unknown_in_folds[0]
        )?;
    }
    if report.skipped.is_empty() {
        outln!("skipped: none")?;
    } else {
        outln!("skipped {} file(s):", report.skipped.len())?;
        for s in &report.skipped {
            outln!("  {}: {}", s.source.display(), s.reason)?;
        }
    }
    Ok(())
}

fn print_check(report: &CheckReport) -> Result<()> {
    outln!(
        "{:<40} {:>7} {:>7} {:>7}  split lines",
        "dataset",
        "classes",
        "images",
        "labels"
    )?;
    for (name, c) in &report.datasets {
        let splits: Vec<String> = c
            .split_lines
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        outln!(
            "{name:<40} {:>7} {:>7} {:>7}  {}",
            c.classes,
            c.images,
            c.labels,
            splits.join(", ")
        )?;
    }
    for p in &report.problems {
        outln!("problem: {p}")?;
    }
    Ok(())
}

fn finish_check(report: &CheckReport, root: &Path, json: bool) -> Result<()> {
    if !report.is_ok() {
        bail!(
            "{} problem(s) found in {}",
            report.problems.len(),
            root.display()
        );
    }
    if !json {
        outln!("ok: no problems found")?;
    }
    Ok(())
}
