//! Softmax over the last axis, alone or with SAM's decomposed relative-position bias
//! added on the way, as single CPU operations with their own backward pass.
//!
//! In attention the score matrices are the largest tensors of a training step
//! (batch x heads x 1024 x 1024 for a global block). Composed of candle
//! operations, the bias additions and the softmax would each write a new matrix
//! forward and several more backward; here the forward pass writes only the
//! probabilities and the backward pass only the score gradient. On other devices
//! and dtypes the same functions fall back to composed candle operations.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

use crate::cpu_kernel::contiguous_f32;

use crate::special::exp_nonpositive;

/// Elements handled per parallel task (whole rows at a time).
const TASK_ELEMENTS: usize = 1 << 15;

/// Softmax over the last axis.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(&[x]) {
        return x.contiguous()?.apply_op1(FusedSoftmax);
    }
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// `softmax(scores + rel_h[..., a] + rel_w[..., b])` over the keys, for scores
/// `(G, Nq, kh * kw)` whose key index is `a * kw + b`, `rel_h` `(G, Nq, kh)` and
/// `rel_w` `(G, Nq, kw)`: the attention probabilities of SAM's blocks with
/// decomposed relative positions. The additions happen in the reference's order.
pub fn softmax_with_decomposed_bias(
    scores: &Tensor,
    rel_h: &Tensor,
    rel_w: &Tensor,
) -> Result<Tensor> {
    let (g, nq, nk) = scores.dims3()?;
    let (hg, hq, kh) = rel_h.dims3()?;
    let (wg, wq, kw) = rel_w.dims3()?;
    if (hg, hq, wg, wq) != (g, nq, g, nq) || kh * kw != nk {
        candle_core::bail!(
            "relative-position bias {:?} + {:?} does not fit scores {:?}",
            rel_h.shape(),
            rel_w.shape(),
            scores.shape()
        )
    }
    if is_cpu_f32(&[scores, rel_h, rel_w]) {
        return scores
            .contiguous()?
            .apply_op3(&rel_h.contiguous()?, &rel_w.contiguous()?, BiasedSoftmax)?
            .reshape((g, nq, nk));
    }
    let biased = scores
        .reshape((g, nq, kh, kw))?
        .broadcast_add(&rel_h.unsqueeze(3)?)?
        .broadcast_add(&rel_w.unsqueeze(2)?)?
        .reshape((g, nq, nk))?;
    softmax_last_dim(&biased)
}

fn is_cpu_f32(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Rows per parallel task for rows of `len` elements.
fn rows_per_task(len: usize) -> usize {
    (TASK_ELEMENTS / len.max(1)).max(1)
}

/// Independent accumulators per reduction, so that the compiler can keep them in one
/// SIMD register (a float sum or maximum in one accumulator is a serial chain).
pub(crate) const LANES: usize = 16;

/// The largest value of `row`, ignoring NaNs (a NaN still makes the whole softmax
/// row NaN: `exp(NaN - max)` is NaN, and so is the sum every value is divided by).
#[inline(always)]
pub(crate) fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    // `if v > a` rather than `f32::max`: one vmaxps, without NaN bookkeeping.
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut max = acc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for &v in tail {
        max = max.max(v);
    }
    max
}

/// Replaces each value by `exp(value - max)` and returns their sum.
#[inline(always)]
pub(crate) fn exp_shifted_sum(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (a, v) in acc.iter_mut().zip(chunk.iter_mut()) {
            *v = exp_nonpositive(*v - max);
            *a += *v;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - max);
        sum += *v;
    }
    sum
}

/// `sum(a * b)` with [`LANES`] accumulators.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + ta.iter().zip(tb).map(|(x, y)| x * y).sum::<f32>()
}

/// Turns each row of `rows` (already holding the logits) into probabilities in
/// place; vectorised by `pulp`.
struct SoftmaxRows<'a> {
    rows: &'a mut [f32],
    len: usize,
}

