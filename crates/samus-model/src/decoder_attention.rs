//! The mask decoder's attention (`q_proj`, `k_proj`, `v_proj`, `out_proj` of
//! `mask_decoder.transformer.*`), and the two forms it takes when one side has few
//! tokens.
//!
//! The decoder's prompt side has few tokens (five output tokens, a click and its
//! padding point: 7), its image side 1024 (SAMUS) or 4096 (SAM). Projecting the
//! image side to the attention's internal width costs `N x C x H d` per projection;
//! when the prompt side has fewer tokens than a head is wide (`n < d`, 16 in SAM),
//! the same attention is cheaper with the projections folded through the prompt
//! tokens, whose `H n` products with the weights replace the `H d` columns:
//!
//! - image -> token ([`DecoderAttention::forward`] with few keys): the scores
//!   `q_i . k_j` are `x_i . (W_q,h^T k_j) + b_q,h . k_j`, one product of the image
//!   tokens with a `C x H n` matrix; the output projection of `sum_j p_ij v_j` is
//!   `sum_j p_ij (W_o,h v_j)`, one product of the probabilities with an `H n x C`
//!   matrix. No `N x H d` queries, no output projection over the image tokens.
//! - token -> image (few queries): the scores are `x_k . (W_k,h^T q_i)` (the key
//!   bias adds the same `q_i . b_k,h` to every key of a query, which the softmax
//!   cancels), and since each query's probabilities sum to one the output is
//!   `W_v,h (sum_k p_ik x_k) + b_v,h`. No keys and values projected over the image
//!   tokens.
//!
//! Both are the same function as the projected form up to rounding (tests below).
//! They run at inference only (training keeps the projected form, whose fused
//! products have their own backward passes). With the image side of the decoder
//! kept per image (`MaskDecoder::image_terms`), a ViT-B click went from 13 to 15 ms
//! to 11 to 13.5 ms (medians) on the two-core Ice Lake Xeon of
//! docs/PERFORMANCE.md (session 18).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use samus_core::matmul::{matmul, matmul_add};
use samus_core::{attention_merged, split_heads, AttentionOptions};

use crate::layers::Linear;

/// Attention with separate q/k/v projections to an internal width and an output
/// projection back (`q_proj`, `k_proj`, `v_proj`, `out_proj`).
#[derive(Debug, Clone)]
pub struct DecoderAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    scale: f64,
}

/// The queries `B x Nq x C`, keys and values `B x Nk x C` of one attention call.
#[derive(Debug, Clone, Copy)]
struct Inputs<'a> {
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
}

/// Which form [`DecoderAttention::forward`] takes for a query and a key count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Every side projected to the internal width.
    Projected,
    /// Query and output projections folded through the few keys.
    FewKeys,
    /// Key and value projections folded through the few queries.
    FewQueries,
}

