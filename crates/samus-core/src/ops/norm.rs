//! Layer normalisation: over the last axis ([`LayerNorm`]) and over the channel axis
//! of an NCHW tensor ([`LayerNorm2d`]).
//!
//! On the CPU the normalisation is one fused operation with a hand-written backward
//! pass (candle's fused kernel has none and loses precision); elsewhere it is composed
//! of elementary candle operations, so gradients flow through it either way.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

use crate::activation::{gelu_slope, gelu_value};
use crate::cpu_kernel::{
    contiguous_f32, cpu_f32, cpu_f32_inference, par_filled, par_filled_with, with_f32_values,
};
use crate::softmax::LANES;

/// Values normalised by one parallel task (whole rows, at least one).
const TASK_VALUES: usize = 1 << 14;

/// Layer normalisation over the last axis with an affine weight and bias
/// (PyTorch's `nn.LayerNorm(dim, eps)`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Wraps a weight and bias of shape `(C,)`.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// The per-channel scale.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The per-channel shift.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Normalises `x` over its last axis.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm_last_dim(x, &self.weight, &self.bias, self.eps)
    }

    /// `gelu(self.forward(x))`; on the CPU in f32, one pass that applies the GELU to
    /// each row while it is in the cache, and one backward pass through both.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        if !cpu_f32([x, &self.weight, &self.bias]) {
            return crate::activation::gelu(&self.forward(x)?);
        }
        let op = FusedLayerNorm {
            eps: self.eps,
            gelu: true,
        };
        let (x, w, b) = (
            x.contiguous()?,
            self.weight.contiguous()?,
            self.bias.contiguous()?,
        );
        if cpu_f32_inference([&x, &w, &b]) {
            x.apply_op3_no_bwd(&w, &b, &op)
        } else {
            x.apply_op3(&w, &b, op)
        }
    }
}

/// Layer normalisation over the channel axis of an NCHW tensor (SAM's `LayerNorm2d`):
/// mean and biased variance over C, then per-channel weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm2d {
    inner: LayerNorm,
}

impl LayerNorm2d {
    /// Wraps a weight and bias of shape `(C,)`.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self {
            inner: LayerNorm::new(weight, bias, eps),
        }
    }

    /// Normalises an NCHW tensor over C; returns a contiguous NCHW tensor.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let nhwc = x.permute((0, 2, 3, 1))?;
        self.forward_nhwc(&nhwc)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    /// Normalises an NHWC tensor over its last axis (the same operation, for callers
    /// that keep the channels last).
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }

    /// `gelu(self.forward_nhwc(x))`, fused as [`LayerNorm::forward_gelu`].
    pub fn forward_nhwc_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward_gelu(x)
    }
}

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last axis.
///
/// The mean and the biased variance are computed in two passes (the CPU forward in
/// f32 with 16 partial sums per row, its backward in f32 too), as precisely as
/// PyTorch; candle's fused kernel derives the variance from
/// `E[x^2] - E[x]^2`, which loses precision when the mean is large next to the spread.
/// On the CPU in f32 this is one fused operation with its own backward pass (candle's
/// has none); elsewhere it is composed of elementary operations.
pub fn layer_norm_last_dim(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let fused = x.device().is_cpu()
        && [x.dtype(), weight.dtype(), bias.dtype()]
            .iter()
            .all(|d| *d == DType::F32);
    if fused {
        return x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            FusedLayerNorm { eps, gelu: false },
        );
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// `sum(f(v))` over `values` with [`LANES`] accumulators (one SIMD register).
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Normalises each row of `c` values of `x` into `out` (then the GELU, if asked):
/// the mean, then the biased variance around it, both in f32 while the row is in
/// the cache; vectorised by `pulp`.
struct NormRows<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f64,
    gelu: bool,
}

impl pulp::WithSimd for NormRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let c = self.weight.len().max(1);
        for (row, out) in self.x.chunks_exact(c).zip(self.out.chunks_exact_mut(c)) {
            let mean = lane_sum(row, |v| v) / c as f32;
            let var = lane_sum(row, |v| (v - mean) * (v - mean)) / c as f32;
            let rstd = (1.0 / (var as f64 + self.eps).sqrt()) as f32;
            let values = out.iter_mut().zip(row).zip(self.weight).zip(self.bias);
            if self.gelu {
                for (((o, &v), &w), &b) in values {
                    *o = gelu_value((v - mean) * rstd * w + b);
                }
            } else {
                for (((o, &v), &w), &b) in values {
                    *o = (v - mean) * rstd * w + b;
                }
            }
        }
    }
}