impl pulp::WithSimd for SoftmaxRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for row in self.rows.chunks_mut(self.len) {
            let max = row_max(row);
            let inv = 1.0 / exp_shifted_sum(row, max);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// `d = p * (g - <g, p>)` row by row: the gradient of the logits from the
/// probabilities `p` and their gradient `g`.
pub(crate) struct SoftmaxBackwardRows<'a> {
    pub(crate) probs: &'a [f32],
    pub(crate) grad: &'a [f32],
    pub(crate) out: &'a mut [f32],
    pub(crate) len: usize,
}

impl pulp::WithSimd for SoftmaxBackwardRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let rows = self
            .out
            .chunks_mut(self.len)
            .zip(self.probs.chunks(self.len).zip(self.grad.chunks(self.len)));
        for (d, (p, g)) in rows {
            let dot = dot(p, g);
            for ((d, &p), &g) in d.iter_mut().zip(p).zip(g) {
                *d = p * (g - dot);
            }
        }
    }
}

/// Softmax over the last axis as one CPU operation.
#[derive(Debug, Clone, Copy)]
struct FusedSoftmax;

impl CustomOp1 for FusedSoftmax {
    fn name(&self) -> &'static str {
        "samus-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "softmax")?;
        let len = layout.dims().last().copied().unwrap_or(1);
        let mut out = x.to_vec();
        if len > 0 {
            out.par_chunks_mut(len * rows_per_task(len))
                .for_each(|rows| crate::cpu::simd().dispatch(SoftmaxRows { rows, len }));
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?,
        ))
    }
}