impl DecoderAttention {
    /// Loads an attention of width `dim` with internal width `dim / downsample`.
    pub fn load(vb: VarBuilder, dim: usize, num_heads: usize, downsample: usize) -> Result<Self> {
        let internal = dim / downsample;
        let head_dim = internal / num_heads;
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), dim, internal, true)?,
            k_proj: Linear::load(vb.pp("k_proj"), dim, internal, true)?,
            v_proj: Linear::load(vb.pp("v_proj"), dim, internal, true)?,
            out_proj: Linear::load(vb.pp("out_proj"), internal, dim, true)?,
            num_heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
        })
    }

    /// `q` `B x Nq x C`, `k` and `v` `B x Nk x C`; returns `B x Nq x C`.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.forward_onto(Inputs { q, k, v }, None)
    }

    /// `residual + self.forward(q, k, v)` (`residual` `B x Nq x C`), the addition
    /// made by the last matrix product where it can be.
    pub fn forward_add(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        self.forward_onto(Inputs { q, k, v }, Some(residual))
    }

    fn forward_onto(&self, inputs: Inputs, residual: Option<&Tensor>) -> Result<Tensor> {
        let Inputs { q, k, v } = inputs;
        // Training keeps the projected form (its fused products have their own
        // backward passes, and the folded one measured no faster in a training step).
        let trains = [q, k, v].into_iter().chain(residual).any(Tensor::track_op);
        let form = if trains {
            Form::Projected
        } else {
            self.form(q.dim(1)?, k.dim(1)?)
        };
        match form {
            Form::Projected => self.forward_projected(inputs, residual),
            Form::FewKeys => self.forward_few_keys(inputs, residual),
            Form::FewQueries => self.forward_few_queries(inputs, residual),
        }
    }

    /// The cheaper form for `nq` queries and `nk` keys (module docs): folded through
    /// the side with fewer tokens than a head is wide, when the other side has more.
    fn form(&self, nq: usize, nk: usize) -> Form {
        let folded = [&self.q_proj, &self.k_proj, &self.v_proj, &self.out_proj]
            .iter()
            .all(|l| match (l.weight(), l.bias()) {
                (Some(w), Some(b)) => !w.track_op() && !b.track_op(),
                _ => false,
            });
        let d = self.head_dim;
        if !folded {
            Form::Projected
        } else if nk < d && nq >= d {
            Form::FewKeys
        } else if nq < d && nk >= d {
            Form::FewQueries
        } else {
            Form::Projected
        }
    }

    /// The attention with every side projected: `B x Nq x C`, onto `residual`.
    fn forward_projected(
        &self,
        Inputs { q, k, v }: Inputs,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.attend(
            &self.project_queries(q)?,
            &self.project_keys(k)?,
            &self.project_values(v)?,
            residual,
        )
    }

    /// Queries `B x Nq x C` projected and split into heads, `B x H x Nq x d`.
    pub(crate) fn project_queries(&self, q: &Tensor) -> Result<Tensor> {
        split_heads(&self.q_proj.forward(q)?, self.num_heads)
    }

    /// Keys `B x Nk x C` projected and split into heads.
    pub(crate) fn project_keys(&self, k: &Tensor) -> Result<Tensor> {
        split_heads(&self.k_proj.forward(k)?, self.num_heads)
    }

    /// Values `B x Nk x C` projected and split into heads.
    pub(crate) fn project_values(&self, v: &Tensor) -> Result<Tensor> {
        split_heads(&self.v_proj.forward(v)?, self.num_heads)
    }

    /// The attention of projected queries, keys and values (`B x H x N x d`),
    /// through the output projection: `B x Nq x C`, onto `residual` if given.
    pub(crate) fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let out = attention_merged(q, k, v, self.scale, None, AttentionOptions::default())?;
        self.project_out(&out, residual)
    }

    /// The output projection of merged heads `B x N x H d`, onto `residual`.
    fn project_out(&self, merged: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        match residual {
            Some(r) => self.out_proj.forward_add(merged, r),
            None => self.out_proj.forward(merged),
        }
    }

    /// A projection's weight `H d x C` as `1 x H x d x C`.
    fn heads_weight(&self, layer: &Linear) -> Result<Tensor> {
        let Some(weight) = layer.weight() else {
            candle_core::bail!("decoder attention: folded form without a dense weight")
        };
        let (_, c) = weight.dims2()?;
        weight.reshape((1, self.num_heads, self.head_dim, c))
    }

    /// A projection's bias `H d` as `1 x H x d x 1`.
    fn heads_bias(&self, layer: &Linear) -> Result<Tensor> {
        let Some(bias) = layer.bias() else {
            candle_core::bail!("decoder attention: folded form without a bias")
        };
        bias.reshape((1, self.num_heads, self.head_dim, 1))
    }

    /// Many queries, few keys (image -> token): the query and output projections
    /// folded through the keys (module docs).
    fn forward_few_keys(
        &self,
        Inputs { q, k, v }: Inputs,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, nq, c) = q.dims3()?;
        let nk = k.dim(1)?;
        let h = self.num_heads;
        // B x H x Nk x d, then each head's keys through its rows of W_q: the scores
        // of the image tokens are their products with `B x H Nk x C`.
        let keys = self.project_keys(k)?.contiguous()?;
        let to_scores = per_head(&keys, &self.heads_weight(&self.q_proj)?)?
            .affine(self.scale, 0.0)?
            .reshape((b, h * nk, c))?;
        let score_bias = per_head(&keys, &self.heads_bias(&self.q_proj)?)?
            .affine(self.scale, 0.0)?
            .reshape((b, 1, h * nk))?;
        let scores = matmul(q, &to_scores.transpose(1, 2)?)?
            .broadcast_add(&score_bias)?
            .reshape((b, nq, h, nk))?;
        let probs = samus_core::softmax::softmax_last_dim(&scores)?.reshape((b, nq, h * nk))?;
        // Each head's values through its columns of W_o: `B x H Nk x C`. Each head's
        // probabilities sum to one, so a share `b_o / H` of the output bias added to
        // every row is `b_o` in the product: no separate addition.
        let (Some(out_weight), Some(out_bias)) = (self.out_proj.weight(), self.out_proj.bias())
        else {
            candle_core::bail!("decoder attention: folded form without a dense weight")
        };
        let out_heads = out_weight
            .reshape((c, h, self.head_dim))?
            .permute((1, 2, 0))?
            .unsqueeze(0)?;
        let from_probs = per_head(&self.project_values(v)?.contiguous()?, &out_heads)?
            .broadcast_add(&out_bias.affine(1.0 / h as f64, 0.0)?)?
            .reshape((b, h * nk, c))?;
        match residual {
            Some(r) => matmul_add(&probs, &from_probs, r),
            None => matmul(&probs, &from_probs),
        }
    }

    /// Few queries, many keys (token -> image): the key and value projections
    /// folded through the queries (module docs).
    fn forward_few_queries(
        &self,
        Inputs { q, k, v }: Inputs,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, nq, c) = q.dims3()?;
        let (h, d) = (self.num_heads, self.head_dim);
        // Each head's queries through its rows of W_k: `B x H Nq x C`, whose products
        // with the image tokens are the scores.
        let from_keys = per_head(
            &self.project_queries(q)?.contiguous()?,
            &self.heads_weight(&self.k_proj)?,
        )?
        .affine(self.scale, 0.0)?
        .reshape((b, h * nq, c))?;
        // As `k (from_keys)^T`, `B x Nk x H Nq`, transposed: the packed product packs
        // its right operand for the call, the small one this way round.
        let scores = matmul(k, &from_keys.transpose(1, 2)?)?.transpose(1, 2)?;
        let probs = samus_core::softmax::softmax_last_dim(&scores)?;
        // The probability-weighted image tokens, `B x H x Nq x C`, through each
        // head's rows of W_v: `B x H x Nq x d`, plus the value bias.
        let mixed = matmul(&probs, v)?.reshape((b, h, nq, c))?;
        let value_heads = self.heads_weight(&self.v_proj)?.transpose(2, 3)?;
        let value_bias = self.heads_bias(&self.v_proj)?.transpose(2, 3)?;
        let heads = per_head(&mixed, &value_heads)?.broadcast_add(&value_bias)?;
        let merged = heads.transpose(1, 2)?.reshape((b, nq, h * d))?;
        self.project_out(&merged, residual)
    }
}

