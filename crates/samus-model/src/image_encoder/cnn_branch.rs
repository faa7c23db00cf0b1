//! The CNN branch (`cnn_embed`, SingleCNNEmbed): local detail at the token
//! resolution, fed to the ViT through the cross-branch attention.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use samus_core::layout::channels_last;

use crate::config::SamusConfig;
use crate::layers::{ConvNormGelu, DownConvNormGelu};

/// Channels of the first CNN stage; each down stage doubles them, the last one maps
/// to the ViT width.
pub const CNN_BASE_CHANNELS: usize = 64;

/// `inc` (3 -> 64) then log2(patch_size) down stages (64 -> 128 -> ... -> D).
#[derive(Debug, Clone)]
pub struct CnnEmbed {
    inc: ConvNormGelu,
    downs: Vec<DownConvNormGelu>,
}

impl CnnEmbed {
    /// Loads `inc.conv.{0,1}` and `downs.{i}` for `cfg`.
    pub fn load(vb: VarBuilder, cfg: &SamusConfig) -> Result<Self> {
        let inc = ConvNormGelu::load_sequential(vb.pp("inc").pp("conv"), 3, CNN_BASE_CHANNELS)?;
        let stages = cfg.patch_size.trailing_zeros() as usize;
        let mut downs = Vec::with_capacity(stages);
        let mut channels = CNN_BASE_CHANNELS;
        for i in 0..stages {
            let out = if i + 1 == stages {
                cfg.embed_dim
            } else {
                channels * 2
            };
            downs.push(DownConvNormGelu::load(vb.pp("downs").pp(i), channels, out)?);
            channels = out;
        }
        Ok(Self { inc, downs })
    }
}

impl Module for CnnEmbed {
    /// `B x 3 x S x S` in, BHWC `B x G x G x D` out. The stages run channels-last.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.inc.forward_nhwc(&channels_last(x)?)?;
        for down in &self.downs {
            x = down.forward_nhwc(&x)?;
        }
        Ok(x)
    }
}
