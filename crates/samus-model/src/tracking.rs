//! Following one structure through the frames of a cine loop: a [`Tracker`] is
//! seeded with the user's prompts on one frame; on each next frame it prompts the
//! model with what it found on the previous one (the mask's box, its
//! low-resolution logits as the mask input, and the user's points that stay where
//! they were: foreground points inside the mask, background points outside), and
//! re-detects when the answer collapses (a low predicted IoU, an empty mask, or an
//! area that jumps). Run it once forwards and, from a [`Tracker::fork`] of the
//! seeded state, once backwards to cover a whole loop from a prompt in its middle.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use samus_model::tracking::{Tracker, TrackConfig};
//! use samus_model::{Prompts, Samus, SamusConfig};
//! let model = Samus::random(&SamusConfig::tiny(), 0, &candle_core::Device::Cpu)?;
//! let frames: Vec<image::DynamicImage> = (0..3)
//!     .map(|i| image::DynamicImage::new_luma8(64 + i, 48))
//!     .collect();
//! let mut tracker = Tracker::new(Prompts::new().point(30.0, 20.0, samus_model::Label::Foreground), TrackConfig::default());
//! for frame in &frames {
//!     let tracked = tracker.follow(&model, &model.embed(frame)?)?;
//!     assert_eq!(tracked.prediction.best().image.width(), frame.width());
//! }
//! # Ok(()) }
//! ```

use candle_core::Tensor;
use image::GrayImage;

use crate::embedding::ImageEmbedding;
use crate::error::Result;
use crate::prediction::Prediction;
use crate::prompts::{Label, PointPrompt, Prompts};
use crate::samus::Samus;

/// When a propagated mask counts as collapsed, and how the next prompt is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackConfig {
    /// A predicted IoU below this re-detects.
    pub min_iou: f32,
    /// An area more than this many times larger or smaller than the previous
    /// frame's re-detects.
    pub max_area_change: f32,
    /// The previous mask's box is widened by this fraction of its size on each
    /// side, so that a structure that moves or grows stays inside it.
    pub box_margin: f32,
}

impl Default for TrackConfig {
    fn default() -> Self {
        Self {
            min_iou: 0.5,
            max_area_change: 2.0,
            box_margin: 0.1,
        }
    }
}

impl TrackConfig {
    /// Sets [`TrackConfig::min_iou`].
    pub fn min_iou(mut self, iou: f32) -> Self {
        self.min_iou = iou;
        self
    }

    /// Sets [`TrackConfig::max_area_change`].
    pub fn max_area_change(mut self, factor: f32) -> Self {
        self.max_area_change = factor;
        self
    }

    /// Sets [`TrackConfig::box_margin`].
    pub fn box_margin(mut self, fraction: f32) -> Self {
        self.box_margin = fraction;
        self
    }
}

/// How a frame's mask was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TrackStep {
    /// From the user's prompts (the first frame of a track).
    Seeded,
    /// From the previous frame's mask.
    Propagated,
    /// The propagated mask collapsed; found again from the previous box alone, or
    /// from the user's prompts.
    Redetected,
    /// Every attempt collapsed: the best one is given, and the next frame starts
    /// again from the last good mask.
    Lost,
}

impl TrackStep {
    /// The step's name in outputs (`areas.csv`, JSON): `seeded`, `propagated`,
    /// `redetected` or `lost`, as serde writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Seeded => "seeded",
            Self::Propagated => "propagated",
            Self::Redetected => "redetected",
            Self::Lost => "lost",
        }
    }
}

/// One frame's result.
#[derive(Debug, Clone)]
pub struct TrackedFrame {
    /// The prediction; its best mask is the frame's mask.
    pub prediction: Prediction,
    /// How it was found.
    pub step: TrackStep,
    /// The prompts that gave it (without the mask input).
    pub points: Vec<PointPrompt>,
    /// The box of those prompts.
    pub bbox: Option<[f32; 4]>,
}

