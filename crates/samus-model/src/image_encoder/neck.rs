//! The neck: Conv 1x1 (D -> 256) -> LayerNorm2d -> Conv 3x3 -> LayerNorm2d.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use samus_core::conv::conv3x3_same_nhwc_cached;
use samus_core::layout::{channels_first, channels_last};
use samus_core::linear::linear_cached;
use samus_core::packed::PackedCache;
use samus_core::LayerNorm2d;

use crate::layers::{conv2d, layer_norm_2d, ConvSpec};

/// Maps the ViT tokens to the image embedding (`neck.{0,1,2,3}`).
#[derive(Debug, Clone)]
pub struct Neck {
    conv1: Conv2d,
    norm1: LayerNorm2d,
    conv2: Conv2d,
    norm2: LayerNorm2d,
    /// The two kernels packed for the CPU's inference product, made on first use.
    packed: [PackedCache; 2],
}

impl Neck {
    /// Loads a neck from `embed_dim` to `out_channels`.
    pub fn load(vb: VarBuilder, embed_dim: usize, out_channels: usize) -> Result<Self> {
        Ok(Self {
            conv1: conv2d(vb.pp("0"), ConvSpec::pointwise(embed_dim, out_channels))?,
            norm1: layer_norm_2d(vb.pp("1"), out_channels)?,
            conv2: conv2d(vb.pp("2"), ConvSpec::same_3x3(out_channels, out_channels))?,
            norm2: layer_norm_2d(vb.pp("3"), out_channels)?,
            packed: Default::default(),
        })
    }

    /// Channels-last tokens `B x G x G x D` in, NCHW `B x 256 x G x G` out: the
    /// layout the encoder blocks leave. Runs channels last throughout (the 1x1
    /// convolution is a linear layer over the channels) and moves the channels
    /// first once, at the end.
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let (out_channels, in_channels, _, _) = self.conv1.weight().dims4()?;
        let pointwise = self.conv1.weight().reshape((out_channels, in_channels))?;
        let y = linear_cached(x, &pointwise, None, &self.packed[0])?;
        let y = self.norm1.forward_nhwc(&y)?;
        let y = conv3x3_same_nhwc_cached(&y, self.conv2.weight(), Some(&self.packed[1]))?;
        channels_first(&self.norm2.forward_nhwc(&y)?)
    }
}

impl Module for Neck {
    /// NCHW `B x D x G x G` in, `B x 256 x G x G` out (through
    /// [`Neck::forward_nhwc`]).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_nhwc(&channels_last(x)?)
    }
}
