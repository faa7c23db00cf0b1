//! The feature adapter (`Adapter` in the reference): a bottleneck MLP
//! `fc2(GELU(fc1(x)))`, D -> D/4 -> D, with or without a skip connection.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::Linear;

/// Ratio of the adapter's hidden width to its input width.
pub const ADAPTER_HIDDEN_RATIO: f64 = 0.25;

/// A bottleneck adapter on the last axis (`D_fc1`, `D_fc2`).
#[derive(Debug, Clone)]
pub struct FeatureAdapter {
    fc1: Linear,
    fc2: Linear,
    skip: bool,
}

impl FeatureAdapter {
    /// Loads an adapter of width `dim`; with `skip` the input is added to the output.
    pub fn load(vb: VarBuilder, dim: usize, skip: bool) -> Result<Self> {
        let hidden = (dim as f64 * ADAPTER_HIDDEN_RATIO) as usize;
        Ok(Self {
            fc1: Linear::load(vb.pp("D_fc1"), dim, hidden, true)?,
            fc2: Linear::load(vb.pp("D_fc2"), hidden, dim, true)?,
            skip,
        })
    }

    /// The linear layers (`D_fc1`, `D_fc2`).
    pub(crate) fn linears_mut(&mut self) -> [&mut Linear; 2] {
        [&mut self.fc1, &mut self.fc2]
    }
}

impl Module for FeatureAdapter {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = self.fc1.forward_gelu(x)?;
        if self.skip {
            self.fc2.forward_add(&hidden, x)
        } else {
            self.fc2.forward(&hidden)
        }
    }
}
