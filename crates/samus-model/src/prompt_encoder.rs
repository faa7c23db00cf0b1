//! The prompt encoder (`prompt_encoder.*`), unchanged from SAM: points and boxes
//! become sparse embeddings through a random Fourier positional encoding, a mask
//! becomes a dense embedding.

use std::f64::consts::PI;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Init, VarBuilder};
use samus_core::{gelu, LayerNorm2d};

use crate::layers::{conv2d, layer_norm_2d, nchw_as_tokens, ConvSpec};

/// Label of a foreground point.
pub const LABEL_FOREGROUND: i64 = 1;
/// Label of a background point.
pub const LABEL_BACKGROUND: i64 = 0;
/// Label of a padding point (ignored).
pub const LABEL_PADDING: i64 = -1;

/// Random Fourier features (`pe_layer`): `[sin, cos](2 pi (2 c - 1) G)` for
/// coordinates `c` in [0, 1].
#[derive(Debug, Clone)]
pub struct PositionEmbeddingRandom {
    gaussian: Tensor,
}

impl PositionEmbeddingRandom {
    /// Loads `positional_encoding_gaussian_matrix` (`2 x embed_dim / 2`).
    pub fn load(vb: VarBuilder, embed_dim: usize) -> Result<Self> {
        let gaussian = vb.get_with_hints(
            (2, embed_dim / 2),
            "positional_encoding_gaussian_matrix",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        Ok(Self { gaussian })
    }

    /// Encodes normalised coordinates `(..., 2)` to `(..., embed_dim)`.
    pub fn encode(&self, coords: &Tensor) -> Result<Tensor> {
        let dims = coords.dims().to_vec();
        let n = coords.elem_count() / 2;
        let c = ((coords.reshape((n, 2))? * 2.0)? - 1.0)?;
        let c = (c.matmul(&self.gaussian)? * (2.0 * PI))?;
        let pe = Tensor::cat(&[c.sin()?, c.cos()?], 1)?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = pe.dim(1)?;
        }
        pe.reshape(out_dims)
    }

    /// Encodes pixel coordinates `(..., 2)` (x, y) in an image of `size` (h, w).
    pub fn encode_pixels(&self, coords: &Tensor, size: (usize, usize)) -> Result<Tensor> {
        let extent = Tensor::new(&[size.1 as f32, size.0 as f32], coords.device())?;
        self.encode(&coords.broadcast_div(&extent)?)
    }

    /// The encoding of every cell centre of an `h x w` grid: `1 x C x h x w`.
    pub fn dense(&self, h: usize, w: usize, device: &Device) -> Result<Tensor> {
        let mut coords = Vec::with_capacity(h * w * 2);
        for y in 0..h {
            for x in 0..w {
                coords.push((x as f32 + 0.5) / w as f32);
                coords.push((y as f32 + 0.5) / h as f32);
            }
        }
        let coords = Tensor::from_vec(coords, (h, w, 2), device)?;
        self.encode(&coords)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }
}

/// Mask input `B x 1 x 4G x 4G` to a dense embedding `B x 256 x G x G`
/// (`mask_downscaling.{0,1,3,4,6}`).
#[derive(Debug, Clone)]
struct MaskDownscaling {
    conv1: Conv2d,
    norm1: LayerNorm2d,
    conv2: Conv2d,
    norm2: LayerNorm2d,
    conv3: Conv2d,
}

/// Channels of the intermediate mask-downscaling stages.
const MASK_IN_CHANS: usize = 16;

impl MaskDownscaling {
    fn load(vb: VarBuilder, embed_dim: usize) -> Result<Self> {
        let stride2 = |i, o| ConvSpec {
            in_channels: i,
            out_channels: o,
            kernel: 2,
            stride: 2,
            padding: 0,
            bias: true,
        };
        Ok(Self {
            conv1: conv2d(vb.pp("0"), stride2(1, MASK_IN_CHANS / 4))?,
            norm1: layer_norm_2d(vb.pp("1"), MASK_IN_CHANS / 4)?,
            conv2: conv2d(vb.pp("3"), stride2(MASK_IN_CHANS / 4, MASK_IN_CHANS))?,
            norm2: layer_norm_2d(vb.pp("4"), MASK_IN_CHANS)?,
            conv3: conv2d(
                vb.pp("6"),
                ConvSpec {
                    bias: true,
                    ..ConvSpec::pointwise(MASK_IN_CHANS, embed_dim)
                },
            )?,
        })
    }
}

impl Module for MaskDownscaling {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = gelu(&self.norm1.forward(&x.contiguous()?.apply(&self.conv1)?)?)?;
        let x = gelu(&self.norm2.forward(&x.apply(&self.conv2)?)?)?;
        x.apply(&self.conv3)
    }
}

/// Prompts for a batch of B images. Coordinates are pixels of the model's input
/// frame (256 x 256 for SAMUS), x first.
#[derive(Debug, Clone, Copy, Default)]
pub struct PromptBatch<'a> {
    /// Point coordinates `B x N x 2` (f32) and labels `B x N` (any numeric dtype:
    /// 1 foreground, 0 background, -1 padding).
    pub points: Option<(&'a Tensor, &'a Tensor)>,
    /// Boxes `B x 4` (x0, y0, x1, y1).
    pub boxes: Option<&'a Tensor>,
    /// Mask logits `B x 1 x 4G x 4G`.
    pub masks: Option<&'a Tensor>,
}

/// The prompt encoder.
#[derive(Debug, Clone)]
pub struct PromptEncoder {
    pe_layer: PositionEmbeddingRandom,
    /// `point_embeddings.{0..3}`: background, foreground, box corner 1, box corner 2.
    point_embeddings: [Tensor; 4],
    not_a_point: Tensor,
    no_mask: Tensor,
    mask_downscaling: MaskDownscaling,
    embed_dim: usize,
    grid: usize,
    input_size: usize,
    dense_pe: Tensor,
    dense_pe_tokens: Tensor,
}

