//! Counts what candle's backward pass bookkeeps in one training step of the tiny
//! model (random data, every parameter trainable): the graph's nodes grouped by
//! shape, largest total first. candle's `backward` gives every node a zero-filled
//! gradient buffer and adds each incoming gradient into it, on the calling thread,
//! so these bytes, not the matrix products, are the step's serial part
//! (docs/PERFORMANCE.md, session 17).
//!
//! `cargo run --release -p samus-train --example graph_sizes -- [BATCH] [SHAPES]`

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use samus_model::{PromptBatch, SamusConfig};
use samus_train::freeze::TrainableSet;
use samus_train::loss::{bce_dice_loss, LossWeights};
use samus_train::model::{ModelKind, TrainModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let shown: usize = args.get(2).map_or(Ok(25), |s| s.parse())?;
    let dev = Device::Cpu;
    let cfg = SamusConfig::tiny();
    let (_, tensors) = samus_model::train::random_weights(&cfg, 1, &dev)?;
    let model = TrainModel::from_tensors(tensors, &cfg, ModelKind::Samus, TrainableSet::All, &dev)?;
    let image = Tensor::rand(0f32, 1.0, (batch, 1, 256, 256), &dev)?;
    let target = Tensor::rand(0f32, 1.0, (batch, 1, 128, 128), &dev)?
        .ge(0.5)?
        .to_dtype(DType::F32)?;
    let points = Tensor::full(128f32, (batch, 1, 2), &dev)?;
    let labels = Tensor::ones((batch, 1), DType::F32, &dev)?;
    let embedding = model.samus().embed_image(&image)?;
    let prompts = PromptBatch {
        points: Some((&points, &labels)),
        ..Default::default()
    };
    let out = model.samus().decode(&embedding, &prompts, false)?;
    let loss = bce_dice_loss(&out.low_res_logits, &target, LossWeights::default())?;

    let nodes = loss.sorted_nodes();
    let megabytes = |values: usize| values as f64 * 4e-6;
    let total: usize = nodes.iter().map(|n| n.elem_count()).sum();
    let variables: usize = nodes
        .iter()
        .filter(|n| n.is_variable())
        .map(|n| n.elem_count())
        .sum();
    println!(
        "batch {batch}: {} nodes, {:.1} MB of node values ({:.1} MB of them variables)",
        nodes.len(),
        megabytes(total),
        megabytes(variables)
    );
    let mut by_shape: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for node in &nodes {
        let entry = by_shape.entry(format!("{:?}", node.dims())).or_default();
        entry.0 += 1;
        entry.1 += node.elem_count();
    }
    let mut by_shape: Vec<_> = by_shape.into_iter().collect();
    by_shape.sort_by_key(|(_, (_, values))| std::cmp::Reverse(*values));
    for (shape, (count, values)) in by_shape.iter().take(shown) {
        println!("{count:>5} x {shape:<28} {:>8.1} MB", megabytes(*values));
    }
    Ok(())
}
