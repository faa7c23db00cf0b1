//! The position adapter (`post_pos_embed`, PostPosEmbed): shrinks SAM's 64x64
//! absolute position embedding to the SAMUS token grid. It does not depend on the
//! image, so the encoder computes it once.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::{SamusConfig, SAM_POS_EMBED_GRID};
use crate::layers::DownConvNormGelu;

/// log2(64 / G) down stages, each MaxPool2d(2) -> Conv 3x3 -> LayerNorm2d -> GELU.
#[derive(Debug, Clone)]
pub struct PositionAdapter {
    downs: Vec<DownConvNormGelu>,
}

impl PositionAdapter {
    /// Loads `downs.{i}` for `cfg`.
    pub fn load(vb: VarBuilder, cfg: &SamusConfig) -> Result<Self> {
        let stages = (SAM_POS_EMBED_GRID / cfg.grid_size()).trailing_zeros() as usize;
        let downs = (0..stages)
            .map(|i| DownConvNormGelu::load(vb.pp("downs").pp(i), cfg.embed_dim, cfg.embed_dim))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { downs })
    }
}

impl Module for PositionAdapter {
    /// BHWC `1 x 64 x 64 x D` in, BHWC `1 x G x G x D` out (the stages run
    /// channels-last).
    fn forward(&self, pos_embed: &Tensor) -> Result<Tensor> {
        let mut x = pos_embed.contiguous()?;
        for down in &self.downs {
            x = down.forward_nhwc(&x)?;
        }
        Ok(x)
    }
}
