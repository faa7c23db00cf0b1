//! AutoSAMUS: SAMUS whose prompts come from the auto prompt generator.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Result as CandleResult, Tensor};
use image::DynamicImage;
use samus_core::parallel::run_in_pool;
use samus_core::resize::resize_bilinear;
use samus_model::checkpoint::{read_tensors, DEFAULT_INIT_SEED};
use samus_model::preprocess::image_to_input;
use samus_model::{
    DecoderOutput, Error, LoadReport, MissingTensors, Result, Samus, SamusConfig, WeightStore,
};

use crate::generator::{DenseFeatureAdapter, GeneratedPrompts, PromptGenerator};

/// Name prefixes of the AutoSAMUS-only tensors.
pub const APG_PREFIXES: [&str; 2] = ["prompt_generator.", "feature_adapter."];

/// Whether a tensor belongs to the APG rather than to SAMUS.
pub fn is_apg_tensor(name: &str) -> bool {
    APG_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Reads an APG checkpoint: it must hold only `prompt_generator.*` and
/// `feature_adapter.*` tensors, and at least one.
pub fn read_apg_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = read_tensors(path)?;
    let problem = match tensors.keys().find(|k| !is_apg_tensor(k)) {
        Some(stray) => Some(format!(
            "not an APG checkpoint: tensor `{stray}` is neither prompt_generator.* nor feature_adapter.*"
        )),
        None if tensors.is_empty() => Some("holds no tensors".to_string()),
        None => None,
    };
    match problem {
        Some(message) => Err(Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        }),
        None => Ok(tensors),
    }
}

/// One AutoSAMUS forward pass.
#[derive(Debug, Clone)]
pub struct AutoOutput {
    /// SAMUS image embeddings, `B x 256 x G x G`.
    pub image_embeddings: Tensor,
    /// What the generator made of them.
    pub prompts: GeneratedPrompts,
    /// The dense prompt (feature adapter output), `B x 256 x G x G`.
    pub dense: Tensor,
    /// `B x 1 x 4G x 4G` logits.
    pub low_res_logits: Tensor,
    /// `B x 1` predicted IoU.
    pub iou: Tensor,
    /// `B x 1 x S x S` logits upsampled to the input size.
    pub masks: Tensor,
}

/// The segmentation of one image by [`AutoSamus::segment`].
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// `1 x 1 x 4G x 4G` logits in the model's frame.
    pub low_res_logits: Tensor,
    /// `1 x 1` predicted IoU.
    pub iou: Tensor,
    /// `1 x 1 x H x W` logits at the image's size.
    pub logits: Tensor,
    /// `1 x 1 x H x W` binary mask (`u8`, 1 where the logit is positive).
    pub mask: Tensor,
}

/// What loading AutoSAMUS did.
#[derive(Debug, Clone)]
pub struct AutoLoadReport {
    /// The SAMUS part.
    pub samus: LoadReport,
    /// APG tensors that were freshly initialised (all of them when no APG weights
    /// were given, none otherwise).
    pub apg_initialised: Vec<String>,
}

/// SAMUS with the auto prompt generator: segments without prompts.
#[derive(Debug, Clone)]
pub struct AutoSamus {
    samus: Samus,
    generator: PromptGenerator,
    feature_adapter: DenseFeatureAdapter,
}

impl AutoSamus {
    /// Adds an APG loaded from `vb` (the root prefix: `prompt_generator.*`,
    /// `feature_adapter.*`) to a SAMUS model.
    pub fn new(samus: Samus, vb: candle_nn::VarBuilder) -> CandleResult<Self> {
        let dim = samus.config().prompt_embed_dim;
        Ok(Self {
            generator: PromptGenerator::load(vb.pp("prompt_generator"), dim)?,
            feature_adapter: DenseFeatureAdapter::load(vb.pp("feature_adapter"), dim)?,
            samus,
        })
    }

