//! The fused CUDA attention against samus-core's CPU attention, forward and backward
//! (feature `cuda`). Every test prints "SKIPPED" and passes where no CUDA device can
//! be opened (no GPU or no driver).
//!
//! The error measure is `max |got - want| / max |want|` over a whole tensor, with
//! the CPU f32 result on the same (for bf16: bf16-rounded) inputs as `want`; it
//! must stay within 1e-4 in f32 and 1e-2 in bf16.
#![cfg(feature = "cuda")]

use std::io::Write;
use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Tensor, Var};
use proptest::prelude::*;
use samus_core::cuda_attention::{fused_attention, uses_cuda_kernels};
use samus_core::{multi_head_attention, AttentionOptions, DecomposedRelPos};

/// CUDA device 0, or `None` (with one message) where none can be opened.
fn cuda() -> Option<&'static Device> {
    static DEVICE: OnceLock<Option<Device>> = OnceLock::new();
    DEVICE
        .get_or_init(|| match Device::new_cuda(0) {
            Ok(dev) => Some(dev),
            Err(e) => {
                let e = e.to_string();
                let e = e.lines().next().unwrap_or_default();
                // Written past libtest's capture, so that a skip shows in the log.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: no CUDA device could be opened ({e}); \
                     the CUDA attention tests need an NVIDIA GPU and driver"
                );
                None
            }
        })
        .as_ref()
}

/// One attention problem: `(B, H, Nq, Dh)` queries, `(B, H, Nk, Dh)` keys and
/// values, optionally with a decomposed relative-position bias between a query grid
/// and a key grid.
#[derive(Debug, Clone)]
struct Case {
    b: usize,
    h: usize,
    nq: usize,
    nk: usize,
    d: usize,
    grids: Option<((usize, usize), (usize, usize))>,
    seed: u32,
}

/// Deterministic values in `[-amp, amp)`.
fn values(n: usize, salt: u32, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = ((i as u32).wrapping_add(1))
                .wrapping_mul(salt.wrapping_mul(2) | 1)
                .wrapping_mul(2_654_435_761)
                ^ salt.rotate_left(13);
            let x = x.wrapping_mul(2_246_822_519) >> 8;
            ((x % 20_000) as f32 / 10_000.0 - 1.0) * amp
        })
        .collect()
}

/// The inputs of a case on the CPU in f32, rounded through `dtype`.
struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Weights of the loss `sum(out * w)`.
    w: Tensor,
    tables: Option<(Tensor, Tensor)>,
}

fn inputs(case: &Case, dtype: DType) -> Result<Inputs> {
    let dev = Device::Cpu;
    let round = |t: Tensor| -> Result<Tensor> { t.to_dtype(dtype)?.to_dtype(DType::F32) };
    let make = |shape: (usize, usize, usize, usize), salt: u32, amp: f32| -> Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        round(Tensor::from_vec(
            values(n, case.seed.wrapping_add(salt), amp),
            shape,
            &dev,
        )?)
    };
    let (b, h, nq, nk, d) = (case.b, case.h, case.nq, case.nk, case.d);
    let tables = match case.grids {
        Some(((qh, qw), (kh, kw))) => {
            let lh = 2 * qh.max(kh) - 1;
            let lw = 2 * qw.max(kw) - 1;
            let th = Tensor::from_vec(
                values(lh * d, case.seed.wrapping_add(5), 0.5),
                (lh, d),
                &dev,
            )?;
            let tw = Tensor::from_vec(
                values(lw * d, case.seed.wrapping_add(6), 0.5),
                (lw, d),
                &dev,
            )?;
            Some((round(th)?, round(tw)?))
        }
        None => None,
    };
    Ok(Inputs {
        q: make((b, h, nq, d), 1, 2.0)?,
        k: make((b, h, nk, d), 2, 2.0)?,
        v: make((b, h, nk, d), 3, 1.0)?,
        w: make((b, h, nq, d), 4, 1.0)?,
        tables,
    })
}

/// The output and the gradients of `sum(out * w)` with respect to q, k, v and the
/// relative-position tables, all as f32 on the CPU.
struct Results {
    out: Tensor,
    grads: Vec<(&'static str, Tensor)>,
}

fn run(case: &Case, inputs: &Inputs, dev: &Device, dtype: DType, fused: bool) -> Result<Results> {
    let to = |t: &Tensor| -> Result<Var> { Var::from_tensor(&t.to_dtype(dtype)?.to_device(dev)?) };
    let q = to(&inputs.q)?;
    let k = to(&inputs.k)?;
    let v = to(&inputs.v)?;
    let w = inputs.w.to_dtype(dtype)?.to_device(dev)?;
    let tables = match &inputs.tables {
        Some((th, tw)) => Some((to(th)?, to(tw)?)),
        None => None,
    };
    let rel = match (&tables, case.grids) {
        (Some((th, tw)), Some((qg, kg))) => Some(DecomposedRelPos::new(
            th.as_tensor(),
            tw.as_tensor(),
            qg,
            kg,
        )?),
        _ => None,
    };
    let scale = 1.0 / (case.d as f64).sqrt();
    let options = AttentionOptions::default();
    let out = if fused {
        if !uses_cuda_kernels(q.as_tensor(), k.as_tensor(), v.as_tensor(), rel.as_ref()) {
            candle_core::bail!("the CUDA kernels do not take {case:?}")
        }
        fused_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            scale,
            rel.as_ref(),
            options,
        )?
    } else {
        multi_head_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            scale,
            rel.as_ref(),
            options,
        )?
    };
    let loss = (&out * &w)?.sum_all()?;
    let store = loss.backward()?;
    let mut grads = Vec::new();
    let mut named = vec![("q", &q), ("k", &k), ("v", &v)];
    if let Some((th, tw)) = &tables {
        named.push(("rel_pos_h", th));
        named.push(("rel_pos_w", tw));
    }
    for (name, var) in named {
        let grad = store
            .get(var.as_tensor())
            .ok_or_else(|| candle_core::Error::msg(format!("no gradient for {name}")))?;
        grads.push((name, grad.to_dtype(DType::F32)?.to_device(&Device::Cpu)?));
    }
    Ok(Results {
        out: out.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
        grads,
    })
}

