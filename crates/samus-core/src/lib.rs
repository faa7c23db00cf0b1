//! Tensor operations for SAMUS, on top of [candle](https://github.com/huggingface/candle).
//!
//! `samus-core` holds the few operations that the SAMUS image encoder, prompt
//! encoder and mask decoder need beyond what `candle-nn` offers, each written to
//! match the PyTorch reference number for number:
//!
//! - [`attention`]: multi-head scaled dot-product attention, optionally with SAM's
//!   decomposed relative-position bias ([`rel_pos`]), computed a few heads at a time
//!   so that the score matrices of all heads never live in memory together. Queries
//!   and keys/values may come from different tensors (cross-branch attention).
//! - [`flash`]: the same attention as one fused CPU operation for inference
//!   (strided inputs read in place, heads merged on output, scores kept per block of
//!   queries in the cache), used whenever no gradient is needed.
//! - [`cuda_attention`]: the same attention as fused CUDA kernels, forward and
//!   backward (feature `cuda`; elsewhere it is [`attention::multi_head_attention`]).
//! - [`linear`]: `x W^T + b` with the bias accumulated by the matrix product (one
//!   buffer and one pass fewer) when no gradient is needed.
//! - [`cpu`]: the CPU kernel layer: the instruction set the kernels use
//!   ([`cpu::Isa`]: AVX-512, AVX2 + FMA or portable, detected once, `SAMUS_ISA` to
//!   override) and [`packed`], an f32 matrix product for inference whose right
//!   operand (a layer's weights) is packed once and cached ([`packed::PackedCache`]);
//!   its left operand may be split into shifted segments (the taps of a 3x3
//!   convolution), and a GELU can be applied to each output tile in the cache.
//!   [`linear::linear_cached`] and its GELU and residual forms use it.
//!   [`cpu::Isa::gemm`] says which instruction set the `gemm` crate (candle's matrix
//!   products) runs: AVX-512 only with the default feature `gemm-avx512`.
//! - [`norm`]: `LayerNorm` over the last axis and `LayerNorm2d` over the channel axis
//!   of an NCHW tensor.
//! - [`resize`]: bilinear resizing identical to PyTorch's
//!   `F.interpolate(mode="bilinear", align_corners=False)` (no antialias), linear
//!   resizing along one axis, and nearest resizing.
//! - [`window`]: window partition and unpartition with zero padding.
//! - [`layout`]: NCHW to channels-last and back in one parallel pass.
//! - [`activation`]: the exact (erf) GELU.
//! - [`pool`]: 2x2 max pooling whose backward is correct (candle's scales it down).
//! - [`conv`]: a 3x3 convolution whose backward is made of matrix products.
//! - [`softmax`]: softmax, alone or with the decomposed relative-position bias, as
//!   one operation with its own backward.
//! - [`special`]: vectorisable f32 `exp` and `erf` for the element-wise kernels.
//! - [`parallel`]: running a whole forward pass on rayon's pool, so that the
//!   kernels' parallel splits are cheap.
//! - [`fixtures`]: locating the reference parity fixtures and comparing with them.
//! - [`atomic_write`]: the one way every crate of the project writes a file
//!   (temporary file and rename, umask permissions, never onto an input).
//!
//! Every operation is differentiable: it is either composed of candle operations
//! or, on the CPU in f32, one fused operation with a hand-written backward pass
//! (tested against candle's or finite differences), so gradients flow through it
//! when its inputs are variables.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use samus_core::resize::resize_bilinear;
//!
//! # fn main() -> candle_core::Result<()> {
//! let image = Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 1, 4, 4))?;
//! let larger = resize_bilinear(&image, 8, 8)?;
//! assert_eq!(larger.dims(), &[1, 1, 8, 8]);
//! # Ok(())
//! # }
//! ```

pub mod atomic_write;
pub mod cpu;
mod cpu_kernel;
pub mod cuda;
pub mod fixtures;
pub mod ops;
pub mod parallel;

pub use cuda::attention as cuda_attention;
pub use ops::{
    activation, adam, attention, conv, flash, layout, linear, matmul, norm, pool, qkv_attention,
    rel_pos, resize, softmax, special, window,
};

pub use activation::gelu;
pub use attention::{merge_heads, multi_head_attention, split_heads, AttentionOptions};
pub use cpu::packed;
pub use flash::attention_merged;
pub use norm::{LayerNorm, LayerNorm2d};
pub use pool::max_pool2x2;
pub use rel_pos::DecomposedRelPos;
