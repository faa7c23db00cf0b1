//! Self-attention on a fused `qkv` projection with SAM's decomposed
//! relative-position bias, as one CPU operation with a hand-written backward pass:
//! the training form of the encoder's attention.
//!
//! Composed of candle operations, the attention of a training step builds a dozen
//! graph nodes over the `N x N` scores of every head (the products, the bias, the
//! softmax, the head views), and candle's backward pass gives each node a fresh
//! zeroed gradient buffer and an addition. On the tiny SAMUS configuration (batch
//! 4) one global block's attention took 0.06 s forward and 0.32 to 0.43 s backward
//! that way. Here each (batch item, head) is one task: the forward computes the
//! probabilities and their product with the values; the backward computes them
//! again (nothing of `N x N` is kept between the passes) and derives the gradients
//! of the queries, keys, values and bias terms from them, with the `gemm` crate's
//! kernels for the products.
//!
//! The bias terms `<q, rh>` and `<q, rw>` are small products computed by candle
//! ([`DecomposedRelPos::bias_terms`]), so their gradient reaches the queries and the
//! relative-position tables through candle's graph.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::attention::merge_heads;
use crate::cpu_kernel::{contiguous_f32, cpu_f32};
use crate::flash::{matmul, BiasExpRows, MatMut, MatRef};
use crate::rel_pos::DecomposedRelPos;
use crate::softmax::SoftmaxBackwardRows;

/// Multi-head self-attention of the projected tokens `qkv` `(G, N, 3 D)` (queries,
/// keys and values, each `D = heads x Dh` channels, heads in order) with the
/// decomposed bias of `rel_pos`: `(G, N, D)`, the heads merged. The same numbers as
/// splitting `qkv` into heads and calling
/// [`attention_merged`](crate::flash::attention_merged); differentiable.
///
/// On the CPU in f32 it is one operation with its own backward pass (see the
/// module); elsewhere it is composed.
pub fn qkv_attention(
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    rel_pos: &DecomposedRelPos,
) -> Result<Tensor> {
    let (g, n, c3) = qkv.dims3()?;
    if heads == 0 || c3 == 0 || !c3.is_multiple_of(3 * heads) {
        candle_core::bail!(
            "qkv attention: {c3} channels do not split into q, k, v of {heads} heads"
        )
    }
    if rel_pos.query_len() != n || rel_pos.key_len() != n {
        candle_core::bail!(
            "qkv attention: the relative-position bias is for {}x{} tokens, the attention has {n}",
            rel_pos.query_len(),
            rel_pos.key_len()
        )
    }
    let d = c3 / 3;
    let hd = d / heads;
    let (rh, rw) = rel_pos.tables();
    let split = qkv.reshape((g, n, 3, heads, hd))?;
    let part = |i: usize| -> Result<Tensor> { split.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2) };
    if !cpu_f32([qkv, rh, rw]) {
        return merge_heads(&crate::cuda_attention::fused_attention(
            &part(0)?,
            &part(1)?,
            &part(2)?,
            scale,
            Some(rel_pos),
            crate::AttentionOptions::default(),
        )?);
    }
    // The bias terms from the unscaled queries, one row of kh + kw per query.
    let queries = part(0)?.contiguous()?.reshape((g * heads, n, hd))?;
    let (rel_h, rel_w) = rel_pos.bias_terms(&queries)?;
    let bias = Tensor::cat(&[rel_h, rel_w], 2)?.contiguous()?;
    let op = QkvAttention {
        heads,
        scale: scale as f32,
        key_grid: rel_pos.key_grid(),
    };
    qkv.contiguous()?.apply_op2(&bias, op)
}

/// The operation of [`qkv_attention`] on `(qkv, bias terms)`.
#[derive(Debug, Clone, Copy)]
struct QkvAttention {
    heads: usize,
    scale: f32,
    /// The key grid `(kh, kw)` of the bias terms.
    key_grid: (usize, usize),
}

/// Sizes of one call: `groups` batch items of `n` tokens, `heads` heads of `hd`.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    groups: usize,
    n: usize,
    heads: usize,
    hd: usize,
    /// Bias terms per query: `kh + kw`.
    width: usize,
    kw: usize,
}

impl Geometry {
    fn d(&self) -> usize {
        self.heads * self.hd
    }