/// LayerNorm over the last axis as one CPU operation with a hand-written backward,
/// optionally followed by the GELU (the backward then takes the gradient back through
/// both).
#[derive(Debug, Clone, Copy)]
struct FusedLayerNorm {
    eps: f64,
    gelu: bool,
}

impl CustomOp3 for FusedLayerNorm {
    fn name(&self) -> &'static str {
        "samus-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "layer norm")?;
        let w = contiguous_f32(s2, l2, "layer norm")?;
        let b = contiguous_f32(s3, l3, "layer norm")?;
        let c = l1.dims().last().copied().unwrap_or(0);
        if c == 0 || w.len() != c || b.len() != c {
            candle_core::bail!(
                "layer norm over {c} channels with weight {} and bias {}",
                w.len(),
                b.len()
            )
        }
        let task = (TASK_VALUES / c).max(1) * c;
        let out = par_filled(x.len(), task, |index, out| {
            crate::cpu::simd().dispatch(NormRows {
                x: &x[index * task..][..out.len()],
                out,
                weight: w,
                bias: b,
                eps: self.eps,
                gelu: self.gelu,
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(D::Minus1)?;
        let w = weight.to_vec1::<f32>()?;
        let b = bias.to_vec1::<f32>()?;
        let rows = NormBackward {
            c,
            eps: self.eps,
            weight: &w,
            bias: &b,
            gelu: self.gelu,
        };
        // Whole rows per task; each task sums its own weight and bias gradients, so
        // nothing is allocated per row. The saved input and the gradient are read in
        // place.
        let task = (TASK_VALUES / c).max(1) * c;
        let (dx, partial) = with_f32_values(x, "layer norm backward", |xs| {
            with_f32_values(grad, "layer norm backward", |gs| {
                if gs.len() != xs.len() {
                    candle_core::bail!(
                        "layer norm backward: gradient {:?} for input {:?}",
                        grad.shape(),
                        x.shape()
                    )
                }
                par_filled_with(xs.len(), task, |index, dx| {
                    let (x, g) = (
                        &xs[index * task..][..dx.len()],
                        &gs[index * task..][..dx.len()],
                    );
                    Ok(crate::cpu::simd().dispatch(NormBackwardRows {
                        rows: &rows,
                        x,
                        g,
                        dx,
                    }))
                })
            })
        })?;
        let (mut dw, mut db) = (vec![0f64; c], vec![0f64; c]);
        for (pw, pb) in &partial {
            dw.iter_mut().zip(pw).for_each(|(a, p)| *a += p);
            db.iter_mut().zip(pb).for_each(|(a, p)| *a += p);
        }
        let dev = x.device();
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(to_f32(dw), c, dev)?),
            Some(Tensor::from_vec(to_f32(db), c, dev)?),
        ))
    }
}

/// The backward pass of [`FusedLayerNorm`] over whole rows of `c` values.
struct NormBackward<'a> {
    c: usize,
    eps: f64,
    weight: &'a [f32],
    bias: &'a [f32],
    gelu: bool,
}

/// One task of [`NormBackward`]: writes the input gradient of the rows of `x` into
/// `dx` and returns their weight and bias gradients. With the GELU, the output
/// gradient `g` is first taken back through it, at the normalised value recomputed
/// from `x`. Run through `pulp` so that the GELU's `mul_add`s are instructions, not
/// calls.
struct NormBackwardRows<'a> {
    rows: &'a NormBackward<'a>,
    x: &'a [f32],
    g: &'a [f32],
    dx: &'a mut [f32],
}

