//! Multi-head scaled dot-product attention with an optional decomposed
//! relative-position bias.
//!
//! The same function serves self-attention (queries, keys and values from one
//! tensor), the cross-branch attention of SAMUS (queries from the ViT tokens, keys and
//! values from the CNN tokens) and the decoder's token/image attentions. Heads are
//! processed a few at a time so that at most [`AttentionOptions::max_score_elements`]
//! scores exist at once.

use candle_core::{Result, Tensor};

use crate::rel_pos::DecomposedRelPos;

/// Tuning of [`multi_head_attention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionOptions {
    /// The largest number of attention scores (over all heads processed together)
    /// held at once. Heads are grouped so that a group stays under it; a single head
    /// larger than it is processed alone.
    pub max_score_elements: usize,
}

impl Default for AttentionOptions {
    /// One 1024 x 1024 score matrix: a global SAMUS block computes one head at a time,
    /// while small windows are batched together.
    fn default() -> Self {
        Self {
            max_score_elements: 1 << 20,
        }
    }
}

/// Splits `(B, N, H * Dh)` into heads: `(B, H, N, Dh)`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    if heads == 0 || c % heads != 0 {
        candle_core::bail!("cannot split {c} channels into {heads} heads")
    }
    x.reshape((b, n, heads, c / heads))?.transpose(1, 2)
}

/// Merges heads back: `(B, H, N, Dh)` -> `(B, N, H * Dh)`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, n, h * d))
}

pub use crate::softmax::softmax_last_dim;

