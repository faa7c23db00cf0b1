//! `samus synth`: write a synthetic ultrasound dataset in the US30K layout.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use samus_data::synth::{
    write_dataset_with, Difficulty, MAX_PER_DATASET, MIN_PER_DATASET_ALL_SPLITS,
};

use crate::support::output::check_output_folder;

/// Examples shown by `samus synth --help`.
pub const EXAMPLES: &str = "\
Examples:
  # 60 images of each kind (breast, thyroid, echocardiography) into datasets/synth
  samus synth --out datasets/synth --per-dataset 60

  # Harder images (lower contrast-to-noise ratio), another seed
  samus synth --out datasets/synth-hard --cnr 0.5,1.0 --seed 7";

/// Arguments of `samus synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder (created; existing files with the same names are replaced).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Images per kind, 3 to 100000; split 70/15/15 into train/val/test, at least one
    /// image each.
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = parse_per_dataset)]
    per_dataset: usize,
    /// Seed: the same seed writes the same dataset.
    #[arg(long, value_name = "S", default_value_t = 1234)]
    seed: u64,
    /// Range of the target's contrast-to-noise ratio, `MIN,MAX` (default 0.8,2.0).
    #[arg(long, value_name = "MIN,MAX", value_parser = parse_range)]
    cnr: Option<(f64, f64)>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Images per kind: at least one for each of train, val and test, at most
/// [`MAX_PER_DATASET`].
fn parse_per_dataset(text: &str) -> Result<usize, String> {
    let (lo, hi) = (MIN_PER_DATASET_ALL_SPLITS, MAX_PER_DATASET);
    match text.trim().parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        Ok(n) if n < lo => Err(format!(
            "{n} images per kind leaves a split empty: give at least {lo} (one each for train, val and test)"
        )),
        _ => Err(format!(
            "`{text}` is not a number of images per kind from {lo} to {hi}"
        )),
    }
}

fn parse_range(text: &str) -> Result<(f64, f64), String> {
    let parts: Vec<&str> = text.split(',').collect();
    let [lo, hi] = parts.as_slice() else {
        return Err(format!("expected MIN,MAX, got `{text}`"));
    };
    let parse = |s: &str| {
        s.trim()
            .parse::<f64>()
            .map_err(|_| format!("`{s}` is not a number"))
    };
    let (lo, hi) = (parse(lo)?, parse(hi)?);
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return Err(format!("need 0 < MIN <= MAX, got {lo},{hi}"));
    }
    Ok((lo, hi))
}

/// Runs `samus synth`.
pub fn run(args: SynthArgs) -> Result<()> {
    check_output_folder("--out", &args.out, "the dataset folder")?;
    let difficulty = match args.cnr {
        Some((cnr_min, cnr_max)) => Difficulty { cnr_min, cnr_max },
        None => Difficulty::default(),
    };
    let summary = write_dataset_with(&args.out, args.per_dataset, args.seed, &difficulty)?;
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?)?;
    } else {
        for (name, c) in &summary.datasets {
            outln!(
                "{name:<32} train {:>4}  val {:>4}  test {:>4}",
                c.train,
                c.val,
                c.test
            )?;
        }
        outln!(
            "wrote a US30K-layout dataset to {}; check it with `samus data check {}`",
            args.out.display(),
            args.out.display()
        )?;
    }
    Ok(())
}
