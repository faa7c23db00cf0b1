//! The mask decoder (`mask_decoder.*`), unchanged from SAM: a two-way transformer
//! over the prompt tokens and the image embedding, an upscaling path, one
//! hypernetwork MLP per mask token and an IoU head.

use candle_core::{Module, Result, Tensor};
use candle_nn::{ConvTranspose2d, Init, VarBuilder};
use samus_core::conv::conv_transpose2x2_nhwc_cached;
use samus_core::layout::channels_last;
use samus_core::packed::{Epilogue, PackedCache};
use samus_core::LayerNorm2d;

use crate::layers::{conv_transpose_2x2, layer_norm_2d, StackedMlp};
use crate::transformer::{TwoWayTransformer, TwoWayTransformerConfig};

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
        let (masks, iou) = self.predict_masks(image_embeddings, image_pe, sparse, dense)?;
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

    /// All four masks `B x 4 x 4G x 4G` and IoUs `B x 4`; the arguments are those of
    /// [`MaskDecoder::forward`].
    ///
    /// The image side runs channels last, as tokens: the transformer's image tokens
    /// feed the transposed convolutions directly, without a transposition back to NCHW.
    pub fn predict_masks(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, _, c) = sparse.dims3()?;
        let output_tokens =
            self.output_tokens()?
                .unsqueeze(0)?
                .broadcast_as((b, NUM_MASK_TOKENS + 1, c))?;
        let tokens = Tensor::cat(&[&output_tokens.contiguous()?, sparse], 1)?;
        let (_, _, h, w) = image_embeddings.dims4()?;
        // The sum in NCHW (both operands read in order; `dense` may be a broadcast
        // view), then one transposition to tokens.
        let src = channels_last(&image_embeddings.broadcast_add(dense)?)?.reshape((b, h * w, c))?;
        let (hs, src) = self.transformer.forward(&src, image_pe, &tokens)?;
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
