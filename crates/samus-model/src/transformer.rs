//! SAM's two-way transformer (`mask_decoder.transformer.*`): prompt tokens and image
//! tokens attend to each other in turn.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use samus_core::{attention_merged, split_heads, AttentionOptions, LayerNorm};

use crate::layers::{layer_norm, Linear};

/// Epsilon of the decoder's `nn.LayerNorm`s.
pub const DECODER_LAYER_NORM_EPS: f64 = 1e-5;

/// Size of a [`TwoWayTransformer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwoWayTransformerConfig {
    /// Number of two-way blocks.
    pub depth: usize,
    /// Token width.
    pub embed_dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Hidden width of the token MLPs.
    pub mlp_dim: usize,
    /// Channel reduction of the token/image attentions.
    pub attention_downsample_rate: usize,
}

impl Default for TwoWayTransformerConfig {
    /// SAM's decoder transformer: depth 2, 256 wide, 8 heads, MLP 2048, downsample 2.
    fn default() -> Self {
        Self {
            depth: 2,
            embed_dim: 256,
            num_heads: 8,
            mlp_dim: 2048,
            attention_downsample_rate: 2,
        }
    }
}

/// Attention with separate q/k/v projections to an internal width and an output
/// projection back (`q_proj`, `k_proj`, `v_proj`, `out_proj`).
#[derive(Debug, Clone)]
pub struct DecoderAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    scale: f64,
}

impl DecoderAttention {
    /// Loads an attention of width `dim` with internal width `dim / downsample`.
    pub fn load(vb: VarBuilder, dim: usize, num_heads: usize, downsample: usize) -> Result<Self> {
        let internal = dim / downsample;
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), dim, internal, true)?,
            k_proj: Linear::load(vb.pp("k_proj"), dim, internal, true)?,
            v_proj: Linear::load(vb.pp("v_proj"), dim, internal, true)?,
            out_proj: Linear::load(vb.pp("out_proj"), internal, dim, true)?,
            num_heads,
            scale: 1.0 / ((internal / num_heads) as f64).sqrt(),
        })
    }

    /// `q` `B x Nq x C`, `k` and `v` `B x Nk x C`; returns `B x Nq x C`.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let q = split_heads(&self.q_proj.forward(q)?, self.num_heads)?;
        let k = split_heads(&self.k_proj.forward(k)?, self.num_heads)?;
        let v = split_heads(&self.v_proj.forward(v)?, self.num_heads)?;
        let out = attention_merged(&q, &k, &v, self.scale, None, AttentionOptions::default())?;
        self.out_proj.forward(&out)
    }
}

/// The token MLP (`mlp.lin1`, ReLU, `mlp.lin2`).
#[derive(Debug, Clone)]
struct TokenMlp {
    lin1: Linear,
    lin2: Linear,
}

impl Module for TokenMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.lin2.forward(&self.lin1.forward(x)?.relu()?)
    }
}

/// One two-way block: token self-attention, tokens -> image, MLP, image -> tokens.
#[derive(Debug, Clone)]
pub struct TwoWayAttentionBlock {
    self_attn: DecoderAttention,
    norm1: LayerNorm,
    cross_attn_token_to_image: DecoderAttention,
    norm2: LayerNorm,
    mlp: TokenMlp,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_attn_image_to_token: DecoderAttention,
    skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    fn load(
        vb: VarBuilder,
        cfg: &TwoWayTransformerConfig,
        skip_first_layer_pe: bool,
    ) -> Result<Self> {
        let d = cfg.embed_dim;
        let norm = |name: &str| layer_norm(vb.pp(name), d, DECODER_LAYER_NORM_EPS);
        Ok(Self {
            self_attn: DecoderAttention::load(vb.pp("self_attn"), d, cfg.num_heads, 1)?,
            norm1: norm("norm1")?,
            cross_attn_token_to_image: DecoderAttention::load(
                vb.pp("cross_attn_token_to_image"),
                d,
                cfg.num_heads,
                cfg.attention_downsample_rate,
            )?,
            norm2: norm("norm2")?,
            mlp: TokenMlp {
                lin1: Linear::load(vb.pp("mlp").pp("lin1"), d, cfg.mlp_dim, true)?,
                lin2: Linear::load(vb.pp("mlp").pp("lin2"), cfg.mlp_dim, d, true)?,
            },
            norm3: norm("norm3")?,
            norm4: norm("norm4")?,
            cross_attn_image_to_token: DecoderAttention::load(
                vb.pp("cross_attn_image_to_token"),
                d,
                cfg.num_heads,
                cfg.attention_downsample_rate,
            )?,
            skip_first_layer_pe,
        })
    }

    fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;
        let q = (&queries + query_pe)?;
        let k = keys.broadcast_add(key_pe)?;
        let queries = (&queries + self.cross_attn_token_to_image.forward(&q, &k, keys)?)?;
        let queries = self.norm2.forward(&queries)?;
        let queries = self
            .norm3
            .forward(&(&queries + self.mlp.forward(&queries)?)?)?;
        let q = (&queries + query_pe)?;
        let keys = (keys + self.cross_attn_image_to_token.forward(&k, &q, &queries)?)?;
        let keys = self.norm4.forward(&keys)?;
        Ok((queries, keys))
    }
}

/// The two-way transformer.
#[derive(Debug, Clone)]
pub struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: DecoderAttention,
    norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    /// Loads a transformer of size `cfg`.
    pub fn load(vb: VarBuilder, cfg: &TwoWayTransformerConfig) -> Result<Self> {
        let layers = (0..cfg.depth)
            .map(|i| TwoWayAttentionBlock::load(vb.pp("layers").pp(i), cfg, i == 0))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn_token_to_image: DecoderAttention::load(
                vb.pp("final_attn_token_to_image"),
                cfg.embed_dim,
                cfg.num_heads,
                cfg.attention_downsample_rate,
            )?,
            norm_final_attn: layer_norm(
                vb.pp("norm_final_attn"),
                cfg.embed_dim,
                DECODER_LAYER_NORM_EPS,
            )?,
        })
    }

    /// Image tokens `B x HW x C` (the image embedding, channels last), their
    /// positional encoding `1 x HW x C` or `B x HW x C`, and the prompt tokens
    /// `B x N x C`; returns the updated prompt tokens `B x N x C` and image tokens
    /// `B x HW x C`.
    pub fn forward(
        &self,
        image_tokens: &Tensor,
        image_pe: &Tensor,
        tokens: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let mut queries = tokens.clone();
        let mut keys = image_tokens.clone();
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, tokens, image_pe)?;
        }
        let q = (&queries + tokens)?;
        let k = keys.broadcast_add(image_pe)?;
        let attn = self.final_attn_token_to_image.forward(&q, &k, &keys)?;
        let queries = self.norm_final_attn.forward(&(queries + attn)?)?;
        Ok((queries, keys))
    }
}
