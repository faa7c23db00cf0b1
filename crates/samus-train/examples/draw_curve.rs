//! Redraws `curve.png` of a run folder from its `metrics.csv` (for runs made before
//! the curve existed, or after editing the CSV).
//!
//! `cargo run --release -p samus-train --example draw_curve -- RUN_DIR [OUT.png]`

use std::path::PathBuf;

use samus_train::curve::{write_curve_png, Metrics};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let run = PathBuf::from(args.next().ok_or("usage: draw_curve RUN_DIR [OUT.png]")?);
    let out = args
        .next()
        .map_or_else(|| run.join("curve.png"), PathBuf::from);
    let metrics = Metrics::read(&run.join("metrics.csv"))?;
    write_curve_png(&metrics, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}
