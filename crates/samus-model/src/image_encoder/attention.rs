//! Encoder self-attention (`blocks.{i}.attn`): fused qkv projection, SAM's decomposed
//! relative-position bias, output projection.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use samus_core::{merge_heads, multi_head_attention, AttentionOptions, DecomposedRelPos};

use crate::layers::Linear;

/// Multi-head self-attention over a square grid of `side x side` tokens.
#[derive(Debug, Clone)]
pub struct EncoderAttention {
    qkv: Linear,
    proj: Linear,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    rel_pos: DecomposedRelPos,
    num_heads: usize,
    scale: f64,
    options: AttentionOptions,
}

impl EncoderAttention {
    /// Loads the attention of a block whose attention grid is `side x side` (the
    /// window size, or the token grid for global blocks).
    pub fn load(vb: VarBuilder, dim: usize, num_heads: usize, side: usize) -> Result<Self> {
        let head_dim = dim / num_heads;
        // The reference initialises the relative-position tables with zeros.
        let rel_pos_h =
            vb.get_with_hints((2 * side - 1, head_dim), "rel_pos_h", Init::Const(0.0))?;
        let rel_pos_w =
            vb.get_with_hints((2 * side - 1, head_dim), "rel_pos_w", Init::Const(0.0))?;
        let rel_pos = DecomposedRelPos::new(&rel_pos_h, &rel_pos_w, (side, side), (side, side))?;
        Ok(Self {
            qkv: Linear::load(vb.pp("qkv"), dim, 3 * dim, true)?,
            proj: Linear::load(vb.pp("proj"), dim, dim, true)?,
            rel_pos_h,
            rel_pos_w,
            rel_pos,
            num_heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
            options: AttentionOptions::default(),
        })
    }

    /// The `rel_pos_h` and `rel_pos_w` parameters.
    pub fn rel_pos_tables(&self) -> (&Tensor, &Tensor) {
        (&self.rel_pos_h, &self.rel_pos_w)
    }
}

impl Module for EncoderAttention {
    /// BHWC `B x side x side x D` in and out.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let head_dim = c / self.num_heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, h * w, 3, self.num_heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        // Trainable tables change between passes: gather them afresh then.
        let fresh;
        let rel_pos = if self.rel_pos_h.track_op() || self.rel_pos_w.track_op() {
            fresh = DecomposedRelPos::new(&self.rel_pos_h, &self.rel_pos_w, (h, w), (h, w))?;
            &fresh
        } else {
            &self.rel_pos
        };
        let out = multi_head_attention(&q, &k, &v, self.scale, Some(rel_pos), self.options)?;
        self.proj
            .forward(&merge_heads(&out)?.reshape((b, h, w, c))?)
    }
}
