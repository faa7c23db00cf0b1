//! Times the forward and backward pass of each part of the tiny image encoder on a
//! batch of 4 (every parameter a variable): where a training step's time goes.
//!
//! `cargo run --release -p samus-train --example parts_profile -- [PART]`, PART one
//! of `cnn_embed`, `patch_embed`, `window_block`, `global_block`, `neck` (default: all).

use std::time::Instant;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use samus_model::image_encoder::{CnnEmbed, EncoderBlock, Neck, PatchEmbed};
use samus_model::SamusConfig;

/// Batch size of the measurement.
const BATCH: usize = 4;
/// Runs per part; the last is reported (the first ones warm the allocator).
const RUNS: usize = 3;

fn time(name: &str, mut forward: impl FnMut() -> Result<Tensor>) -> Result<()> {
    let mut report = String::new();
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let out = forward()?;
        let t1 = Instant::now();
        let grads = out.sum_all()?.backward()?;
        let t2 = Instant::now();
        drop(grads);
        report = format!(
            "{name}: forward {:.3} s, backward {:.3} s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64()
        );
    }
    println!("{report}");
    Ok(())
}

fn main() -> Result<()> {
    let only = std::env::args().nth(1);
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let dev = Device::Cpu;
    let cfg = SamusConfig::tiny();
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
    let g = cfg.grid_size();
    let image = Tensor::rand(0f32, 1.0, (BATCH, 3, cfg.img_size, cfg.img_size), &dev)?;
    let tokens = Var::from_tensor(&Tensor::randn(
        0f32,
        1.0,
        (BATCH, g, g, cfg.embed_dim),
        &dev,
    )?)?;
    let cnn_tokens = Var::from_tensor(&Tensor::randn(
        0f32,
        1.0,
        (BATCH, g, g, cfg.embed_dim),
        &dev,
    )?)?;
    if wanted("cnn_embed") {
        let cnn = CnnEmbed::load(vb.pp("cnn_embed"), &cfg)?;
        time("cnn_embed", || cnn.forward(&image))?;
    }
    if wanted("patch_embed") {
        let patch = PatchEmbed::load(vb.pp("patch_embed"), &cfg)?;
        time("patch_embed", || patch.forward(&image))?;
    }
    let window = (0..cfg.depth).find(|i| !cfg.global_attn_indexes.contains(i));
    if let (true, Some(i)) = (wanted("window_block"), window) {
        let block = EncoderBlock::load(vb.pp("blocks").pp(i), &cfg, i)?;
        time("window_block", || {
            Ok(block.forward(tokens.as_tensor(), cnn_tokens.as_tensor())?.0)
        })?;
    }
    if let (true, Some(&i)) = (wanted("global_block"), cfg.global_attn_indexes.first()) {
        let block = EncoderBlock::load(vb.pp("blocks").pp(i), &cfg, i)?;
        time("global_block", || {
            let (x, cnnx) = block.forward(tokens.as_tensor(), cnn_tokens.as_tensor())?;
            x + cnnx
        })?;
    }
    if wanted("neck") {
        let neck = Neck::load(vb.pp("neck"), cfg.embed_dim, cfg.prompt_embed_dim)?;
        time("neck", || {
            neck.forward(&tokens.as_tensor().permute((0, 3, 1, 2))?)
        })?;
    }
    Ok(())
}
