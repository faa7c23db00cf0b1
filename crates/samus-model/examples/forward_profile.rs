//! Runs the ViT-B encoder or decoder (random weights) many times, for `perf`.
//!
//! `cargo run --release -p samus-model --example forward_profile -- decoder|encoder [N]`
//! prints "ready" once the random model and one embedding exist, then times N
//! one-point decodes on that embedding (default 300) or N encoder passes (default
//! 5) and prints the mean.

use candle_core::{Device, Tensor};
use samus_model::{PromptBatch, Samus, SamusConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let part = std::env::args().nth(1).unwrap_or_else(|| "decoder".into());
    let encoder = match part.as_str() {
        "encoder" => true,
        "decoder" => false,
        other => return Err(format!("unknown part {other:?}: encoder or decoder").into()),
    };
    let default_n = if encoder { 5 } else { 300 };
    let n: usize = std::env::args()
        .nth(2)
        .map_or(Ok(default_n), |s| s.parse())?;
    let dev = Device::Cpu;
    let cfg = SamusConfig::vit_b();
    let model = Samus::random(&cfg, 1, &dev)?;
    let image = Tensor::rand(0f32, 1.0, (1, 1, cfg.img_size, cfg.img_size), &dev)?;
    let embedding = model.embed_image(&image)?;
    let points = Tensor::new(&[[[128f32, 120.0]]], &dev)?;
    let labels = Tensor::new(&[[1f32]], &dev)?;
    let prompts = PromptBatch {
        points: Some((&points, &labels)),
        ..Default::default()
    };
    model.decode(&embedding, &prompts, false)?;
    eprintln!("ready");
    let start = std::time::Instant::now();
    for _ in 0..n {
        if encoder {
            model.embed_image(&image)?;
        } else {
            model.decode(&embedding, &prompts, false)?;
        }
    }
    let per = start.elapsed().as_secs_f64() * 1e3 / n as f64;
    println!("{n} {part} passes, {per:.2} ms each");
    Ok(())
}
