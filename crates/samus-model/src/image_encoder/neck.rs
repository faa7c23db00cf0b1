//! The neck: Conv 1x1 (D -> 256) -> LayerNorm2d -> Conv 3x3 -> LayerNorm2d.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use samus_core::conv::{conv1x1, conv3x3_same};
use samus_core::LayerNorm2d;

use crate::layers::{conv2d, layer_norm_2d, ConvSpec};

/// Maps the ViT tokens to the image embedding (`neck.{0,1,2,3}`).
#[derive(Debug, Clone)]
pub struct Neck {
    conv1: Conv2d,
    norm1: LayerNorm2d,
    conv2: Conv2d,
    norm2: LayerNorm2d,
}

impl Neck {
    /// Loads a neck from `embed_dim` to `out_channels`.
    pub fn load(vb: VarBuilder, embed_dim: usize, out_channels: usize) -> Result<Self> {
        Ok(Self {
            conv1: conv2d(vb.pp("0"), ConvSpec::pointwise(embed_dim, out_channels))?,
            norm1: layer_norm_2d(vb.pp("1"), out_channels)?,
            conv2: conv2d(vb.pp("2"), ConvSpec::same_3x3(out_channels, out_channels))?,
            norm2: layer_norm_2d(vb.pp("3"), out_channels)?,
        })
    }
}

impl Module for Neck {
    /// NCHW `B x D x G x G` in, `B x 256 x G x G` out.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Written with samus-core's convolutions so that gradients flowing to the
        // encoder during training go through matrix products.
        let x = self.norm1.forward(&conv1x1(x, self.conv1.weight())?)?;
        self.norm2.forward(&conv3x3_same(&x, self.conv2.weight())?)
    }
}
