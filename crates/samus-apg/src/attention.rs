//! The APG's attention: multi-head attention whose weights are "softmax-one".

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use samus_core::{merge_heads, split_heads};
use samus_model::layers::Linear;

/// Heads of every APG attention.
pub const APG_HEADS: usize = 8;
/// Channels per head of every APG attention.
pub const APG_HEAD_DIM: usize = 64;

/// Attention of the APG (`vitAttention` in the reference): queries from `x`, keys and
/// values from `context` through one `to_kv` projection, 8 heads of 64, softmax-one
/// weights, output projection `to_out.0`.
#[derive(Debug, Clone)]
pub struct ApgAttention {
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    scale: f64,
}

impl ApgAttention {
    /// Loads an attention of token width `dim`.
    pub fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = APG_HEADS * APG_HEAD_DIM;
        Ok(Self {
            to_q: Linear::load(vb.pp("to_q"), dim, inner, false)?,
            to_kv: Linear::load(vb.pp("to_kv"), dim, 2 * inner, false)?,
            to_out: Linear::load(vb.pp("to_out").pp("0"), inner, dim, true)?,
            scale: 1.0 / (APG_HEAD_DIM as f64).sqrt(),
        })
    }

    /// `x` `B x Nq x C` attends to `context` `B x Nk x C`; returns `B x Nq x C`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let inner = APG_HEADS * APG_HEAD_DIM;
        let q = split_heads(&self.to_q.forward(x)?, APG_HEADS)?.contiguous()?;
        let kv = self.to_kv.forward(context)?;
        let k = split_heads(&kv.narrow(2, 0, inner)?, APG_HEADS)?.contiguous()?;
        let v = split_heads(&kv.narrow(2, inner, inner)?, APG_HEADS)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let out = softmax_one(&scores)?.matmul(&v)?;
        self.to_out.forward(&merge_heads(&out)?)
    }
}

/// Softmax-one over the last axis, as the reference computes it:
/// `e = exp(s - max(s)); p = e / (1 + sum(e))`.
///
/// Unlike a softmax, the weights may sum to less than one, which lets a query attend
/// to nothing. The maximum is subtracted before the `1 +`, exactly as in the
/// reference, so the result is not invariant to shifting the scores.
pub fn softmax_one(scores: &Tensor) -> Result<Tensor> {
    let max = scores.max_keepdim(D::Minus1)?;
    let e = scores.broadcast_sub(&max)?.exp()?;
    let denominator = (e.sum_keepdim(D::Minus1)? + 1.0)?;
    e.broadcast_div(&denominator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_definition(rows in 1usize..4, values in proptest::collection::vec(-20f32..20.0, 1..12)) {
            let n = values.len();
            let data: Vec<f32> = (0..rows).flat_map(|r| values.iter().map(move |v| v + r as f32)).collect();
            let x = Tensor::from_vec(data.clone(), (rows, n), &Device::Cpu).unwrap();
            let got = softmax_one(&x).unwrap().to_vec2::<f32>().unwrap();
            for r in 0..rows {
                let row = &data[r * n..(r + 1) * n];
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f64> = row.iter().map(|v| ((v - max) as f64).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (g, ei) in got[r].iter().zip(&e) {
                    prop_assert!((*g as f64 - ei / (1.0 + sum)).abs() < 1e-6);
                }
                prop_assert!(got[r].iter().sum::<f32>() < 1.0);
            }
        }
    }
}
