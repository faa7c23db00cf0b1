//! Matrix-product rate of `samus_core::linear::linear` at ViT-B's shapes.
//!
//! `cargo run --release -p samus-core --example linear_rate`

use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (rows, k, n) in [
        (1024, 768, 2304),
        (1024, 768, 3072),
        (1024, 3072, 768),
        (1024, 768, 768),
        (1764, 768, 2304),
    ] {
        let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, n, &dev)?;
        samus_core::linear::linear(&x, &w, Some(&b))?;
        let iters = 20;
        let start = std::time::Instant::now();
        for _ in 0..iters {
            samus_core::linear::linear(&x, &w, Some(&b))?;
        }
        let s = start.elapsed().as_secs_f64() / iters as f64;
        let gflop = 2.0 * (rows * k * n) as f64 / 1e9;
        println!(
            "{rows}x{k}x{n}: {:.2} ms, {:.0} GFLOP/s",
            s * 1e3,
            gflop / s
        );
    }
    Ok(())
}
