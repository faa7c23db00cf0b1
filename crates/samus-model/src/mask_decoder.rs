//! The mask decoder (`mask_decoder.*`), unchanged from SAM: a two-way transformer
//! over the prompt tokens and the image embedding, an upscaling path, one
//! hypernetwork MLP per mask token and an IoU head.

use candle_core::{Module, Result, Tensor, TensorId};
use candle_nn::{ConvTranspose2d, Init, VarBuilder};
use samus_core::conv::conv_transpose2x2_nhwc_cached;
use samus_core::layout::channels_last;
use samus_core::packed::{Epilogue, PackedCache};
use samus_core::LayerNorm2d;

use crate::layers::{conv_transpose_2x2, layer_norm_2d, StackedMlp};
use crate::transformer::{TransformerImageTerms, TwoWayTransformer, TwoWayTransformerConfig};

/// Number of mask tokens (one single-mask output and three multimask outputs).
pub const NUM_MASK_TOKENS: usize = 4;
/// Depth of the hypernetwork MLPs and the IoU head.
const HEAD_DEPTH: usize = 3;
/// Hidden width of the IoU head.
const IOU_HEAD_HIDDEN: usize = 256;

/// Low-resolution mask logits and predicted IoUs.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// `B x K x 4G x 4G` logits (K = 1, or 3 with multimask output).
    pub low_res_logits: Tensor,
    /// `B x K` predicted IoU of each mask.
    pub iou: Tensor,
}

/// What the mask decoder computes from the image embeddings and the dense prompt
/// alone ([`MaskDecoder::image_terms`]): reused by every sparse prompt decoded
/// against them, as [`Samus::predict`](crate::Samus::predict) does for the clicks
/// on one [`ImageEmbedding`](crate::ImageEmbedding).
#[derive(Debug, Clone)]
pub struct DecoderImageTerms {
    transformer: TransformerImageTerms,
    /// The embedding grid, `(G, G)`.
    grid: (usize, usize),
    /// The decoder that computed them (the id of its IoU token), see
    /// [`MaskDecoder::made`].
    owner: TensorId,
}

impl DecoderImageTerms {
    /// Bytes of the tensors held (3 MiB for SAMUS's 256-wide 32 x 32 grid: the
    /// image tokens, their sum with the positional encoding, and block 0's keys and
    /// values).
    pub fn bytes(&self) -> usize {
        self.transformer.bytes()
    }
}

/// The mask decoder.
#[derive(Debug, Clone)]
pub struct MaskDecoder {
    transformer: TwoWayTransformer,
    iou_token: Tensor,
    mask_tokens: Tensor,
    upscale1: ConvTranspose2d,
    upscale_norm: LayerNorm2d,
    upscale2: ConvTranspose2d,
    /// The two transposed convolutions' kernels packed for inference.
    upscale_packed: [PackedCache; 2],
    hypernetworks: Vec<StackedMlp>,
    iou_head: StackedMlp,
}

