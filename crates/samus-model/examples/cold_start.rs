//! Times each phase of a cold start, as `samus segment` pays it once per process:
//! reading the checkpoint, building the model, packing its weights, the first
//! encoder pass, and then a second (warm) pass for comparison.
//!
//! `cargo run --release -p samus-model --example cold_start -- CHECKPOINT`
//! (for instance the random ViT-B weights that `samus bench --random-weights
//! --save-weights w.safetensors` writes).

use std::time::Instant;

use candle_core::{Device, Tensor};
use samus_model::checkpoint::read_tensors;
use samus_model::Samus;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = std::env::args().nth(1) else {
        return Err("usage: cold_start CHECKPOINT".into());
    };
    let mut phase = Instant::now();
    let mut lap = |name: &str| {
        println!("{name:<14} {:>7.3} s", phase.elapsed().as_secs_f64());
        phase = Instant::now();
    };
    let start = Instant::now();
    let tensors = read_tensors(&path)?;
    lap("read");
    let (mut model, report) = Samus::loader_from_tensors(tensors).load_with_report()?;
    drop(report);
    lap("build");
    let packed = model.pack_for_inference()?;
    lap("pack");
    let size = model.config().img_size;
    let image = Tensor::rand(0f32, 1.0, (1, 1, size, size), &Device::Cpu)?;
    model.embed_image(&image)?;
    lap("first pass");
    let cold = start.elapsed().as_secs_f64();
    model.embed_image(&image)?;
    lap("second pass");
    println!(
        "cold total     {cold:>7.3} s ({} layers packed, {:.0} MB)",
        packed.layers,
        packed.bytes as f64 / 1e6
    );
    Ok(())
}
