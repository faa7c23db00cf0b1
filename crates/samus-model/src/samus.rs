//! The SAMUS model: image encoder, prompt encoder and mask decoder together.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use samus_core::parallel::run_in_pool;
use samus_core::resize::resize_bilinear;

use crate::config::SamusConfig;
use crate::image_encoder::ImageEncoder;
use crate::mask_decoder::{DecoderOutput, MaskDecoder};
use crate::prompt_encoder::{PromptBatch, PromptEncoder};

/// Everything one SAMUS forward pass returns.
#[derive(Debug, Clone)]
pub struct SamusOutput {
    /// `B x K x 4G x 4G` low-resolution logits.
    pub low_res_logits: Tensor,
    /// `B x K` predicted IoUs.
    pub iou: Tensor,
    /// `B x K x S x S` logits bilinearly upsampled to the input size.
    pub masks: Tensor,
}

/// What [`Samus::pack_for_inference`] packed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackedWeights {
    /// Linear layers now held in packed form only.
    pub layers: usize,
    /// The memory of their packed weights, in bytes (their unpacked copies took
    /// as much).
    pub bytes: usize,
}

/// SAMUS: SAM's ViT encoder with a CNN branch and adapters, SAM's prompt encoder and
/// mask decoder, on 256 x 256 inputs.
#[derive(Debug, Clone)]
pub struct Samus {
    config: SamusConfig,
    image_encoder: ImageEncoder,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
}

impl Samus {
    /// Builds the model of `cfg` from `vb`, whose names are the reference
    /// `state_dict` names (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`).
    pub(crate) fn build(vb: VarBuilder, cfg: &SamusConfig) -> Result<Self> {
        if let Err(e) = cfg.validate() {
            candle_core::bail!("{e}")
        }
        Ok(Self {
            config: cfg.clone(),
            image_encoder: ImageEncoder::load(vb.pp("image_encoder"), cfg)?,
            prompt_encoder: PromptEncoder::load(
                vb.pp("prompt_encoder"),
                cfg.prompt_embed_dim,
                cfg.grid_size(),
                cfg.img_size,
            )?,
            mask_decoder: MaskDecoder::load(vb.pp("mask_decoder"), cfg.prompt_embed_dim)?,
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &SamusConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.prompt_encoder.dense_pe().device()
    }

    /// The image encoder.
    pub fn image_encoder(&self) -> &ImageEncoder {
        &self.image_encoder
    }

    /// The prompt encoder.
    pub fn prompt_encoder(&self) -> &PromptEncoder {
        &self.prompt_encoder
    }

    /// The mask decoder.
    pub fn mask_decoder(&self) -> &MaskDecoder {
        &self.mask_decoder
    }

    /// Packs the image encoder's linear layers (nearly all of the model's weights)
    /// for this CPU's inference product ahead of time, and drops their unpacked
    /// copies: inference then holds the encoder's weights once, not twice (as lazy
    /// packing on first use does), and the first image pays no packing.
    ///
    /// The memory is freed once nothing else holds the tensors (a
    /// [`LoadReport`](crate::LoadReport)'s `tensors` do). [`SamusLoader::load`]
    /// does this itself. Where the packed product does not apply (another device
    /// or dtype, trainable weights, a CPU without a packed kernel) the layers stay
    /// as they are. Afterwards the encoder runs on the CPU in f32, without
    /// gradients.
    ///
    /// [`SamusLoader::load`]: crate::SamusLoader::load
    pub fn pack_for_inference(&mut self) -> Result<PackedWeights> {
        run_in_pool(|| self.image_encoder.pack_for_inference())
    }

    /// Images `B x 1|3 x S x S` in [0, 1] to image embeddings `B x 256 x G x G`.
    ///
    /// Runs on rayon's pool ([`run_in_pool`]), as do [`Samus::decode`] and
    /// [`Samus::forward`].
    pub fn embed_image(&self, image: &Tensor) -> Result<Tensor> {
        run_in_pool(|| self.image_encoder.forward(image))
    }

    /// Runs the prompt encoder and the mask decoder on precomputed image embeddings.
    pub fn decode(
        &self,
        image_embeddings: &Tensor,
        prompts: &PromptBatch,
        multimask: bool,
    ) -> Result<DecoderOutput> {
        run_in_pool(|| {
            let batch = image_embeddings.dim(0)?;
            let (sparse, dense) = self.prompt_encoder.forward(prompts, batch)?;
            self.mask_decoder.forward(
                image_embeddings,
                self.prompt_encoder.dense_pe_tokens(),
                &sparse,
                &dense,
                multimask,
            )
        })
    }

    /// Bilinear upsampling of low-resolution logits to the input size.
    pub fn upscale_logits(&self, low_res_logits: &Tensor) -> Result<Tensor> {
        let size = self.config.img_size;
        resize_bilinear(low_res_logits, size, size)
    }

    /// The full forward pass: images `B x 1|3 x S x S` and one prompt set per image.
    pub fn forward(
        &self,
        image: &Tensor,
        prompts: &PromptBatch,
        multimask: bool,
    ) -> Result<SamusOutput> {
        run_in_pool(|| {
            let embeddings = self.embed_image(image)?;
            let out = self.decode(&embeddings, prompts, multimask)?;
            Ok(SamusOutput {
                masks: self.upscale_logits(&out.low_res_logits)?,
                low_res_logits: out.low_res_logits,
                iou: out.iou,
            })
        })
    }
}
