//! The APG's two-stream transformer (`CrossTransformer` in the reference): two token
//! sets attend to each other, each with its own pre-norm feed-forward.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use samus_core::LayerNorm;
use samus_model::layers::{layer_norm, Linear};

use crate::attention::ApgAttention;

/// Epsilon of the APG's LayerNorms.
pub const APG_LAYER_NORM_EPS: f64 = 1e-5;
/// Hidden width of the feed-forwards.
pub const APG_MLP_DIM: usize = 1024;

/// Attention with a LayerNorm on each input (`PreNorm2in`: `norm1`, `norm2`, `fn`).
#[derive(Debug, Clone)]
struct PreNormAttention {
    norm_x: LayerNorm,
    norm_context: LayerNorm,
    attn: ApgAttention,
}

impl PreNormAttention {
    fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            norm_x: layer_norm(vb.pp("norm1"), dim, APG_LAYER_NORM_EPS)?,
            norm_context: layer_norm(vb.pp("norm2"), dim, APG_LAYER_NORM_EPS)?,
            attn: ApgAttention::load(vb.pp("fn"), dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        self.attn.forward(
            &self.norm_x.forward(x)?,
            &self.norm_context.forward(context)?,
        )
    }
}

/// LayerNorm then Linear -> ReLU -> Linear (`PreNorm`: `norm`, `fn.net.{0,3}`).
#[derive(Debug, Clone)]
struct PreNormFeedForward {
    norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
}

impl PreNormFeedForward {
    fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        let net = vb.pp("fn").pp("net");
        Ok(Self {
            norm: layer_norm(vb.pp("norm"), dim, APG_LAYER_NORM_EPS)?,
            lin1: Linear::load(net.pp("0"), dim, APG_MLP_DIM, true)?,
            lin2: Linear::load(net.pp("3"), APG_MLP_DIM, dim, true)?,
        })
    }
}

impl Module for PreNormFeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.lin2
            .forward(&self.lin1.forward(&self.norm.forward(x)?)?.relu()?)
    }
}

/// One layer (`layers.{i}.{0,1,2,3}`): both attentions from the layer's inputs, then
/// a feed-forward on each stream.
#[derive(Debug, Clone)]
struct CrossLayer {
    attn_a: PreNormAttention,
    attn_b: PreNormAttention,
    ff_a: PreNormFeedForward,
    ff_b: PreNormFeedForward,
}

/// The two-stream transformer.
#[derive(Debug, Clone)]
pub struct CrossTransformer {
    layers: Vec<CrossLayer>,
}

/// Depth of the APG's cross transformers.
pub const CROSS_TRANSFORMER_DEPTH: usize = 2;

impl CrossTransformer {
    /// Loads a transformer of `depth` layers on tokens of width `dim`.
    pub fn load(vb: VarBuilder, dim: usize, depth: usize) -> Result<Self> {
        let layers = (0..depth)
            .map(|i| {
                let l = vb.pp("layers").pp(i);
                Ok(CrossLayer {
                    attn_a: PreNormAttention::load(l.pp("0"), dim)?,
                    attn_b: PreNormAttention::load(l.pp("1"), dim)?,
                    ff_a: PreNormFeedForward::load(l.pp("2"), dim)?,
                    ff_b: PreNormFeedForward::load(l.pp("3"), dim)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Runs both streams, `a` `B x Na x C` and `b` `B x Nb x C`; returns both.
    pub fn forward(&self, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
        let (mut a, mut b) = (a.clone(), b.clone());
        for layer in &self.layers {
            let da = layer.attn_a.forward(&a, &b)?;
            let db = layer.attn_b.forward(&b, &a)?;
            a = (a + da)?;
            b = (b + db)?;
            a = (&a + layer.ff_a.forward(&a)?)?;
            b = (&b + layer.ff_b.forward(&b)?)?;
        }
        Ok((a, b))
    }
}