/// Each head's product `x_h w_h` for `x` `B x H x n x m` and weights `1 x H x m x p`:
/// one packed product per head where `B` is 1 ([`matmul`], a row-major operand of
/// a few thousand values packed by row slices), else candle's broadcast product.
fn per_head(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.dim(0)? == 1 {
        matmul(x, w)
    } else {
        x.broadcast_matmul(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use candle_core::{DType, Device};
    use samus_core::fixtures::relative_error;

    /// SAM's decoder attention (256 wide, 8 heads, downsample 2: heads of 16)
    /// with random weights and biases.
    fn attention() -> Result<DecoderAttention> {
        let dev = Device::Cpu;
        let mut tensors = HashMap::new();
        for (name, out_dim, in_dim) in [
            ("q_proj", 128, 256),
            ("k_proj", 128, 256),
            ("v_proj", 128, 256),
            ("out_proj", 256, 128),
        ] {
            let weight = Tensor::randn(0f32, 0.1, (out_dim, in_dim), &dev)?;
            tensors.insert(format!("{name}.weight"), weight);
            tensors.insert(
                format!("{name}.bias"),
                Tensor::randn(0f32, 0.5, out_dim, &dev)?,
            );
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        DecoderAttention::load(vb, 256, 8, 2)
    }

    #[test]
    fn folded_forms_match_the_projected_attention() -> Result<()> {
        let attn = attention()?;
        let dev = Device::Cpu;
        for (b, nq, nk, form) in [
            (1, 1024, 7, Form::FewKeys),
            (2, 64, 10, Form::FewKeys),
            (1, 7, 1024, Form::FewQueries),
            (2, 3, 64, Form::FewQueries),
            (2, 33, 12, Form::FewKeys),
            (2, 8, 50, Form::FewQueries),
            (1, 7, 7, Form::Projected),
            (1, 20, 300, Form::Projected),
        ] {
            assert_eq!(attn.form(nq, nk), form, "{nq} queries, {nk} keys");
            let q = Tensor::randn(0f32, 1.0, (b, nq, 256), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (b, nk, 256), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (b, nk, 256), &dev)?;
            let want = attn.forward_projected(
                Inputs {
                    q: &q,
                    k: &k,
                    v: &v,
                },
                None,
            )?;
            let got = attn.forward(&q, &k, &v)?;
            assert_eq!(got.dims(), want.dims());
            let err = relative_error(&got, &want)?;
            assert!(err < 1e-5, "{form:?} {b}x{nq}x{nk}: relative error {err}");
            let added = attn.forward_add(&q, &k, &v, &q)?;
            let err = relative_error(&added, &(&want + &q)?)?;
            assert!(
                err < 1e-5,
                "{form:?} {b}x{nq}x{nk} onto a residual: relative error {err}"
            );
        }
        Ok(())
    }
}