impl pulp::WithSimd for NormBackwardRows<'_> {
    type Output = (Vec<f64>, Vec<f64>);

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Self::Output {
        let Self {
            rows: this,
            x,
            g,
            dx,
        } = self;
        let (c, w, b) = (this.c, this.weight, this.bias);
        // The task's weight and bias gradients (a few hundred rows) in f32 lanes; the
        // tasks' sums are added in f64.
        let mut dw = vec![0f32; c];
        let mut db = vec![0f32; c];
        let mut xhat = vec![0f32; c];
        let mut gy = vec![0f32; c];
        let mut gw = vec![0f32; c];
        for ((row, g), d) in x
            .chunks_exact(c)
            .zip(g.chunks_exact(c))
            .zip(dx.chunks_exact_mut(c))
        {
            // The forward's statistics, computed the same way.
            let mean = lane_sum(row, |v| v) / c as f32;
            let var = lane_sum(row, |v| (v - mean) * (v - mean)) / c as f32;
            let rstd = (1.0 / (var as f64 + this.eps).sqrt()) as f32;
            // Per row: xhat = (x - mean) rstd, dxhat = g w,
            // dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)); dw = sum g xhat; db = sum g.
            for (h, &v) in xhat.iter_mut().zip(row) {
                *h = (v - mean) * rstd;
            }
            if this.gelu {
                let values = gy.iter_mut().zip(g).zip(&xhat).zip(w.iter().zip(b));
                for (((o, &g), &h), (&w, &b)) in values {
                    *o = g * gelu_slope(h * w + b);
                }
            } else {
                gy.copy_from_slice(g);
            }
            for ((o, &g), &w) in gw.iter_mut().zip(&gy).zip(w) {
                *o = g * w;
            }
            let m1 = lane_sum(&gw, |v| v) / c as f32;
            let m2 = crate::softmax::dot(&gw, &xhat) / c as f32;
            let values = d.iter_mut().zip(&gw).zip(&xhat);
            for ((o, &gw), &h) in values {
                *o = rstd * (gw - m1 - h * m2);
            }
            let sums = dw.iter_mut().zip(db.iter_mut()).zip(gy.iter().zip(&xhat));
            for ((dw, db), (&g, &h)) in sums {
                *dw += g * h;
                *db += g;
            }
        }
        let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect();
        (widen(dw), widen(db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    fn naive(x: &[f32], c: usize, w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(c) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
            for (i, &v) in row.iter().enumerate() {
                out.push(
                    ((v as f64 - mean) / (var + eps).sqrt() * w[i] as f64 + b[i] as f64) as f32,
                );
            }
        }
        out
    }

    fn gelu_f64(v: f64) -> f64 {
        0.5 * v * (1.0 + candle_core::cpu::erf::erf_f64(v / std::f64::consts::SQRT_2))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Rows as wide as the encoder's (vector lanes and a tail), with a mean far
        /// from zero; alone and followed by the GELU.
        #[test]
        fn wide_rows_match_naive(rows in 1usize..5, c in 1usize..800, offset in -50f32..50.0, seed in 0u64..1000) {
            let vals = |n: usize, salt: u64| -> Vec<f32> {
                (0..n).map(|i| ((((i as u64 + 1) * (seed + salt) * 2_654_435_761) >> 9) % 2000) as f32 / 500.0 - 2.0).collect()
            };
            let data: Vec<f32> = vals(rows * c, 1).iter().map(|v| v + offset).collect();
            let (weight, bias) = (vals(c, 2), vals(c, 3));
            let dev = Device::Cpu;
            let ln = LayerNorm::new(Tensor::new(&weight[..], &dev).unwrap(), Tensor::new(&bias[..], &dev).unwrap(), 1e-6);
            let x = Tensor::from_vec(data.clone(), (rows, c), &dev).unwrap();
            let want = naive(&data, c, &weight, &bias, 1e-6);
            let got = ln.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let fused_gelu = ln.forward_gelu(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for ((g, gg), e) in got.iter().zip(&fused_gelu).zip(&want) {
                prop_assert!((g - e).abs() < 1e-4, "got {g}, want {e}");
                let e_gelu = gelu_f64(*e as f64) as f32;
                prop_assert!((gg - e_gelu).abs() < 1e-4, "gelu: got {gg}, want {e_gelu}");
            }
        }

        #[test]
        fn layer_norm_2d_matches_naive(n in 1usize..3, c in 1usize..9, h in 1usize..5, w in 1usize..5, seed in 0u32..100) {
            let len = n * c * h * w;
            let data: Vec<f32> = (0..len).map(|i| (((i as u32 + 3) * (seed + 11) * 7919) % 997) as f32 / 97.0 - 5.0).collect();
            let weight: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.1 - 0.3).collect();
            let dev = Device::Cpu;
            let x = Tensor::from_vec(data.clone(), (n, c, h, w), &dev).unwrap();
            let ln = LayerNorm2d::new(Tensor::new(&weight[..], &dev).unwrap(), Tensor::new(&bias[..], &dev).unwrap(), 1e-6);
            let got = ln.forward(&x).unwrap().permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let nhwc = x.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = naive(&nhwc, c, &weight, &bias, 1e-6);
            for (g, e) in got.iter().zip(&want) {
                prop_assert!((g - e).abs() < 1e-4, "got {g}, want {e}");
            }
        }
    }

    #[test]
    fn gradient_flows_through_layer_norm() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 4, 16), &dev)?)?;
        let w = Tensor::randn(1f32, 0.5, 16, &dev)?;
        let b = Tensor::randn(0f32, 0.5, 16, &dev)?;
        let y = layer_norm_last_dim(x.as_tensor(), &w, &b, 1e-5)?;
        let grads = (y.sqr()?.sum_all()?).backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// The fused backward equals the composed one (which candle differentiates),
        /// alone and followed by the GELU; with enough rows, over several tasks.
        #[test]
        fn fused_gradients_match_composed(rows in 1usize..5, c in 2usize..12, many in any::<bool>(), gelu in any::<bool>(), seed in 0u64..100) {
            let rows = if many { rows * 1500 } else { rows };
            let dev = Device::Cpu;
            let vals = |n: usize, salt: u64| -> Vec<f32> {
                (0..n).map(|i| ((((i as u64 + 1) * (seed + salt) * 2_654_435_761) >> 9) % 2000) as f32 / 500.0 - 2.0).collect()
            };
            let x = Tensor::from_vec(vals(rows * c, 1), (rows, c), &dev).unwrap();
            let w = Tensor::from_vec(vals(c, 2), c, &dev).unwrap();
            let b = Tensor::from_vec(vals(c, 3), c, &dev).unwrap();
            let r = Tensor::from_vec(vals(rows * c, 4), (rows, c), &dev).unwrap();
            let (xv, wv, bv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
            let ln = LayerNorm::new(wv.as_tensor().clone(), bv.as_tensor().clone(), 1e-5);
            let fused = if gelu { ln.forward_gelu(xv.as_tensor()) } else { ln.forward(xv.as_tensor()) }.unwrap();
            let g1 = (fused.clone() * &r).unwrap().sum_all().unwrap().backward().unwrap();
            // The composed formula, differentiated by candle.
            let (xc, wc, bc) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
            let mean = xc.as_tensor().mean_keepdim(D::Minus1).unwrap();
            let centred = xc.as_tensor().broadcast_sub(&mean).unwrap();
            let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let mut composed = centred.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap()
                .broadcast_mul(wc.as_tensor()).unwrap().broadcast_add(bc.as_tensor()).unwrap();
            if gelu {
                composed = composed.gelu_erf().unwrap();
            }
            let diff = (&fused - &composed).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "forward differs by {diff}");
            let g2 = (composed * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (a, b) in [(xv.as_tensor(), xc.as_tensor()), (wv.as_tensor(), wc.as_tensor()), (bv.as_tensor(), bc.as_tensor())] {
                // Relative to the gradient's size: with two nearly equal channels the
                // variance is tiny and the gradients large, and the composed f32
                // formula is the imprecise side.
                let scale = g2.get(b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let d = (g1.get(a).unwrap() - g2.get(b).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                prop_assert!(d < 1e-3 * (1.0 + scale), "gradient differs by {d} (largest {scale})");
            }
        }
    }

    #[test]
    fn large_mean_keeps_precision() -> Result<()> {
        // Two channels 1000 and 1000.01: E[x^2] - E[x]^2 in f32 would lose them.
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1000.0f32, 1000.01]], &dev)?;
        let ones = Tensor::ones(2, candle_core::DType::F32, &dev)?;
        let zeros = Tensor::zeros(2, candle_core::DType::F32, &dev)?;
        let y = layer_norm_last_dim(&x, &ones, &zeros, 1e-6)?.to_vec2::<f32>()?;
        let want = 0.005 / (0.005f64 * 0.005 + 1e-6).sqrt();
        assert!((y[0][1] as f64 - want).abs() < 2e-2, "{:?} vs {want}", y);
        Ok(())
    }
}
