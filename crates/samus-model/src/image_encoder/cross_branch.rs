//! Cross-branch attention (`Space_Adapter`, qkvAttention in the reference): the ViT
//! tokens attend to the CNN-branch tokens.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use samus_core::{attention_merged, split_heads, AttentionOptions};

use crate::layers::Linear;

/// Multi-head attention with queries from one BHWC tensor and keys and values from
/// another of the same shape; `q`, `k`, `v` and `proj` linears, all with bias.
#[derive(Debug, Clone)]
pub struct CrossBranchAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    proj: Linear,
    num_heads: usize,
    scale: f64,
    options: AttentionOptions,
}

impl CrossBranchAttention {
    /// Loads an attention of width `dim` with `num_heads` heads.
    pub fn load(vb: VarBuilder, dim: usize, num_heads: usize) -> Result<Self> {
        Ok(Self {
            q: Linear::load(vb.pp("q"), dim, dim, true)?,
            k: Linear::load(vb.pp("k"), dim, dim, true)?,
            v: Linear::load(vb.pp("v"), dim, dim, true)?,
            proj: Linear::load(vb.pp("proj"), dim, dim, true)?,
            num_heads,
            scale: 1.0 / ((dim / num_heads) as f64).sqrt(),
            options: AttentionOptions::default(),
        })
    }

    /// The linear layers (`q`, `k`, `v`, `proj`).
    pub(crate) fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.proj]
    }

    /// `queries` (ViT tokens) and `context` (CNN tokens), both BHWC `B x H x W x D`;
    /// returns BHWC `B x H x W x D`.
    pub fn forward(&self, queries: &Tensor, context: &Tensor) -> Result<Tensor> {
        self.run(queries, context, None)
    }

    /// `residual + self.forward(queries, context)`, the addition fused into the
    /// output projection.
    pub fn forward_add(
        &self,
        queries: &Tensor,
        context: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        self.run(queries, context, Some(residual))
    }

    fn run(&self, queries: &Tensor, context: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let (b, h, w, c) = queries.dims4()?;
        let (cb, ch, cw, cc) = context.dims4()?;
        let tokens = |t: Tensor, n: usize| t.reshape((b, n, c));
        let q = split_heads(&tokens(self.q.forward(queries)?, h * w)?, self.num_heads)?;
        let k = split_heads(&tokens(self.k.forward(context)?, ch * cw)?, self.num_heads)?;
        let v = split_heads(&tokens(self.v.forward(context)?, ch * cw)?, self.num_heads)?;
        if (cb, cc) != (b, c) {
            candle_core::bail!(
                "cross-branch attention: queries {:?} and context {:?} disagree",
                queries.shape(),
                context.shape()
            )
        }
        let out = attention_merged(&q, &k, &v, self.scale, None, self.options)?;
        let out = out.reshape((b, h, w, c))?;
        match residual {
            Some(r) => self.proj.forward_add(&out, r),
            None => self.proj.forward(&out),
        }
    }
}