    /// Builds AutoSAMUS from checkpoint tensors: the SAMUS tensors (or SAM ones,
    /// converted) and, if any are present, the APG tensors, strictly; without APG
    /// tensors a fresh APG is initialised as the reference does (seeded with `seed`).
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        cfg: &SamusConfig,
        device: &Device,
        seed: u64,
    ) -> Result<(Self, AutoLoadReport)> {
        let (apg, samus): (HashMap<_, _>, HashMap<_, _>) =
            tensors.into_iter().partition(|(k, _)| is_apg_tensor(k));
        let (samus, samus_report) = Samus::from_tensors(samus, cfg, device, seed)?;
        let missing = if apg.is_empty() {
            MissingTensors::Initialise { seed }
        } else {
            MissingTensors::Error
        };
        let store = WeightStore::new(apg, missing);
        let model = Self::new(samus, store.var_builder(device)).map_err(|e| Error::Checkpoint {
            path: "<APG weights>".into(),
            message: e.to_string(),
        })?;
        let unused = store.unused();
        if !unused.is_empty() {
            return Err(Error::Checkpoint {
                path: "<APG weights>".into(),
                message: format!("unexpected APG tensors: {}", unused.join(", ")),
            });
        }
        Ok((
            model,
            AutoLoadReport {
                samus: samus_report,
                apg_initialised: store.initialised(),
            },
        ))
    }

    /// Loads AutoSAMUS from one checkpoint holding everything, or from a SAMUS
    /// checkpoint plus an APG checkpoint; with neither APG tensors nor `apg`, the
    /// APG starts fresh (for training).
    pub fn from_checkpoints(
        checkpoint: impl AsRef<Path>,
        apg: Option<&Path>,
        cfg: &SamusConfig,
        device: &Device,
    ) -> Result<(Self, AutoLoadReport)> {
        let checkpoint = checkpoint.as_ref();
        cfg.validate()?;
        let mut tensors = read_tensors(checkpoint)?;
        if let Some(apg_path) = apg {
            tensors.extend(read_apg_tensors(apg_path)?);
        }
        let shown = apg.map_or_else(
            || checkpoint.display().to_string(),
            |a| format!("{} + {}", checkpoint.display(), a.display()),
        );
        Self::from_tensors(tensors, cfg, device, DEFAULT_INIT_SEED).map_err(|e| match e {
            Error::Checkpoint { message, .. } => Error::Checkpoint {
                path: shown.into(),
                message,
            },
            other => other,
        })
    }

    /// The SAMUS model underneath.
    pub fn samus(&self) -> &Samus {
        &self.samus
    }

    /// The prompt generator.
    pub fn generator(&self) -> &PromptGenerator {
        &self.generator
    }

    /// Runs the generator, the feature adapter and the decoder on image embeddings;
    /// returns the generated prompts, the dense prompt and the decoder's output.
    pub fn decode(
        &self,
        image_embeddings: &Tensor,
    ) -> CandleResult<(GeneratedPrompts, Tensor, DecoderOutput)> {
        // On rayon's pool, as the SAMUS passes run (`samus_core::parallel`).
        run_in_pool(|| {
            let decoder = self.samus.mask_decoder();
            let prompts = self
                .generator
                .forward(image_embeddings, &decoder.output_tokens()?)?;
            let dense = self.feature_adapter.forward(&prompts.image_embeddings)?;
            let out = decoder.forward(
                &prompts.image_embeddings,
                self.samus.prompt_encoder().dense_pe_tokens(),
                &prompts.sparse,
                &dense,
                false,
            )?;
            Ok((prompts, dense, out))
        })
    }

    /// The full pass on images `B x 1|3 x S x S` in [0, 1].
    pub fn forward(&self, image: &Tensor) -> CandleResult<AutoOutput> {
        run_in_pool(|| {
            let image_embeddings = self.samus.embed_image(image)?;
            let (prompts, dense, out) = self.decode(&image_embeddings)?;
            Ok(AutoOutput {
                masks: self.samus.upscale_logits(&out.low_res_logits)?,
                image_embeddings,
                prompts,
                dense,
                low_res_logits: out.low_res_logits,
                iou: out.iou,
            })
        })
    }

    /// Segments images of any size (grey or colour, 8 or 16 bit; converted as the
    /// SAMUS predictor does) in one batch; masks come back at each image's size.
    pub fn segment(&self, images: &[DynamicImage]) -> Result<Vec<Segmentation>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let size = self.samus.config().img_size;
        let device = self.samus.device();
        let inputs = images
            .iter()
            .map(|img| {
                if img.width() == 0 || img.height() == 0 {
                    return Err(Error::Image {
                        path: Default::default(),
                        message: "the image is empty".into(),
                    });
                }
                image_to_input(img, size, device)
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = Tensor::cat(&inputs, 0)?;
        let out = self.forward(&batch)?;
        images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let low = out.low_res_logits.narrow(0, i, 1)?;
                let full = out.masks.narrow(0, i, 1)?;
                let logits = resize_bilinear(&full, img.height() as usize, img.width() as usize)?;
                let mask = logits.gt(0.0)?.to_dtype(DType::U8)?;
                Ok(Segmentation {
                    iou: out.iou.narrow(0, i, 1)?,
                    low_res_logits: low,
                    logits,
                    mask,
                })
            })
            .collect()
    }
}
