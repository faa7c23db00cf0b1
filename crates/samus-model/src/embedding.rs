//! [`ImageEmbedding`]: what the image encoder makes of one image, held as a value.

use std::sync::{Arc, OnceLock};

use candle_core::Tensor;
use image::DynamicImage;

use crate::error::{Error, Result};
use crate::mask_decoder::DecoderImageTerms;
use crate::preprocess::image_to_input;
use crate::samus::Samus;

/// The embedding of one image (`1 x 256 x G x G`) with the size of the image it
/// came from, so that prompts in the image's pixels can be decoded against it.
///
/// Cheap to clone (the tensor is shared), `Send + Sync`: keep as many as you like,
/// and decode prompts against any of them from any thread with
/// [`Samus::predict`]. The first prediction also keeps what the mask decoder
/// computes from the image alone (its [`DecoderImageTerms`]), shared by the clones,
/// so that every further click costs only its own part of the decoder.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    tensor: Tensor,
    height: usize,
    width: usize,
    decoder_terms: Arc<OnceLock<DecoderImageTerms>>,
}

impl ImageEmbedding {
    /// Wraps an embedding computed elsewhere (`1 x C x G x G`, e.g. one image of a
    /// batch passed through [`Samus::embed_image`]) for an image of `height x width`.
    pub fn from_tensor(tensor: Tensor, height: usize, width: usize) -> Result<Self> {
        let dims = tensor.dims();
        if dims.len() != 4 || dims[0] != 1 || height == 0 || width == 0 {
            return Err(Error::EmbeddingShape {
                expected: vec![1, 0, 0, 0],
                found: dims.to_vec(),
            });
        }
        Ok(Self {
            tensor,
            height,
            width,
            decoder_terms: Arc::default(),
        })
    }

    /// The embedding, `1 x 256 x G x G`.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// `(height, width)` of the image it was computed from.
    pub fn original_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// Width of the image it was computed from.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height of the image it was computed from.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Bytes this embedding holds: its tensor and, once a prediction has kept
    /// them, the mask decoder's terms of the image (shared with its clones).
    pub fn bytes(&self) -> usize {
        let tensor = self.tensor.elem_count() * self.tensor.dtype().size_in_bytes();
        tensor + self.decoder_terms.get().map_or(0, DecoderImageTerms::bytes)
    }
}

impl Samus {
    /// The mask decoder's terms of `embedding` without a mask prompt: kept in the
    /// embedding by the first call, reused by the next ones. Computed afresh (and not
    /// kept) when the kept ones came from another model or the decoder's weights are
    /// variables that training may change.
    pub(crate) fn decoder_terms(
        &self,
        embedding: &ImageEmbedding,
    ) -> candle_core::Result<DecoderImageTerms> {
        let decoder = self.mask_decoder();
        if let Some(terms) = embedding.decoder_terms.get() {
            if decoder.made(terms) {
                return Ok(terms.clone());
            }
        }
        let dense = self.prompt_encoder().dense(None, 1)?;
        let terms = decoder.image_terms(
            embedding.tensor(),
            self.prompt_encoder().dense_pe_tokens(),
            &dense,
        )?;
        if decoder.made(&terms) {
            // A concurrent first prediction may have kept its own (equal) terms.
            let _ = embedding.decoder_terms.set(terms.clone());
        }
        Ok(terms)
    }

    /// Embeds one image of any size (grey or colour, 8 or 16 bit; converted to the
    /// model's input as the reference does, see [`crate::preprocess`]).
    pub fn embed(&self, image: &DynamicImage) -> Result<ImageEmbedding> {
        let input = self.input(image)?;
        self.embed_input(&input, (image.height() as usize, image.width() as usize))
    }

    /// Embeds an already prepared input `1 x 1|3 x S x S` that came from an image of
    /// `original_size` (height, width).
    pub fn embed_input(
        &self,
        input: &Tensor,
        original_size: (usize, usize),
    ) -> Result<ImageEmbedding> {
        let (height, width) = original_size;
        ImageEmbedding::from_tensor(self.embed_image(input)?, height, width)
    }

    /// Embeds several images in one encoder pass (faster per image than one by
    /// one on most machines); the embeddings come back in order.
    pub fn embed_batch(&self, images: &[DynamicImage]) -> Result<Vec<ImageEmbedding>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let inputs = images
            .iter()
            .map(|image| self.input(image))
            .collect::<Result<Vec<_>>>()?;
        let embeddings = self.embed_image(&Tensor::cat(&inputs, 0)?)?;
        images
            .iter()
            .enumerate()
            .map(|(i, image)| {
                ImageEmbedding::from_tensor(
                    embeddings.narrow(0, i, 1)?,
                    image.height() as usize,
                    image.width() as usize,
                )
            })
            .collect()
    }

    /// The model input `1 x 1 x S x S` for one image; fails on an empty image.
    pub fn input(&self, image: &DynamicImage) -> Result<Tensor> {
        if image.width() == 0 || image.height() == 0 {
            return Err(Error::Image {
                path: None,
                message: "the image is empty".into(),
            });
        }
        image_to_input(image, self.config().img_size, self.device())
    }
}
