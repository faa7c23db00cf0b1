//! The model being trained or evaluated: SAMUS or AutoSAMUS, with its weight stores
//! (which hand out the trainable variables and the current tensors for checkpoints).

use std::collections::HashMap;

use candle_core::{DType, Device, Result as CandleResult, Tensor, Var};
use samus_apg::auto_samus::is_apg_tensor;
use samus_apg::AutoSamus;
use samus_data::Sample;
use samus_model::checkpoint::DEFAULT_INIT_SEED;
use samus_model::{MissingTensors, PromptBatch, Result, Samus, SamusConfig, WeightStore};

use crate::freeze::{autosamus_trainable, samus_trainable, TrainableSet};

/// Which model trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// SAMUS with click prompts.
    Samus,
    /// AutoSAMUS: SAMUS with the auto prompt generator, no prompts.
    AutoSamus,
}

/// A batch of samples as tensors.
#[derive(Debug, Clone)]
pub struct BatchTensors {
    /// Images `B x 1 x 256 x 256` in [0, 1].
    pub images: Tensor,
    /// Targets `B x 1 x 128 x 128` (0/1).
    pub low_targets: Tensor,
    /// Click coordinates `B x 1 x 2` (x, y) in the 256 frame.
    pub points: Tensor,
    /// Click labels `B x 1`.
    pub labels: Tensor,
}

impl BatchTensors {
    /// Stacks decoded samples.
    pub fn new(samples: &[Sample], device: &Device) -> CandleResult<Self> {
        let b = samples.len();
        let image: Vec<f32> = samples
            .iter()
            .flat_map(|s| s.image.iter().copied())
            .collect();
        let low: Vec<f32> = samples
            .iter()
            .flat_map(|s| s.low_mask.iter().map(|&m| f32::from(m)))
            .collect();
        let points: Vec<f32> = samples
            .iter()
            .flat_map(|s| [s.click.x as f32, s.click.y as f32])
            .collect();
        let labels: Vec<f32> = samples.iter().map(|s| s.click.label as f32).collect();
        let side = (samples.first().map_or(0, |s| s.image.len()) as f64).sqrt() as usize;
        let low_side = (samples.first().map_or(0, |s| s.low_mask.len()) as f64).sqrt() as usize;
        Ok(Self {
            images: Tensor::from_vec(image, (b, 1, side, side), device)?,
            low_targets: Tensor::from_vec(low, (b, 1, low_side, low_side), device)?,
            points: Tensor::from_vec(points, (b, 1, 2), device)?,
            labels: Tensor::from_vec(labels, (b, 1), device)?,
        })
    }

    /// The batch mirrored left-right: images, targets and clicks (a click on column `x`
    /// of a `W` wide image moves to column `W - 1 - x`, the same pixel mirrored).
    pub fn mirrored(&self) -> CandleResult<Self> {
        let width = self.images.dim(3)? as f64;
        let x = self.points.narrow(2, 0, 1)?.affine(-1.0, width - 1.0)?;
        let y = self.points.narrow(2, 1, 1)?;
        Ok(Self {
            images: self.images.flip(&[3])?,
            low_targets: self.low_targets.flip(&[3])?,
            points: Tensor::cat(&[x, y], 2)?,
            labels: self.labels.clone(),
        })
    }
}

/// A change made to the input at prediction time, whose predictions are averaged with
/// the plain one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TestTimeAugmentation {
    /// The image as it is.
    #[default]
    None,
    /// The image and its left-right mirror image, probabilities averaged.
    HorizontalFlip,
}

/// SAMUS or AutoSAMUS with its trainable variables.
#[derive(Debug)]
pub struct TrainModel {
    kind: ModelKind,
    samus: Samus,
    auto: Option<AutoSamus>,
    stores: Vec<WeightStore>,
}

