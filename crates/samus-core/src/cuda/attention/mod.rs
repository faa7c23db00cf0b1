//! Fused multi-head attention on NVIDIA GPUs (feature `cuda`), forward and backward.
//!
//! [`fused_attention`] has the signature and the semantics of
//! [`multi_head_attention`]: `softmax(scale * q k^T + bias) v` per head, for self-,
//! cross-branch (queries and keys/values from different token sets) and windowed
//! attention (windows folded into the batch), with SAM's decomposed
//! relative-position bias when `rel_pos` is given. On a CUDA device, in f32 or bf16
//! and for head sizes up to 128, it runs the FlashAttention-style kernels of
//! `kernels/fused_attention.cu`: each block of queries streams the keys and values
//! through shared memory with an online softmax, so no score matrix is written to
//! GPU memory; the backward pass recomputes the probabilities from the saved
//! log-sum-exp. Everywhere else (CPU, other dtypes, larger heads, a build without
//! the `cuda` feature) it is [`multi_head_attention`] itself.
//!
//! The relative-position bias terms `rel_h`, `rel_w` are computed by
//! [`DecomposedRelPos::bias_terms`] (two small matrix products on the unscaled
//! queries) and handed to the kernel next to the queries; the kernel returns their
//! gradient, and candle's autograd carries it on to the queries and to the
//! `rel_pos_h` / `rel_pos_w` tables.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use samus_core::cuda_attention::fused_attention;
//! use samus_core::AttentionOptions;
//!
//! # fn main() -> candle_core::Result<()> {
//! let q = Tensor::randn(0f32, 1., (1, 2, 5, 8), &Device::Cpu)?;
//! let kv = Tensor::randn(0f32, 1., (1, 2, 3, 8), &Device::Cpu)?;
//! let out = fused_attention(&q, &kv, &kv, 0.125, None, AttentionOptions::default())?;
//! assert_eq!(out.dims(), &[1, 2, 5, 8]);
//! # Ok(())
//! # }
//! ```

use candle_core::{Result, Tensor};

use crate::attention::{multi_head_attention, AttentionOptions};
use crate::rel_pos::DecomposedRelPos;

#[cfg(feature = "cuda")]
mod kernels;
#[cfg(feature = "cuda")]
mod op;

/// Multi-head attention, fused on CUDA devices: a drop-in for
/// [`multi_head_attention`] (same arguments, same result up to rounding).
///
/// `q` is `(B, H, Nq, Dh)`, `k` and `v` are `(B, H, Nk, Dh)`; the result is
/// `(B, H, Nq, Dh)`. `options` only matters where the call falls back to
/// [`multi_head_attention`] (see [`uses_cuda_kernels`]).
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    rel_pos: Option<&DecomposedRelPos>,
    options: AttentionOptions,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(out) = op::try_fused(q, k, v, scale, rel_pos)? {
        return Ok(out);
    }
    multi_head_attention(q, k, v, scale, rel_pos, options)
}

/// Whether [`fused_attention`] runs the CUDA kernels for these operands (rather
/// than falling back to [`multi_head_attention`]): a build with the `cuda` feature,
/// tensors on a CUDA device, all f32 or all bf16, matching shapes, a head size of
/// at most 128 and a relative-position key grid whose bias terms fit the kernels'
/// shared memory (`kh + kw` up to 120 at any head size).
pub fn uses_cuda_kernels(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel_pos: Option<&DecomposedRelPos>,
) -> bool {
    #[cfg(feature = "cuda")]
    {
        op::plan(q, k, v, rel_pos).is_some()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (q, k, v, rel_pos);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn falls_back_to_multi_head_attention_on_the_cpu() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 6, 4), &dev)?;
        let k = Tensor::randn(0f32, 1., (2, 3, 4, 4), &dev)?;
        let v = Tensor::randn(0f32, 1., (2, 3, 4, 4), &dev)?;
        assert!(!uses_cuda_kernels(&q, &k, &v, None));
        let options = AttentionOptions::default();
        let fused = fused_attention(&q, &k, &v, 0.5, None, options)?;
        let reference = multi_head_attention(&q, &k, &v, 0.5, None, options)?;
        let diff = (fused - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }

    #[test]
    fn reports_shape_errors_like_multi_head_attention() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 3, 4), candle_core::DType::F32, &dev)?;
        let k = Tensor::zeros((1, 2, 3, 5), candle_core::DType::F32, &dev)?;
        let err = fused_attention(&q, &k, &k, 1.0, None, AttentionOptions::default());
        assert!(err.is_err());
        Ok(())
    }
}
