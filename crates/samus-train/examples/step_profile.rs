//! Times the parts of one training step of the tiny model (forward, loss, backward,
//! optimiser update) on random data.
//!
//! `cargo run --release -p samus-train --example step_profile -- [BATCH] [reference|all]`

use std::time::Instant;

use candle_core::{Device, Tensor};
use samus_model::{PromptBatch, SamusConfig};
use samus_train::freeze::TrainableSet;
use samus_train::loss::{bce_dice_loss, LossWeights};
use samus_train::model::{ModelKind, TrainModel};
use samus_train::optim::{Adam, AdamConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let set = match args.get(2).map(String::as_str) {
        Some("all") => TrainableSet::All,
        _ => TrainableSet::Reference,
    };
    let dev = Device::Cpu;
    let cfg = SamusConfig::tiny();
    let (_, tensors) = samus_model::train::random_weights(&cfg, 1, &dev)?;
    let model = TrainModel::from_tensors(tensors, &cfg, ModelKind::Samus, set, &dev)?;
    let mut opt = Adam::new(model.vars(), AdamConfig::default())?;
    let image = Tensor::rand(0f32, 1.0, (batch, 1, 256, 256), &dev)?;
    let target = Tensor::rand(0f32, 1.0, (batch, 1, 128, 128), &dev)?
        .ge(0.5)?
        .to_dtype(candle_core::DType::F32)?;
    let points = Tensor::full(128f32, (batch, 1, 2), &dev)?;
    let labels = Tensor::ones((batch, 1), candle_core::DType::F32, &dev)?;
    for step in 0..3 {
        let t0 = Instant::now();
        let enc = model.samus().embed_image(&image)?;
        let t1 = Instant::now();
        let prompts = PromptBatch {
            points: Some((&points, &labels)),
            ..Default::default()
        };
        let out = model.samus().decode(&enc, &prompts, false)?;
        let loss = bce_dice_loss(&out.low_res_logits, &target, LossWeights::default())?;
        let t2 = Instant::now();
        let grads = loss.backward()?;
        let t3 = Instant::now();
        opt.step(&grads)?;
        let t4 = Instant::now();
        println!(
            "step {step}: encoder {:.2} s, decoder+loss {:.2} s, backward {:.2} s, update {:.2} s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t4 - t3).as_secs_f64()
        );
    }
    Ok(())
}
