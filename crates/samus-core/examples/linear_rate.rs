//! Matrix-product rate at ViT-B's shapes: `samus_core::linear::linear` and the
//! packed-weight product of `samus_core::packed` for each kernel (AVX-512, AVX2,
//! portable; "not available on this CPU" for those it lacks), weights packed once
//! outside the timing, on rayon's pool as in the model.
//!
//! `cargo run --release -p samus-core --example linear_rate`

use candle_core::{Device, Tensor};
use samus_core::cpu::Isa;
use samus_core::packed::{gemm_packed, Epilogue, LeftOperand, PackedRhs, ProductOptions};

fn rate(rows: usize, k: usize, n: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let iters = 20;
    let start = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    let s = start.elapsed().as_secs_f64() / iters as f64;
    (s * 1e3, 2.0 * (rows * k * n) as f64 / 1e9 / s)
}

fn main() -> candle_core::Result<()> {
    samus_core::parallel::run_in_pool(|| {
        let dev = Device::Cpu;
        let threads = candle_core::utils::get_num_threads();
        for (rows, k, n) in [
            (1024, 768, 2304),
            (1024, 768, 3072),
            (1024, 3072, 768),
            (1024, 768, 768),
            (1024, 768, 192),
        ] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, n, &dev)?;
            let (ms, gflops) = rate(rows, k, n, || {
                samus_core::linear::linear(&x, &w, Some(&b))
                    .map(drop)
                    .unwrap_or(())
            });
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let ws = w.flatten_all()?.to_vec1::<f32>()?;
            let mut line = format!("{rows}x{k}x{n}: linear {ms:.2} ms, {gflops:.0} GFLOP/s");
            for isa in Isa::ALL {
                if !isa.is_supported() {
                    line += &format!("; packed {isa}: not available on this CPU");
                    continue;
                }
                let packed = PackedRhs::from_linear_weight_for(isa, &ws, n, k)?;
                let mut out = vec![0f32; rows * n];
                let left = LeftOperand {
                    data: &xs,
                    row_stride: k,
                    segment_offsets: &[0],
                    grid: None,
                };
                let (pms, pgflops) = rate(rows, k, n, || {
                    gemm_packed(
                        rows,
                        left,
                        &packed,
                        &mut out,
                        n,
                        ProductOptions::threaded(threads, Epilogue::None),
                    )
                    .unwrap_or(())
                });
                line += &format!("; packed {isa} {pms:.2} ms, {pgflops:.0} GFLOP/s");
            }
            println!("{line}");
        }
        // The 3x3 convolutions of the CNN branch and the refine adapters, packed.
        for (side, c, o) in [
            (256, 3, 64),
            (128, 64, 128),
            (64, 128, 256),
            (32, 256, 768),
            (32, 768, 768),
        ] {
            let x = Tensor::randn(0f32, 1.0, (1, side, side, c), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (o, c, 3, 3), &dev)?;
            let (ms, gflops) = rate(side * side, 9 * c, o, || {
                samus_core::conv::conv3x3_same_nhwc(&x, &k)
                    .map(drop)
                    .unwrap_or(())
            });
            let mut line = format!(
                "conv3x3 {side}x{side}x{c} -> {o}: unpacked {ms:.2} ms, {gflops:.0} GFLOP/s"
            );
            for isa in Isa::ALL {
                if !isa.is_supported() {
                    line += &format!("; {isa}: not available on this CPU");
                    continue;
                }
                let cache = samus_core::packed::PackedCache::for_isa(isa);
                let (ms, gflops) = rate(side * side, 9 * c, o, || {
                    samus_core::conv::conv3x3_same_nhwc_cached(&x, &k, Some(&cache))
                        .map(drop)
                        .unwrap_or(())
                });
                line += &format!("; {isa} {ms:.2} ms, {gflops:.0} GFLOP/s");
            }
            println!("{line}");
        }
        // The fused epilogues against their separate passes, at the MLP's shapes.
        use samus_core::linear::{linear_add_cached, linear_cached, linear_gelu_cached};
        use samus_core::packed::PackedCache;
        let x = Tensor::randn(0f32, 1.0, (1024, 768), &dev)?;
        let w1 = Tensor::randn(0f32, 1.0, (3072, 768), &dev)?;
        let b1 = Tensor::randn(0f32, 1.0, 3072, &dev)?;
        let h = Tensor::randn(0f32, 1.0, (1024, 3072), &dev)?;
        let w2 = Tensor::randn(0f32, 1.0, (768, 3072), &dev)?;
        let b2 = Tensor::randn(0f32, 1.0, 768, &dev)?;
        let (c1, c2) = (PackedCache::default(), PackedCache::default());
        for _ in 0..2 {
            let (separate, _) = rate(1024, 768, 3072, || {
                let y = linear_cached(&x, &w1, Some(&b1), &c1).and_then(|y| samus_core::gelu(&y));
                y.map(drop).unwrap_or(())
            });
            let (fused, _) = rate(1024, 768, 3072, || {
                linear_gelu_cached(&x, &w1, Some(&b1), &c1)
                    .map(drop)
                    .unwrap_or(())
            });
            println!("lin1 + GELU: separate {separate:.2} ms, fused {fused:.2} ms");
            let (separate, _) = rate(1024, 3072, 768, || {
                let y = linear_cached(&h, &w2, Some(&b2), &c2).and_then(|y| &x + y);
                y.map(drop).unwrap_or(())
            });
            let (fused, _) = rate(1024, 3072, 768, || {
                linear_add_cached(&h, &w2, Some(&b2), &x, &c2)
                    .map(drop)
                    .unwrap_or(())
            });
            println!("residual + lin2: separate {separate:.2} ms, fused {fused:.2} ms");
        }
        Ok(())
    })
}
