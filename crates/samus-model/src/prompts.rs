//! What a user asks the model: points with labels, a box, a previous mask.

use candle_core::Tensor;

use crate::prediction::Prediction;

/// The label of a point prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Label {
    /// The point lies on the structure to segment.
    Foreground,
    /// The point lies outside it.
    Background,
}

impl Label {
    /// The reference's numeric label: 1 foreground, 0 background.
    pub fn value(self) -> i64 {
        match self {
            Label::Foreground => 1,
            Label::Background => 0,
        }
    }

    /// The label of a reference numeric label (1 or 0).
    pub fn from_value(value: i64) -> Option<Self> {
        match value {
            1 => Some(Label::Foreground),
            0 => Some(Label::Background),
            _ => None,
        }
    }
}

/// A point prompt in the image's pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointPrompt {
    /// Column, in pixels.
    pub x: f32,
    /// Row, in pixels.
    pub y: f32,
    /// Foreground or background.
    pub label: Label,
}

impl PointPrompt {
    /// A point with a label.
    pub fn new(x: f32, y: f32, label: Label) -> Self {
        Self { x, y, label }
    }

    /// A foreground point.
    pub fn foreground(x: f32, y: f32) -> Self {
        Self::new(x, y, Label::Foreground)
    }
}

/// The prompts of one [`Samus::predict`](crate::Samus::predict) call, built with
/// chained calls:
///
/// ```
/// use samus_model::{Label, Prompts};
/// let prompts = Prompts::new()
///     .point(120.0, 88.0, Label::Foreground)
///     .bbox([30.0, 20.0, 200.0, 150.0])
///     .multimask(true);
/// assert_eq!(prompts.points.len(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    /// Points with labels, in the image's pixels.
    pub points: Vec<PointPrompt>,
    /// A box `x0, y0, x1, y1` in the image's pixels.
    pub bbox: Option<[f32; 4]>,
    /// Mask logits `1 x 1 x 4G x 4G` (a previous prediction's low-resolution
    /// logits, see [`Prompts::refine`]).
    pub mask_input: Option<Tensor>,
    /// Three candidate masks (true) or one (false).
    pub multimask: bool,
}

impl Prompts {
    /// No prompt yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a point.
    pub fn point(mut self, x: f32, y: f32, label: Label) -> Self {
        self.points.push(PointPrompt::new(x, y, label));
        self
    }

    /// Adds points.
    pub fn points(mut self, points: impl IntoIterator<Item = PointPrompt>) -> Self {
        self.points.extend(points);
        self
    }

    /// Sets the box `x0, y0, x1, y1`.
    pub fn bbox(mut self, bbox: [f32; 4]) -> Self {
        self.bbox = Some(bbox);
        self
    }

    /// Sets the box if there is one.
    pub fn maybe_bbox(mut self, bbox: Option<[f32; 4]>) -> Self {
        self.bbox = bbox;
        self
    }

    /// Three candidates (true) or one (false).
    pub fn multimask(mut self, multimask: bool) -> Self {
        self.multimask = multimask;
        self
    }

    /// Uses the best candidate of a previous prediction on the same image as the
    /// mask input (its low-resolution logits), as SAM does for a correcting click.
    pub fn refine(mut self, previous: &Prediction) -> Self {
        self.mask_input = Some(previous.best_low_res_logits());
        self
    }

    /// Sets the mask input `1 x 1 x 4G x 4G` directly.
    pub fn mask_input(mut self, logits: Tensor) -> Self {
        self.mask_input = Some(logits);
        self
    }

    /// Whether there is neither a point, nor a box, nor a mask.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.bbox.is_none() && self.mask_input.is_none()
    }
}
