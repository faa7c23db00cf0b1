//! The CUDA side of the crate (feature `cuda`): the fused attention kernels
//! (`kernels/fused_attention.cu`) and their candle operation. Without the feature,
//! [`attention`] falls back to [`crate::attention::multi_head_attention`].

pub mod attention;
