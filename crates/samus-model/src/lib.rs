//! SAMUS inference: segment ultrasound images with SAM adapted to ultrasound.
//!
//! This is the crate that applications embed. It holds the SAMUS model (a SAM ViT
//! image encoder with a parallel CNN branch, cross-branch attention and adapters, on
//! 256 x 256 inputs; SAM's prompt encoder and mask decoder), loads SAMUS checkpoints
//! and SAM checkpoints (converted on the fly) by their reference parameter names, and
//! offers a [`Predictor`] that embeds an image once and decodes prompts cheaply.
//!
//! ```
//! use candle_core::Device;
//! use samus_model::{Point, Predictor, PromptSet, Samus, SamusConfig};
//!
//! # fn main() -> samus_model::Result<()> {
//! // A randomly initialised tiny model; use `Samus::from_checkpoint` for real weights.
//! let model = Samus::random(&SamusConfig::tiny(), 0, &Device::Cpu)?;
//! let image = image::DynamicImage::new_luma8(300, 200);
//! let mut predictor = Predictor::new(&model);
//! predictor.set_image(&image)?;
//! let prediction = predictor.predict(&PromptSet {
//!     points: vec![Point::foreground(150.0, 100.0)],
//!     ..Default::default()
//! })?;
//! assert_eq!(prediction.masks.dims(), &[1, 1, 200, 300]);
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod image_encoder;
pub mod layers;
pub mod mask_decoder;
pub mod predictor;
pub mod preprocess;
pub mod prompt_encoder;
pub mod samus;
pub mod transformer;
pub mod weights;

pub use checkpoint::{CheckpointKind, LoadReport};
pub use config::SamusConfig;
pub use error::{Error, Result};
pub use image_encoder::ImageEncoder;
pub use mask_decoder::{DecoderOutput, MaskDecoder};
pub use predictor::{BoxPrompt, Point, Prediction, Predictor, PromptSet};
pub use prompt_encoder::{PromptBatch, PromptEncoder};
pub use samus::{Samus, SamusOutput};
pub use weights::{MissingTensors, WeightStore};
