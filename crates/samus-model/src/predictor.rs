//! Interactive prediction on one image: embed it once, then decode any number of
//! prompts cheaply.

use candle_core::{DType, Tensor};
use image::DynamicImage;
use samus_core::parallel::run_in_pool;
use samus_core::resize::resize_bilinear;

use crate::error::{Error, Result};
use crate::preprocess::image_to_input;
use crate::prompt_encoder::{PromptBatch, LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_PADDING};
use crate::samus::Samus;

/// A point prompt in original-image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Column, in pixels.
    pub x: f32,
    /// Row, in pixels.
    pub y: f32,
    /// 1 foreground, 0 background.
    pub label: i64,
}

impl Point {
    /// A foreground point.
    pub fn foreground(x: f32, y: f32) -> Self {
        Self {
            x,
            y,
            label: LABEL_FOREGROUND,
        }
    }
}

/// A box prompt `(x0, y0, x1, y1)` in original-image pixels.
pub type BoxPrompt = [f32; 4];

/// The prompts of one [`Predictor::predict`] call.
#[derive(Debug, Clone, Default)]
pub struct PromptSet {
    /// Points with labels.
    pub points: Vec<Point>,
    /// An optional box.
    pub bbox: Option<BoxPrompt>,
    /// Optional mask logits `1 x 1 x 4G x 4G` (e.g. a previous prediction's
    /// low-resolution logits).
    pub mask_input: Option<Tensor>,
    /// Three masks (true) or one (false).
    pub multimask: bool,
}

/// What [`Predictor::predict`] returns.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// `1 x K x 4G x 4G` logits in the model's frame.
    pub low_res_logits: Tensor,
    /// `1 x K` predicted IoUs.
    pub iou: Tensor,
    /// `1 x K x H x W` logits at the original image size.
    pub logits: Tensor,
    /// `1 x K x H x W` binary masks (`u8`, 1 where the logit is positive).
    pub masks: Tensor,
}

/// Runs SAMUS on one image with a cached image embedding.
///
/// Prompts are given in the original image's pixels and scaled to the model's square
/// input frame (x by S / W, y by S / H); masks come back at the original size.
#[derive(Debug)]
pub struct Predictor<'m> {
    model: &'m Samus,
    embedding: Option<Tensor>,
    /// (height, width) of the current image.
    original_size: (usize, usize),
}

impl<'m> Predictor<'m> {
    /// A predictor without an image.
    pub fn new(model: &'m Samus) -> Self {
        Self {
            model,
            embedding: None,
            original_size: (0, 0),
        }
    }

    /// Converts `image` (any size, grey or colour, 8 or 16 bit) to the model input and
    /// computes and caches its embedding.
    pub fn set_image(&mut self, image: &DynamicImage) -> Result<()> {
        if image.width() == 0 || image.height() == 0 {
            return Err(Error::Image {
                path: Default::default(),
                message: "the image is empty".into(),
            });
        }
        let input = image_to_input(image, self.model.config().img_size, self.model.device())?;
        self.set_input(&input, (image.height() as usize, image.width() as usize))
    }

    /// Caches the embedding of an already prepared input `1 x 1|3 x S x S` that came
    /// from an image of `original_size` (height, width).
    pub fn set_input(&mut self, input: &Tensor, original_size: (usize, usize)) -> Result<()> {
        self.embedding = Some(self.model.embed_image(input)?);
        self.original_size = original_size;
        Ok(())
    }

    /// The cached image embedding, `1 x 256 x G x G`.
    pub fn embedding(&self) -> Option<&Tensor> {
        self.embedding.as_ref()
    }

    /// Decodes `prompts` on the cached image.
    pub fn predict(&self, prompts: &PromptSet) -> Result<Prediction> {
        let embedding = self
            .embedding
            .as_ref()
            .ok_or_else(|| Error::Prompt("no image set: call set_image first".into()))?;
        let (h, w) = self.original_size;
        let size = self.model.config().img_size as f32;
        let (sx, sy) = (size / w as f32, size / h as f32);
        let dev = self.model.device();
        for p in &prompts.points {
            if !(p.x >= 0.0 && p.x < w as f32 && p.y >= 0.0 && p.y < h as f32) {
                return Err(Error::Prompt(format!(
                    "point ({}, {}) lies outside the {w}x{h} image",
                    p.x, p.y
                )));
            }
            if ![LABEL_FOREGROUND, LABEL_BACKGROUND, LABEL_PADDING].contains(&p.label) {
                return Err(Error::Prompt(format!(
                    "point label {} is not 1 (foreground), 0 (background) or -1 (ignore)",
                    p.label
                )));
            }
        }
        let points = if prompts.points.is_empty() {
            None
        } else {
            let coords: Vec<f32> = prompts
                .points
                .iter()
                .flat_map(|p| [p.x * sx, p.y * sy])
                .collect();
            let labels: Vec<f32> = prompts.points.iter().map(|p| p.label as f32).collect();
            let n = prompts.points.len();
            Some((
                Tensor::from_vec(coords, (1, n, 2), dev)?,
                Tensor::from_vec(labels, (1, n), dev)?,
            ))
        };
        let boxes = match prompts.bbox {
            Some([x0, y0, x1, y1]) => {
                let inside = |v: f32, hi: usize| v >= 0.0 && v <= hi as f32;
                if !(inside(x0, w)
                    && inside(x1, w)
                    && inside(y0, h)
                    && inside(y1, h)
                    && x0 <= x1
                    && y0 <= y1)
                {
                    return Err(Error::Prompt(format!(
                        "box ({x0}, {y0}, {x1}, {y1}) is not a box inside the {w}x{h} image (need x0 <= x1, y0 <= y1)"
                    )));
                }
                Some(Tensor::from_vec(
                    vec![x0 * sx, y0 * sy, x1 * sx, y1 * sy],
                    (1, 4),
                    dev,
                )?)
            }
            None => None,
        };
        if let Some(m) = &prompts.mask_input {
            let low = self.model.config().low_res_size();
            if m.dims() != [1, 1, low, low] {
                return Err(Error::Prompt(format!(
                    "mask input has shape {:?}, expected [1, 1, {low}, {low}]",
                    m.dims()
                )));
            }
        }
        let batch = PromptBatch {
            points: points.as_ref().map(|(c, l)| (c, l)),
            boxes: boxes.as_ref(),
            masks: prompts.mask_input.as_ref(),
        };
        // The decoder and the resizing run on rayon's pool (see `samus_core::parallel`).
        let prediction = run_in_pool(|| -> candle_core::Result<Prediction> {
            let out = self.model.decode(embedding, &batch, prompts.multimask)?;
            let logits = resize_bilinear(&self.model.upscale_logits(&out.low_res_logits)?, h, w)?;
            let masks = logits.gt(0.0)?.to_dtype(DType::U8)?;
            Ok(Prediction {
                low_res_logits: out.low_res_logits,
                iou: out.iou,
                logits,
                masks,
            })
        })?;
        Ok(prediction)
    }
}
