//! AutoSAMUS: SAMUS whose prompts come from the auto prompt generator.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Module, Result as CandleResult, Tensor};
use image::DynamicImage;
use samus_core::parallel::run_in_pool;
use samus_core::resize::resize_bilinear;
use samus_model::checkpoint::read_tensors;
use samus_model::{
    DecoderOutput, Error, ImageEmbedding, LoadReport, MissingTensors, PackedWeights, Prediction,
    Result, Samus, SamusConfig, SamusLoader, WeightStore,
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
            path: Some(path.to_path_buf()),
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

/// What loading AutoSAMUS did.
#[derive(Debug, Clone)]
pub struct AutoLoadReport {
    /// The SAMUS part.
    pub samus: LoadReport,
    /// Every tensor of the loaded model (SAMUS and APG, fresh ones included) by
    /// reference name: what one AutoSAMUS checkpoint of it holds.
    pub tensors: HashMap<String, Tensor>,
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

    /// Loads AutoSAMUS from one checkpoint that holds SAMUS (or SAM) and the APG,
    /// with the configuration inferred from its tensor shapes, onto the CPU.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::loader(path).load()
    }

    /// A loader for the checkpoint at `path`: add a separate APG checkpoint, set the
    /// configuration or the device, then [`AutoSamusLoader::load`].
    pub fn loader(path: impl AsRef<Path>) -> AutoSamusLoader {
        AutoSamusLoader::new(Samus::loader(path))
    }

    /// A loader for checkpoint tensors already in memory (SAMUS or SAM tensors and,
    /// unless [`AutoSamusLoader::fresh_apg`] is set, the APG's).
    pub fn loader_from_tensors(tensors: HashMap<String, Tensor>) -> AutoSamusLoader {
        AutoSamusLoader::new(Samus::loader_from_tensors(tensors))
    }

    /// The SAMUS model underneath.
    pub fn samus(&self) -> &Samus {
        &self.samus
    }

    /// Packs SAMUS's encoder weights for inference on this CPU and drops their
    /// unpacked copies ([`Samus::pack_for_inference`]; the generator is small).
    pub fn pack_for_inference(&mut self) -> CandleResult<PackedWeights> {
        self.samus.pack_for_inference()
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

    /// Embeds one image with the SAMUS image encoder (the same embedding as
    /// [`Samus::embed`]: one embedding serves both prompted and automatic decoding).
    pub fn embed(&self, image: &DynamicImage) -> Result<ImageEmbedding> {
        self.samus.embed(image)
    }

    /// Segments the image of `embedding` without any prompt: one mask at the
    /// image's size.
    pub fn segment(&self, embedding: &ImageEmbedding) -> Result<Prediction> {
        Ok(self
            .segment_batch(std::slice::from_ref(embedding))?
            .remove(0))
    }

    /// [`AutoSamus::segment`] for several embeddings at once (one decoder pass).
    pub fn segment_batch(&self, embeddings: &[ImageEmbedding]) -> Result<Vec<Prediction>> {
        if embeddings.is_empty() {
            return Ok(Vec::new());
        }
        let tensors: Vec<Tensor> = embeddings.iter().map(|e| e.tensor().clone()).collect();
        let batch = Tensor::cat(&tensors, 0)?;
        let (_, _, out) = self.decode(&batch)?;
        let iou = out.iou.to_vec2::<f32>()?;
        embeddings
            .iter()
            .zip(iou)
            .enumerate()
            .map(|(i, (embedding, iou))| {
                let (h, w) = embedding.original_size();
                let low = out.low_res_logits.narrow(0, i, 1)?;
                let logits =
                    run_in_pool(|| resize_bilinear(&self.samus.upscale_logits(&low)?, h, w))?;
                Prediction::from_logits(low, logits, &iou)
            })
            .collect()
    }

    /// Segments images of any size in one batch (the encoder runs once over all of
    /// them); masks come back at each image's size.
    pub fn segment_images(&self, images: &[DynamicImage]) -> Result<Vec<Prediction>> {
        self.segment_batch(&self.samus.embed_batch(images)?)
    }
}

/// Builds an [`AutoSamus`]: the SAMUS part through [`samus_model::SamusLoader`],
/// the APG from the same checkpoint or from [`AutoSamusLoader::apg`].
#[derive(Debug)]
#[must_use = "a loader does nothing until `load` is called"]
pub struct AutoSamusLoader {
    samus: SamusLoader,
    apg: Option<PathBuf>,
    fresh_apg: bool,
}

impl AutoSamusLoader {
    fn new(samus: SamusLoader) -> Self {
        Self {
            samus,
            apg: None,
            fresh_apg: false,
        }
    }

    /// Reads the APG from this checkpoint (only `prompt_generator.*` and
    /// `feature_adapter.*` tensors).
    pub fn apg(mut self, path: impl AsRef<Path>) -> Self {
        self.apg = Some(path.as_ref().to_path_buf());
        self
    }

    /// Without APG tensors, start a freshly initialised APG (to train it) instead
    /// of failing.
    pub fn fresh_apg(mut self, fresh: bool) -> Self {
        self.fresh_apg = fresh;
        self
    }

    /// The model configuration (default: inferred from the tensor shapes).
    pub fn config(mut self, config: SamusConfig) -> Self {
        self.samus = self.samus.config(config);
        self
    }

    /// The device the weights go to (default: the CPU).
    pub fn device(mut self, device: &Device) -> Self {
        self.samus = self.samus.device(device);
        self
    }

    /// The seed of fresh tensors (a SAM checkpoint's SAMUS parts, a fresh APG).
    pub fn init_seed(mut self, seed: u64) -> Self {
        self.samus = self.samus.init_seed(seed);
        self
    }

    /// Builds the model for inference: as [`AutoSamusLoader::load_with_report`],
    /// with SAMUS's encoder weights then packed for this CPU and their unpacked
    /// copies dropped ([`AutoSamus::pack_for_inference`]).
    pub fn load(self) -> Result<AutoSamus> {
        let (mut model, report) = self.load_with_report()?;
        drop(report);
        model.pack_for_inference()?;
        Ok(model)
    }

    /// Builds the model and says what loading did. The weights stay unpacked, as
    /// the report's tensors hold them too: drop the report, then call
    /// [`AutoSamus::pack_for_inference`] for the memory of [`AutoSamusLoader::load`].
    pub fn load_with_report(self) -> Result<(AutoSamus, AutoLoadReport)> {
        let mut parts = self.samus.into_parts()?;
        if let Some(apg_path) = &self.apg {
            parts.tensors.extend(read_apg_tensors(apg_path)?);
        }
        let shown = match (&parts.path, &self.apg) {
            (Some(ck), Some(apg)) => Some(PathBuf::from(format!(
                "{} + {}",
                ck.display(),
                apg.display()
            ))),
            (ck, _) => ck.clone(),
        };
        let (apg, samus_tensors): (HashMap<_, _>, HashMap<_, _>) =
            std::mem::take(&mut parts.tensors)
                .into_iter()
                .partition(|(k, _)| is_apg_tensor(k));
        if apg.is_empty() && !self.fresh_apg {
            return Err(Error::Checkpoint {
                path: shown,
                message: "holds no auto prompt generator (prompt_generator.*, feature_adapter.*): \
                          give the APG checkpoint too"
                    .into(),
            });
        }
        parts.tensors = samus_tensors;
        let (device, seed) = (parts.device.clone(), parts.init_seed);
        let (samus, samus_report, _) = parts.build(None)?;
        let missing = if apg.is_empty() {
            MissingTensors::Initialise { seed }
        } else {
            MissingTensors::Error
        };
        let store = WeightStore::new(apg, missing);
        let apg_error = |message: String| Error::Checkpoint {
            path: shown.clone(),
            message,
        };
        let model = AutoSamus::new(samus, store.var_builder(&device))
            .map_err(|e| apg_error(format!("APG weights: {e}")))?;
        let unused = store.unused();
        if !unused.is_empty() {
            return Err(apg_error(format!(
                "unexpected APG tensors: {}",
                unused.join(", ")
            )));
        }
        let mut tensors = samus_report.tensors.clone();
        tensors.extend(store.requested_tensors());
        Ok((
            model,
            AutoLoadReport {
                samus: samus_report,
                tensors,
                apg_initialised: store.initialised(),
            },
        ))
    }
}
