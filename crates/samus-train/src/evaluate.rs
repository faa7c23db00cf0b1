//! Evaluating a model on a split: per-dataset means of the SPEC section 7 metrics.

use std::collections::BTreeMap;
use std::time::Instant;

use samus_data::measure::measure_mask;
use samus_data::{Sample, Us30kSplit};
use serde::Serialize;

use crate::metrics::{mask_metrics, MaskMetrics};
use crate::model::{BatchTensors, TestTimeAugmentation, TrainModel};
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
    /// Mean absolute error of the fitted-ellipse circumference (the head
    /// circumference of fetal biometry), in mm, over the images whose pixel size is
    /// known and whose prediction and ground truth are not empty.
    pub circumference_error_mm: Option<f64>,
    /// Images that mean is over.
    pub circumference_images: usize,
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
            circumference_error_mm: None,
            circumference_images: 0,
        }
    }

    /// With the mean of the absolute circumference `errors` (mm).
    pub fn with_circumference_errors(mut self, errors: &[f64]) -> Self {
        self.circumference_images = errors.len();
        self.circumference_error_mm =
            (!errors.is_empty()).then(|| errors.iter().sum::<f64>() / errors.len() as f64);
        self
    }
}

/// The absolute difference of the fitted-ellipse circumferences of `pred` and
/// `gt` (`side x side`, from an image of `original_size` with `pixel_mm` mm pixels
/// resized to it), in mm; `None` when either is empty.
pub fn circumference_error_mm(
    pred: &[bool],
    gt: &[bool],
    side: usize,
    original_size: (u32, u32),
    pixel_mm: f64,
) -> Option<f64> {
    let mask = |m: &[bool]| {
        image::GrayImage::from_raw(
            side as u32,
            side as u32,
            m.iter().map(|&v| u8::from(v) * 255).collect(),
        )
    };
    // A pixel of the side x side frame covers W/side by H/side pixels of the file.
    let scale = (
        pixel_mm * f64::from(original_size.0) / side as f64,
        pixel_mm * f64::from(original_size.1) / side as f64,
    );
    let p = measure_mask(&mask(pred)?, scale)?;
    let g = measure_mask(&mask(gt)?, scale)?;
    Some((p.ellipse_circumference_mm - g.ellipse_circumference_mm).abs())
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
    evaluate_with(
        model,
        split,
        batch_size,
        TestTimeAugmentation::None,
        |_, _, _| {},
    )
}

/// [`evaluate`] with a test-time augmentation, that also hands every sample, its
/// 256 x 256 prediction and its metrics to `on_sample` (for per-image reports).
pub fn evaluate_with(
    model: &TrainModel,
    split: &Us30kSplit,
    batch_size: usize,
    augmentation: TestTimeAugmentation,
    mut on_sample: impl FnMut(&Sample, &[bool], &MaskMetrics),
) -> Result<EvalReport, TrainError> {
    let start = Instant::now();
    let device = model.samus().device().clone();
    let mut per: BTreeMap<String, (Vec<MaskMetrics>, Vec<f64>)> = BTreeMap::new();
    let mut all = Vec::with_capacity(split.len());
    let mut all_errors = Vec::new();
    for batch in split.batches(batch_size, 0) {
        let batch = batch?;
        if batch.samples.is_empty() {
            continue;
        }
        let tensors = BatchTensors::new(&batch.samples, &device)?;
        let predictions = model.predict_masks_with(&tensors, augmentation)?;
        for (sample, pred) in batch.samples.iter().zip(&predictions) {
            let gt: Vec<bool> = sample.mask.iter().map(|&m| m > 0).collect();
            let side = (gt.len() as f64).sqrt() as usize;
            let m = mask_metrics(pred, &gt, side, side);
            on_sample(sample, pred, &m);
            let group = per
                .entry(format!("{}/{}", sample.dataset, sample.class_id))
                .or_default();
            group.0.push(m);
            all.push(m);
            if let Some(error) = sample
                .pixel_size_mm
                .and_then(|mm| circumference_error_mm(pred, &gt, side, sample.original_size, mm))
            {
                group.1.push(error);
                all_errors.push(error);
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    Ok(EvalReport {
        datasets: per
            .iter()
            .map(|(k, (m, e))| {
                (
                    k.clone(),
                    Scores::from_metrics(m).with_circumference_errors(e),
                )
            })
            .collect(),
        overall: Scores::from_metrics(&all).with_circumference_errors(&all_errors),
        images_per_s: all.len() as f64 / seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An axis-aligned ellipse of semi-axes `rx`, `ry` in a 256 x 256 frame.
    fn ellipse(rx: f64, ry: f64) -> Vec<bool> {
        (0..256 * 256)
            .map(|i| {
                let (x, y) = (
                    (i % 256) as f64 + 0.5 - 128.0,
                    (i / 256) as f64 + 0.5 - 128.0,
                );
                (x / rx).powi(2) + (y / ry).powi(2) <= 1.0
            })
            .collect()
    }

    #[test]
    fn circumference_errors_are_in_the_files_millimetres() {
        // A 512 x 256 file squeezed to 256 x 256: its circle of radius 80 px (40 mm
        // at 0.5 mm) is an ellipse of semi-axes 40 x 80 in the frame.
        let truth = ellipse(40.0, 80.0);
        let wide = ellipse(44.0, 88.0); // radius 44 mm in the file
        let e = circumference_error_mm(&wide, &truth, 256, (512, 256), 0.5).unwrap();
        let expected = 2.0 * std::f64::consts::PI * 4.0;
        assert!(
            (e - expected).abs() < 0.02 * expected,
            "{e} mm, not {expected}"
        );
        assert!(circumference_error_mm(&truth, &truth, 256, (512, 256), 0.5).unwrap() < 1e-9);
        assert_eq!(
            circumference_error_mm(&vec![false; 256 * 256], &truth, 256, (512, 256), 0.5),
            None
        );
        let s = Scores::default().with_circumference_errors(&[1.0, 3.0]);
        assert_eq!(
            (s.circumference_error_mm, s.circumference_images),
            (Some(2.0), 2)
        );
    }
}
