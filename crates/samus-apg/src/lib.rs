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
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use candle_core::Device;
//! # use samus_model::SamusConfig;
//! # // Untrained weights saved as one checkpoint, for illustration.
//! # let dir = std::env::temp_dir().join(format!("samus-apg-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let (_, tensors) = samus_model::train::random_weights(&SamusConfig::tiny(), 0, &Device::Cpu)?;
//! # let (_, fresh) = samus_apg::AutoSamus::loader_from_tensors(tensors).fresh_apg(true).load_with_report()?;
//! # let checkpoint = dir.join("autosamus_tiny.safetensors");
//! # samus_model::checkpoint::save_safetensors(&checkpoint, &fresh.tensors, None)?;
//! use samus_apg::AutoSamus;
//!
//! let auto = AutoSamus::load(&checkpoint)?;           // SAMUS and the APG, config inferred
//! let image = image::DynamicImage::new_luma8(320, 240);
//! let embedding = auto.embed(&image)?;                // a samus_model::ImageEmbedding
//! let prediction = auto.segment(&embedding)?;         // a samus_model::Prediction
//! assert_eq!(prediction.best().image.dimensions(), (320, 240));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

pub mod attention;
pub mod auto_samus;
pub mod cross_transformer;
pub mod generator;

pub use attention::{softmax_one, ApgAttention};
pub use auto_samus::{read_apg_tensors, AutoLoadReport, AutoOutput, AutoSamus, AutoSamusLoader};
pub use cross_transformer::CrossTransformer;
pub use generator::{DenseFeatureAdapter, GeneratedPrompts, PromptGenerator};
