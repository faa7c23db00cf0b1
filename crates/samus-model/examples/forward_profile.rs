//! Runs the ViT-B encoder or decoder (random weights) many times, for `perf`.
//!
//! `cargo run --release -p samus-model --example forward_profile -- decoder|encoder [N]`
//! prints "ready" once the random model and one embedding exist, then times N
//! one-click predictions on that embedding (default 300; as `samus bench` and
//! `samus serve` decode a click) or N encoder passes (default 5) and prints the
//! mean, median and minimum.

use candle_core::{Device, Tensor};
use samus_model::{PointPrompt, Prompts, Samus, SamusConfig};

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
    let size = (cfg.img_size, cfg.img_size);
    let embedding = model.embed_input(&image, size)?;
    let prompts = Prompts {
        points: vec![PointPrompt::foreground(128.0, 120.0)],
        ..Default::default()
    };
    model.predict(&embedding, &prompts)?;
    eprintln!("ready");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = std::time::Instant::now();
        if encoder {
            model.embed_image(&image)?;
        } else {
            model.predict(&embedding, &prompts)?;
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mean = times.iter().sum::<f64>() / n.max(1) as f64;
    times.sort_by(f64::total_cmp);
    let (median, min) = (times.get(n / 2).copied(), times.first().copied());
    let (median, min) = (median.unwrap_or(f64::NAN), min.unwrap_or(f64::NAN));
    println!("{n} {part} passes: mean {mean:.2} ms, median {median:.2} ms, min {min:.2} ms");
    Ok(())
}