impl TrainModel {
    /// Builds the model from checkpoint tensors (SAMUS or SAM, plus APG tensors for
    /// AutoSAMUS, which start fresh when absent). The tensors of `set` become
    /// variables.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        cfg: &SamusConfig,
        kind: ModelKind,
        set: TrainableSet,
        device: &Device,
    ) -> Result<Self> {
        let (apg, samus_tensors): (HashMap<_, _>, HashMap<_, _>) =
            tensors.into_iter().partition(|(k, _)| is_apg_tensor(k));
        let samus_set = match (kind, set) {
            (ModelKind::Samus, s) => Some(samus_trainable(cfg, s)),
            (ModelKind::AutoSamus, TrainableSet::All) => {
                Some(samus_trainable(cfg, TrainableSet::All))
            }
            (ModelKind::AutoSamus, TrainableSet::Reference) => None,
        };
        let (samus, _, samus_store) = Samus::loader_from_tensors(samus_tensors)
            .config(cfg.clone())
            .device(device)
            .init_seed(DEFAULT_INIT_SEED)
            .into_parts()?
            .build(samus_set)?;
        let mut stores = vec![samus_store];
        let auto = match kind {
            ModelKind::Samus => None,
            ModelKind::AutoSamus => {
                let missing = if apg.is_empty() {
                    MissingTensors::Initialise {
                        seed: DEFAULT_INIT_SEED,
                    }
                } else {
                    MissingTensors::Error
                };
                let store = WeightStore::with_trainable(apg, missing, autosamus_trainable(set));
                let auto = AutoSamus::new(samus.clone(), store.var_builder(device))?;
                stores.push(store);
                Some(auto)
            }
        };
        Ok(Self {
            kind,
            samus,
            auto,
            stores,
        })
    }

    /// Which model this is.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The SAMUS model (inside AutoSAMUS for that kind).
    pub fn samus(&self) -> &Samus {
        &self.samus
    }

    /// The trainable variables by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.stores.iter().flat_map(WeightStore::vars).collect()
    }

    /// Every tensor at its current value, by reference name (a full checkpoint).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.stores
            .iter()
            .flat_map(|s| s.requested_tensors())
            .collect()
    }

    /// Low-resolution logits `B x 1 x 128 x 128` for a batch (SAMUS uses its click).
    pub fn low_res_logits(&self, batch: &BatchTensors) -> CandleResult<Tensor> {
        match &self.auto {
            Some(auto) => Ok(auto.forward(&batch.images)?.low_res_logits),
            None => {
                let prompts = PromptBatch {
                    points: Some((&batch.points, &batch.labels)),
                    ..Default::default()
                };
                Ok(self
                    .samus
                    .forward(&batch.images, &prompts, false)?
                    .low_res_logits)
            }
        }
    }

    /// Binary 256 x 256 predictions (`logit > 0` after bilinear upsampling), row-major
    /// per image.
    pub fn predict_masks(&self, batch: &BatchTensors) -> CandleResult<Vec<Vec<bool>>> {
        self.predict_masks_with(batch, TestTimeAugmentation::None)
    }

    /// [`Self::predict_masks`] with a test-time augmentation: with
    /// [`TestTimeAugmentation::HorizontalFlip`] a pixel is in the mask where the mean of
    /// its probability in the image and in the mirrored image (click mirrored too,
    /// prediction mirrored back) exceeds 0.5.
    pub fn predict_masks_with(
        &self,
        batch: &BatchTensors,
        augmentation: TestTimeAugmentation,
    ) -> CandleResult<Vec<Vec<bool>>> {
        let logits = self
            .samus
            .upscale_logits(&self.low_res_logits(batch)?.detach())?;
        let masks = match augmentation {
            TestTimeAugmentation::None => logits.gt(0.0)?,
            TestTimeAugmentation::HorizontalFlip => {
                let mirrored = self
                    .samus
                    .upscale_logits(&self.low_res_logits(&batch.mirrored()?)?.detach())?
                    .flip(&[3])?;
                let sum =
                    (candle_nn::ops::sigmoid(&logits)? + candle_nn::ops::sigmoid(&mirrored)?)?;
                sum.gt(1.0)?
            }
        };
        let masks = masks.to_dtype(DType::U8)?;
        let b = masks.dim(0)?;
        (0..b)
            .map(|i| {
                Ok(masks
                    .get(i)?
                    .flatten_all()?
                    .to_vec1::<u8>()?
                    .into_iter()
                    .map(|v| v > 0)
                    .collect())
            })
            .collect()
    }
}
