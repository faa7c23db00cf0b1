//! AutoSAMUS: the auto prompt generator (APG) that turns SAMUS into a fully automatic
//! ultrasound segmenter.
//!
//! The APG replaces the prompt encoder: learned object tokens attend to the mask
//! decoder's output tokens and to the image embedding, and the result serves as the
//! sparse and dense prompts. This crate starts with the operation its attention is
//! built on, [`softmax_one`]; the generator and the `AutoSamus` model build on it.
//!
//! ```
//! use candle_core::{Device, Tensor};
//!
//! # fn main() -> candle_core::Result<()> {
//! let scores = Tensor::new(&[[0f32, 0.0]], &Device::Cpu)?;
//! // Each weight is 1 / (1 + 2): the weights may sum to less than one.
//! let weights = samus_apg::softmax_one(&scores)?.to_vec2::<f32>()?;
//! assert!((weights[0][0] - 1.0 / 3.0).abs() < 1e-6);
//! # Ok(())
//! # }
//! ```

pub mod attention;

pub use attention::softmax_one;