impl MaskDecoder {
    /// Loads a decoder of `embed_dim` channels (256 in SAM).
    pub fn load(vb: VarBuilder, embed_dim: usize) -> Result<Self> {
        let transformer_cfg = TwoWayTransformerConfig {
            embed_dim,
            ..Default::default()
        };
        let embedding = |name: &str, rows: usize| {
            vb.pp(name).get_with_hints(
                (rows, embed_dim),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
        };
        let up = vb.pp("output_upscaling");
        let hypernetworks = (0..NUM_MASK_TOKENS)
            .map(|i| {
                StackedMlp::load(
                    vb.pp("output_hypernetworks_mlps").pp(i),
                    embed_dim,
                    embed_dim,
                    embed_dim / 8,
                    HEAD_DEPTH,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            transformer: TwoWayTransformer::load(vb.pp("transformer"), &transformer_cfg)?,
            iou_token: embedding("iou_token", 1)?,
            mask_tokens: embedding("mask_tokens", NUM_MASK_TOKENS)?,
            upscale1: conv_transpose_2x2(up.pp("0"), embed_dim, embed_dim / 4)?,
            upscale_norm: layer_norm_2d(up.pp("1"), embed_dim / 4)?,
            upscale2: conv_transpose_2x2(up.pp("3"), embed_dim / 4, embed_dim / 8)?,
            upscale_packed: Default::default(),
            hypernetworks,
            iou_head: StackedMlp::load(
                vb.pp("iou_prediction_head"),
                embed_dim,
                IOU_HEAD_HIDDEN,
                NUM_MASK_TOKENS,
                HEAD_DEPTH,
            )?,
        })
    }

    /// The decoder's own output tokens, `[iou_token; mask_tokens]`: `5 x 256`.
    pub fn output_tokens(&self) -> Result<Tensor> {
        Tensor::cat(&[&self.iou_token, &self.mask_tokens], 0)
    }

    /// Predicts masks from image embeddings `B x 256 x G x G` (or `1 x ...`, shared by
    /// all prompts), their positional encoding as tokens `1 x GG x 256`
    /// ([`PromptEncoder::dense_pe_tokens`](crate::PromptEncoder::dense_pe_tokens)),
    /// sparse prompt embeddings `B x N x 256` and dense ones `B x 256 x G x G`.
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask: bool,
    ) -> Result<DecoderOutput> {
        let terms = self.image_terms(image_embeddings, image_pe, dense)?;
        self.forward_terms(&terms, image_pe, sparse, multimask)
    }

    /// The part of [`MaskDecoder::forward`] that does not depend on the sparse
    /// prompt: the image embeddings plus the dense prompt as tokens, and the
    /// transformer's first projections of them. Decoding several prompts against
    /// one image and one dense prompt (no mask prompt), compute it once and pass it
    /// to [`MaskDecoder::forward_terms`] for each.
    pub fn image_terms(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        dense: &Tensor,
    ) -> Result<DecoderImageTerms> {
        let (_, _, h, w) = image_embeddings.dims4()?;
        // The sum in NCHW (both operands read in order; `dense` may be a broadcast
        // view), then one transposition to tokens.
        let sum = image_embeddings.broadcast_add(dense)?;
        let (b, c, _, _) = sum.dims4()?;
        let src = channels_last(&sum)?.reshape((b, h * w, c))?;
        Ok(DecoderImageTerms {
            transformer: self.transformer.image_terms(&src, image_pe)?,
            grid: (h, w),
            owner: self.iou_token.id(),
        })
    }

    /// [`MaskDecoder::forward`] with the image side computed before
    /// ([`MaskDecoder::image_terms`], same `image_pe`) and sparse prompt embeddings
    /// `B x N x 256` of the same batch size.
    pub fn forward_terms(
        &self,
        terms: &DecoderImageTerms,
        image_pe: &Tensor,
        sparse: &Tensor,
        multimask: bool,
    ) -> Result<DecoderOutput> {
        let (masks, iou) = self.predict_masks(terms, image_pe, sparse)?;
        let (start, len) = if multimask {
            (1, NUM_MASK_TOKENS - 1)
        } else {
            (0, 1)
        };
        Ok(DecoderOutput {
            low_res_logits: masks.narrow(1, start, len)?.contiguous()?,
            iou: iou.narrow(1, start, len)?.contiguous()?,
        })
    }

    /// Whether `terms` were computed by this decoder from its current weights: by
    /// this decoder (not another model's), whose weights are not variables that
    /// training may have changed since.
    pub fn made(&self, terms: &DecoderImageTerms) -> bool {
        terms.owner == self.iou_token.id() && !self.iou_token.is_variable()
    }

    /// All four masks `B x 4 x 4G x 4G` and IoUs `B x 4`; the arguments are those of
    /// [`MaskDecoder::forward_terms`].
    ///
    /// The image side runs channels last, as tokens: the transformer's image tokens
    /// feed the transposed convolutions directly, without a transposition back to NCHW.
    fn predict_masks(
        &self,
        terms: &DecoderImageTerms,
        image_pe: &Tensor,
        sparse: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, _, c) = sparse.dims3()?;
        let image_batch = terms.transformer.image_tokens().dim(0)?;
        if image_batch != b {
            candle_core::bail!(
                "mask decoder: {b} sparse prompts for image terms of batch {image_batch}"
            )
        }
        let output_tokens =
            self.output_tokens()?
                .unsqueeze(0)?
                .broadcast_as((b, NUM_MASK_TOKENS + 1, c))?;
        let tokens = Tensor::cat(&[&output_tokens.contiguous()?, sparse], 1)?;
        let (h, w) = terms.grid;
        let (hs, src) = self
            .transformer
            .forward_terms(&terms.transformer, image_pe, &tokens)?;
        let iou_token_out = hs.narrow(1, 0, 1)?.squeeze(1)?;
        let up = conv_transpose2x2_nhwc_cached(
            &src.reshape((b, h, w, c))?,
            self.upscale1.weight(),
            self.upscale1.bias(),
            &self.upscale_packed[0],
            Epilogue::None,
        )?;
        let up = self.upscale_norm.forward_nhwc_gelu(&up)?;
        let up = conv_transpose2x2_nhwc_cached(
            &up,
            self.upscale2.weight(),
            self.upscale2.bias(),
            &self.upscale_packed[1],
            Epilogue::Gelu,
        )?;
        let (_, uh, uw, uc) = up.dims4()?;
        let hyper_in = self
            .hypernetworks
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(&hs.narrow(1, 1 + i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper_in = Tensor::cat(&hyper_in, 1)?;
        let pixels = up.reshape((b, uh * uw, uc))?.transpose(1, 2)?;
        let masks = hyper_in
            .matmul(&pixels)?
            .reshape((b, NUM_MASK_TOKENS, uh, uw))?;
        let iou = self.iou_head.forward(&iou_token_out)?;
        Ok((masks, iou))
    }
}
