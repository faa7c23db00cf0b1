//! SAM's two-way transformer (`mask_decoder.transformer.*`): prompt tokens and image
//! tokens attend to each other in turn.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use samus_core::LayerNorm;

pub use crate::decoder_attention::DecoderAttention;
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

    /// What the block computes from the image tokens `keys` alone (with their
    /// positional encoding `key_pe`), before the prompt tokens take part.
    fn image_terms(&self, keys: &Tensor, key_pe: &Tensor) -> Result<BlockImageTerms> {
        let keys_with_pe = keys.broadcast_add(key_pe)?;
        let attn = &self.cross_attn_token_to_image;
        Ok(BlockImageTerms {
            token_to_image_keys: attn.project_keys(&keys_with_pe)?,
            token_to_image_values: attn.project_values(keys)?,
            keys_with_pe,
        })
    }

    /// Prompt tokens `queries` and image tokens `keys` (with positional encodings
    /// `query_pe` and `key_pe`) through the block; `terms`, when given, are the
    /// block's [`Self::image_terms`] of these `keys`.
    fn forward(
        &self,
        (queries, query_pe): (&Tensor, &Tensor),
        (keys, key_pe): (&Tensor, &Tensor),
        terms: Option<&BlockImageTerms>,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;
        let q = (&queries + query_pe)?;
        let token_to_image = &self.cross_attn_token_to_image;
        let (queries, k) = match terms {
            Some(terms) => (
                token_to_image.attend(
                    &token_to_image.project_queries(&q)?,
                    &terms.token_to_image_keys,
                    &terms.token_to_image_values,
                    Some(&queries),
                )?,
                terms.keys_with_pe.clone(),
            ),
            None => {
                let k = keys.broadcast_add(key_pe)?;
                (token_to_image.forward_add(&q, &k, keys, &queries)?, k)
            }
        };
        let queries = self.norm2.forward(&queries)?;
        let queries = self
            .norm3
            .forward(&(&queries + self.mlp.forward(&queries)?)?)?;
        let q = (&queries + query_pe)?;
        let keys = self
            .cross_attn_image_to_token
            .forward_add(&k, &q, &queries, keys)?;
        let keys = self.norm4.forward(&keys)?;
        Ok((queries, keys))
    }
}

/// What a block computes from the image tokens alone: the tokens plus their
/// positional encoding, and the token -> image attention's keys and values (split
/// into heads).
#[derive(Debug, Clone)]
struct BlockImageTerms {
    keys_with_pe: Tensor,
    token_to_image_keys: Tensor,
    token_to_image_values: Tensor,
}

/// What the two-way transformer computes from the image tokens alone, before any
/// prompt token: the image tokens and the first block's terms of them. Every
/// prompt decoded against the same image tokens can reuse it
/// ([`TwoWayTransformer::image_terms`]).
#[derive(Debug, Clone)]
pub struct TransformerImageTerms {
    keys: Tensor,
    first_block: BlockImageTerms,
}

impl TransformerImageTerms {
    /// The image tokens, `B x HW x C`.
    pub fn image_tokens(&self) -> &Tensor {
        &self.keys
    }

    /// Bytes of the tensors held.
    pub fn bytes(&self) -> usize {
        let first = &self.first_block;
        [
            &self.keys,
            &first.keys_with_pe,
            &first.token_to_image_keys,
            &first.token_to_image_values,
        ]
        .iter()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum()
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

    /// The prompt-independent part of [`TwoWayTransformer::forward`] for image
    /// tokens `B x HW x C` and their positional encoding `1 x HW x C` or
    /// `B x HW x C`.
    pub fn image_terms(
        &self,
        image_tokens: &Tensor,
        image_pe: &Tensor,
    ) -> Result<TransformerImageTerms> {
        let Some(first) = self.layers.first() else {
            candle_core::bail!("two-way transformer: no blocks")
        };
        Ok(TransformerImageTerms {
            keys: image_tokens.clone(),
            first_block: first.image_terms(image_tokens, image_pe)?,
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
        self.forward_terms(&self.image_terms(image_tokens, image_pe)?, image_pe, tokens)
    }

    /// [`TwoWayTransformer::forward`] on image tokens whose prompt-independent part
    /// `terms` was computed before ([`TwoWayTransformer::image_terms`], with the
    /// same `image_pe`).
    pub fn forward_terms(
        &self,
        terms: &TransformerImageTerms,
        image_pe: &Tensor,
        tokens: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let mut queries = tokens.clone();
        let mut keys = terms.keys.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let first = (i == 0).then_some(&terms.first_block);
            (queries, keys) = layer.forward((&queries, tokens), (&keys, image_pe), first)?;
        }
        let q = (&queries + tokens)?;
        let k = keys.broadcast_add(image_pe)?;
        let queries = self
            .final_attn_token_to_image
            .forward_add(&q, &k, &keys, &queries)?;
        let queries = self.norm_final_attn.forward(&queries)?;
        Ok((queries, keys))
    }
}
