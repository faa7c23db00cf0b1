//! `samus convert`: a SAM or SAMUS checkpoint (.pth or safetensors) as a SAMUS
//! safetensors file.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use clap::Args;
use samus_apg::auto_samus::is_apg_tensor;
use samus_model::CheckpointKind;

use crate::support::model::Checkpoint;
use crate::support::output::{OutputKind, Outputs};
use crate::support::RunContext;

/// Examples printed by `samus convert --help`.
pub const EXAMPLES: &str = "Examples:
  # SAM ViT-B (original release, .pth) -> a SAMUS checkpoint (SAMUS parts freshly initialised)
  samus convert sam_vit_b_01ec64.pth --out samus_vit_b.safetensors

  # A SAMUS or AutoSAMUS .pth from the reference -> safetensors (APG tensors are kept)
  samus convert SAMUS_US30K.pth --out samus.safetensors";

/// Arguments of `samus convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// SAM or SAMUS checkpoint (.pth zip or safetensors), original parameter names.
    #[arg(value_name = "CHECKPOINT")]
    input: PathBuf,
    /// Output safetensors file (written atomically).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Model configuration (default: guessed from the tensor shapes).
    #[arg(long, value_name = "PRESET|FILE")]
    config: Option<String>,
}

/// Runs `samus convert`.
pub fn run(args: ConvertArgs) -> Result<()> {
    let outputs = Outputs::guarding([&args.input]);
    outputs.plan(&[("--out", &args.out, OutputKind::Safetensors)])?;
    let mut checkpoint = Checkpoint::read(&args.input, args.config.as_deref())?;
    let cfg = checkpoint.config.clone();
    let (apg, model_tensors): (HashMap<_, _>, HashMap<_, _>) =
        std::mem::take(&mut checkpoint.tensors)
            .into_iter()
            .partition(|(k, _)| is_apg_tensor(k));
    checkpoint.tensors = model_tensors;
    // Converted on the CPU: the file is written from there.
    let cpu = RunContext {
        device: Device::Cpu,
    };
    let (_, report) = checkpoint.samus(&cpu)?;
    let mut out = report.tensors;
    let apg_count = apg.len();
    out.extend(apg);
    let metadata = HashMap::from([
        ("format".to_string(), "samus".to_string()),
        ("config".to_string(), serde_json::to_string(&cfg)?),
        (
            "source".to_string(),
            args.input
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        ),
    ]);
    outputs.safetensors(&args.out, &out, Some(metadata))?;
    let kind = match report.kind {
        CheckpointKind::Sam => "SAM",
        CheckpointKind::Samus => "SAMUS",
    };
    outln!(
        "converted a {kind} checkpoint ({} wide, {} blocks) to {}: {} tensors{}{}",
        cfg.embed_dim,
        cfg.depth,
        args.out.display(),
        out.len(),
        if apg_count > 0 {
            format!(", {apg_count} of them APG")
        } else {
            String::new()
        },
        if report.initialised.is_empty() {
            String::new()
        } else {
            format!(
                "; {} SAMUS tensors are freshly initialised (UNTRAINED until you train them)",
                report.initialised.len()
            )
        }
    )?;
    if !report.unused.is_empty() {
        eprintln!(
            "note: {} tensors of the input are not part of SAMUS and were dropped (e.g. `{}`)",
            report.unused.len(),
            report.unused[0]
        );
    }
    Ok(())
}
