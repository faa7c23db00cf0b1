//! One encoder block (`blocks.{i}`, ParaBlock in the reference).
//!
//! Window blocks are plain SAM blocks attending inside windows. Global blocks attend
//! over the whole grid and carry the SAMUS adapters: before the self-attention the
//! normed tokens take in the CNN branch through [`CrossBranchAttention`] and the CNN
//! tokens are refined; after the MLP a feature adapter adds half its output.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use samus_core::LayerNorm;

use super::adapter::FeatureAdapter;
use super::attention::EncoderAttention;
use super::cross_branch::CrossBranchAttention;
use crate::config::SamusConfig;
use crate::layers::{layer_norm, ConvNormGelu, Linear};

/// Weight of the MLP adapter's output in a global block.
pub const MLP_ADAPTER_SCALE: f64 = 0.5;

/// The ViT MLP: `lin2(GELU(lin1(x)))`.
#[derive(Debug, Clone)]
pub struct EncoderMlp {
    lin1: Linear,
    lin2: Linear,
}

impl EncoderMlp {
    /// Loads `lin1` (D -> hidden) and `lin2` (hidden -> D).
    pub fn load(vb: VarBuilder, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            lin1: Linear::load(vb.pp("lin1"), dim, hidden, true)?,
            lin2: Linear::load(vb.pp("lin2"), hidden, dim, true)?,
        })
    }

    /// The linear layers (`lin1`, `lin2`).
    pub(crate) fn linears_mut(&mut self) -> [&mut Linear; 2] {
        [&mut self.lin1, &mut self.lin2]
    }
}

impl EncoderMlp {
    /// `residual + self(x)`, the block's second residual connection fused into the
    /// last product.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.lin2.forward_add(&self.lin1.forward_gelu(x)?, residual)
    }
}

impl Module for EncoderMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.lin2.forward(&self.lin1.forward_gelu(x)?)
    }
}

/// The SAMUS parts of a global block.
#[derive(Debug, Clone)]
struct GlobalAdapters {
    space: CrossBranchAttention,
    refine: ConvNormGelu,
    mlp: FeatureAdapter,
}

/// How a block attends.
#[derive(Debug, Clone)]
enum BlockKind {
    Window { size: usize },
    Global(Box<GlobalAdapters>),
}

/// An encoder block; `forward` maps `(x, cnnx)` to `(x, cnnx)`, both BHWC.
#[derive(Debug, Clone)]
pub struct EncoderBlock {
    norm1: LayerNorm,
    attn: EncoderAttention,
    norm2: LayerNorm,
    mlp: EncoderMlp,
    kind: BlockKind,
}

impl EncoderBlock {
    /// Loads block `index` of `cfg`.
    pub fn load(vb: VarBuilder, cfg: &SamusConfig, index: usize) -> Result<Self> {
        let dim = cfg.embed_dim;
        let global = cfg.is_global(index);
        let side = if global {
            cfg.grid_size()
        } else {
            cfg.window_size
        };
        let kind = if global {
            BlockKind::Global(Box::new(GlobalAdapters {
                space: CrossBranchAttention::load(vb.pp("Space_Adapter"), dim, cfg.num_heads)?,
                refine: ConvNormGelu::load_sequential(
                    vb.pp("refine_Adapter").pp("conv"),
                    dim,
                    dim,
                )?,
                mlp: FeatureAdapter::load(vb.pp("MLP_Adapter"), dim, false)?,
            }))
        } else {
            BlockKind::Window {
                size: cfg.window_size,
            }
        };
        Ok(Self {
            norm1: layer_norm(vb.pp("norm1"), dim, cfg.layer_norm_eps)?,
            attn: EncoderAttention::load(vb.pp("attn"), dim, cfg.num_heads, side)?,
            norm2: layer_norm(vb.pp("norm2"), dim, cfg.layer_norm_eps)?,
            mlp: EncoderMlp::load(vb.pp("mlp"), dim, cfg.mlp_dim())?,
            kind,
        })
    }

    /// Every linear layer of the block: attention, MLP and, in a global block, the
    /// SAMUS adapters.
    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut linears: Vec<&mut Linear> = Vec::new();
        linears.extend(self.attn.linears_mut());
        linears.extend(self.mlp.linears_mut());
        if let BlockKind::Global(adapters) = &mut self.kind {
            let GlobalAdapters { space, mlp, .. } = &mut **adapters;
            linears.extend(space.linears_mut());
            linears.extend(mlp.linears_mut());
        }
        linears
    }

    /// Whether this block attends globally (and carries the SAMUS adapters).
    pub fn is_global(&self) -> bool {
        matches!(self.kind, BlockKind::Global(_))
    }

    /// The block's self-attention.
    pub fn attention(&self) -> &EncoderAttention {
        &self.attn
    }

    /// Runs the block on the ViT tokens `x` and the CNN tokens `cnnx`.
    pub fn forward(&self, x: &Tensor, cnnx: &Tensor) -> Result<(Tensor, Tensor)> {
        let shortcut = x;
        let mut x = self.norm1.forward(x)?;
        let mut cnnx = cnnx.clone();
        // Each residual addition is fused into the product before it.
        let x = match &self.kind {
            BlockKind::Window { size } => self.attn.forward_windowed_add(&x, *size, shortcut)?,
            BlockKind::Global(adapters) => {
                x = adapters.space.forward_add(&x, &cnnx, &x)?;
                cnnx = adapters.refine.forward_nhwc(&cnnx.contiguous()?)?;
                self.attn.forward_add(&x, shortcut)?
            }
        };
        let xn = self.norm2.forward(&x)?;
        let mut x = self.mlp.forward_add(&xn, &x)?;
        if let BlockKind::Global(adapters) = &self.kind {
            x = (x + (adapters.mlp.forward(&xn)? * MLP_ADAPTER_SCALE)?)?;
        }
        Ok((x, cnnx))
    }
}
