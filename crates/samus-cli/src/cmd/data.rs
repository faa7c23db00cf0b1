//! `samus data`: inspect datasets in the US30K layout.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use samus_data::check::check_dataset;

/// Examples shown by `samus data --help`.
pub const EXAMPLES: &str = "\
Examples:
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

#[derive(Debug, Subcommand)]
enum DataCommand {
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
        DataCommand::Check { root, json } => {
            if !root.is_dir() {
                bail!("{} is not a folder", root.display());
            }
            let report = check_dataset(&root);
            if json {
                outln!("{}", serde_json::to_string(&report)?)?;
            } else {
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
            }
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
    }
}
