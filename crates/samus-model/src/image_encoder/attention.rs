//! Encoder self-attention (`blocks.{i}.attn`): fused qkv projection, SAM's decomposed
//! relative-position bias, output projection.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use samus_core::flash::attention_merged_in;
use samus_core::qkv_attention::qkv_attention;
use samus_core::window::{window_extents, window_partition_filled, window_unpartition};
use samus_core::{attention_merged, AttentionOptions, DecomposedRelPos};

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

    /// The linear layers (`qkv`, `proj`).
    pub(crate) fn linears_mut(&mut self) -> [&mut Linear; 2] {
        [&mut self.qkv, &mut self.proj]
    }
}

impl EncoderAttention {
    /// Windowed attention over a BHWC grid `B x H x W x D`, with the same result as
    /// SAM's `window_partition` (zero padding), this attention on every window and
    /// `window_unpartition`, but with both projections and the queries computed on
    /// the real tokens only: a zero padding token's `qkv` is the `qkv` bias, so the
    /// projected grid is padded with the bias instead (padding tokens remain keys
    /// and values); the padding tokens' queries are skipped, as the merge drops
    /// their outputs; the output projection runs after the windows are merged and
    /// cropped. On SAMUS's 32 x 32 grid with 14 x 14 windows (padded to 42 x 42)
    /// this skips 42% of the projection and query work.
    pub fn forward_windowed(&self, x: &Tensor, window: usize) -> Result<Tensor> {
        self.windowed(x, window, None)
    }

    /// `residual + self.forward_windowed(x, window)`, the addition fused into the
    /// output projection.
    pub fn forward_windowed_add(
        &self,
        x: &Tensor,
        window: usize,
        residual: &Tensor,
    ) -> Result<Tensor> {
        self.windowed(x, window, Some(residual))
    }

    /// `residual + self.forward(x)`, the addition fused into the output projection.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.proj
            .forward_add(&self.attend(&self.qkv.forward(x)?, None)?, residual)
    }

    fn windowed(&self, x: &Tensor, window: usize, residual: Option<&Tensor>) -> Result<Tensor> {
        let (b, h, w, _) = x.dims4()?;
        let (windows, padded) =
            window_partition_filled(&self.qkv.forward(x)?, window, self.qkv.bias())?;
        // Only the real tokens' outputs survive the merge: their queries suffice.
        let attended = self.attend(&windows, Some(&window_extents(b, (h, w), window)))?;
        let merged = window_unpartition(&attended, window, padded, (h, w))?;
        match residual {
            Some(r) => self.proj.forward_add(&merged, r),
            None => self.proj.forward(&merged),
        }
    }

    /// Attention on projected tokens `B x H x W x 3D` (q, k, v), before the output
    /// projection: `B x H x W x D`. With `extents` (one per batch item, see
    /// [`attention_merged_in`]) the other queries' outputs are unspecified.
    fn attend(&self, projected: &Tensor, extents: Option<&[(usize, usize)]>) -> Result<Tensor> {
        let (b, h, w, c3) = projected.dims4()?;
        let c = c3 / 3;
        let head_dim = c / self.num_heads;
        let qkv = projected
            .reshape((b, h * w, 3, self.num_heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        // Views into the projected tokens (`get` would copy each).
        let part = |i: usize| qkv.narrow(0, i, 1)?.squeeze(0);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        // Trainable tables change between passes: gather them afresh then.
        let fresh;
        let rel_pos = if self.rel_pos_h.track_op() || self.rel_pos_w.track_op() {
            fresh = DecomposedRelPos::new(&self.rel_pos_h, &self.rel_pos_w, (h, w), (h, w))?;
            &fresh
        } else {
            &self.rel_pos
        };
        // Training: one operation with its own backward pass over all the queries
        // (a padding query's output is dropped by the merge, so its gradient is zero).
        let trains = qkv.track_op() || rel_pos.tracks_gradient();
        let merged = match extents {
            _ if trains && qkv.device().is_cpu() => qkv_attention(
                &projected.reshape((b, h * w, c3))?,
                self.num_heads,
                self.scale,
                rel_pos,
            )?,
            Some(extents) => {
                attention_merged_in(&q, &k, &v, self.scale, rel_pos, extents, self.options)?
            }
            None => attention_merged(&q, &k, &v, self.scale, Some(rel_pos), self.options)?,
        };
        merged.reshape((b, h, w, c))
    }
}

impl Module for EncoderAttention {
    /// BHWC `B x side x side x D` in and out.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj
            .forward(&self.attend(&self.qkv.forward(x)?, None)?)
    }
}