    /// Queries (`part` 0), keys (1) or values (2) of head `h` of item `g`: `n x hd`.
    fn part<'a>(&self, qkv: &'a [f32], g: usize, h: usize, part: usize) -> MatRef<'a> {
        let d = self.d();
        MatRef {
            data: qkv,
            offset: g * self.n * 3 * d + part * d + h * self.hd,
            rows: self.n,
            cols: self.hd,
            row_stride: 3 * d,
            col_stride: 1,
        }
    }

    /// The rows of head `h` of item `g` in a `(G, N, D)` tensor: `n x hd`.
    fn merged<'a>(&self, data: &'a [f32], g: usize, h: usize) -> MatRef<'a> {
        MatRef {
            data,
            offset: g * self.n * self.d() + h * self.hd,
            rows: self.n,
            cols: self.hd,
            row_stride: self.d(),
            col_stride: 1,
        }
    }

    /// The bias terms of head `h` of item `g`: `n x width`.
    fn bias<'a>(&self, bias: &'a [f32], g: usize, h: usize) -> &'a [f32] {
        let len = self.n * self.width;
        &bias[(g * self.heads + h) * len..][..len]
    }
}

/// `rows x cols` fresh matrix and its view.
fn dense(data: &mut [f32], rows: usize, cols: usize) -> MatMut<'_> {
    MatMut {
        data,
        offset: 0,
        rows,
        cols,
        row_stride: cols,
    }
}

/// A dense `rows x cols` matrix as a read-only view.
fn view(data: &[f32], rows: usize, cols: usize) -> MatRef<'_> {
    MatRef {
        data,
        offset: 0,
        rows,
        cols,
        row_stride: cols,
        col_stride: 1,
    }
}

impl QkvAttention {
    fn geometry(&self, qkv: &Layout, bias: &Layout) -> Result<Geometry> {
        let (groups, n, c3) = qkv.shape().dims3()?;
        let (kh, kw) = self.key_grid;
        let width = kh + kw;
        let heads = self.heads;
        let fits = heads > 0 && c3 > 0 && c3.is_multiple_of(3 * heads) && kh * kw == n;
        if !fits || bias.shape().dims() != [groups * heads, n, width] {
            candle_core::bail!(
                "qkv attention: qkv {:?} and bias terms {:?} do not fit {heads} heads on a {kh}x{kw} grid",
                qkv.shape(),
                bias.shape()
            )
        }
        Ok(Geometry {
            groups,
            n,
            heads,
            hd: c3 / 3 / heads,
            width,
            kw,
        })
    }

    /// The attention probabilities of head `h` of item `g`, `n x n`.
    fn probabilities(
        &self,
        geo: &Geometry,
        qkv: &[f32],
        bias: &[f32],
        g: usize,
        h: usize,
    ) -> Result<Vec<f32>> {
        let n = geo.n;
        let mut p = vec![0f32; n * n];
        let (q, k) = (geo.part(qkv, g, h, 0), geo.part(qkv, g, h, 1));
        matmul(dense(&mut p, n, n), q, k.t(), self.scale)?;
        let mut inv_sums = vec![0f32; n];
        crate::cpu::simd().dispatch(BiasExpRows {
            scores: &mut p,
            keys: n,
            bias: Some((geo.bias(bias, g, h), geo.kw)),
            inv_sums: &mut inv_sums,
        });
        for (row, inv) in p.chunks_exact_mut(n.max(1)).zip(&inv_sums) {
            row.iter_mut().for_each(|v| *v *= inv);
        }
        Ok(p)
    }
}

