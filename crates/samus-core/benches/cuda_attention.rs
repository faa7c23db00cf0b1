//! Fused CUDA attention against candle's unfused attention at the SAMUS ViT-B
//! shape: batch 8, 12 heads of 64, 1024 tokens (a 32 x 32 grid), with and without
//! the decomposed relative-position bias, f32 and bf16, forward alone and forward
//! plus backward. Needs the `cuda` feature and a GPU:
//!
//! ```text
//! cargo bench -p samus-core --features cuda --bench cuda_attention
//! ```
//!
//! "unfused" is `multi_head_attention` on the GPU with all heads at once: candle's
//! matrix products (cuBLAS), its softmax kernel and the bias added as broadcast
//! additions, each writing a `(B x H, 1024, 1024)` score tensor.

use std::time::Duration;

use candle_core::{DType, Device, Result, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use samus_core::cuda_attention::{fused_attention, uses_cuda_kernels};
use samus_core::{multi_head_attention, AttentionOptions, DecomposedRelPos};

const B: usize = 8;
const H: usize = 12;
const GRID: usize = 32;
const N: usize = GRID * GRID;
const DH: usize = 64;

struct Operands {
    q: Var,
    k: Var,
    v: Var,
    rel_h: Var,
    rel_w: Var,
}

fn operands(dev: &Device, dtype: DType) -> Result<Operands> {
    let var = |shape: &[usize]| -> Result<Var> {
        Var::from_tensor(&Tensor::randn(0f32, 1., shape, dev)?.to_dtype(dtype)?)
    };
    Ok(Operands {
        q: var(&[B, H, N, DH])?,
        k: var(&[B, H, N, DH])?,
        v: var(&[B, H, N, DH])?,
        rel_h: var(&[2 * GRID - 1, DH])?,
        rel_w: var(&[2 * GRID - 1, DH])?,
    })
}

fn attention(ops: &Operands, fused: bool, with_bias: bool) -> Result<Tensor> {
    let rel = if with_bias {
        Some(DecomposedRelPos::new(
            ops.rel_h.as_tensor(),
            ops.rel_w.as_tensor(),
            (GRID, GRID),
            (GRID, GRID),
        )?)
    } else {
        None
    };
    let scale = 1.0 / (DH as f64).sqrt();
    let (q, k, v) = (ops.q.as_tensor(), ops.k.as_tensor(), ops.v.as_tensor());
    if fused {
        fused_attention(q, k, v, scale, rel.as_ref(), AttentionOptions::default())
    } else {
        let all_heads = AttentionOptions {
            max_score_elements: usize::MAX,
        };
        multi_head_attention(q, k, v, scale, rel.as_ref(), all_heads)
    }
}

fn step(dev: &Device, ops: &Operands, fused: bool, with_bias: bool, backward: bool) -> Result<()> {
    let out = attention(ops, fused, with_bias)?;
    if backward {
        out.sum_all()?.backward()?;
    }
    dev.synchronize()
}

fn bench(c: &mut Criterion) {
    let dev = match Device::new_cuda(0) {
        Ok(dev) => dev,
        Err(e) => {
            let e = e.to_string();
            let e = e.lines().next().unwrap_or_default();
            eprintln!("SKIPPED: no CUDA device could be opened ({e}); nothing to measure");
            return;
        }
    };
    // Forward FLOPs of the two matrix products: 4 * B * H * N^2 * Dh.
    let flops = 4 * B * H * N * N * DH;
    for dtype in [DType::F32, DType::BF16] {
        let ops = match operands(&dev, dtype) {
            Ok(ops) => ops,
            Err(e) => {
                eprintln!("cannot allocate the operands in {dtype:?}: {e}");
                return;
            }
        };
        if !uses_cuda_kernels(
            ops.q.as_tensor(),
            ops.k.as_tensor(),
            ops.v.as_tensor(),
            None,
        ) {
            eprintln!("the fused kernels do not take these operands: nothing to compare");
            return;
        }
        for (with_bias, bias_name) in [(false, "plain"), (true, "rel_pos")] {
            for (backward, pass) in [(false, "fwd"), (true, "fwd_bwd")] {
                let mut group = c.benchmark_group(format!(
                    "attention_{pass}_{bias_name}_{dtype:?}_b8h12n1024d64"
                ));
                group.sample_size(10);
                group.warm_up_time(Duration::from_millis(500));
                group.measurement_time(Duration::from_secs(2));
                group.throughput(Throughput::Elements(flops as u64));
                for (fused, name) in [(true, "fused"), (false, "unfused")] {
                    if let Err(e) = step(&dev, &ops, fused, with_bias, backward) {
                        eprintln!("{name} {pass} {bias_name} {dtype:?} failed: {e}");
                        continue;
                    }
                    group.bench_function(name, |bench| {
                        bench.iter(|| step(&dev, &ops, fused, with_bias, backward))
                    });
                }
                group.finish();
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