/// The logits' gradient from the probabilities (first operand) and their gradient.
#[derive(Debug, Clone, Copy)]
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "samus-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let probs = contiguous_f32(s1, l1, "softmax")?;
        let grad = contiguous_f32(s2, l2, "softmax")?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "softmax backward: gradient {:?} for probabilities {:?}",
                l2.shape(),
                l1.shape()
            )
        }
        let len = l1.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; probs.len()];
        if len > 0 {
            let task = len * rows_per_task(len);
            out.par_chunks_mut(task)
                .zip(probs.par_chunks(task).zip(grad.par_chunks(task)))
                .for_each(|(out, (probs, grad))| {
                    crate::cpu::simd().dispatch(SoftmaxBackwardRows {
                        probs,
                        grad,
                        out,
                        len,
                    })
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// [`softmax_with_decomposed_bias`] as one CPU operation: scores, `rel_h`, `rel_w`.
#[derive(Debug, Clone, Copy)]
struct BiasedSoftmax;

impl CustomOp3 for BiasedSoftmax {
    fn name(&self) -> &'static str {
        "samus-softmax-rel-pos"
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
        let scores = contiguous_f32(s1, l1, "softmax")?;
        let rel_h = contiguous_f32(s2, l2, "softmax")?;
        let rel_w = contiguous_f32(s3, l3, "softmax")?;
        let (_, _, nk) = l1.shape().dims3()?;
        let (_, _, kh) = l2.shape().dims3()?;
        let (_, _, kw) = l3.shape().dims3()?;
        let mut out = vec![0f32; scores.len()];
        if nk > 0 {
            let rows = rows_per_task(nk);
            out.par_chunks_mut(nk * rows)
                .zip(scores.par_chunks(nk * rows))
                .zip(rel_h.par_chunks(kh * rows).zip(rel_w.par_chunks(kw * rows)))
                .for_each(|((out, scores), (rel_h, rel_w))| {
                    let rows = out
                        .chunks_mut(nk)
                        .zip(scores.chunks(nk))
                        .zip(rel_h.chunks(kh).zip(rel_w.chunks(kw)));
                    for ((o, s), (bh, bw)) in rows {
                        for (a, &h) in bh.iter().enumerate() {
                            let range = a * kw..(a + 1) * kw;
                            for ((o, &s), &w) in o[range.clone()].iter_mut().zip(&s[range]).zip(bw)
                            {
                                *o = s + h + w;
                            }
                        }
                    }
                    crate::cpu::simd().dispatch(SoftmaxRows { rows: out, len: nk });
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        rel_h: &Tensor,
        rel_w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g, nq, nk) = res.dims3()?;
        let (kh, kw) = (rel_h.dim(2)?, rel_w.dim(2)?);
        let d_scores = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?;
        let grid = d_scores.reshape((g, nq, kh, kw))?;
        let d_rel_h = grid.sum(3)?;
        let d_rel_w = grid.sum(2)?;
        debug_assert_eq!(nk, kh * kw);
        Ok((Some(d_scores), Some(d_rel_h), Some(d_rel_w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    #[test]
    fn a_nan_makes_its_row_nan_and_leaves_others() {
        let x = Tensor::from_vec(
            vec![1f32, f32::NAN, 2.0, 1.0, 2.0, 3.0],
            (2, 3),
            &Device::Cpu,
        )
        .unwrap();
        let rows = softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
        assert!(rows[0].iter().all(|v| v.is_nan()), "{:?}", rows[0]);
        assert!(rows[1].iter().all(|v| v.is_finite()), "{:?}", rows[1]);
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Forward and backward equal the composed candle operations (differentiated
        /// by candle), with and without the bias.
        #[test]
        fn fused_equals_composed(g in 1usize..4, nq in 1usize..6, kh in 1usize..5, kw in 1usize..5, spread in 0.1f32..30.0) {
            let dev = Device::Cpu;
            let nk = kh * kw;
            let s = Tensor::randn(0f32, spread, (g, nq, nk), &dev).unwrap();
            let h = Tensor::randn(0f32, 1.0, (g, nq, kh), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (g, nq, kw), &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (g, nq, nk), &dev).unwrap();
            let vars = |t: &Tensor| Var::from_tensor(t).unwrap();
            let (s1, h1, w1) = (vars(&s), vars(&h), vars(&w));
            let fused = softmax_with_decomposed_bias(s1.as_tensor(), h1.as_tensor(), w1.as_tensor()).unwrap();
            let (s2, h2, w2) = (vars(&s), vars(&h), vars(&w));
            let biased = s2.as_tensor().reshape((g, nq, kh, kw)).unwrap()
                .broadcast_add(&h2.as_tensor().unsqueeze(3).unwrap()).unwrap()
                .broadcast_add(&w2.as_tensor().unsqueeze(2).unwrap()).unwrap()
                .reshape((g, nq, nk)).unwrap();
            let composed = candle_nn::ops::softmax(&biased, D::Minus1).unwrap();
            prop_assert!(max_diff(&fused, &composed) < 1e-6);
            let g1 = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (composed * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (a, b) in [(&s1, &s2), (&h1, &h2), (&w1, &w2)] {
                let d = max_diff(g1.get(a.as_tensor()).unwrap(), g2.get(b.as_tensor()).unwrap());
                prop_assert!(d < 1e-5, "gradient differs by {d}");
            }
            // Plain softmax.
            let x1 = vars(&s);
            let plain = softmax_last_dim(x1.as_tensor()).unwrap();
            let reference = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
            prop_assert!(max_diff(&plain, &reference) < 1e-6);
            let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let x2 = vars(&s);
            let gr = (candle_nn::ops::softmax(x2.as_tensor(), D::Minus1).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
            prop_assert!(max_diff(gp.get(x1.as_tensor()).unwrap(), gr.get(x2.as_tensor()).unwrap()) < 1e-5);
        }
    }

    #[test]
    fn rows_sum_to_one_and_survive_large_logits() -> Result<()> {
        let x = Tensor::new(&[[1000f32, 999., -1000.], [0., 0., 0.]], &Device::Cpu)?;
        let p = softmax_last_dim(&x)?.to_vec2::<f32>()?;
        for row in &p {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(row.iter().all(|v| v.is_finite()));
        }
        assert!((p[1][0] - 1.0 / 3.0).abs() < 1e-7);
        Ok(())
    }

    #[test]
    fn mismatched_bias_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let s = Tensor::zeros((1, 2, 6), DType::F32, &dev)?;
        let h = Tensor::zeros((1, 2, 2), DType::F32, &dev)?;
        let w = Tensor::zeros((1, 2, 2), DType::F32, &dev)?;
        assert!(softmax_with_decomposed_bias(&s, &h, &w).is_err());
        Ok(())
    }
}
