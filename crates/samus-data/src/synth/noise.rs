//! Small numeric helpers of the generator: uniform draws, smooth steps and soft
//! indicators, box blurs and the smooth Gaussian noise built from them, random waves
//! (tissue boundaries) and bilinear resampling.

use std::f32::consts::PI;

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;

/// A uniform draw from `[lo, hi)`, or `lo` when the range is empty.
pub(super) fn uni(rng: &mut StdRng, lo: f32, hi: f32) -> f32 {
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

/// Hermite smooth step: 0 at `e0`, 1 at `e1`.
pub(super) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// 1 well inside (level < -edge), 0 well outside, smooth in between.
pub(super) fn soft_inside(level: f32, edge: f32) -> f32 {
    smoothstep(edge, -edge, level)
}

/// Smooth indicator of `lo < level < hi`.
pub(super) fn soft_band(level: f32, lo: f32, hi: f32, edge: f32) -> f32 {
    soft_inside(level - hi, edge) * (1.0 - soft_inside(level - lo, edge))
}

/// Linear interpolation: `a` at `t = 0`, `b` at `t = 1`.
pub(super) fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

/// Radius `r` of a box filter with `r (r + 1) = sigma^2` (rounded).
fn box_radius(sigma: f32) -> usize {
    (((4.0 * sigma * sigma + 1.0).sqrt() - 1.0) * 0.5)
        .round()
        .max(0.0) as usize
}

/// Box blur of radius `r` along the rows of a `w` x `h` image (edge-clamped).
pub(super) fn blur_rows(src: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    if r == 0 || w == 0 {
        return src.to_vec();
    }
    let mut out = vec![0f32; src.len()];
    let norm = 1.0 / (2 * r + 1) as f32;
    let last = w as isize - 1;
    let at = |row: &[f32], k: isize| row[k.clamp(0, last) as usize];
    for (row, o) in src.chunks_exact(w).zip(out.chunks_exact_mut(w)).take(h) {
        let mut acc: f32 = (-(r as isize)..=r as isize).map(|k| at(row, k)).sum();
        for (x, ov) in o.iter_mut().enumerate() {
            *ov = acc * norm;
            let xi = x as isize;
            acc += at(row, xi + r as isize + 1) - at(row, xi - r as isize);
        }
    }
    out
}

/// Box blur of radius `r` along the columns of a `w` x `h` image (edge-clamped).
fn blur_cols(src: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    if r == 0 || h == 0 {
        return src.to_vec();
    }
    let mut out = vec![0f32; src.len()];
    let norm = 1.0 / (2 * r + 1) as f32;
    let last = h as isize - 1;
    let row = |k: isize| {
        let y = k.clamp(0, last) as usize;
        &src[y * w..(y + 1) * w]
    };
    let mut acc = vec![0f32; w];
    for k in -(r as isize)..=r as isize {
        for (a, v) in acc.iter_mut().zip(row(k)) {
            *a += v;
        }
    }
    for y in 0..h {
        for (o, a) in out[y * w..(y + 1) * w].iter_mut().zip(&acc) {
            *o = a * norm;
        }
        let yi = y as isize;
        let add = row(yi + r as isize + 1);
        let sub = row(yi - r as isize);
        for ((a, p), m) in acc.iter_mut().zip(add).zip(sub) {
            *a += p - m;
        }
    }
    out
}

/// Zero-mean, unit-variance Gaussian noise smoothed with (approximate) Gaussian sigmas.
pub(super) fn smooth_noise(rng: &mut StdRng, w: usize, h: usize, sx: f32, sy: f32) -> Vec<f32> {
    if sx.min(sy) >= 3.0 && w >= 16 && h >= 16 {
        let (hw, hh) = (w.div_ceil(2), h.div_ceil(2));
        let half = smooth_noise(rng, hw, hh, sx * 0.5, sy * 0.5);
        return resize_bilinear(&half, hw, hh, w, h);
    }
    let mut v: Vec<f32> = (0..w * h).map(|_| rng.sample(StandardNormal)).collect();
    let (rx, ry) = (box_radius(sx / 3f32.sqrt()), box_radius(sy / 3f32.sqrt()));
    for _ in 0..3 {
        v = blur_rows(&v, w, h, rx);
        v = blur_cols(&v, w, h, ry);
    }
    let n = v.len().max(1) as f32;
    let mean = v.iter().sum::<f32>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    let inv = 1.0 / var.max(1e-12).sqrt();
    for x in &mut v {
        *x = (*x - mean) * inv;
    }
    v
}

/// One sinusoidal component of a wavy tissue boundary.
#[derive(Clone, Copy, Debug)]
pub(super) struct Wave {
    amp: f32,
    freq: f32,
    phase: f32,
}

/// `n` random harmonics of a wavy boundary, the `k`-th of amplitude up to `amp / k`.
pub(super) fn random_waves(rng: &mut StdRng, n: usize, amp: f32) -> Vec<Wave> {
    (0..n)
        .map(|i| {
            let k = (i + 1) as f32;
            Wave {
                amp: amp * uni(rng, 0.3, 1.0) / k,
                freq: uni(rng, 0.6, 1.8) * k,
                phase: uni(rng, 0.0, 2.0 * PI),
            }
        })
        .collect()
}

/// Depth of a wavy boundary at lateral position `x`.
pub(super) fn wave_y(base: f32, waves: &[Wave], x: f32) -> f32 {
    base + waves
        .iter()
        .map(|w| w.amp * (2.0 * PI * w.freq * x + w.phase).sin())
        .sum::<f32>()
}

/// Bilinear resampling of a `w` x `h` image to `ow` x `oh` (pixel centres, edge-clamped).
pub(super) fn resize_bilinear(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    let mut out = vec![0f32; ow * oh];
    let sx = w as f32 / ow as f32;
    let sy = h as f32 / oh as f32;
    for y in 0..oh {
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f32);
        let y0 = fy.floor() as usize;
        let y1 = (y0 + 1).min(h - 1);
        let ty = fy - y0 as f32;
        for x in 0..ow {
            let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f32);
            let x0 = fx.floor() as usize;
            let x1 = (x0 + 1).min(w - 1);
            let tx = fx - x0 as f32;
            let top = lerp(src[y0 * w + x0], src[y0 * w + x1], tx);
            let bot = lerp(src[y1 * w + x0], src[y1 * w + x1], tx);
            out[y * ow + x] = lerp(top, bot, ty);
        }
    }
    out
}
