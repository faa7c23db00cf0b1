//! AutoSAMUS: the auto prompt generator (APG) that turns SAMUS into a fully automatic
//! ultrasound segmenter.
//!
//! The APG replaces the prompt encoder: 50 learned object tokens attend to the mask
//! decoder's output tokens ([`CrossTransformer`] with [`softmax_one`] attention), then
//! together with them to the image embedding; the first object token becomes the
//! sparse prompt, and a dense feature adapter turns the updated image embedding into
//! the dense prompt. [`AutoSamus`] wraps a SAMUS model with the APG and segments
//! images without any prompt.
//!
//! ```
//! use candle_core::Device;
//! use samus_apg::AutoSamus;
//! use samus_model::{Samus, SamusConfig};
//!
//! # fn main() -> samus_model::Result<()> {
//! // Untrained weights, for illustration; use `AutoSamus::from_checkpoints` for real ones.
//! let (_, tensors) = Samus::random_with_tensors(&SamusConfig::tiny(), 0, &Device::Cpu)?;
//! let (auto, report) = AutoSamus::from_tensors(tensors, &SamusConfig::tiny(), &Device::Cpu, 0)?;
//! assert!(!report.apg_initialised.is_empty());
//! let image = image::DynamicImage::new_luma8(320, 240);
//! let result = auto.segment(&[image])?;
//! assert_eq!(result[0].mask.dims(), &[1, 1, 240, 320]);
//! # Ok(())
//! # }
//! ```

pub mod attention;
pub mod auto_samus;
pub mod cross_transformer;
pub mod generator;

pub use attention::{softmax_one, ApgAttention};
pub use auto_samus::{read_apg_tensors, AutoLoadReport, AutoOutput, AutoSamus, Segmentation};
pub use cross_transformer::CrossTransformer;
pub use generator::{DenseFeatureAdapter, GeneratedPrompts, PromptGenerator};
