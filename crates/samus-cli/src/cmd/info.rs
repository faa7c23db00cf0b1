//! `samus info`: what a checkpoint holds.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;
use samus_apg::auto_samus::is_apg_tensor;
use samus_model::checkpoint::{detect_kind, CheckpointKind};
use samus_model::weights::non_finite_count;
use samus_model::SamusConfig;
use samus_train::freeze::{autosamus_trainable, samus_trainable, TrainableSet};
use serde::Serialize;

use crate::support::model::read_checkpoint_tensors;

/// Examples printed by `samus info --help`.
pub const EXAMPLES: &str = "Examples:
  samus info sam_vit_b_01ec64.pth
  samus info runs/tiny/best.safetensors --json";

/// Arguments of `samus info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Checkpoint to describe (.pth zip or safetensors).
    #[arg(value_name = "CHECKPOINT")]
    input: PathBuf,
    /// Model configuration to check against (default: guessed from the tensor shapes).
    #[arg(long, value_name = "PRESET|FILE")]
    config: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// What `samus info` reports.
#[derive(Debug, Serialize)]
struct CheckpointInfo {
    file: String,
    kind: &'static str,
    config: Option<SamusConfig>,
    tensors: usize,
    parameters: usize,
    trainable_reference: usize,
    apg_tensors: usize,
    dtypes: BTreeMap<String, usize>,
    missing: Vec<String>,
    unexpected: Vec<String>,
    wrong_shape: Vec<String>,
    /// Tensors holding NaN or infinite values (with how many), which loading refuses.
    non_finite: Vec<String>,
}

fn kind_name(tensors: &HashMap<String, Tensor>, apg: usize) -> &'static str {
    match (detect_kind(tensors), apg > 0) {
        (Some(CheckpointKind::Samus), true) => "AutoSAMUS (SAMUS + APG)",
        (Some(CheckpointKind::Samus), false) => "SAMUS",
        (Some(CheckpointKind::Sam), _) => "SAM (SAMUS parts missing)",
        (None, true) => "APG only",
        (None, false) => "unknown (neither SAM nor SAMUS)",
    }
}

/// Runs `samus info`.
pub fn run(args: InfoArgs) -> Result<()> {
    let tensors = read_checkpoint_tensors(&args.input)?;
    let apg = tensors.keys().filter(|k| is_apg_tensor(k)).count();
    let config = match &args.config {
        Some(spec) => Some(SamusConfig::from_name_or_path(spec)?),
        None => samus_model::checkpoint::infer_config(&tensors),
    };
    let mut dtypes = BTreeMap::new();
    for t in tensors.values() {
        *dtypes
            .entry(format!("{:?}", t.dtype()).to_lowercase())
            .or_insert(0) += 1;
    }
    let (mut missing, mut unexpected, mut wrong_shape, mut trainable) =
        (Vec::new(), Vec::new(), Vec::new(), 0usize);
    if let Some(cfg) = &config {
        // The tensors a SAMUS model of this configuration has, with their shapes.
        let (_, expected) = samus_model::train::random_weights(cfg, 0, &Device::Cpu)?;
        let is_trainable = samus_trainable(cfg, TrainableSet::Reference);
        let apg_trainable = autosamus_trainable(TrainableSet::Reference);
        for (name, t) in &tensors {
            match expected.get(name) {
                Some(e) if e.dims() != t.dims() => {
                    wrong_shape.push(format!("{name}: {:?}, expected {:?}", t.dims(), e.dims()))
                }
                Some(_) => trainable += usize::from(is_trainable(name)),
                None if is_apg_tensor(name) => trainable += usize::from(apg_trainable(name)),
                None => unexpected.push(name.clone()),
            }
        }
        missing = expected
            .keys()
            .filter(|k| !tensors.contains_key(*k))
            .cloned()
            .collect();
    }
    let mut non_finite = Vec::new();
    for (name, t) in &tensors {
        let count = non_finite_count(t)?;
        if count > 0 {
            non_finite.push(format!("{name} ({count} of {})", t.elem_count()));
        }
    }
    for list in [
        &mut missing,
        &mut unexpected,
        &mut wrong_shape,
        &mut non_finite,
    ] {
        list.sort();
    }
    let info = CheckpointInfo {
        file: args.input.display().to_string(),
        kind: kind_name(&tensors, apg),
        parameters: tensors.values().map(|t| t.elem_count()).sum(),
        tensors: tensors.len(),
        trainable_reference: trainable,
        apg_tensors: apg,
        dtypes,
        missing,
        unexpected,
        wrong_shape,
        non_finite,
        config,
    };
    if args.json {
        outln!("{}", serde_json::to_string(&info)?)?;
    } else {
        print_info(&info)?;
    }
    Ok(())
}

fn print_info(info: &CheckpointInfo) -> Result<()> {
    outln!("file        {}", info.file)?;
    outln!("kind        {}", info.kind)?;
    match &info.config {
        Some(c) => outln!(
            "config      embed_dim {}, depth {}, heads {}, global blocks {:?}, input {}",
            c.embed_dim,
            c.depth,
            c.num_heads,
            c.global_attn_indexes,
            c.img_size
        )?,
        None => outln!("config      cannot be guessed from the tensor shapes")?,
    }
    outln!(
        "tensors     {} ({} parameters; {})",
        info.tensors,
        info.parameters,
        info.dtypes
            .iter()
            .map(|(d, n)| format!("{n} {d}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    outln!(
        "trainable   {} tensors in the reference recipe{}",
        info.trainable_reference,
        if info.apg_tensors > 0 {
            format!(" ({} APG tensors)", info.apg_tensors)
        } else {
            String::new()
        }
    )?;
    let show = |label: &str, list: &[String]| -> Result<()> {
        if list.is_empty() {
            outln!("{label:<11} none")?;
        } else {
            let head: Vec<&str> = list.iter().take(5).map(String::as_str).collect();
            let more = list.len().saturating_sub(head.len());
            outln!(
                "{label:<11} {}: {}{}",
                list.len(),
                head.join(", "),
                if more > 0 {
                    format!(", ... ({more} more)")
                } else {
                    String::new()
                }
            )?;
        }
        Ok(())
    };
    if info.config.is_some() {
        show("missing", &info.missing)?;
        show("unexpected", &info.unexpected)?;
        show("wrong shape", &info.wrong_shape)?;
    }
    show("non-finite", &info.non_finite)?;
    Ok(())
}