impl CustomOp2 for QkvAttention {
    fn name(&self) -> &'static str {
        "samus-qkv-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let geo = self.geometry(l1, l2)?;
        let qkv = contiguous_f32(s1, l1, "qkv attention")?;
        let bias = contiguous_f32(s2, l2, "qkv attention")?;
        let (n, hd, d) = (geo.n, geo.hd, geo.d());
        let heads_out = (0..geo.groups * geo.heads)
            .into_par_iter()
            .map(|task| {
                let (g, h) = (task / geo.heads, task % geo.heads);
                let p = self.probabilities(&geo, qkv, bias, g, h)?;
                let mut out = vec![0f32; n * hd];
                matmul(
                    dense(&mut out, n, hd),
                    view(&p, n, n),
                    geo.part(qkv, g, h, 2),
                    1.0,
                )?;
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = vec![0f32; geo.groups * n * d];
        out.par_chunks_mut((n * d).max(1))
            .enumerate()
            .for_each(|(g, item)| {
                for (h, head) in heads_out[g * geo.heads..][..geo.heads].iter().enumerate() {
                    for (row, src) in item.chunks_exact_mut(d).zip(head.chunks_exact(hd)) {
                        row[h * hd..][..hd].copy_from_slice(src);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((geo.groups, n, d))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (qkv, bias) = (qkv.detach(), bias.detach());
        let both =
            qkv.apply_op3_no_bwd(&bias, &grad.contiguous()?, &QkvAttentionBackward(*self))?;
        let qkv_len = qkv.elem_count();
        let d_qkv = both.narrow(0, 0, qkv_len)?.reshape(qkv.shape())?;
        let d_bias = both
            .narrow(0, qkv_len, bias.elem_count())?
            .reshape(bias.shape())?;
        Ok((Some(d_qkv), Some(d_bias)))
    }
}

/// The backward pass of [`QkvAttention`] on `(qkv, bias terms, output gradient)`:
/// the gradients of `qkv` and of the bias terms, flattened one after the other.
#[derive(Debug, Clone, Copy)]
struct QkvAttentionBackward(QkvAttention);

/// One task's gradients: queries, keys, values (`n x hd` each), bias terms.
struct HeadGradients {
    parts: [Vec<f32>; 3],
    bias: Vec<f32>,
}

impl QkvAttentionBackward {
    fn head(
        &self,
        geo: &Geometry,
        qkv: &[f32],
        bias: &[f32],
        grad: &[f32],
        g: usize,
        h: usize,
    ) -> Result<HeadGradients> {
        let op = &self.0;
        let (n, hd) = (geo.n, geo.hd);
        let p = op.probabilities(geo, qkv, bias, g, h)?;
        let d_out = geo.merged(grad, g, h);
        let [q, k, v] = [0, 1, 2].map(|part| geo.part(qkv, g, h, part));
        let mut dv = vec![0f32; n * hd];
        matmul(dense(&mut dv, n, hd), view(&p, n, n).t(), d_out, 1.0)?;
        // dS = P (dP - rowsum(P dP)).
        let mut dp = vec![0f32; n * n];
        matmul(dense(&mut dp, n, n), d_out, v.t(), 1.0)?;
        let mut ds = vec![0f32; n * n];
        crate::cpu::simd().dispatch(SoftmaxBackwardRows {
            probs: &p,
            grad: &dp,
            out: &mut ds,
            len: n,
        });
        drop(dp);
        // The bias gradient: row a of the key grid sums over its columns, column b
        // over its rows.
        let (kw, width) = (geo.kw, geo.width);
        let kh = width - kw;
        let mut d_bias = vec![0f32; n * width];
        for (row, out) in ds
            .chunks_exact(n.max(1))
            .zip(d_bias.chunks_exact_mut(width.max(1)))
        {
            let (dh, dw) = out.split_at_mut(kh);
            for (a, keys) in row.chunks_exact(kw.max(1)).enumerate() {
                dh[a] = keys.iter().sum();
                dw.iter_mut().zip(keys).for_each(|(o, &s)| *o += s);
            }
        }
        let mut dq = vec![0f32; n * hd];
        matmul(dense(&mut dq, n, hd), view(&ds, n, n), k, op.scale)?;
        let mut dk = vec![0f32; n * hd];
        matmul(dense(&mut dk, n, hd), view(&ds, n, n).t(), q, op.scale)?;
        Ok(HeadGradients {
            parts: [dq, dk, dv],
            bias: d_bias,
        })
    }
}

impl CustomOp3 for QkvAttentionBackward {
    fn name(&self) -> &'static str {
        "samus-qkv-attention-backward"
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
        let geo = self.0.geometry(l1, l2)?;
        let (n, hd, d) = (geo.n, geo.hd, geo.d());
        if l3.shape().dims() != [geo.groups, n, d] {
            candle_core::bail!(
                "qkv attention backward: gradient {:?} for an output of {:?}",
                l3.shape(),
                (geo.groups, n, d)
            )
        }
        let qkv = contiguous_f32(s1, l1, "qkv attention backward")?;
        let bias = contiguous_f32(s2, l2, "qkv attention backward")?;
        let grad = contiguous_f32(s3, l3, "qkv attention backward")?;
        let heads = (0..geo.groups * geo.heads)
            .into_par_iter()
            .map(|task| self.head(&geo, qkv, bias, grad, task / geo.heads, task % geo.heads))
            .collect::<Result<Vec<_>>>()?;
        // d qkv in its (G, N, 3, heads, hd) layout, then the bias terms' gradients.
        let mut out = vec![0f32; qkv.len() + bias.len()];
        let (d_qkv, d_bias) = out.split_at_mut(qkv.len());
        d_qkv
            .par_chunks_mut((n * 3 * d).max(1))
            .enumerate()
            .for_each(|(g, item)| {
                for (h, head) in heads[g * geo.heads..][..geo.heads].iter().enumerate() {
                    for (part, values) in head.parts.iter().enumerate() {
                        for (row, src) in item.chunks_exact_mut(3 * d).zip(values.chunks_exact(hd))
                        {
                            row[part * d + h * hd..][..hd].copy_from_slice(src);
                        }
                    }
                }
            });
        for (dst, head) in d_bias.chunks_exact_mut((n * geo.width).max(1)).zip(&heads) {
            dst.copy_from_slice(&head.bias);
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    use crate::attention::multi_head_attention;
    use crate::AttentionOptions;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Forward and backward (qkv and both relative-position tables) equal the
        /// composed attention's, which candle differentiates.
        #[test]
        fn matches_composed_attention(g in 1usize..3, heads in 1usize..4, hd in 1usize..9, side_h in 1usize..6, side_w in 1usize..6, seed in 0u64..1000) {
            let dev = Device::Cpu;
            let n = side_h * side_w;
            let d = heads * hd;
            let vals = |len: usize, salt: u64, amp: f32| -> Vec<f32> {
                (0..len).map(|i| (((((i as u64 + 1) * (seed + salt) * 2_654_435_761) >> 9) % 2000) as f32 / 1000.0 - 1.0) * amp).collect()
            };
            let qkv = Tensor::from_vec(vals(g * n * 3 * d, 1, 1.5), (g, n, 3 * d), &dev).unwrap();
            let th = Tensor::from_vec(vals((2 * side_h - 1) * hd, 2, 0.5), (2 * side_h - 1, hd), &dev).unwrap();
            let tw = Tensor::from_vec(vals((2 * side_w - 1) * hd, 3, 0.5), (2 * side_w - 1, hd), &dev).unwrap();
            let r = Tensor::from_vec(vals(g * n * d, 4, 1.0), (g, n, d), &dev).unwrap();
            let scale = 1.0 / (hd as f64).sqrt();
            let run = |fused: bool| {
                let (qv, hv, wv) = (Var::from_tensor(&qkv).unwrap(), Var::from_tensor(&th).unwrap(), Var::from_tensor(&tw).unwrap());
                let rel = DecomposedRelPos::new(hv.as_tensor(), wv.as_tensor(), (side_h, side_w), (side_h, side_w)).unwrap();
                let out = if fused {
                    qkv_attention(qv.as_tensor(), heads, scale, &rel).unwrap()
                } else {
                    let split = qv.as_tensor().reshape((g, n, 3, heads, hd)).unwrap();
                    let part = |i: usize| split.narrow(2, i, 1).unwrap().squeeze(2).unwrap().transpose(1, 2).unwrap();
                    merge_heads(&multi_head_attention(&part(0), &part(1), &part(2), scale, Some(&rel), AttentionOptions::default()).unwrap()).unwrap()
                };
                let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let grad = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
                (out, [grad(&qv), grad(&hv), grad(&wv)])
            };
            let (fused, fused_grads) = run(true);
            let (composed, composed_grads) = run(false);
            let max = |t: Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let diff = max((&fused - &composed).unwrap());
            prop_assert!(diff < 1e-5, "forward differs by {diff}");
            for (name, (a, b)) in ["qkv", "rel_pos_h", "rel_pos_w"].iter().zip(fused_grads.into_iter().zip(composed_grads)) {
                let scale = max(b.clone());
                let d = max((a - b).unwrap());
                prop_assert!(d < 1e-5 * (1.0 + scale), "{name} gradient differs by {d} (largest {scale})");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let dev = Device::Cpu;
        let table = Tensor::zeros((3, 2), candle_core::DType::F32, &dev).unwrap();
        let rel = DecomposedRelPos::new(&table, &table, (2, 2), (2, 2)).unwrap();
        let qkv = Tensor::zeros((1, 4, 12), candle_core::DType::F32, &dev).unwrap();
        assert!(qkv_attention(&qkv, 5, 1.0, &rel).is_err());
        let empty = Tensor::zeros((1, 4, 0), candle_core::DType::F32, &dev).unwrap();
        assert!(qkv_attention(&empty, 2, 1.0, &rel).is_err());
        let five = Tensor::zeros((1, 5, 12), candle_core::DType::F32, &dev).unwrap();
        let message = qkv_attention(&five, 2, 1.0, &rel).unwrap_err().to_string();
        assert!(
            message.contains("4x4 tokens") && message.contains("has 5"),
            "{message}"
        );
        assert!(qkv_attention(&qkv, 2, 1.0, &rel).is_ok());
    }
}
