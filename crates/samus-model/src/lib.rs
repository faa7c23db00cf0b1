//! SAMUS inference: segment ultrasound images with SAM adapted to ultrasound.
//!
//! This is the crate that applications embed. It holds the SAMUS model (a SAM ViT
//! image encoder with a parallel CNN branch, cross-branch attention and adapters, on
//! 256 x 256 inputs; SAM's prompt encoder and mask decoder) and loads SAMUS
//! checkpoints and SAM checkpoints (converted on the fly) by their reference
//! parameter names.
//!
//! Load a model once ([`Samus::load`], or [`Samus::loader`] for the configuration,
//! the device and the seed), embed each image once ([`Samus::embed`] gives an
//! [`ImageEmbedding`], a value you can keep, clone and share), then decode any
//! number of [`Prompts`] against any embedding ([`Samus::predict`]): a
//! [`Prediction`] holds each candidate [`Mask`] as an image at the original size.
//! `Samus`, `ImageEmbedding` and `Prediction` are `Send + Sync`: share the model as
//! `Arc<Samus>` between threads that predict at once.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use candle_core::Device;
//! # use samus_model::SamusConfig;
//! # // A random tiny model saved as the checkpoints below, and a scan to segment.
//! # let dir = std::env::temp_dir().join(format!("samus-model-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # std::env::set_current_dir(&dir)?;
//! # let (_, weights) = samus_model::train::random_weights(&SamusConfig::tiny(), 0, &Device::Cpu)?;
//! # samus_model::checkpoint::save_safetensors("samus_vit_b.safetensors".as_ref(), &weights, None)?;
//! # samus_model::checkpoint::save_safetensors("ck.pth".as_ref(), &weights, None)?;
//! # image::DynamicImage::new_luma8(300, 200).save("scan.png")?;
//! # let dev = Device::Cpu;
//! use samus_model::{Label, Prompts, Samus};
//! let model = Samus::load("samus_vit_b.safetensors")?;          // config inferred from the tensors
//! let model = Samus::loader("ck.pth").config(SamusConfig::tiny()).device(&dev).load()?; // the builder behind it
//! let embedding = model.embed(&image::open("scan.png")?)?;    // ImageEmbedding: owns its tensor and the original size
//! let prediction = model.predict(&embedding, &Prompts::new()
//!     .point(120.0, 88.0, Label::Foreground)
//!     .point(60.0, 40.0, Label::Background)
//!     .bbox([30.0, 20.0, 200.0, 150.0])
//!     .multimask(true))?;
//! let best = prediction.best();        // Mask { index, iou, image: GrayImage at the original size (0/255) }
//! let again = model.predict(&embedding, &Prompts::new().point(121.0, 90.0, Label::Foreground).refine(&prediction))?; // previous low-res logits as mask input
//! # assert_eq!(best.image.dimensions(), (300, 200));
//! # assert_eq!(prediction.masks().len(), 3);
//! # assert_eq!(again.masks().len(), 1);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
//!
//! (The released checkpoints are ViT-B: `.config(SamusConfig::vit_b())`; the
//! example runs on a random tiny model.) Training-only constructors live in
//! [`train`].

pub mod checkpoint;
pub mod config;
mod decoder_attention;
mod embedding;
pub mod error;
pub mod image_encoder;
pub mod layers;
mod loader;
pub mod mask_decoder;
mod prediction;
pub mod preprocess;
pub mod prompt_encoder;
mod prompts;
pub mod samus;
pub mod tracking;
pub mod train;
pub mod transformer;
pub mod weights;

pub use checkpoint::{CheckpointKind, LoadReport};
pub use config::SamusConfig;
pub use embedding::ImageEmbedding;
pub use error::{Error, Result};
pub use image_encoder::ImageEncoder;
pub use loader::{LoadParts, SamusLoader};
pub use mask_decoder::{DecoderImageTerms, DecoderOutput, MaskDecoder};
pub use prediction::{Mask, Prediction};
pub use prompt_encoder::{PromptBatch, PromptEncoder};
pub use prompts::{Label, PointPrompt, Prompts};
pub use samus::{PackedWeights, Samus, SamusOutput};
pub use weights::{MissingTensors, WeightStore};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn the_values_apps_hold_are_send_and_sync() {
        assert_send_sync::<Samus>();
        assert_send_sync::<ImageEmbedding>();
        assert_send_sync::<Prediction>();
        assert_send_sync::<Prompts>();
    }
}
