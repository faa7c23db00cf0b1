//! Cross-branch attention (`Space_Adapter`, qkvAttention in the reference): the ViT
//! tokens attend to the CNN-branch tokens.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use samus_core::qkv_attention::qkv_attention;
use samus_core::{attention_merged, split_heads, AttentionOptions, DecomposedRelPos};

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
        if (cb, cc) != (b, c) {
            candle_core::bail!(
                "cross-branch attention: queries {:?} and context {:?} disagree",
                queries.shape(),
                context.shape()
            )
        }
        let q = self.q.forward(queries)?.reshape((b, h * w, c))?;
        let k = self.k.forward(context)?.reshape((b, ch * cw, c))?;
        let v = self.v.forward(context)?.reshape((b, ch * cw, c))?;
        let trains = q.track_op() || k.track_op() || v.track_op();
        let fused = trains
            && q.device().is_cpu()
            && q.dtype() == DType::F32
            && (ch, cw) == (h, w)
            && h * w > 0;
        let out = self.attend(&q, &k, &v, (h, w), fused)?;
        let out = out.reshape((b, h, w, c))?;
        match residual {
            Some(r) => self.proj.forward_add(&out, r),
            None => self.proj.forward(&out),
        }
    }

    /// The attention of the projected tokens `(B, N, C)`, heads merged. `fused`
    /// (training on the CPU, as many CNN tokens as ViT tokens): one operation with
    /// its own backward pass, [`qkv_attention`] with a zero relative-position bias.
    /// Composed, each head's `N x N` scores and probabilities are two nodes of
    /// candle's graph, which its backward pass zero-fills and adds into: 134 MB a
    /// step of the tiny model at batch 2 (`graph_sizes` example of samus-train).
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        grid: (usize, usize),
        fused: bool,
    ) -> Result<Tensor> {
        if fused {
            let head_dim = q.dim(2)? / self.num_heads.max(1);
            let table =
                |side: usize| Tensor::zeros((2 * side - 1, head_dim), DType::F32, q.device());
            let no_bias = DecomposedRelPos::new(&table(grid.0)?, &table(grid.1)?, grid, grid)?;
            let projected = Tensor::cat(&[q, k, v], 2)?;
            return qkv_attention(&projected, self.num_heads, self.scale, &no_bias);
        }
        let [q, k, v] = [q, k, v].map(|t| split_heads(t, self.num_heads));
        attention_merged(&q?, &k?, &v?, self.scale, None, self.options)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Var};

    use super::*;
    use crate::weights::{MissingTensors, WeightStore};

    #[test]
    fn fused_training_form_matches_the_composed_attention_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let store = WeightStore::new(HashMap::new(), MissingTensors::Initialise { seed: 3 });
        let attention = CrossBranchAttention::load(store.var_builder(&dev), 16, 2)?;
        let (b, grid) = (2, (3, 4));
        let n = grid.0 * grid.1;
        let var = |seed: f32| -> Result<Var> {
            let t = Tensor::randn(0f32, 1.0, (b, n, 16), &dev)?;
            Var::from_tensor(&(t * f64::from(seed))?)
        };
        let (q, k, v) = (var(1.0)?, var(0.7)?, var(1.3)?);
        let weights = Tensor::randn(0f32, 1.0, (b, n, 16), &dev)?;
        let mut results = Vec::new();
        for fused in [true, false] {
            let out = attention.attend(q.as_tensor(), k.as_tensor(), v.as_tensor(), grid, fused)?;
            let grads = (&out * &weights)?.sum_all()?.backward()?;
            let grad = |x: &Var| {
                grads
                    .get(x.as_tensor())
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
            };
            results.push([out, grad(&q)?, grad(&k)?, grad(&v)?]);
        }
        for (what, (fused, composed)) in ["output", "dq", "dk", "dv"]
            .iter()
            .zip(results[0].iter().zip(&results[1]))
        {
            let scale = composed.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-3);
            let diff = (fused - composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "{what}: {diff} (scale {scale})"
            );
            assert!(scale > 1e-3, "{what} is all zeros");
        }
        Ok(())
    }
}