impl PromptEncoder {
    /// Loads a prompt encoder with `embed_dim` channels for a `grid x grid` image
    /// embedding of an `input_size x input_size` image.
    pub fn load(vb: VarBuilder, embed_dim: usize, grid: usize, input_size: usize) -> Result<Self> {
        let embedding = |name: String| -> Result<Tensor> {
            vb.pp(name).get_with_hints(
                (1, embed_dim),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
        };
        let point_embeddings = [
            embedding("point_embeddings.0".into())?,
            embedding("point_embeddings.1".into())?,
            embedding("point_embeddings.2".into())?,
            embedding("point_embeddings.3".into())?,
        ];
        let pe_layer = PositionEmbeddingRandom::load(vb.pp("pe_layer"), embed_dim)?;
        let dense_pe = pe_layer.dense(grid, grid, vb.device())?;
        let dense_pe_tokens = nchw_as_tokens(&dense_pe)?.contiguous()?;
        Ok(Self {
            pe_layer,
            point_embeddings,
            not_a_point: embedding("not_a_point_embed".into())?,
            no_mask: embedding("no_mask_embed".into())?,
            mask_downscaling: MaskDownscaling::load(vb.pp("mask_downscaling"), embed_dim)?,
            embed_dim,
            grid,
            input_size,
            dense_pe,
            dense_pe_tokens,
        })
    }

    /// The positional encoding of the image embedding grid, `1 x 256 x G x G`
    /// (`get_dense_pe`), computed once.
    pub fn dense_pe(&self) -> &Tensor {
        &self.dense_pe
    }

    /// The same encoding as tokens, `1 x GG x 256` (row-major over the grid): the
    /// form the mask decoder takes.
    pub fn dense_pe_tokens(&self) -> &Tensor {
        &self.dense_pe_tokens
    }

    fn embed_points(&self, coords: &Tensor, labels: &Tensor, pad: bool) -> Result<Tensor> {
        let (b, _, _) = coords.dims3()?;
        let dev = coords.device();
        let mut coords = (coords.to_dtype(DType::F32)? + 0.5)?;
        let mut labels = labels.to_dtype(DType::F32)?;
        if pad {
            coords = Tensor::cat(&[coords, Tensor::zeros((b, 1, 2), DType::F32, dev)?], 1)?;
            labels = Tensor::cat(
                &[labels, Tensor::full(LABEL_PADDING as f32, (b, 1), dev)?],
                1,
            )?;
        }
        let size = (self.input_size, self.input_size);
        let pe = self.pe_layer.encode_pixels(&coords, size)?;
        let is = |value: i64| -> Result<Tensor> {
            labels.eq(value as f64)?.to_dtype(DType::F32)?.unsqueeze(2)
        };
        let padding = is(LABEL_PADDING)?;
        let keep = padding.affine(-1.0, 1.0)?;
        pe.broadcast_mul(&keep)?
            .broadcast_add(&padding.broadcast_mul(&self.not_a_point)?)?
            .broadcast_add(&is(LABEL_BACKGROUND)?.broadcast_mul(&self.point_embeddings[0])?)?
            .broadcast_add(&is(LABEL_FOREGROUND)?.broadcast_mul(&self.point_embeddings[1])?)
    }

    fn embed_boxes(&self, boxes: &Tensor) -> Result<Tensor> {
        let (b, _) = boxes.dims2()?;
        let corners = (boxes.to_dtype(DType::F32)? + 0.5)?.reshape((b, 2, 2))?;
        let pe = self
            .pe_layer
            .encode_pixels(&corners, (self.input_size, self.input_size))?;
        let corner_embed = Tensor::cat(&[&self.point_embeddings[2], &self.point_embeddings[3]], 0)?;
        pe.broadcast_add(&corner_embed)
    }

    /// Sparse `B x N x 256` and dense `B x 256 x G x G` embeddings of the prompts.
    /// `batch` is B, used when no prompt gives it.
    pub fn forward(&self, prompts: &PromptBatch, batch: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.sparse(prompts, batch)?,
            self.dense(prompts.masks, batch)?,
        ))
    }

    /// The sparse embeddings `B x N x 256` of the points and boxes of `prompts`
    /// (`B x 0 x 256` without either).
    pub fn sparse(&self, prompts: &PromptBatch, batch: usize) -> Result<Tensor> {
        let mut sparse = Vec::new();
        if let Some((coords, labels)) = prompts.points {
            sparse.push(self.embed_points(coords, labels, prompts.boxes.is_none())?);
        }
        if let Some(boxes) = prompts.boxes {
            sparse.push(self.embed_boxes(boxes)?);
        }
        if sparse.is_empty() {
            Tensor::zeros(
                (batch, 0, self.embed_dim),
                DType::F32,
                self.no_mask.device(),
            )
        } else {
            Tensor::cat(&sparse, 1)
        }
    }

    /// The dense embedding `B x 256 x G x G` of a mask prompt `B x 1 x 4G x 4G`, or
    /// without one, the learned "no mask" embedding broadcast to `batch` images.
    pub fn dense(&self, masks: Option<&Tensor>, batch: usize) -> Result<Tensor> {
        match masks {
            Some(m) => self.mask_downscaling.forward(&m.to_dtype(DType::F32)?),
            // A broadcast view: the decoder adds it without a copy.
            None => self
                .no_mask
                .reshape((1, self.embed_dim, 1, 1))?
                .broadcast_as((batch, self.embed_dim, self.grid, self.grid)),
        }
    }
}
