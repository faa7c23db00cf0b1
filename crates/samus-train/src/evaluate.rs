//! Evaluating a model on a split: per-dataset means of the SPEC section 7 metrics.

use std::collections::BTreeMap;
use std::time::Instant;

use samus_data::{Sample, Us30kSplit};
use serde::Serialize;

use crate::metrics::{mask_metrics, MaskMetrics};
use crate::model::{BatchTensors, TrainModel};
use crate::TrainError;

/// Means of the metrics over a set of images.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scores {
    /// Images scored.
    pub images: usize,
    /// Mean Dice.
    pub dice: f64,
    /// Mean IoU.
    pub iou: f64,
    /// Mean accuracy.
    pub acc: f64,
    /// Mean sensitivity.
    pub se: f64,
    /// Mean specificity.
    pub sp: f64,
    /// Mean HD over the images where it is defined.
    pub hd: Option<f64>,
    /// Mean HD95 over the images where it is defined.
    pub hd95: Option<f64>,
    /// Images with an empty prediction or ground truth (HD undefined).
    pub hd_undefined: usize,
}

impl Scores {
    /// The means of `metrics`.
    pub fn from_metrics(metrics: &[MaskMetrics]) -> Self {
        let n = metrics.len().max(1) as f64;
        let mean = |f: fn(&MaskMetrics) -> f64| metrics.iter().map(f).sum::<f64>() / n;
        let hds: Vec<(f64, f64)> = metrics
            .iter()
            .filter_map(|m| Some((m.hd?, m.hd95?)))
            .collect();
        let hn = hds.len() as f64;
        Self {
            images: metrics.len(),
            dice: mean(|m| m.dice),
            iou: mean(|m| m.iou),
            acc: mean(|m| m.acc),
            se: mean(|m| m.se),
            sp: mean(|m| m.sp),
            hd: (!hds.is_empty()).then(|| hds.iter().map(|h| h.0).sum::<f64>() / hn),
            hd95: (!hds.is_empty()).then(|| hds.iter().map(|h| h.1).sum::<f64>() / hn),
            hd_undefined: metrics.len() - hds.len(),
        }
    }
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalReport {
    /// Means per source dataset (and class, as `dataset/class`).
    pub datasets: BTreeMap<String, Scores>,
    /// Means over every image.
    pub overall: Scores,
    /// Throughput of the whole evaluation (decoding included).
    pub images_per_s: f64,
}

impl EvalReport {
    /// The table's rows: each dataset/class, then `"all"` for every image.
    pub fn rows(&self) -> impl Iterator<Item = (&str, &Scores)> {
        self.datasets
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain(std::iter::once(("all", &self.overall)))
    }
}

/// Runs `model` over `split` (its prompts: the fixed click for SAMUS) and scores the
/// 256 x 256 predictions against the targets.
pub fn evaluate(
    model: &TrainModel,
    split: &Us30kSplit,
    batch_size: usize,
) -> Result<EvalReport, TrainError> {
    evaluate_with(model, split, batch_size, |_, _, _| {})
}

/// [`evaluate`] that also hands every sample, its 256 x 256 prediction and its
/// metrics to `on_sample` (for per-image reports).
pub fn evaluate_with(
    model: &TrainModel,
    split: &Us30kSplit,
    batch_size: usize,
    mut on_sample: impl FnMut(&Sample, &[bool], &MaskMetrics),
) -> Result<EvalReport, TrainError> {
    let start = Instant::now();
    let device = model.samus().device().clone();
    let mut per: BTreeMap<String, Vec<MaskMetrics>> = BTreeMap::new();
    let mut all = Vec::with_capacity(split.len());
    for batch in split.batches(batch_size, 0) {
        let batch = batch?;
        if batch.samples.is_empty() {
            continue;
        }
        let tensors = BatchTensors::new(&batch.samples, &device)?;
        let predictions = model.predict_masks(&tensors)?;
        for (sample, pred) in batch.samples.iter().zip(&predictions) {
            let gt: Vec<bool> = sample.mask.iter().map(|&m| m > 0).collect();
            let side = (gt.len() as f64).sqrt() as usize;
            let m = mask_metrics(pred, &gt, side, side);
            on_sample(sample, pred, &m);
            per.entry(format!("{}/{}", sample.dataset, sample.class_id))
                .or_default()
                .push(m);
            all.push(m);
        }
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    Ok(EvalReport {
        datasets: per
            .iter()
            .map(|(k, v)| (k.clone(), Scores::from_metrics(v)))
            .collect(),
        overall: Scores::from_metrics(&all),
        images_per_s: all.len() as f64 / seconds,
    })
}