/// What the next frame is prompted with.
#[derive(Debug, Clone)]
struct Previous {
    mask: GrayImage,
    bbox: [f32; 4],
    logits: Tensor,
    area: usize,
}

/// Follows one structure from frame to frame (see the module documentation).
#[derive(Debug, Clone)]
pub struct Tracker {
    seed: Prompts,
    config: TrackConfig,
    previous: Option<Previous>,
}

impl Tracker {
    /// A tracker whose first frame is segmented from `seed` (points and/or a box).
    pub fn new(seed: Prompts, config: TrackConfig) -> Self {
        Self {
            seed,
            config,
            previous: None,
        }
    }

    /// A copy in the same state: after the seed frame, one copy goes forwards and
    /// the other backwards.
    pub fn fork(&self) -> Self {
        self.clone()
    }

    /// The mask of the next frame, whose `embedding` is given.
    pub fn follow(&mut self, model: &Samus, embedding: &ImageEmbedding) -> Result<TrackedFrame> {
        let size = (embedding.width(), embedding.height());
        self.follow_with(size, |prompts| model.predict(embedding, prompts))
    }

    /// [`Tracker::follow`] with any segmenter of the next frame (of `width x
    /// height` pixels): `predict` answers a prompt on that frame. The tracking rule
    /// is tested with segmenters that need no trained weights.
    pub fn follow_with(
        &mut self,
        (width, height): (usize, usize),
        mut predict: impl FnMut(&Prompts) -> Result<Prediction>,
    ) -> Result<TrackedFrame> {
        let Some(previous) = self.previous.clone() else {
            let prediction = predict(&self.seed)?;
            let tracked = TrackedFrame {
                points: self.seed.points.clone(),
                bbox: self.seed.bbox,
                prediction,
                step: TrackStep::Seeded,
            };
            self.remember(&tracked.prediction);
            return Ok(tracked);
        };
        let (w, h) = (width as f32, height as f32);
        let bbox = widen(previous.bbox, self.config.box_margin, w, h);
        let points = self.points_that_stay(&previous.mask);
        let propagated = Prompts::new()
            .points(points.iter().copied())
            .bbox(bbox)
            .mask_input(previous.logits.clone());
        let prediction = predict(&propagated)?;
        if self.holds(&prediction, previous.area) {
            self.remember(&prediction);
            return Ok(TrackedFrame {
                prediction,
                step: TrackStep::Propagated,
                points,
                bbox: Some(bbox),
            });
        }
        // Re-detect: the box alone (three candidates), then the user's prompts.
        let mut tried = vec![(prediction, points, Some(bbox))];
        let from_box = Prompts::new().bbox(bbox).multimask(true);
        tried.push((predict(&from_box)?, Vec::new(), Some(bbox)));
        let from_seed = self.seed.clone().multimask(true);
        tried.push((
            predict(&from_seed)?,
            self.seed.points.clone(),
            self.seed.bbox,
        ));
        if let Some(k) = (1..tried.len()).find(|&k| self.holds(&tried[k].0, previous.area)) {
            let (prediction, points, bbox) = tried.swap_remove(k);
            self.remember(&prediction);
            return Ok(TrackedFrame {
                prediction,
                step: TrackStep::Redetected,
                points,
                bbox,
            });
        }
        let best = (0..tried.len())
            .max_by(|&a, &b| tried[a].0.best().iou.total_cmp(&tried[b].0.best().iou))
            .unwrap_or(0);
        let (prediction, points, bbox) = tried.swap_remove(best);
        Ok(TrackedFrame {
            prediction,
            step: TrackStep::Lost,
            points,
            bbox,
        })
    }

    /// Whether `prediction` is a plausible next mask after one of `area` pixels.
    fn holds(&self, prediction: &Prediction, area: usize) -> bool {
        let best = prediction.best();
        let now = best.area() as f32;
        let before = area.max(1) as f32;
        let factor = self.config.max_area_change.max(1.0);
        best.iou >= self.config.min_iou
            && now > 0.0
            && now <= before * factor
            && now * factor >= before
    }