/// `max |got - want| / max |want|`.
fn relative_error(got: &Tensor, want: &Tensor) -> Result<f32> {
    let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(diff / scale.max(1e-6))
}

/// Runs `case` on the GPU in `dtype` and on the CPU in f32 and compares.
fn check(case: &Case, dtype: DType) -> std::result::Result<(), String> {
    let Some(dev) = cuda() else { return Ok(()) };
    let tolerance = if dtype == DType::BF16 { 1e-2 } else { 1e-4 };
    let inner = || -> Result<Vec<(String, f32)>> {
        let inputs = inputs(case, dtype)?;
        let got = run(case, &inputs, dev, dtype, true)?;
        let want = run(case, &inputs, &Device::Cpu, DType::F32, false)?;
        let mut errors = vec![("out".to_string(), relative_error(&got.out, &want.out)?)];
        for ((name, g), (_, w)) in got.grads.iter().zip(&want.grads) {
            errors.push((format!("d{name}"), relative_error(g, w)?));
        }
        Ok(errors)
    };
    let errors = inner().map_err(|e| format!("{case:?} in {dtype:?}: {e}"))?;
    for (name, err) in &errors {
        if err.is_nan() || *err > tolerance {
            return Err(format!(
                "{case:?} in {dtype:?}: {name} relative error {err:e} > {tolerance:e} (all: {errors:?})"
            ));
        }
    }
    Ok(())
}

fn head_size() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=16, 17usize..=32, 33usize..=64, 65usize..=128]
}

fn cross_case() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..4,
        1usize..150,
        1usize..150,
        head_size(),
        any::<u32>(),
    )
        .prop_map(|(b, h, nq, nk, d, seed)| Case {
            b,
            h,
            nq,
            nk,
            d,
            grids: None,
            seed,
        })
}

fn rel_pos_case() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..3,
        (1usize..12, 1usize..12),
        prop::option::of((1usize..12, 1usize..12)),
        head_size(),
        any::<u32>(),
    )
        .prop_map(|(b, h, q_grid, k_grid, d, seed)| {
            // Self-attention (key grid = query grid) or different grids.
            let k_grid = k_grid.unwrap_or(q_grid);
            Case {
                b,
                h,
                nq: q_grid.0 * q_grid.1,
                nk: k_grid.0 * k_grid.1,
                d,
                grids: Some((q_grid, k_grid)),
                seed,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn cross_attention_f32_matches_cpu(case in cross_case()) {
        check(&case, DType::F32).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn cross_attention_bf16_matches_cpu(case in cross_case()) {
        check(&case, DType::BF16).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn rel_pos_attention_f32_matches_cpu(case in rel_pos_case()) {
        check(&case, DType::F32).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn rel_pos_attention_bf16_matches_cpu(case in rel_pos_case()) {
        check(&case, DType::BF16).map_err(TestCaseError::fail)?;
    }
}

/// Windowed attention as SAM runs it: 14 x 14 windows (196 tokens) folded into the
/// batch, with the window's relative-position bias.
fn windowed_case(seed: u32) -> Case {
    Case {
        b: 2 * 9,
        h: 4,
        nq: 196,
        nk: 196,
        d: 64,
        grids: Some(((14, 14), (14, 14))),
        seed,
    }
}

#[test]
fn windowed_attention_matches_cpu() {
    for dtype in [DType::F32, DType::BF16] {
        if let Err(e) = check(&windowed_case(7), dtype) {
            panic!("{e}");
        }
    }
}

/// A SAMUS ViT-B global block: 1024 tokens on a 32 x 32 grid, 12 heads of 64.
#[test]
fn vit_b_global_block_matches_cpu() {
    let case = Case {
        b: 1,
        h: 12,
        nq: 1024,
        nk: 1024,
        d: 64,
        grids: Some(((32, 32), (32, 32))),
        seed: 11,
    };
    for dtype in [DType::F32, DType::BF16] {
        if let Err(e) = check(&case, dtype) {
            panic!("{e}");
        }
    }
}

/// Operands the kernels do not take (f16, heads over 128) still give the CPU
/// result, through the composed fallback on the GPU.
#[test]
fn unsupported_operands_fall_back() -> Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    let q = Tensor::from_vec(values(2 * 5 * 130, 3, 1.0), (1, 2, 5, 130), &Device::Cpu)?;
    let gpu = q.to_device(dev)?;
    assert!(!uses_cuda_kernels(&gpu, &gpu, &gpu, None));
    let f16 = gpu.to_dtype(DType::F16)?;
    assert!(!uses_cuda_kernels(&f16, &f16, &f16, None));
    let options = AttentionOptions::default();
    let got = fused_attention(&gpu, &gpu, &gpu, 0.1, None, options)?.to_device(&Device::Cpu)?;
    let want = multi_head_attention(&q, &q, &q, 0.1, None, options)?;
    assert!(relative_error(&got, &want)? <= 1e-4);
    Ok(())
}
