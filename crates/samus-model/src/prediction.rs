//! [`Samus::predict`]: prompts decoded against an [`ImageEmbedding`], and the
//! [`Prediction`] it returns, ready to use ([`Mask`] images at the image's size).

use candle_core::{DType, Tensor};
use image::GrayImage;
use samus_core::parallel::run_in_pool;
use samus_core::resize::resize_bilinear;

use crate::embedding::ImageEmbedding;
use crate::error::{Error, Result};
use crate::prompt_encoder::PromptBatch;
use crate::prompts::Prompts;
use crate::samus::Samus;

/// One candidate mask at the original image's size.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    /// The candidate's index (0 for a single mask, 0 to 2 for multimask).
    pub index: usize,
    /// The model's predicted IoU for it.
    pub iou: f32,
    /// 255 where the logit is positive, 0 elsewhere.
    pub image: GrayImage,
}

impl Mask {
    /// Number of foreground pixels.
    pub fn area(&self) -> usize {
        self.image.pixels().filter(|p| p[0] > 0).count()
    }
}

/// What [`Samus::predict`] returns: every candidate mask, the predicted IoUs and the
/// logits at both resolutions.
#[derive(Debug, Clone)]
pub struct Prediction {
    masks: Vec<Mask>,
    best: usize,
    low_res_logits: Tensor,
    logits: Tensor,
}

impl Prediction {
    /// Builds a prediction from decoder outputs: `low_res_logits` `1 x K x 4G x 4G`,
    /// `logits` `1 x K x H x W` at the image's size and `iou` (K values).
    pub fn from_logits(low_res_logits: Tensor, logits: Tensor, iou: &[f32]) -> Result<Self> {
        let (_, k, h, w) = logits.dims4()?;
        if k == 0 || iou.len() != k {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "a prediction needs at least one candidate and one IoU per candidate, got {k} candidates and {} IoUs",
                iou.len()
            ))));
        }
        let binary = logits
            .squeeze(0)?
            .gt(0.0)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        let masks = (0..k)
            .map(|index| {
                let pixels = binary[index * h * w..(index + 1) * h * w]
                    .iter()
                    .map(|&m| if m > 0 { 255 } else { 0 })
                    .collect();
                let image = GrayImage::from_raw(w as u32, h as u32, pixels).ok_or_else(|| {
                    Error::Tensor(candle_core::Error::Msg(format!(
                        "logits of {w}x{h} do not make a mask image"
                    )))
                })?;
                Ok(Mask {
                    index,
                    iou: iou[index],
                    image,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The highest predicted IoU; on a tie the later candidate, as `max_by` picks.
        let best = masks
            .iter()
            .max_by(|a, b| a.iou.total_cmp(&b.iou))
            .map_or(0, |m| m.index);
        Ok(Self {
            masks,
            best,
            low_res_logits,
            logits,
        })
    }

    /// The candidate with the highest predicted IoU.
    pub fn best(&self) -> &Mask {
        &self.masks[self.best]
    }

    /// Every candidate, in the decoder's order.
    pub fn masks(&self) -> &[Mask] {
        &self.masks
    }

    /// The predicted IoU of every candidate.
    pub fn iou(&self) -> Vec<f32> {
        self.masks.iter().map(|m| m.iou).collect()
    }

    /// `1 x K x 4G x 4G` logits in the model's frame.
    pub fn low_res_logits(&self) -> &Tensor {
        &self.low_res_logits
    }

    /// `1 x 1 x 4G x 4G`: the best candidate's low-resolution logits (the mask
    /// input of a refining prompt).
    pub fn best_low_res_logits(&self) -> Tensor {
        // `best` indexes a candidate that exists, so the narrow cannot fail; a
        // failure would hand back all candidates, which the decoder then refuses.
        self.low_res_logits
            .narrow(1, self.best, 1)
            .unwrap_or_else(|_| self.low_res_logits.clone())
    }

    /// `1 x K x H x W` logits at the original image's size.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// The best candidate's logits at the original size, row by row.
    pub fn best_logits(&self) -> Result<Vec<f32>> {
        Ok(self
            .logits
            .squeeze(0)?
            .get(self.best)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

impl Samus {
    /// Decodes `prompts` (in the image's pixels) against `embedding`: costs only the
    /// prompt encoder and the mask decoder. Prompts are scaled to the model's square
    /// frame (x by S / W, y by S / H); masks come back at the image's size.
    pub fn predict(&self, embedding: &ImageEmbedding, prompts: &Prompts) -> Result<Prediction> {
        let cfg = self.config();
        let grid = cfg.grid_size();
        let expected = [1, cfg.prompt_embed_dim, grid, grid];
        if embedding.tensor().dims() != expected {
            return Err(Error::EmbeddingShape {
                expected: expected.to_vec(),
                found: embedding.tensor().dims().to_vec(),
            });
        }
        let (h, w) = embedding.original_size();
        let size = cfg.img_size as f32;
        let (sx, sy) = (size / w as f32, size / h as f32);
        let dev = self.device();
        for p in &prompts.points {
            if !(p.x >= 0.0 && p.x < w as f32 && p.y >= 0.0 && p.y < h as f32) {
                return Err(Error::PointOutside {
                    x: p.x,
                    y: p.y,
                    width: w,
                    height: h,
                });
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
            let labels: Vec<f32> = prompts
                .points
                .iter()
                .map(|p| p.label.value() as f32)
                .collect();
            let n = prompts.points.len();
            Some((
                Tensor::from_vec(coords, (1, n, 2), dev)?,
                Tensor::from_vec(labels, (1, n), dev)?,
            ))
        };
        let boxes = match prompts.bbox {
            Some(bbox @ [x0, y0, x1, y1]) => {
                let inside = |v: f32, hi: usize| v >= 0.0 && v <= hi as f32;
                if !(inside(x0, w)
                    && inside(x1, w)
                    && inside(y0, h)
                    && inside(y1, h)
                    && x0 <= x1
                    && y0 <= y1)
                {
                    return Err(Error::BoxOutside {
                        bbox,
                        width: w,
                        height: h,
                    });
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
            let low = cfg.low_res_size();
            if m.dims() != [1, 1, low, low] {
                return Err(Error::MaskInputShape {
                    expected: vec![1, 1, low, low],
                    found: m.dims().to_vec(),
                });
            }
        }
        let batch = PromptBatch {
            points: points.as_ref().map(|(c, l)| (c, l)),
            boxes: boxes.as_ref(),
            masks: prompts.mask_input.as_ref(),
        };
        // The decoder and the resizing run on rayon's pool (see `samus_core::parallel`).
        let (low_res_logits, logits, iou) =
            run_in_pool(|| -> candle_core::Result<(Tensor, Tensor, Vec<f32>)> {
                let out = match batch.masks {
                    // Without a mask prompt the image side of the decoder is the
                    // same for every click on this image: computed once.
                    None => {
                        let terms = self.decoder_terms(embedding)?;
                        let sparse = self.prompt_encoder().sparse(&batch, 1)?;
                        self.mask_decoder().forward_terms(
                            &terms,
                            self.prompt_encoder().dense_pe_tokens(),
                            &sparse,
                            prompts.multimask,
                        )?
                    }
                    Some(_) => self.decode(embedding.tensor(), &batch, prompts.multimask)?,
                };
                let logits = resize_bilinear(&self.upscale_logits(&out.low_res_logits)?, h, w)?;
                let iou = out.iou.squeeze(0)?.to_vec1::<f32>()?;
                Ok((out.low_res_logits, logits, iou))
            })?;
        Prediction::from_logits(low_res_logits, logits, &iou)
    }
}