    /// The user's points that keep their meaning against `mask`: foreground points
    /// inside it, background points outside.
    fn points_that_stay(&self, mask: &GrayImage) -> Vec<PointPrompt> {
        self.seed
            .points
            .iter()
            .copied()
            .filter(|p| {
                let inside = p.x >= 0.0
                    && p.y >= 0.0
                    && (p.x as u32) < mask.width()
                    && (p.y as u32) < mask.height()
                    && mask.get_pixel(p.x as u32, p.y as u32)[0] > 0;
                inside == (p.label == Label::Foreground)
            })
            .collect()
    }

    fn remember(&mut self, prediction: &Prediction) {
        let best = prediction.best();
        if let Some(bbox) = mask_box(&best.image) {
            self.previous = Some(Previous {
                mask: best.image.clone(),
                bbox,
                logits: prediction.best_low_res_logits(),
                area: best.area(),
            });
        }
    }
}

/// The box `x0, y0, x1, y1` around a mask's pixels (pixel edges), if any.
pub fn mask_box(mask: &GrayImage) -> Option<[f32; 4]> {
    let mut bounds: Option<[u32; 4]> = None;
    for (x, y, p) in mask.enumerate_pixels() {
        if p[0] > 0 {
            let b = bounds.get_or_insert([x, y, x, y]);
            b[0] = b[0].min(x);
            b[1] = b[1].min(y);
            b[2] = b[2].max(x);
            b[3] = b[3].max(y);
        }
    }
    bounds.map(|[x0, y0, x1, y1]| [x0 as f32, y0 as f32, (x1 + 1) as f32, (y1 + 1) as f32])
}

/// `bbox` widened by `margin` of its size on each side, kept inside `w x h`.
fn widen([x0, y0, x1, y1]: [f32; 4], margin: f32, w: f32, h: f32) -> [f32; 4] {
    let (mx, my) = ((x1 - x0) * margin, (y1 - y0) * margin);
    [
        (x0 - mx).max(0.0),
        (y0 - my).max(0.0),
        (x1 + mx).min(w),
        (y1 + my).min(h),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_serdes_names() {
        for step in [
            TrackStep::Seeded,
            TrackStep::Propagated,
            TrackStep::Redetected,
            TrackStep::Lost,
        ] {
            assert_eq!(
                serde_json::to_value(step).ok(),
                Some(serde_json::Value::from(step.name()))
            );
        }
    }

    #[test]
    fn boxes_cover_the_mask_and_stay_inside_the_image() {
        let mut mask = GrayImage::new(20, 10);
        assert_eq!(mask_box(&mask), None);
        mask.put_pixel(3, 2, image::Luma([255]));
        mask.put_pixel(7, 5, image::Luma([255]));
        assert_eq!(mask_box(&mask), Some([3.0, 2.0, 8.0, 6.0]));
        assert_eq!(
            widen([3.0, 2.0, 8.0, 6.0], 0.2, 20.0, 10.0),
            [2.0, 1.2, 9.0, 6.8]
        );
        assert_eq!(
            widen([0.0, 0.0, 20.0, 10.0], 0.5, 20.0, 10.0),
            [0.0, 0.0, 20.0, 10.0]
        );
    }

    #[test]
    fn only_points_that_keep_their_meaning_are_carried() {
        let tracker = Tracker::new(
            Prompts::new()
                .point(2.0, 2.0, Label::Foreground)
                .point(8.0, 8.0, Label::Foreground)
                .point(9.0, 1.0, Label::Background)
                .point(3.0, 3.0, Label::Background),
            TrackConfig::default(),
        );
        let mask = GrayImage::from_fn(10, 10, |x, y| {
            image::Luma([if x < 5 && y < 5 { 255 } else { 0 }])
        });
        let kept: Vec<(f32, f32)> = tracker
            .points_that_stay(&mask)
            .iter()
            .map(|p| (p.x, p.y))
            .collect();
        assert_eq!(kept, [(2.0, 2.0), (9.0, 1.0)]);
    }
}
