//! A synthetic cine loop: a dark, beating ellipse (a ventricle-like cavity) in
//! speckle, its centre drifting and its radii swinging with a cardiac-like cycle,
//! each frame with its true mask. For tracking tests and demos: a tracker that
//! follows it must follow both motion and resizing.

use image::{GrayImage, Luma};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One frame of [`beating_ellipse`].
#[derive(Debug, Clone)]
pub struct CineFrame {
    /// The B-mode-like image.
    pub image: GrayImage,
    /// 255 inside the ellipse, 0 outside.
    pub truth: GrayImage,
    /// The ellipse's centre `(x, y)` in pixels.
    pub centre: (f64, f64),
}

/// `frames` frames of `width x height`: over the loop the centre drifts by a fifth
/// of the width and the radii swing between 60% and 100% of their largest (one
/// beat per 16 frames).
pub fn beating_ellipse(frames: u32, width: u32, height: u32, seed: u64) -> Vec<CineFrame> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (w, h) = (f64::from(width), f64::from(height));
    (0..frames)
        .map(|i| {
            let t = f64::from(i) / f64::from(frames.max(2) - 1);
            let beat = 0.8 + 0.2 * (2.0 * std::f64::consts::PI * f64::from(i) / 16.0).cos();
            let centre = (w * (0.4 + 0.2 * t), h * (0.5 + 0.05 * t));
            let (rx, ry) = (w * 0.18 * beat, h * 0.24 * beat);
            let inside =
                |x: f64, y: f64| ((x - centre.0) / rx).powi(2) + ((y - centre.1) / ry).powi(2);
            let mut image = GrayImage::new(width, height);
            let mut truth = GrayImage::new(width, height);
            for (x, y, p) in image.enumerate_pixels_mut() {
                let r = inside(f64::from(x) + 0.5, f64::from(y) + 0.5);
                let speckle: f64 = rng.random_range(-25.0..25.0);
                let base = if r <= 1.0 {
                    35.0
                } else if r <= 1.3 {
                    200.0 // the bright wall
                } else {
                    135.0
                };
                *p = Luma([(base + speckle).clamp(0.0, 255.0) as u8]);
                if r <= 1.0 {
                    truth.put_pixel(x, y, Luma([255]));
                }
            }
            CineFrame {
                image,
                truth,
                centre,
            }
        })
        .collect()
}
