//! The analytic scenes: each describes its anatomy in physical coordinates and turns it
//! into echogenicity maps on a rendering [`Grid`] and a label per point.
//!
//! This file holds what the scenes share: the [`Grid`], the [`Maps`] a scene produces,
//! the [`Scene`] trait, the star-shaped regions (lesions, nodules, cavities) and
//! [`sample`], which draws the scene of a [`Kind`]. `breast.rs`, `thyroid.rs` and
//! `echo.rs` hold one scene each.

mod breast;
mod echo;
mod thyroid;

use std::f32::consts::PI;

use rand::rngs::StdRng;
use rand::Rng;

use super::noise::uni;
use super::Kind;

/// Draws the scene of `kind` for an image of width / height `aspect`.
pub(super) fn sample(kind: Kind, rng: &mut StdRng, aspect: f32) -> Box<dyn Scene> {
    match kind {
        Kind::Breast => Box::new(breast::BreastScene::sample(rng, aspect)),
        Kind::Thyroid => Box::new(thyroid::ThyroidScene::sample(rng, aspect)),
        Kind::Echo => Box::new(echo::EchoScene::sample(rng, aspect)),
    }
}

/// Rendering grid. Physical coordinates: depth `y` in [0, 1], lateral `x` in [0, aspect].
#[derive(Clone, Copy, Debug)]
pub(super) struct Grid {
    /// Width in pixels.
    pub(super) w: usize,
    /// Height in pixels.
    pub(super) h: usize,
    /// Width / height: the lateral extent in physical units.
    pub(super) aspect: f32,
}

impl Grid {
    /// Physical `(x, y)` of the centre of pixel `(x, y)`.
    pub(super) fn phys(&self, x: usize, y: usize) -> (f32, f32) {
        (
            (x as f32 + 0.5) / self.w as f32 * self.aspect,
            (y as f32 + 0.5) / self.h as f32,
        )
    }
}

/// Echogenicity maps of a scene on a grid.
pub(super) struct Maps {
    /// Intensity reflectivity (the target region holds its pre-gain texture).
    pub(super) e: Vec<f32>,
    /// Soft weight of the target region whose amplitude gain is calibrated.
    pub(super) wt: Vec<f32>,
    /// Additional incoherent intensity not affected by the target gain (clutter, valves, calcs).
    pub(super) extra: Vec<f32>,
}

/// An analytic scene, in physical coordinates (see [`Grid`]).
pub(super) trait Scene {
    /// The class id at a point.
    fn label_at(&self, x: f32, y: f32) -> u8;
    /// Whether a point is inside the imaged field (the sector fan of the echo view).
    fn inside(&self, _x: f32, _y: f32) -> bool {
        true
    }
    /// Acoustic depth of a point (distance from the probe).
    fn depth(&self, _x: f32, y: f32) -> f32 {
        y
    }
    /// The echogenicity maps on `grid`.
    fn maps(&self, grid: &Grid, rng: &mut StdRng) -> Maps;
    /// Whether the calibrated target is brighter than its surroundings.
    fn hyper(&self) -> bool {
        false
    }
    /// Whether the scene is seen by a sector (phased-array) probe.
    fn sector(&self) -> bool {
        false
    }
}

/// Soft muscle-like striation pattern in [0, 1].
fn striation(y: f32, freq: f32, jitter: f32) -> f32 {
    (2.0 * PI * (y * freq + jitter)).sin().max(0.0).powi(4)
}

/// Star-shaped region: an ellipse whose radius is perturbed by Fourier harmonics.
#[derive(Clone, Debug)]
struct Star {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    c: f32,
    s: f32,
    /// (k, a*cos(phase), a*sin(phase)), sorted by k.
    harm: Vec<(usize, f32, f32)>,
    /// Radius of a circle around the centre that contains the whole shape.
    bound: f32,
}

impl Star {
    fn new(center: (f32, f32), rx: f32, ry: f32, rot: f32, harm: &[(usize, f32, f32)]) -> Star {
        let mut h: Vec<(usize, f32, f32)> = harm
            .iter()
            .map(|&(k, a, ph)| (k, a * ph.cos(), a * ph.sin()))
            .collect();
        h.sort_by_key(|x| x.0);
        let amp: f32 = harm.iter().map(|x| x.1.abs()).sum();
        Star {
            cx: center.0,
            cy: center.1,
            rx: rx.max(1e-4),
            ry: ry.max(1e-4),
            c: rot.cos(),
            s: rot.sin(),
            harm: h,
            bound: rx.max(ry).max(1e-4) * (1.0 + amp) + 1e-3,
        }
    }

    /// Whether `level(x, y) < offset`, with a cheap bounding-circle rejection.
    fn within(&self, x: f32, y: f32, offset: f32) -> bool {
        let b = self.bound + offset.max(0.0);
        let (dx, dy) = (x - self.cx, y - self.cy);
        dx * dx + dy * dy < b * b && self.level(x, y) < offset
    }

    fn random_harmonics(
        rng: &mut StdRng,
        ks: std::ops::RangeInclusive<usize>,
        n: usize,
        amp: (f32, f32),
    ) -> Vec<(usize, f32, f32)> {
        (0..n)
            .map(|_| {
                (
                    rng.random_range(ks.clone()),
                    uni(rng, amp.0, amp.1),
                    uni(rng, 0.0, 2.0 * PI),
                )
            })
            .collect()
    }

    /// Approximate signed distance (negative inside), in physical units.
    fn level(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.c + dy * self.s) / self.rx;
        let v = (-dx * self.s + dy * self.c) / self.ry;
        let rho = (u * u + v * v).sqrt();
        let mut rad = 1.0;
        if rho > 1e-6 && !self.harm.is_empty() {
            let (ct, st) = (u / rho, v / rho);
            let (mut pr, mut pi, mut k) = (1f32, 0f32, 0usize);
            for &(kk, ac, as_) in &self.harm {
                while k < kk {
                    let nr = pr * ct - pi * st;
                    pi = pr * st + pi * ct;
                    pr = nr;
                    k += 1;
                }
                rad += ac * pr - as_ * pi;
            }
        }
        (rho - rad) * self.rx.min(self.ry)
    }

    fn radius_at(&self, theta: f32) -> f32 {
        1.0 + self
            .harm
            .iter()
            .map(|&(k, ac, as_)| ac * (k as f32 * theta).cos() - as_ * (k as f32 * theta).sin())
            .sum::<f32>()
    }

    /// Boundary point at polar angle `theta`, scaled by `scale` (1 = on the boundary).
    fn point(&self, theta: f32, scale: f32) -> (f32, f32) {
        let r = self.radius_at(theta) * scale;
        let (u, v) = (self.rx * r * theta.cos(), self.ry * r * theta.sin());
        (
            self.cx + u * self.c - v * self.s,
            self.cy + u * self.s + v * self.c,
        )
    }

    /// Outward normal direction (not normalised) of the underlying ellipse at a point.
    fn normal(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.c + dy * self.s) / (self.rx * self.rx);
        let v = (-dx * self.s + dy * self.c) / (self.ry * self.ry);
        (u * self.c - v * self.s, u * self.s + v * self.c)
    }
}

fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (vx, vy) = (b.0 - a.0, b.1 - a.1);
    let (wx, wy) = (p.0 - a.0, p.1 - a.1);
    let t = ((wx * vx + wy * vy) / (vx * vx + vy * vy).max(1e-12)).clamp(0.0, 1.0);
    let (ex, ey) = (wx - t * vx, wy - t * vy);
    (ex * ex + ey * ey).sqrt()
}