/// `softmax(scale * q k^T + bias) v` for every head.
///
/// `q` is `(B, H, Nq, Dh)`, `k` and `v` are `(B, H, Nk, Dh)`; the result is
/// `(B, H, Nq, Dh)`. With `rel_pos`, SAM's decomposed relative-position bias
/// (computed from the unscaled queries) is added to the scores.
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    rel_pos: Option<&DecomposedRelPos>,
    options: AttentionOptions,
) -> Result<Tensor> {
    let (b, h, nq, d) = q.dims4()?;
    let (kb, kh, nk, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, d) || v.dims4()? != (b, h, nk, d) {
        candle_core::bail!(
            "attention shapes do not agree: q {:?}, k {:?}, v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        )
    }
    if let Some(rel) = rel_pos {
        if rel.query_len() != nq || rel.key_len() != nk {
            candle_core::bail!(
                "relative-position bias is for {}x{} tokens, attention has {nq}x{nk}",
                rel.query_len(),
                rel.key_len()
            )
        }
    }
    let groups = b * h;
    let q = q.reshape((groups, nq, d))?;
    let k = k.reshape((groups, nk, d))?;
    let v = v.reshape((groups, nk, d))?;
    let per_group = (nq * nk).max(1);
    let chunk = (options.max_score_elements / per_group).clamp(1, groups);
    let mut outputs = Vec::with_capacity(groups.div_ceil(chunk));
    let mut start = 0;
    while start < groups {
        let len = chunk.min(groups - start);
        let qc = q.narrow(0, start, len)?.contiguous()?;
        let kc = k.narrow(0, start, len)?.contiguous()?;
        let vc = v.narrow(0, start, len)?.contiguous()?;
        let scores = (&qc * scale)?.matmul(&kc.t()?)?;
        let probs = match rel_pos {
            Some(rel) => rel.softmax_with_bias(&scores, &qc)?,
            None => softmax_last_dim(&scores)?,
        };
        outputs.push(probs.matmul(&vc)?);
        start += len;
    }
    let out = if outputs.len() == 1 {
        outputs.remove(0)
    } else {
        Tensor::cat(&outputs, 0)?
    };
    out.reshape((b, h, nq, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    /// Attention of one head, written out with loops.
    fn naive_head(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (nq, nk, d): (usize, usize, usize),
        scale: f32,
        bias: &[f32],
    ) -> Vec<f32> {
        let mut out = vec![0f32; nq * d];
        for i in 0..nq {
            let scores: Vec<f32> = (0..nk)
                .map(|j| {
                    (0..d)
                        .map(|c| q[i * d + c] * scale * k[j * d + c])
                        .sum::<f32>()
                        + bias[i * nk + j]
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            for j in 0..nk {
                for c in 0..d {
                    out[i * d + c] += exps[j] / sum * v[j * d + c];
                }
            }
        }
        out
    }

    fn values(n: usize, salt: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((((i as u32) + 1)
                    .wrapping_mul(salt)
                    .wrapping_mul(2_654_435_761)
                    >> 8)
                    % 2000) as f32
                    / 1000.0
                    - 1.0
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn cross_attention_matches_naive(b in 1usize..3, h in 1usize..4, nq in 1usize..9, nk in 1usize..9, d in 1usize..6, budget in 1usize..200, salt in 1u32..1000) {
            let dev = Device::Cpu;
            let qv = values(b * h * nq * d, salt);
            let kv = values(b * h * nk * d, salt + 1);
            let vv = values(b * h * nk * d, salt + 2);
            let q = Tensor::from_vec(qv.clone(), (b, h, nq, d), &dev).unwrap();
            let k = Tensor::from_vec(kv.clone(), (b, h, nk, d), &dev).unwrap();
            let v = Tensor::from_vec(vv.clone(), (b, h, nk, d), &dev).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let got = multi_head_attention(&q, &k, &v, scale, None, AttentionOptions { max_score_elements: budget })
                .unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let zero_bias = vec![0f32; nq * nk];
            for g in 0..b * h {
                let want = naive_head(&qv[g * nq * d..][..nq * d], &kv[g * nk * d..][..nk * d], &vv[g * nk * d..][..nk * d], (nq, nk, d), scale as f32, &zero_bias);
                for (x, y) in got[g * nq * d..][..nq * d].iter().zip(&want) {
                    prop_assert!((x - y).abs() < 1e-5, "got {x}, want {y}");
                }
            }
        }

        #[test]
        fn rel_pos_attention_matches_naive(b in 1usize..3, h in 1usize..3, gh in 1usize..4, gw in 1usize..4, d in 1usize..5, salt in 1u32..1000) {
            let dev = Device::Cpu;
            let n = gh * gw;
            let qv = values(b * h * n * d, salt);
            let kv = values(b * h * n * d, salt + 1);
            let vv = values(b * h * n * d, salt + 2);
            let rph = values((2 * gh - 1) * d, salt + 3);
            let rpw = values((2 * gw - 1) * d, salt + 4);
            let q = Tensor::from_vec(qv.clone(), (b, h, n, d), &dev).unwrap();
            let k = Tensor::from_vec(kv.clone(), (b, h, n, d), &dev).unwrap();
            let v = Tensor::from_vec(vv.clone(), (b, h, n, d), &dev).unwrap();
            let rel = DecomposedRelPos::new(
                &Tensor::from_vec(rph.clone(), (2 * gh - 1, d), &dev).unwrap(),
                &Tensor::from_vec(rpw.clone(), (2 * gw - 1, d), &dev).unwrap(),
                (gh, gw), (gh, gw)).unwrap();
            let scale = 0.5;
            let got = multi_head_attention(&q, &k, &v, scale, Some(&rel), AttentionOptions::default())
                .unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for g in 0..b * h {
                let qg = &qv[g * n * d..][..n * d];
                let mut bias = vec![0f32; n * n];
                for y in 0..gh { for x in 0..gw { for ky in 0..gh { for kx in 0..gw {
                    let qvec = &qg[(y * gw + x) * d..][..d];
                    let rh = &rph[(y + gh - 1 - ky) * d..][..d];
                    let rw = &rpw[(x + gw - 1 - kx) * d..][..d];
                    bias[(y * gw + x) * n + ky * gw + kx] = qvec.iter().zip(rh).map(|(a, b)| a * b).sum::<f32>()
                        + qvec.iter().zip(rw).map(|(a, b)| a * b).sum::<f32>();
                }}}}
                let want = naive_head(qg, &kv[g * n * d..][..n * d], &vv[g * n * d..][..n * d], (n, n, d), scale as f32, &bias);
                for (x, y) in got[g * n * d..][..n * d].iter().zip(&want) {
                    prop_assert!((x - y).abs() < 1e-5, "got {x}, want {y}");
                }
            }
        }
    }

    #[test]
    fn heads_round_trip() -> Result<()> {
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu)?.reshape((1, 3, 8))?;
        let back = merge_heads(&split_heads(&x, 2)?)?;
        assert_eq!(back.to_vec3::<f32>()?, x.to_vec3::<f32>()?);
        assert!(split_heads(&x, 3).is_err());
        Ok(())
    }
}
