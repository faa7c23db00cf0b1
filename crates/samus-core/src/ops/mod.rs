//! The tensor operations of SAMUS: each differentiable (composed of candle
//! operations, or one fused CPU operation with a hand-written backward pass), with
//! fused inference forms on the CPU that use the kernels of [`crate::cpu`]. The
//! crate root re-exports every module (`samus_core::linear`, ...).

pub mod activation;
pub mod adam;
pub mod attention;
pub mod conv;
pub mod flash;
pub mod layout;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod qkv_attention;
pub mod rel_pos;
pub mod resize;
pub mod softmax;
pub mod special;
pub mod window;
