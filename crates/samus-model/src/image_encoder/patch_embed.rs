//! Patch embedding (`patch_embed.proj`): the image is resized so that SAM's 16x16
//! patch kernel, applied with a stride of `patch_size`, yields the token grid.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use samus_core::conv::conv_whole_strides_nhwc;
use samus_core::layout::channels_last;
use samus_core::resize::resize_bilinear;

use crate::config::{SamusConfig, SAM_PATCH_KERNEL};
use crate::layers::{conv2d, ConvSpec};

/// Resize, then Conv2d(3, D, kernel 16, stride `patch_size`, bias).
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    proj: Conv2d,
    resized: usize,
}

impl PatchEmbed {
    /// Loads `proj` for `cfg`.
    pub fn load(vb: VarBuilder, cfg: &SamusConfig) -> Result<Self> {
        let proj = conv2d(
            vb.pp("proj"),
            ConvSpec {
                in_channels: 3,
                out_channels: cfg.embed_dim,
                kernel: SAM_PATCH_KERNEL,
                stride: cfg.patch_size,
                padding: 0,
                bias: true,
            },
        )?;
        // (G - 1) * stride + kernel pixels give exactly G outputs: 264 for SAMUS.
        let resized = (cfg.grid_size() - 1) * cfg.patch_size + SAM_PATCH_KERNEL;
        Ok(Self { proj, resized })
    }

    /// Side of the square the image is resized to before the convolution.
    pub fn resized_size(&self) -> usize {
        self.resized
    }
}

impl Module for PatchEmbed {
    /// `B x 3 x S x S` in, BHWC `B x G x G x D` out. When training (a weight that
    /// tracks its gradient) the convolution runs as one unfolding and one matrix
    /// product, whose backward is a matrix product too
    /// ([`conv_whole_strides_nhwc`]); otherwise candle's convolution.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = resize_bilinear(x, self.resized, self.resized)?;
        let (weight, bias) = (self.proj.weight(), self.proj.bias());
        let stride = self.proj.config().stride;
        let trains = weight.track_op() || bias.is_some_and(Tensor::track_op);
        if trains && weight.dim(2)?.is_multiple_of(stride) && self.resized.is_multiple_of(stride) {
            conv_whole_strides_nhwc(&x, weight, bias, stride)
        } else {
            channels_last(&x.apply(&self.proj)?)
        }
    }
}
