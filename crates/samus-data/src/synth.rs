//! Physics-inspired synthetic B-mode ultrasound dataset generator.
//!
//! Three kinds of scene (a breast lesion and a thyroid nodule seen by a linear probe, and an
//! apical 4/2-chamber echocardiography view in a sector fan) are described analytically. Each
//! scene becomes an echogenicity (reflectivity) map, which is filled with random point
//! scatterers (amplitude `N(0,1) * sqrt(echogenicity)`), convolved with a separable
//! point-spread function (lateral Gaussian, axial Gaussian-modulated cosine/sine pair),
//! envelope-detected (I/Q magnitude, giving Rayleigh speckle), attenuated with depth under a
//! time-gain compensation that only partly compensates, and log-compressed to 8 bit.
//!
//! The contrast of the target (class 1) is calibrated by bisection so that the
//! contrast-to-noise ratio measured with [`measure_cnr`] falls in the range requested by
//! [`Difficulty`]. [`write_dataset`] writes the US30K folder layout read by SAMUS.
//!
//! Everything is deterministic for a given seed: every image has its own seed derived by
//! [`image_seed`], so images can be generated in parallel and are still identical.

use std::collections::BTreeMap;
use std::f32::consts::PI;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::{GrayImage, ImageFormat, Luma};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Echocardiography class id of the left-ventricle cavity.
pub const ECHO_LV: u8 = 1;
/// Echocardiography class id of the left-ventricle myocardium.
pub const ECHO_MYO: u8 = 2;
/// Echocardiography class id of the left atrium.
pub const ECHO_LA: u8 = 3;

/// Largest side of the working (rendering) grid; outputs are resampled from it.
const WORK_MAX: f32 = 256.0;
/// Inner radius (output pixels) of the surroundings band used by [`measure_cnr`].
const BAND_IN: f32 = 2.0;
/// Outer radius (output pixels) of the surroundings band used by [`measure_cnr`].
const BAND_OUT: f32 = 10.0;
/// Probability that an image gets scanner-like overlays.
const OVERLAY_PROB: f64 = 0.4;

/// Errors raised while writing a synthetic dataset.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A file-system operation failed on `path`.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// Path of the file or folder that failed.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// PNG encoding of the image destined for `path` failed.
    #[error("cannot encode PNG for {path}: {source}")]
    Encode {
        /// Path the image was going to be written to.
        path: PathBuf,
        /// Underlying encoder error.
        source: image::ImageError,
    },
    /// JSON serialisation of the content destined for `path` failed.
    #[error("cannot serialise JSON for {path}: {source}")]
    Json {
        /// Path the JSON was going to be written to.
        path: PathBuf,
        /// Underlying serde_json error.
        source: serde_json::Error,
    },
}

/// The three kinds of synthetic scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Breast lesion seen by a linear probe ("Breast-SynthBUSI", classes 0/1).
    Breast,
    /// Thyroid nodule inside the gland, linear probe ("ThyroidNodule-SynthTN3K", classes 0/1).
    Thyroid,
    /// Apical 4/2-chamber view in a sector ("Echocardiography-SynthCAMUS", LV=1, MYO=2, LA=3).
    Echo,
}

impl Kind {
    /// All kinds, in the order datasets are written.
    pub const ALL: [Kind; 3] = [Kind::Breast, Kind::Thyroid, Kind::Echo];

    /// Dataset folder name in the US30K layout.
    pub fn dataset_name(self) -> &'static str {
        match self {
            Kind::Breast => "Breast-SynthBUSI",
            Kind::Thyroid => "ThyroidNodule-SynthTN3K",
            Kind::Echo => "Echocardiography-SynthCAMUS",
        }
    }

    /// Number of classes including background (the value stored in `class.json`).
    pub fn num_classes(self) -> u8 {
        match self {
            Kind::Echo => 4,
            _ => 2,
        }
    }

    /// Short lower-case name used in file names (`synth_<short>_0007`).
    pub fn short_name(self) -> &'static str {
        match self {
            Kind::Breast => "breast",
            Kind::Thyroid => "thyroid",
            Kind::Echo => "echo",
        }
    }

    fn tag(self) -> u64 {
        match self {
            Kind::Breast => 1,
            Kind::Thyroid => 2,
            Kind::Echo => 3,
        }
    }
}

/// Requested contrast-to-noise ratio range of the target (class 1) against its surroundings.
///
/// CNR is `|mean_t - mean_s| / sqrt(var_t + var_s)` on the final 8-bit image, as computed by
/// [`measure_cnr`]. Each image draws its CNR uniformly from `[cnr_min, cnr_max]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difficulty {
    /// Lower end of the CNR range.
    pub cnr_min: f64,
    /// Upper end of the CNR range.
    pub cnr_max: f64,
}

impl Default for Difficulty {
    fn default() -> Self {
        Difficulty {
            cnr_min: 0.8,
            cnr_max: 2.0,
        }
    }
}

impl Difficulty {
    fn sample(&self, rng: &mut StdRng) -> f64 {
        let clean = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
        let (a, b) = (clean(self.cnr_min), clean(self.cnr_max));
        let (lo, hi) = (a.min(b), a.max(b));
        if hi - lo < 1e-9 {
            lo
        } else {
            rng.random_range(lo..hi)
        }
    }
}

/// Number of images in each split of one dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SplitCounts {
    /// Images in the training split.
    pub train: usize,
    /// Images in the validation split.
    pub val: usize,
    /// Images in the test split.
    pub test: usize,
}

impl SplitCounts {
    /// Total number of images over the three splits.
    pub fn total(&self) -> usize {
        self.train + self.val + self.test
    }
}

/// What [`write_dataset`] produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DatasetSummary {
    /// Root folder of the written dataset.
    pub root: PathBuf,
    /// Split counts keyed by dataset folder name.
    pub datasets: BTreeMap<String, SplitCounts>,
}

impl DatasetSummary {
    /// Total number of images written over all datasets.
    pub fn total_images(&self) -> usize {
        self.datasets.values().map(SplitCounts::total).sum()
    }
}

/// Splits `n` images 70/15/15 (train/val/test); each split gets at least one image when `n >= 3`.
///
/// For `n < 3`: one image goes to train, a second one (if any) to test.
pub fn split_counts(n: usize) -> SplitCounts {
    if n < 3 {
        return SplitCounts {
            train: n.min(1),
            val: 0,
            test: n.saturating_sub(1),
        };
    }
    let val = ((n as f64 * 0.15).round() as usize).max(1);
    let test = ((n as f64 * 0.15).round() as usize).max(1);
    SplitCounts {
        train: n - val - test,
        val,
        test,
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Per-image seed derived from the dataset seed, the kind and the image index.
pub fn image_seed(seed: u64, kind: Kind, index: usize) -> u64 {
    let a = splitmix64(seed);
    let b = splitmix64(a ^ kind.tag().wrapping_mul(0xD1B5_4A32_D192_ED03));
    splitmix64(b ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407))
}

/// File stem of image `index` of a kind, e.g. `synth_breast_0007`.
pub fn image_name(kind: Kind, index: usize) -> String {
    format!("synth_{}_{:04}", kind.short_name(), index)
}

/// Generates one `(image, label)` pair; label pixels hold class ids, overlays drawn on ~40%.
pub fn generate(kind: Kind, seed: u64, difficulty: &Difficulty) -> (GrayImage, GrayImage) {
    let s = generate_sample(kind, seed, difficulty, None);
    (s.image, s.label)
}

/// Like [`generate`] but forces scanner overlays on or off (the rest of the image is unchanged).
pub fn generate_with_overlay(
    kind: Kind,
    seed: u64,
    difficulty: &Difficulty,
    overlay: bool,
) -> (GrayImage, GrayImage) {
    let s = generate_sample(kind, seed, difficulty, Some(overlay));
    (s.image, s.label)
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Otsu threshold `t` of the whole image: the dark class is `p < t`, the bright class `p >= t`.
pub fn otsu_threshold(img: &GrayImage) -> u8 {
    let mut hist = [0u64; 256];
    for p in img.as_raw() {
        hist[*p as usize] += 1;
    }
    let total: u64 = hist.iter().sum();
    let sum: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let (mut w_b, mut sum_b) = (0u64, 0f64);
    let (mut best, mut best_t) = (-1f64, 0usize);
    for (t, &c) in hist.iter().enumerate() {
        w_b += c;
        if w_b == 0 {
            continue;
        }
        let w_f = total - w_b;
        if w_f == 0 {
            break;
        }
        sum_b += t as f64 * c as f64;
        let m_b = sum_b / w_b as f64;
        let m_f = (sum - sum_b) / w_f as f64;
        let between = w_b as f64 * w_f as f64 * (m_b - m_f) * (m_b - m_f);
        if between > best {
            best = between;
            best_t = t;
        }
    }
    (best_t + 1).min(255) as u8
}

/// Best Dice of a global Otsu threshold against `label == class_id`.
///
/// Both `img < t` and `img >= t` are scored and the larger Dice is returned, so the number is
/// an upper bound on what a single global Otsu threshold can achieve (works for hypo- and
/// hyper-echoic targets alike). The whole image is thresholded, including black areas outside
/// a sector fan. Returns 1.0 when the target and both predictions are empty.
pub fn otsu_dice(img: &GrayImage, label: &GrayImage, class_id: u8) -> f64 {
    let t = otsu_threshold(img);
    let (mut inter_dark, mut inter_bright, mut n_dark, mut n_bright, mut n_t) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for (p, l) in img.as_raw().iter().zip(label.as_raw()) {
        let target = *l == class_id;
        let dark = *p < t;
        n_t += u64::from(target);
        if dark {
            n_dark += 1;
            inter_dark += u64::from(target);
        } else {
            n_bright += 1;
            inter_bright += u64::from(target);
        }
    }
    let dice = |inter: u64, n: u64| {
        if n + n_t == 0 {
            1.0
        } else {
            2.0 * inter as f64 / (n + n_t) as f64
        }
    };
    dice(inter_dark, n_dark).max(dice(inter_bright, n_bright))
}

/// Contrast-to-noise ratio of `label == class_id` against its surroundings, `None` if too small.
///
/// The surroundings are the pixels 2 to 10 pixels (chamfer distance) away from the target whose
/// label is the most frequent non-target label in that band (background for breast/thyroid,
/// the myocardium for the echo LV). CNR = `|mean_t - mean_s| / sqrt(var_t + var_s)`.
pub fn measure_cnr(img: &GrayImage, label: &GrayImage, class_id: u8) -> Option<f64> {
    let (w, h) = (label.width() as usize, label.height() as usize);
    if img.width() as usize != w || img.height() as usize != h {
        return None;
    }
    let (t, r) = cnr_regions(label.as_raw(), w, h, class_id, BAND_IN, BAND_OUT)?;
    let vals: Vec<f32> = img.as_raw().iter().map(|&p| f32::from(p)).collect();
    Some(cnr_of(&vals, &t, &r).abs())
}

fn chamfer_distance(label: &[u8], w: usize, h: usize, class_id: u8) -> Vec<f32> {
    const BIG: f32 = 1e9;
    let mut d: Vec<f32> = label
        .iter()
        .map(|&l| if l == class_id { 0.0 } else { BIG })
        .collect();
    let (a, b) = (1.0f32, std::f32::consts::SQRT_2);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let mut v = d[i];
            if x > 0 {
                v = v.min(d[i - 1] + a);
            }
            if y > 0 {
                v = v.min(d[i - w] + a);
                if x > 0 {
                    v = v.min(d[i - w - 1] + b);
                }
                if x + 1 < w {
                    v = v.min(d[i - w + 1] + b);
                }
            }
            d[i] = v;
        }
    }
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            let i = y * w + x;
            let mut v = d[i];
            if x + 1 < w {
                v = v.min(d[i + 1] + a);
            }
            if y + 1 < h {
                v = v.min(d[i + w] + a);
                if x + 1 < w {
                    v = v.min(d[i + w + 1] + b);
                }
                if x > 0 {
                    v = v.min(d[i + w - 1] + b);
                }
            }
            d[i] = v;
        }
    }
    d
}

type Regions = (Vec<usize>, Vec<usize>);

fn cnr_regions(
    label: &[u8],
    w: usize,
    h: usize,
    class_id: u8,
    d_in: f32,
    d_out: f32,
) -> Option<Regions> {
    let target: Vec<usize> = (0..label.len()).filter(|&i| label[i] == class_id).collect();
    if target.len() < 8 {
        return None;
    }
    // Work in the bounding box of the target grown by the band width.
    let pad = d_out.ceil() as usize + 1;
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for &i in &target {
        let (x, y) = (i % w, i / w);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let (x0, y0) = (x0.saturating_sub(pad), y0.saturating_sub(pad));
    let (x1, y1) = ((x1 + pad + 1).min(w), (y1 + pad + 1).min(h));
    let (bw, bh) = (x1 - x0, y1 - y0);
    let window: Vec<u8> = (y0..y1)
        .flat_map(|y| label[y * w + x0..y * w + x1].iter().copied())
        .collect();
    let dist = chamfer_distance(&window, bw, bh, class_id);
    let mut hist = [0usize; 256];
    let cand: Vec<usize> = (0..window.len())
        .filter(|&j| window[j] != class_id && dist[j] > d_in && dist[j] <= d_out)
        .map(|j| (y0 + j / bw) * w + x0 + j % bw)
        .collect();
    for &i in &cand {
        hist[label[i] as usize] += 1;
    }
    let dominant = (0..256).max_by_key(|&c| hist[c]).unwrap_or(0) as u8;
    let ring: Vec<usize> = cand.into_iter().filter(|&i| label[i] == dominant).collect();
    if ring.len() < 8 {
        return None;
    }
    Some((target, ring))
}

/// Signed CNR: positive when the target is brighter than the ring.
fn cnr_of(vals: &[f32], target: &[usize], ring: &[usize]) -> f64 {
    let stats = |idx: &[usize]| {
        let n = idx.len() as f64;
        let (mut s, mut s2) = (0f64, 0f64);
        for &i in idx {
            let v = f64::from(vals[i]);
            s += v;
            s2 += v * v;
        }
        let m = s / n;
        (m, (s2 / n - m * m).max(0.0))
    };
    let (mt, vt) = stats(target);
    let (mr, vr) = stats(ring);
    (mt - mr) / (vt + vr).max(1e-6).sqrt()
}

// ---------------------------------------------------------------------------------------------
// Small numeric helpers
// ---------------------------------------------------------------------------------------------

fn uni(rng: &mut StdRng, lo: f32, hi: f32) -> f32 {
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// 1 well inside (level < -edge), 0 well outside, smooth in between.
fn soft_inside(level: f32, edge: f32) -> f32 {
    smoothstep(edge, -edge, level)
}

/// Smooth indicator of `lo < level < hi`.
fn soft_band(level: f32, lo: f32, hi: f32, edge: f32) -> f32 {
    soft_inside(level - hi, edge) * (1.0 - soft_inside(level - lo, edge))
}

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

fn box_radius(sigma: f32) -> usize {
    (((4.0 * sigma * sigma + 1.0).sqrt() - 1.0) * 0.5)
        .round()
        .max(0.0) as usize
}

fn blur_rows(src: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
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
fn smooth_noise(rng: &mut StdRng, w: usize, h: usize, sx: f32, sy: f32) -> Vec<f32> {
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

#[derive(Clone, Copy, Debug)]
struct Wave {
    amp: f32,
    freq: f32,
    phase: f32,
}

fn random_waves(rng: &mut StdRng, n: usize, amp: f32) -> Vec<Wave> {
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

fn wave_y(base: f32, waves: &[Wave], x: f32) -> f32 {
    base + waves
        .iter()
        .map(|w| w.amp * (2.0 * PI * w.freq * x + w.phase).sin())
        .sum::<f32>()
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

// ---------------------------------------------------------------------------------------------
// Scenes
// ---------------------------------------------------------------------------------------------

/// Rendering grid. Physical coordinates: depth `y` in [0, 1], lateral `x` in [0, aspect].
#[derive(Clone, Copy, Debug)]
struct Grid {
    w: usize,
    h: usize,
    aspect: f32,
}

impl Grid {
    fn phys(&self, x: usize, y: usize) -> (f32, f32) {
        (
            (x as f32 + 0.5) / self.w as f32 * self.aspect,
            (y as f32 + 0.5) / self.h as f32,
        )
    }
}

/// Echogenicity maps of a scene on a grid.
struct Maps {
    /// Intensity reflectivity (the target region holds its pre-gain texture).
    e: Vec<f32>,
    /// Soft weight of the target region whose amplitude gain is calibrated.
    wt: Vec<f32>,
    /// Additional incoherent intensity not affected by the target gain (clutter, valves, calcs).
    extra: Vec<f32>,
}

trait Scene {
    fn label_at(&self, x: f32, y: f32) -> u8;
    fn inside(&self, _x: f32, _y: f32) -> bool {
        true
    }
    fn depth(&self, _x: f32, y: f32) -> f32 {
        y
    }
    fn maps(&self, grid: &Grid, rng: &mut StdRng) -> Maps;
    /// Whether the calibrated target is brighter than its surroundings.
    fn hyper(&self) -> bool {
        false
    }
    fn sector(&self) -> bool {
        false
    }
}

/// Soft muscle-like striation pattern in [0, 1].
fn striation(y: f32, freq: f32, jitter: f32) -> f32 {
    (2.0 * PI * (y * freq + jitter)).sin().max(0.0).powi(4)
}

struct BreastScene {
    skin: f32,
    fat_base: f32,
    fat_w: Vec<Wave>,
    gland_base: f32,
    gland_w: Vec<Wave>,
    lesion: Star,
    edge: f32,
    halo: Option<(f32, f32)>,
    posterior: f32,
    post_len: f32,
    edge_shadow: bool,
    levels: [f32; 4],
    stria_f: f32,
    stria_slope: f32,
    lesion_e: f32,
}

impl BreastScene {
    fn sample(rng: &mut StdRng, aspect: f32) -> Self {
        let skin = uni(rng, 0.015, 0.035);
        let fat_base = uni(rng, 0.09, 0.22);
        let gland_base = (fat_base + uni(rng, 0.3, 0.5)).min(0.85);
        let malignant = rng.random_bool(0.45);
        let r0 = uni(rng, 0.07, 0.19);
        let elong = if malignant {
            uni(rng, 0.75, 1.25)
        } else {
            uni(rng, 1.1, 1.9)
        };
        let (rx, ry) = (r0 * elong.sqrt(), r0 / elong.sqrt());
        let rot = uni(rng, -0.35, 0.35);
        let ext = rx.max(ry) * 1.35;
        let cx = uni(rng, ext + 0.04, aspect - ext - 0.04).min(aspect - ext);
        let cy_lo = (skin + 0.06 + ext).max(0.22);
        let cy = uni(rng, cy_lo, 0.78 - ext);
        let mut harm = Star::random_harmonics(rng, 2..=5, 3, (0.0, 0.07));
        if malignant {
            harm.extend(Star::random_harmonics(rng, 6..=14, 5, (0.015, 0.05)));
        }
        let lesion = Star::new((cx, cy), rx, ry, rot, &harm);
        let edge = if malignant {
            uni(rng, 0.006, 0.016)
        } else {
            uni(rng, 0.003, 0.008)
        };
        let halo = (malignant && rng.random_bool(0.5))
            .then(|| (uni(rng, 0.008, 0.022), uni(rng, 1.4, 2.2)));
        let u: f32 = rng.random();
        let posterior = if u < 0.38 {
            uni(rng, 0.2, 0.55)
        } else if u < 0.76 {
            uni(rng, 1.5, 2.6)
        } else {
            uni(rng, 0.9, 1.1)
        };
        BreastScene {
            skin,
            fat_base,
            fat_w: random_waves(rng, 3, 0.03),
            gland_base,
            gland_w: random_waves(rng, 3, 0.05),
            lesion,
            edge,
            halo,
            posterior,
            post_len: uni(rng, 0.25, 1.0),
            edge_shadow: rng.random_bool(0.4),
            levels: [
                uni(rng, 2.0, 4.0),
                uni(rng, 0.08, 0.25),
                uni(rng, 0.8, 1.5),
                uni(rng, 0.25, 0.5),
            ],
            stria_f: uni(rng, 25.0, 45.0),
            stria_slope: uni(rng, -0.25, 0.25),
            lesion_e: uni(rng, 0.7, 1.1),
        }
    }
}

/// Per-column posterior shadow/enhancement below a target weight map.
fn apply_posterior(e: &mut [f32], wt: &[f32], grid: &Grid, factor: f32, len: f32, sharp: f32) {
    let (w, h) = (grid.w, grid.h);
    let mut cov = vec![0f32; w];
    let mut bottom = vec![None; w];
    for y in 0..h {
        for x in 0..w {
            let v = wt[y * w + x];
            cov[x] += v;
            if v > 0.5 {
                bottom[x] = Some(y);
            }
        }
    }
    let maxc = cov.iter().cloned().fold(0f32, f32::max);
    if maxc <= 0.0 {
        return;
    }
    let global_bottom = bottom.iter().flatten().max().copied().unwrap_or(h / 2);
    let mut prof: Vec<f32> = cov.iter().map(|c| (c / maxc).sqrt()).collect();
    prof = blur_rows(&prof, w, 1, 2);
    for x in 0..w {
        let yb = bottom[x].unwrap_or(global_bottom) as f32 / h as f32;
        for y in 0..h {
            let py = (y as f32 + 0.5) / h as f32;
            let d = py - yb;
            if d <= 0.0 {
                continue;
            }
            let k = prof[x] * smoothstep(0.0, sharp, d) * (-d / len).exp();
            e[y * w + x] *= 1.0 + (factor - 1.0) * k;
        }
    }
}

impl Scene for BreastScene {
    fn label_at(&self, x: f32, y: f32) -> u8 {
        u8::from(self.lesion.within(x, y, 0.0))
    }

    fn maps(&self, grid: &Grid, rng: &mut StdRng) -> Maps {
        let (w, h) = (grid.w, grid.h);
        let streak = smooth_noise(rng, w, h, 12.0, 0.9);
        let streak2 = smooth_noise(rng, w, h, 28.0, 2.0);
        let blob = smooth_noise(rng, w, h, 5.0, 3.5);
        let lob = smooth_noise(rng, w, h, 11.0, 6.0);
        let inner = smooth_noise(rng, w, h, 3.0, 2.5);
        let cols: Vec<f32> = (0..w).map(|x| grid.phys(x, 0).0).collect();
        let fat_col: Vec<f32> = cols
            .iter()
            .map(|&px| wave_y(self.fat_base, &self.fat_w, px))
            .collect();
        let gland_col: Vec<f32> = cols
            .iter()
            .map(|&px| wave_y(self.gland_base, &self.gland_w, px))
            .collect();
        let n = w * h;
        let (mut e, mut wt) = (vec![0f32; n], vec![0f32; n]);
        let [l_skin, l_fat, l_gland, l_musc] = self.levels;
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let (px, py) = grid.phys(x, y);
                let (st, st2, bl) = (streak[i], streak2[i], blob[i]);
                let (fat_y, gland_y) = (fat_col[x], gland_col[x]);
                let e_skin = l_skin * (0.4 * st).exp();
                let septa = 1.6 * smoothstep(1.0, 2.0, st2 + 0.5 * st);
                let e_fat = l_fat * (0.3 * bl + 0.25 * st).exp() + septa;
                let lobule = 1.0 - 0.75 * smoothstep(0.5, 1.3, lob[i]);
                let ligament = 2.5 * smoothstep(1.3, 2.3, st + 0.3 * st2);
                let e_gland = l_gland * ((0.8 * st + 0.5 * st2).exp() * lobule + ligament);
                let fib = striation(py + self.stria_slope * px, self.stria_f, 0.08 * st);
                let e_musc = l_musc * (0.6 + 6.0 * fib) * (0.2 * bl).exp();
                let mut v = e_skin;
                v = lerp(v, e_fat, smoothstep(-0.004, 0.004, py - self.skin));
                v = lerp(v, e_gland, smoothstep(-0.008, 0.008, py - fat_y));
                v = lerp(v, e_musc, smoothstep(-0.01, 0.01, py - gland_y));
                let phi = self.lesion.level(px, py);
                if let Some((th, g)) = self.halo {
                    v *= 1.0 + (g - 1.0) * soft_band(phi, 0.0, th, 0.004);
                }
                let wi = soft_inside(phi, self.edge);
                let e_in = self.lesion_e * (0.4 * inner[i]).exp();
                e[i] = lerp(v, e_in, wi);
                wt[i] = wi;
            }
        }
        apply_posterior(&mut e, &wt, grid, self.posterior, self.post_len, 0.03);
        if self.edge_shadow {
            let xs: Vec<f32> = (0..n)
                .filter(|&i| wt[i] > 0.5)
                .map(|i| grid.phys(i % w, i / w).0)
                .collect();
            let xmin = xs.iter().cloned().fold(f32::MAX, f32::min);
            let xmax = xs.iter().cloned().fold(f32::MIN, f32::max);
            let cy = self.lesion.cy;
            for y in 0..h {
                for x in 0..w {
                    let (px, py) = grid.phys(x, y);
                    let depth_k = smoothstep(0.0, 0.05, py - cy);
                    let g = (-((px - xmin) / 0.01).powi(2)).exp()
                        + (-((px - xmax) / 0.01).powi(2)).exp();
                    e[y * w + x] *= 1.0 - 0.6 * depth_k * g.min(1.0);
                }
            }
        }
        Maps {
            e,
            wt,
            extra: Vec::new(),
        }
    }
}

struct ThyroidScene {
    skin: f32,
    sub_base: f32,
    sub_w: Vec<Wave>,
    strap_base: f32,
    strap_w: Vec<Wave>,
    gland: Star,
    gland_e: f32,
    carotid: (f32, f32, f32),
    trachea: Option<(f32, f32, f32)>,
    nodule: Star,
    edge: f32,
    halo: Option<(f32, f32)>,
    cystic: Option<f32>,
    calcs: Vec<(f32, f32)>,
    hyper: bool,
    nodule_e: f32,
    stria_f: f32,
}

impl ThyroidScene {
    fn sample(rng: &mut StdRng, aspect: f32) -> Self {
        let skin = uni(rng, 0.015, 0.03);
        let sub_base = skin + uni(rng, 0.04, 0.09);
        let strap_base = sub_base + uni(rng, 0.05, 0.09);
        let ry = uni(rng, 0.17, 0.25);
        let rx = uni(rng, 0.3, 0.42).min(0.42 * aspect);
        let gx = uni(rng, 0.42, 0.58) * aspect;
        let gy = (strap_base + ry + uni(rng, 0.0, 0.02)).min(0.86 - ry);
        let gharm = Star::random_harmonics(rng, 2..=3, 2, (0.0, 0.04));
        let gland = Star::new((gx, gy), rx, ry, uni(rng, -0.12, 0.12), &gharm);
        let side = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        let cr = uni(rng, 0.06, 0.085);
        let ccx = (gx + side * (rx * 0.92 + cr * 0.4)).clamp(cr + 0.01, aspect - cr - 0.01);
        let carotid = (ccx, gy + uni(rng, -0.02, 0.05), cr);
        let trachea = rng.random_bool(0.5).then(|| {
            let tr = uni(rng, 0.08, 0.11);
            let tx = (gx - side * (rx * 0.95)).clamp(0.0, aspect);
            (tx, gy - ry * 0.4, tr)
        });
        // Nodule fully inside the gland, away from the carotid.
        let halo = rng
            .random_bool(0.6)
            .then(|| (uni(rng, 0.006, 0.016), uni(rng, 0.08, 0.3)));
        let halo_th = halo.map_or(0.0, |h| h.0);
        let irregular = rng.random_bool(0.2);
        let mut nodule = Star::new((gx, gy), 0.05, 0.05, 0.0, &[]);
        for attempt in 0..40 {
            let shrink = if attempt > 20 { 0.6 } else { 1.0 };
            let rn = uni(rng, 0.05, (0.14f32).min(0.7 * ry)) * shrink;
            let el = uni(rng, 0.75, 1.35);
            let (nrx, nry) = (rn * el.sqrt(), rn / el.sqrt());
            let ncx = gx + uni(rng, -1.0, 1.0) * (rx - nrx).max(0.0) * 0.6;
            let ncy = gy + uni(rng, -1.0, 1.0) * (ry - nry).max(0.0) * 0.5;
            let mut harm = Star::random_harmonics(rng, 2..=4, 2, (0.0, 0.06));
            if irregular {
                harm.extend(Star::random_harmonics(rng, 5..=10, 3, (0.01, 0.04)));
            }
            let cand = Star::new((ncx, ncy), nrx, nry, uni(rng, -0.5, 0.5), &harm);
            let ok = (0..24).all(|k| {
                let th = k as f32 / 24.0 * 2.0 * PI;
                let (px, py) = cand.point(th, 1.0);
                let margin = halo_th + 0.012;
                let dc = ((px - carotid.0).powi(2) + (py - carotid.1).powi(2)).sqrt();
                gland.level(px, py) < -margin && dc > carotid.2 + margin + 0.01
            });
            nodule = cand;
            if ok {
                break;
            }
        }
        let cystic = rng.random_bool(0.3).then(|| uni(rng, 0.7, 1.4));
        let ncalc = if rng.random_bool(0.2) {
            rng.random_range(2..=6)
        } else {
            0
        };
        let calcs = (0..ncalc)
            .map(|_| nodule.point(uni(rng, 0.0, 2.0 * PI), uni(rng, 0.0, 0.7)))
            .collect();
        ThyroidScene {
            skin,
            sub_base,
            sub_w: random_waves(rng, 2, 0.015),
            strap_base,
            strap_w: random_waves(rng, 2, 0.02),
            gland,
            gland_e: uni(rng, 1.2, 1.8),
            carotid,
            trachea,
            nodule,
            edge: uni(rng, 0.003, 0.01),
            halo,
            cystic,
            calcs,
            hyper: rng.random_bool(0.25),
            nodule_e: uni(rng, 0.9, 1.3),
            stria_f: uni(rng, 30.0, 50.0),
        }
    }
}

impl Scene for ThyroidScene {
    fn label_at(&self, x: f32, y: f32) -> u8 {
        u8::from(self.nodule.within(x, y, self.halo.map_or(0.0, |h| h.0)))
    }

    fn hyper(&self) -> bool {
        self.hyper
    }

    fn maps(&self, grid: &Grid, rng: &mut StdRng) -> Maps {
        let (w, h) = (grid.w, grid.h);
        let streak = smooth_noise(rng, w, h, 12.0, 1.0);
        let blob = smooth_noise(rng, w, h, 5.0, 4.0);
        let fine = smooth_noise(rng, w, h, 2.5, 1.5);
        let inner = smooth_noise(rng, w, h, 3.5, 3.0);
        let cyst = smooth_noise(rng, w, h, 4.0, 4.0);
        let cols: Vec<f32> = (0..w).map(|x| grid.phys(x, 0).0).collect();
        let sub_col: Vec<f32> = cols
            .iter()
            .map(|&px| wave_y(self.sub_base, &self.sub_w, px))
            .collect();
        let strap_col: Vec<f32> = cols
            .iter()
            .map(|&px| wave_y(self.strap_base, &self.strap_w, px))
            .collect();
        let n = w * h;
        let (mut e, mut wt, mut extra) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let (ccx, ccy, cr) = self.carotid;
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let (px, py) = grid.phys(x, y);
                let (st, bl) = (streak[i], blob[i]);
                let (sub_y, strap_y) = (sub_col[x], strap_col[x]);
                let e_skin = 2.2 * (0.4 * st).exp();
                let e_sub = 0.55 * (0.45 * st + 0.2 * bl).exp();
                let e_strap =
                    0.22 * (1.0 + 2.5 * striation(py, self.stria_f, 0.1 * st)) * (0.2 * bl).exp();
                let e_deep = 0.45 * (0.5 * st + 0.25 * bl).exp();
                let mut v = e_skin;
                v = lerp(v, e_sub, smoothstep(-0.004, 0.004, py - self.skin));
                v = lerp(v, e_strap, smoothstep(-0.006, 0.006, py - sub_y));
                v = lerp(v, e_deep, smoothstep(-0.006, 0.006, py - strap_y - 0.02));
                // gland with a thin bright capsule
                let gphi = self.gland.level(px, py);
                let e_gl = self.gland_e * (0.15 * bl + 0.12 * fine[i]).exp();
                v = lerp(v, e_gl, soft_inside(gphi, 0.004));
                v *= 1.0 + 1.0 * soft_band(gphi, -0.004, 0.004, 0.003);
                // carotid: anechoic lumen, bright wall, posterior enhancement
                let dc = ((px - ccx).powi(2) + (py - ccy).powi(2)).sqrt() - cr;
                v = lerp(v, 2.5, soft_band(dc, -0.008, 0.004, 0.003));
                v = lerp(v, 0.004, soft_inside(dc + 0.008, 0.003));
                if py > ccy {
                    let lat = (-((px - ccx) / (0.8 * cr)).powi(2)).exp();
                    v *= 1.0 + 0.7 * lat * smoothstep(0.0, cr, py - ccy);
                }
                if let Some((tx, ty, tr)) = self.trachea {
                    let dt = ((px - tx).powi(2) + (py - ty).powi(2)).sqrt() - tr;
                    if py < ty + 0.2 * tr {
                        v = lerp(v, 4.0, soft_band(dt, -0.012, 0.0, 0.003));
                    }
                    let dx = px - tx;
                    let arc_y = ty - (tr * tr - dx * dx).max(0.0).sqrt();
                    if dx.abs() < tr * 0.9 && py > arc_y + 0.012 {
                        let rev = striation(py - ty, 1.0 / 0.035, 0.0);
                        v = 0.05 * v + 0.8 * rev * (-(py - ty) / 0.3).exp();
                    }
                }
                // nodule
                let phi = self.nodule.level(px, py);
                if let Some((th, g)) = self.halo {
                    v *= lerp(1.0, g, soft_band(phi, 0.0, th, 0.003));
                }
                let mut e_in = self.nodule_e * (0.35 * inner[i]).exp();
                if let Some(t) = self.cystic {
                    e_in *= lerp(1.0, 0.03, smoothstep(t, t + 0.4, cyst[i]));
                }
                let wi = soft_inside(phi, self.edge);
                e[i] = lerp(v, e_in, wi);
                wt[i] = wi;
                for &(cx, cy) in &self.calcs {
                    let d = ((px - cx).powi(2) + (py - cy).powi(2)).sqrt();
                    extra[i] += 8.0 * soft_inside(d - 0.004, 0.002);
                    if py > cy + 0.006 {
                        let lat = (-((px - cx) / 0.008).powi(2)).exp();
                        e[i] *= 1.0 - 0.7 * lat;
                    }
                }
            }
        }
        Maps { e, wt, extra }
    }
}

struct EchoScene {
    apex: (f32, f32),
    radius: f32,
    half_angle: f32,
    lv_apex: (f32, f32),
    dir: (f32, f32),
    len: f32,
    lv: Star,
    myo: Star,
    la: Star,
    rv: Option<(Star, Star)>,
    leaflets: Vec<((f32, f32), (f32, f32))>,
    myo_e: f32,
    cav_e: f32,
    clutter: f32,
    near_e: f32,
    peri_e: f32,
    out_e: f32,
}

impl EchoScene {
    fn sample(rng: &mut StdRng, aspect: f32) -> Self {
        let mut best = Self::sample_once(rng, aspect);
        for _ in 0..30 {
            if best.fits() {
                break;
            }
            best = Self::sample_once(rng, aspect);
        }
        best
    }

    fn fits(&self) -> bool {
        let ok = |s: &Star, cut: bool, margin: f32| {
            (0..32).all(|k| {
                let (x, y) = s.point(k as f32 / 32.0 * 2.0 * PI, 1.0);
                (cut && self.along_axis(x, y) > self.len) || self.inside_margin(x, y, margin)
            })
        };
        ok(&self.lv, true, 0.02) && ok(&self.myo, true, 0.0) && ok(&self.la, false, 0.02)
    }

    fn inside_margin(&self, x: f32, y: f32, margin: f32) -> bool {
        let (dx, dy) = (x - self.apex.0, y - self.apex.1);
        let r = (dx * dx + dy * dy).sqrt();
        let th = dx.atan2(dy);
        r <= self.radius - margin && th.abs() <= self.half_angle - margin / r.max(0.05)
    }

    fn sample_once(rng: &mut StdRng, aspect: f32) -> Self {
        let y0 = uni(rng, -0.02, 0.02);
        let radius = uni(rng, 0.9, 0.96) - y0.max(0.0);
        let half_angle = uni(rng, 0.61, 0.79).min(((aspect * 0.5 - 0.01) / radius).asin());
        let apex = (aspect * 0.5, y0);
        let r_a = uni(rng, 0.07, 0.12);
        let phi = uni(rng, -0.03, 0.12);
        let lv_apex = (apex.0 + r_a * phi.sin(), apex.1 + r_a * phi.cos());
        let psi = uni(rng, -0.12, 0.1);
        let dir = (psi.sin(), psi.cos());
        let nrm = (psi.cos(), -psi.sin());
        let rot = dir.1.atan2(dir.0);
        let mut la_a = uni(rng, 0.09, 0.13);
        let gap = uni(rng, 0.015, 0.03);
        let budget = radius - r_a - 0.05;
        let mut len = uni(rng, 0.4, 0.52).min(budget - gap - 2.0 * la_a);
        if len < 0.3 {
            len = 0.3;
            la_a = ((budget - gap - len) * 0.5).max(0.05);
        }
        let uc = uni(rng, 0.58, 0.7);
        let wb = uni(rng, 0.1, 0.14);
        let t = uni(rng, 0.05, 0.075);
        let t_ap = t * uni(rng, 0.8, 1.1);
        let along = |s: f32, q: f32| {
            (
                lv_apex.0 + dir.0 * s + nrm.0 * q,
                lv_apex.1 + dir.1 * s + nrm.1 * q,
            )
        };
        let lv_h = Star::random_harmonics(rng, 3..=8, 3, (0.005, 0.025));
        let lv = Star::new(along(uc * len, 0.0), uc * len, wb, rot, &lv_h);
        let myo_h = Star::random_harmonics(rng, 2..=6, 2, (0.005, 0.02));
        let myo = Star::new(along(uc * len, 0.0), uc * len + t_ap, wb + t, rot, &myo_h);
        let la_b = uni(rng, 0.08, 0.115);
        let la_h = Star::random_harmonics(rng, 2..=5, 3, (0.01, 0.04));
        let la = Star::new(
            along(len + gap + la_a, uni(rng, -0.02, 0.03)),
            la_a,
            la_b,
            rot,
            &la_h,
        );
        let rv = rng.random_bool(0.6).then(|| {
            let rv_b = uni(rng, 0.055, 0.085);
            let h1 = Star::random_harmonics(rng, 2..=5, 2, (0.01, 0.04));
            let cav = Star::new(
                along(0.58 * len, -(wb + t + rv_b + 0.015)),
                0.45 * len,
                rv_b,
                rot,
                &h1,
            );
            let h2 = Star::random_harmonics(rng, 2..=5, 2, (0.01, 0.04));
            let ra = Star::new(
                along(len + gap + la_a * 0.9, -(wb + t + rv_b * 0.8 + 0.03)),
                la_a * 0.9,
                rv_b * 1.1,
                rot,
                &h2,
            );
            (cav, ra)
        });
        let w_base = wb * (1.0 - ((1.0 - uc) / uc).powi(2)).max(0.0).sqrt();
        let open = rng.random_bool(0.5);
        let mut leaflets = Vec::new();
        for sgn in [-1.0f32, 1.0] {
            let p = along(len + gap * 0.5, sgn * w_base);
            let end = if open {
                let l = uni(rng, 0.06, 0.1);
                let b = uni(rng, 0.15, 0.4);
                // into the LV (towards the apex), tilted towards the axis
                (
                    p.0 - l * (dir.0 * b.cos() + sgn * nrm.0 * b.sin()),
                    p.1 - l * (dir.1 * b.cos() + sgn * nrm.1 * b.sin()),
                )
            } else {
                along(len + gap * 0.5 + 0.015, sgn * 0.004)
            };
            leaflets.push((p, end));
        }
        EchoScene {
            apex,
            radius,
            half_angle,
            lv_apex,
            dir,
            len,
            lv,
            myo,
            la,
            rv,
            leaflets,
            myo_e: uni(rng, 0.8, 1.2),
            cav_e: uni(rng, 0.002, 0.02),
            clutter: uni(rng, 0.0, 0.012),
            near_e: uni(rng, 0.5, 2.0),
            peri_e: uni(rng, 1.8, 3.5),
            out_e: uni(rng, 0.04, 0.2),
        }
    }

    fn along_axis(&self, x: f32, y: f32) -> f32 {
        (x - self.lv_apex.0) * self.dir.0 + (y - self.lv_apex.1) * self.dir.1
    }
}

impl Scene for EchoScene {
    fn label_at(&self, x: f32, y: f32) -> u8 {
        if !self.inside(x, y) {
            return 0;
        }
        let before_base = self.along_axis(x, y) < self.len;
        if before_base && self.lv.within(x, y, 0.0) {
            ECHO_LV
        } else if before_base && self.myo.within(x, y, 0.0) {
            ECHO_MYO
        } else if self.la.within(x, y, 0.0) {
            ECHO_LA
        } else {
            0
        }
    }

    fn inside(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - self.apex.0, y - self.apex.1);
        dy > 0.0
            && (dx * dx + dy * dy).sqrt() <= self.radius
            && dx.atan2(dy).abs() <= self.half_angle
    }

    fn depth(&self, x: f32, y: f32) -> f32 {
        ((x - self.apex.0).powi(2) + (y - self.apex.1).powi(2)).sqrt()
    }

    fn sector(&self) -> bool {
        true
    }

    fn maps(&self, grid: &Grid, rng: &mut StdRng) -> Maps {
        let (w, h) = (grid.w, grid.h);
        let streak = smooth_noise(rng, w, h, 9.0, 1.2);
        let blob = smooth_noise(rng, w, h, 7.0, 5.0);
        let fine = smooth_noise(rng, w, h, 2.5, 1.5);
        let n = w * h;
        let (mut e, mut wt, mut extra) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let r_apex_lv = self.depth(self.lv_apex.0, self.lv_apex.1);
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let (px, py) = grid.phys(x, y);
                if !self.inside(px, py) {
                    continue;
                }
                let r = self.depth(px, py);
                let (st, bl, fi) = (streak[i], blob[i], fine[i]);
                let cut = self.along_axis(px, py) - self.len;
                let lv = self.lv.level(px, py);
                let myo_full = self.myo.level(px, py);
                let la = self.la.level(px, py);
                let mut hull = myo_full.min(la - 0.012);
                let mut rvs = (1.0f32, 1.0f32);
                if let Some((rv, ra)) = &self.rv {
                    rvs = (rv.level(px, py), ra.level(px, py));
                    hull = hull.min(rvs.0 - 0.015).min(rvs.1 - 0.012);
                }
                let tissue = self.myo_e * (0.25 * fi + 0.2 * bl).exp();
                let mut v = self.out_e * (0.8 * bl + 0.3 * st).exp();
                // chest wall near field
                v = lerp(v, 1.2 * (0.6 * st).exp(), smoothstep(0.07, 0.03, r));
                // pericardium and inter-chamber tissue
                let peri = self.peri_e * (0.35 * st).exp();
                v = lerp(v, peri, soft_band(hull, 0.004, 0.03, 0.004));
                v = lerp(v, 0.7 * tissue, soft_inside(hull - 0.004, 0.003));
                // myocardium with angle-dependent dropout of walls parallel to the beam
                let (nx, ny) = self.myo.normal(px, py);
                let (bx, by) = (px - self.apex.0, py - self.apex.1);
                let cosang = (nx * bx + ny * by).abs()
                    / ((nx * nx + ny * ny).sqrt() * (bx * bx + by * by).sqrt()).max(1e-9);
                let dropout = 0.2 + 0.8 * cosang.powf(0.7);
                v = lerp(v, tissue * dropout, soft_inside(myo_full.max(cut), 0.003));
                // non-target cavities
                let cav = self.cav_e * (0.3 * fi).exp();
                v = lerp(v, cav, soft_inside(la, 0.004));
                v = lerp(v, cav, soft_inside(rvs.0.max(cut), 0.004));
                v = lerp(v, cav, soft_inside(rvs.1, 0.004));
                // LV cavity: blood texture with a calibrated gain
                let wi = soft_inside(lv.max(cut), 0.003);
                e[i] = lerp(v, self.myo_e * (0.3 * fi).exp(), wi);
                wt[i] = wi;
                // clutter (not affected by the gain): apical haze, near field, valve leaflets
                let mut ex = self.clutter * (-(r - r_apex_lv).max(0.0) / 0.15).exp() * wi;
                ex += self.near_e * (-r / 0.035).exp();
                for &(a, b) in &self.leaflets {
                    ex += 2.5 * soft_inside(segment_distance((px, py), a, b) - 0.004, 0.002);
                }
                extra[i] = ex;
            }
        }
        Maps { e, wt, extra }
    }
}

// ---------------------------------------------------------------------------------------------
// Acoustic rendering
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Physics {
    f0: f32,
    sigma_ax: f32,
    sigma_lat: f32,
    lat_growth: f32,
    focus: f32,
    alpha: f32,
    tgc: f32,
    ripple: (f32, f32, f32),
    dr_db: f32,
    headroom_db: f32,
    smooth: f32,
    /// `255 * v^gamma` sampled on [0, 1] (gray map).
    lut: Vec<f32>,
}

impl Physics {
    fn sample(rng: &mut StdRng, sector: bool) -> Self {
        Physics {
            f0: uni(rng, 0.25, 0.33),
            sigma_ax: uni(rng, 0.7, 0.95),
            sigma_lat: if sector {
                uni(rng, 1.2, 1.6)
            } else {
                uni(rng, 1.5, 2.1)
            },
            lat_growth: if sector { uni(rng, 0.8, 1.4) } else { 0.0 },
            focus: uni(rng, 0.3, 0.6),
            alpha: if sector {
                uni(rng, 2.0, 3.5)
            } else {
                uni(rng, 1.5, 3.0)
            },
            tgc: uni(rng, 0.5, 0.8),
            ripple: (
                uni(rng, 0.0, 0.12),
                uni(rng, 1.0, 3.0),
                uni(rng, 0.0, 2.0 * PI),
            ),
            dr_db: uni(rng, 50.0, 60.0),
            headroom_db: uni(rng, 24.0, 31.0),
            smooth: uni(rng, 0.5, 1.0),
            lut: {
                let gamma = uni(rng, 0.9, 1.25);
                (0..1024)
                    .map(|i| 255.0 * (i as f32 / 1023.0).powf(gamma))
                    .collect()
            },
        }
    }

    /// Log compression: `255 * ((20 log10(env/ref) + DR) / DR)^gamma`, clamped to [0, 255].
    fn gray(&self, env: f32, ln_ref: f32) -> f32 {
        if env <= 0.0 {
            return 0.0;
        }
        let db = 20.0 / std::f32::consts::LN_10 * (env.ln() - ln_ref);
        let v = ((db + self.dr_db) / self.dr_db).clamp(0.0, 1.0) * (self.lut.len() - 1) as f32;
        let i = (v as usize).min(self.lut.len() - 2);
        lerp(self.lut[i], self.lut[i + 1], v - i as f32)
    }
}

fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as isize;
    let mut k: Vec<f32> = (-r..=r)
        .map(|j| (-(j as f32).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    for v in &mut k {
        *v /= s;
    }
    k
}

/// Lateral (along rows) convolution with a per-row Gaussian kernel, zero padding.
fn lateral_conv(src: &[f32], w: usize, kernels: &[Vec<f32>]) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    for ((row, o), k) in src
        .chunks_exact(w)
        .zip(out.chunks_exact_mut(w))
        .zip(kernels)
    {
        let r = (k.len() / 2) as isize;
        for (j, &kj) in k.iter().enumerate() {
            let off = j as isize - r;
            let x0 = (-off).max(0) as usize;
            let x1 = (w as isize - off.max(0)).max(0) as usize;
            if x0 >= x1 {
                continue;
            }
            let s0 = (x0 as isize + off) as usize;
            for (ov, sv) in o[x0..x1].iter_mut().zip(src_slice(row, s0, x1 - x0)) {
                *ov += kj * sv;
            }
        }
    }
    out
}

fn src_slice(row: &[f32], start: usize, len: usize) -> &[f32] {
    &row[start..start + len]
}

/// Axial (along columns) convolution with a Gaussian-modulated cosine/sine pair (I/Q).
fn axial_iq(src: &[f32], w: usize, h: usize, ph: &Physics) -> (Vec<f32>, Vec<f32>) {
    let r = (3.0 * ph.sigma_ax).ceil() as isize;
    let (mut re, mut im) = (vec![0f32; src.len()], vec![0f32; src.len()]);
    for j in -r..=r {
        let z = j as f32;
        let g = (-z * z / (2.0 * ph.sigma_ax * ph.sigma_ax)).exp();
        let (kc, ks) = (
            g * (2.0 * PI * ph.f0 * z).cos(),
            g * (2.0 * PI * ph.f0 * z).sin(),
        );
        for y in 0..h {
            let ys = y as isize + j;
            if ys < 0 || ys >= h as isize {
                continue;
            }
            let s = &src[ys as usize * w..(ys as usize + 1) * w];
            let (or, oi) = (&mut re[y * w..(y + 1) * w], &mut im[y * w..(y + 1) * w]);
            for ((a, b), v) in or.iter_mut().zip(oi.iter_mut()).zip(s) {
                *a += kc * v;
                *b += ks * v;
            }
        }
    }
    (re, im)
}

fn render(
    scene: &dyn Scene,
    grid: &Grid,
    ph: &Physics,
    cnr_target: f64,
    rng: &mut StdRng,
    band: (f32, f32),
) -> Vec<f32> {
    let (w, h) = (grid.w, grid.h);
    let n = w * h;
    let maps = scene.maps(grid, rng);
    let mut valid = vec![true; n];
    let mut depth = vec![0f32; n];
    let mut label = vec![0u8; n];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (px, py) = grid.phys(x, y);
            valid[i] = scene.inside(px, py);
            depth[i] = scene.depth(px, py);
            label[i] = if valid[i] { scene.label_at(px, py) } else { 0 };
        }
    }
    // Random point scatterers (one Gaussian scatterer per pixel plus sparse strong ones).
    let (mut a0, mut a1) = (vec![0f32; n], vec![0f32; n]);
    for i in 0..n {
        let mut s: f32 = rng.sample(StandardNormal);
        if rng.random::<f32>() < 0.004 {
            s *= 3.0;
        }
        if !valid[i] {
            continue;
        }
        let amp = s * maps.e[i].max(0.0).sqrt();
        let wi = maps.wt[i];
        a0[i] = amp * (1.0 - wi);
        a1[i] = amp * wi;
        let ex = maps.extra.get(i).copied().unwrap_or(0.0);
        if ex > 0.0 {
            let s2: f32 = rng.sample(StandardNormal);
            a0[i] += s2 * ex.sqrt();
        }
    }
    // Point-spread function: lateral Gaussian (depth dependent), axial modulated Gaussian.
    let kernels: Vec<Vec<f32>> = (0..h)
        .map(|y| {
            let (px, py) = grid.phys(w / 2, y);
            let d = if scene.sector() {
                scene.depth(px, py)
            } else {
                py
            };
            let focus = 1.0 + 0.8 * ((d - ph.focus) / 0.6).powi(2);
            gaussian_kernel(ph.sigma_lat * focus.min(1.8) * (1.0 + ph.lat_growth * d))
        })
        .collect();
    let b0 = lateral_conv(&a0, w, &kernels);
    let b1 = lateral_conv(&a1, w, &kernels);
    let (i0, q0) = axial_iq(&b0, w, h, ph);
    let (i1, q1) = axial_iq(&b1, w, h, ph);
    // Depth attenuation with partial time-gain compensation.
    let att: Vec<f32> = (0..n)
        .map(|i| {
            if !valid[i] {
                return 0.0;
            }
            let d = depth[i];
            let (ra, rf, rp) = ph.ripple;
            (-ph.alpha * (1.0 - ph.tgc) * d).exp() * (1.0 + ra * (2.0 * PI * rf * d + rp).sin())
        })
        .collect();
    let env = |i: usize, g: f32| {
        let (re, im) = (i0[i] + g * i1[i], q0[i] + g * q1[i]);
        att[i] * (re * re + im * im).sqrt()
    };
    // Reference level: high percentile of the background envelope.
    let mut bg: Vec<f32> = (0..n)
        .filter(|&i| valid[i] && maps.wt[i] < 0.5)
        .map(|i| env(i, 0.0))
        .collect();
    let ln_ref = if bg.is_empty() {
        0.0
    } else {
        let k = bg.len() / 2;
        let (_, v, _) = bg.select_nth_unstable_by(k, f32::total_cmp);
        (*v * 10f32.powf(ph.headroom_db / 20.0)).max(1e-12).ln()
    };
    // Calibrate the target amplitude gain so that the CNR hits the requested value.
    let hyper = scene.hyper();
    let mut g = if hyper { 2.0f32 } else { 0.3 };
    if let Some((t, r)) = cnr_regions(&label, w, h, 1, band.0, band.1) {
        let idx: Vec<usize> = t.iter().chain(&r).copied().collect();
        let nt = t.len();
        let local_t: Vec<usize> = (0..nt).collect();
        let local_r: Vec<usize> = (nt..idx.len()).collect();
        // Pixels whose gray value is needed by the 3x3 post-filter of the target and ring.
        let mut needed = vec![false; n];
        for &i in &idx {
            let (x, y) = (i % w, i / w);
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    needed[yy * w + xx] = true;
                }
            }
        }
        let need: Vec<usize> = (0..n).filter(|&i| needed[i] && valid[i]).collect();
        let mut buf = vec![0f32; n];
        let mut signed = |lg: f32| {
            let gg = lg.exp();
            for &i in &need {
                buf[i] = ph.gray(env(i, gg), ln_ref);
            }
            let vals: Vec<f32> = idx
                .iter()
                .map(|&i| lerp(buf[i], smooth3(&buf, w, h, i), ph.smooth))
                .collect();
            let c = cnr_of(&vals, &local_t, &local_r);
            if hyper {
                c
            } else {
                -c
            }
        };
        let (mut lo, mut hi) = if hyper { (0f32, 4f32) } else { (-7f32, 0f32) };
        // f(lg) = signed CNR; increasing in lg for hyper, decreasing for hypo.
        let target = cnr_target;
        let increasing = hyper;
        let f_lo = signed(lo);
        let f_hi = signed(hi);
        let lg = if increasing && target <= f_lo || !increasing && target >= f_lo {
            lo
        } else if increasing && target >= f_hi || !increasing && target <= f_hi {
            hi
        } else {
            for _ in 0..14 {
                let mid = 0.5 * (lo + hi);
                let f = signed(mid);
                if (f < target) == increasing {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            0.5 * (lo + hi)
        };
        g = lg.exp();
    }
    let raw: Vec<f32> = (0..n)
        .map(|i| {
            if valid[i] {
                ph.gray(env(i, g), ln_ref)
            } else {
                0.0
            }
        })
        .collect();
    (0..n)
        .map(|i| lerp(raw[i], smooth3(&raw, w, h, i), ph.smooth))
        .collect()
}

/// 3x3 binomial smoothing at pixel `i` (edge-clamped): a mild scanner speckle-reduction filter.
fn smooth3(buf: &[f32], w: usize, h: usize, i: usize) -> f32 {
    const K: [f32; 3] = [0.25, 0.5, 0.25];
    let (x, y) = (i % w, i / w);
    let xs = [x.saturating_sub(1), x, (x + 1).min(w - 1)];
    let ys = [y.saturating_sub(1), y, (y + 1).min(h - 1)];
    let mut acc = 0.0;
    for (ky, &yy) in K.iter().zip(&ys) {
        for (kx, &xx) in K.iter().zip(&xs) {
            acc += ky * kx * buf[yy * w + xx];
        }
    }
    acc
}

fn resize_bilinear(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
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

// ---------------------------------------------------------------------------------------------
// Overlays: caliper crosses, blocky text, depth ticks
// ---------------------------------------------------------------------------------------------

fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        ':' => [0, 2, 0, 2, 0],
        '-' => [0, 0, 7, 0, 0],
        '/' => [1, 1, 2, 4, 4],
        ' ' => [0, 0, 0, 0, 0],
        'c' => [0, 0, 7, 4, 7],
        'd' => [1, 1, 7, 5, 7],
        'm' => [0, 0, 7, 7, 5],
        'z' => [0, 7, 1, 2, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [7, 4, 4, 4, 7],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [7, 4, 5, 5, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'V' => [5, 5, 5, 5, 2],
        'Y' => [5, 5, 2, 2, 2],
        _ => return None,
    })
}

struct Canvas<'a> {
    img: &'a mut GrayImage,
    mask: Vec<bool>,
}

impl Canvas<'_> {
    fn put(&mut self, x: i64, y: i64, v: u8) {
        let (w, h) = (self.img.width() as i64, self.img.height() as i64);
        if x >= 0 && y >= 0 && x < w && y < h {
            self.img.put_pixel(x as u32, y as u32, Luma([v]));
            self.mask[(y * w + x) as usize] = true;
        }
    }

    fn text(&mut self, s: &str, x: i64, y: i64, scale: i64, v: u8) {
        for (ci, c) in s.chars().enumerate() {
            let Some(g) = glyph(c) else { continue };
            let ox = x + ci as i64 * 4 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.put(ox + col * scale + dx, y + row as i64 * scale + dy, v);
                            }
                        }
                    }
                }
            }
        }
    }

    fn cross(&mut self, x: i64, y: i64, arm: i64, v: u8) {
        for d in -arm..=arm {
            self.put(x + d, y, v);
            self.put(x, y + d, v);
        }
    }
}

fn overlay_strings(kind: Kind, rng: &mut StdRng) -> Vec<String> {
    let mut pool: Vec<String> = match kind {
        Kind::Breast => vec![
            ["LT BREAST", "RT BREAST", "L BREAST", "R 10:30", "L 2:00"][rng.random_range(0..5)]
                .to_string(),
            format!("{:.1}cm", uni(rng, 2.5, 5.5)),
            format!("{}MHz", [12, 14, 15, 18][rng.random_range(0..4)]),
        ],
        Kind::Thyroid => vec![
            ["THY R", "THY L", "RT LOBE", "LT LOBE", "TRANS", "SAG"][rng.random_range(0..6)]
                .to_string(),
            format!("{:.1}cm", uni(rng, 3.0, 5.0)),
            format!("G{}", rng.random_range(30..80)),
        ],
        Kind::Echo => vec![
            ["A4C", "A2C", "APICAL"][rng.random_range(0..3)].to_string(),
            format!("{}cm", rng.random_range(14..19)),
            format!("HR {}", rng.random_range(55..110)),
        ],
    };
    pool.push(format!("{}dB", rng.random_range(50..66)));
    let k = rng.random_range(1..=3usize).min(pool.len());
    let start = rng.random_range(0..pool.len());
    (0..k)
        .map(|j| pool[(start + j) % pool.len()].clone())
        .collect()
}

fn draw_overlays(
    img: &mut GrayImage,
    label: &GrayImage,
    kind: Kind,
    rng: &mut StdRng,
) -> Vec<bool> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut cv = Canvas {
        img,
        mask: vec![false; (w * h) as usize],
    };
    // Caliper crosses on the target extent (label 1).
    if rng.random_bool(0.75) {
        let pts: Vec<(i64, i64)> = label
            .enumerate_pixels()
            .filter(|(_, _, p)| p[0] == 1)
            .map(|(x, y, _)| (x as i64, y as i64))
            .collect();
        if !pts.is_empty() {
            let n = pts.len() as i64;
            let cx = pts.iter().map(|p| p.0).sum::<i64>() / n;
            let cy = pts.iter().map(|p| p.1).sum::<i64>() / n;
            let v = rng.random_range(200..=255u8);
            let arm = rng.random_range(2..=4i64);
            let horizontal = rng.random_bool(0.6);
            let line: Vec<i64> = pts
                .iter()
                .filter(|p| if horizontal { p.1 == cy } else { p.0 == cx })
                .map(|p| if horizontal { p.0 } else { p.1 })
                .collect();
            if let (Some(&a), Some(&b)) = (line.iter().min(), line.iter().max()) {
                let (p, q) = if horizontal {
                    ((a - 1, cy), (b + 1, cy))
                } else {
                    ((cx, a - 1), (cx, b + 1))
                };
                cv.cross(p.0, p.1, arm, v);
                cv.cross(q.0, q.1, arm, v);
                if rng.random_bool(0.4) {
                    let steps = ((q.0 - p.0).abs() + (q.1 - p.1).abs()) / 5;
                    for s in 1..steps {
                        let x = p.0 + (q.0 - p.0) * s / steps;
                        let y = p.1 + (q.1 - p.1) * s / steps;
                        cv.put(x, y, v);
                    }
                }
            }
        }
    }
    // Blocky text in a corner.
    if rng.random_bool(0.85) {
        let lines = overlay_strings(kind, rng);
        let scale = if rng.random_bool(0.3) { 2 } else { 1 };
        let v = rng.random_range(170..=255u8);
        let corner = rng.random_range(0..4);
        let lh = 7 * scale;
        let total_h = lh * lines.len() as i64;
        let margin = rng.random_range(2..6i64);
        for (li, s) in lines.iter().enumerate() {
            let tw = s.chars().count() as i64 * 4 * scale;
            let x = if corner % 2 == 0 {
                margin
            } else {
                w - margin - tw
            };
            let y0 = if corner < 2 {
                margin
            } else {
                h - margin - total_h
            };
            cv.text(s, x, y0 + li as i64 * lh, scale, v);
        }
    }
    // Depth scale ticks along the right edge.
    if rng.random_bool(0.35) {
        let step = (h / rng.random_range(4..9i64)).max(8);
        let v = rng.random_range(150..=230u8);
        let mut y = step;
        while y < h - 2 {
            for d in 0..3 {
                cv.put(w - 2 - d, y, v);
            }
            cv.put(w - 2, y + step / 2, v);
            y += step;
        }
    }
    cv.mask
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

/// A generated image with its label and generation bookkeeping.
#[derive(Debug, Clone)]
pub struct SynthSample {
    /// 8-bit B-mode image (overlays included).
    pub image: GrayImage,
    /// Label image, pixel = class id.
    pub label: GrayImage,
    /// Row-major mask of the imaged field (false outside the echo sector fan).
    pub valid: Vec<bool>,
    /// Row-major mask of the pixels painted by overlays.
    pub overlay: Vec<bool>,
    /// CNR drawn from the [`Difficulty`] range for this image.
    pub cnr_target: f64,
}

fn sample_size(kind: Kind, rng: &mut StdRng) -> (usize, usize) {
    match kind {
        Kind::Breast | Kind::Thyroid => (rng.random_range(240..=320), rng.random_range(224..=288)),
        Kind::Echo => {
            let h = rng.random_range(224..=272usize);
            let wmin = ((h as f32 * 1.15).ceil() as usize).min(320);
            (rng.random_range(wmin..=320), h)
        }
    }
}

/// Generates one sample; `overlay` forces overlays on/off (`None`: drawn on ~40% of images).
pub fn generate_sample(
    kind: Kind,
    seed: u64,
    difficulty: &Difficulty,
    overlay: Option<bool>,
) -> SynthSample {
    let mut rng = StdRng::seed_from_u64(seed);
    let (ow, oh) = sample_size(kind, &mut rng);
    let aspect = ow as f32 / oh as f32;
    let s = (WORK_MAX / ow.max(oh) as f32).min(1.0);
    let (ww, wh) = (
        ((ow as f32 * s).round() as usize).max(8),
        ((oh as f32 * s).round() as usize).max(8),
    );
    let scene: Box<dyn Scene> = match kind {
        Kind::Breast => Box::new(BreastScene::sample(&mut rng, aspect)),
        Kind::Thyroid => Box::new(ThyroidScene::sample(&mut rng, aspect)),
        Kind::Echo => Box::new(EchoScene::sample(&mut rng, aspect)),
    };
    let ph = Physics::sample(&mut rng, scene.sector());
    let cnr_target = difficulty.sample(&mut rng);
    let work = Grid {
        w: ww,
        h: wh,
        aspect,
    };
    let rendered = render(
        scene.as_ref(),
        &work,
        &ph,
        cnr_target,
        &mut rng,
        (BAND_IN * s, BAND_OUT * s),
    );
    let out = Grid {
        w: ow,
        h: oh,
        aspect,
    };
    let up = resize_bilinear(&rendered, ww, wh, ow, oh);
    let mut image = GrayImage::new(ow as u32, oh as u32);
    let mut label = GrayImage::new(ow as u32, oh as u32);
    let mut valid = vec![true; ow * oh];
    for y in 0..oh {
        for x in 0..ow {
            let i = y * ow + x;
            let (px, py) = out.phys(x, y);
            valid[i] = scene.inside(px, py);
            if valid[i] {
                image.put_pixel(
                    x as u32,
                    y as u32,
                    Luma([up[i].round().clamp(0.0, 255.0) as u8]),
                );
                label.put_pixel(x as u32, y as u32, Luma([scene.label_at(px, py)]));
            }
        }
    }
    let mut orng = StdRng::seed_from_u64(splitmix64(seed ^ 0x6F76_6572_6C61_7973));
    let draw = overlay.unwrap_or_else(|| orng.random_bool(OVERLAY_PROB));
    let overlay_mask = if draw {
        draw_overlays(&mut image, &label, kind, &mut orng)
    } else {
        vec![false; ow * oh]
    };
    SynthSample {
        image,
        label,
        valid,
        overlay: overlay_mask,
        cnr_target,
    }
}

// ---------------------------------------------------------------------------------------------
// Dataset writing
// ---------------------------------------------------------------------------------------------

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to a temporary file in the destination folder, then renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    if let Err(source) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(SynthError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

fn write_png(path: &Path, img: &GrayImage) -> Result<(), SynthError> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png)
        .map_err(|source| SynthError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    write_atomic(path, &buf.into_inner())
}

/// Split-file lines for one image.
///
/// Train/val lines are `<class id>/<dataset>/<name>`, one per foreground class. Test lines are
/// `<dataset>/<name>` for 2-class datasets (as in the SAMUS reference lists) but
/// `<class id>/<dataset>/<name>` (one per class) for multi-class datasets such as the echo set,
/// so that the evaluated class is explicit.
fn split_lines(kind: Kind, name: &str, test: bool) -> Vec<String> {
    let ds = kind.dataset_name();
    if test && kind.num_classes() == 2 {
        return vec![format!("{ds}/{name}")];
    }
    (1..kind.num_classes())
        .map(|c| format!("{c}/{ds}/{name}"))
        .collect()
}

/// Writes `per_dataset` images of each kind at default difficulty in the US30K layout.
///
/// Layout: `MainPatient/{class.json, train.txt, val.txt, test.txt}`, per-dataset
/// `MainPatient/{train,val,test}-<dataset>.txt`, and `<dataset>/{img,label}/<name>.png`.
/// Line formats: train/val lines are
/// `<class id>/<dataset>/<name>`; test lines are `<dataset>/<name>` for the 2-class datasets and
/// `<class id>/<dataset>/<name>` for the 4-class echo dataset. Images are split 70/15/15 in
/// index order (see [`split_counts`]), generated in parallel, and every file is written
/// atomically (temporary file in the same folder, then rename).
pub fn write_dataset(
    out: &Path,
    per_dataset: usize,
    seed: u64,
) -> Result<DatasetSummary, SynthError> {
    write_dataset_with(out, per_dataset, seed, &Difficulty::default())
}

/// Like [`write_dataset`] with an explicit [`Difficulty`].
pub fn write_dataset_with(
    out: &Path,
    per_dataset: usize,
    seed: u64,
    difficulty: &Difficulty,
) -> Result<DatasetSummary, SynthError> {
    let main = out.join("MainPatient");
    std::fs::create_dir_all(&main).map_err(io_err(&main))?;
    for kind in Kind::ALL {
        for sub in ["img", "label"] {
            let d = out.join(kind.dataset_name()).join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
    }
    let class_path = main.join("class.json");
    let mut classes = serde_json::Map::new();
    for kind in Kind::ALL {
        classes.insert(kind.dataset_name().to_string(), kind.num_classes().into());
    }
    let json =
        serde_json::to_string_pretty(&serde_json::Value::Object(classes)).map_err(|source| {
            SynthError::Json {
                path: class_path.clone(),
                source,
            }
        })?;
    write_atomic(&class_path, json.as_bytes())?;

    let jobs: Vec<(Kind, usize)> = Kind::ALL
        .iter()
        .flat_map(|&k| (0..per_dataset).map(move |i| (k, i)))
        .collect();
    jobs.par_iter().try_for_each(|&(kind, i)| {
        let (img, lab) = generate(kind, image_seed(seed, kind, i), difficulty);
        let name = format!("{}.png", image_name(kind, i));
        let ds = out.join(kind.dataset_name());
        write_png(&ds.join("img").join(&name), &img)?;
        write_png(&ds.join("label").join(&name), &lab)
    })?;

    let counts = split_counts(per_dataset);
    let mut summary = DatasetSummary {
        root: out.to_path_buf(),
        datasets: BTreeMap::new(),
    };
    let mut all: [Vec<String>; 3] = Default::default();
    for kind in Kind::ALL {
        let ranges = [
            0..counts.train,
            counts.train..counts.train + counts.val,
            counts.train + counts.val..per_dataset,
        ];
        for (si, (split, range)) in ["train", "val", "test"].iter().zip(ranges).enumerate() {
            let lines: Vec<String> = range
                .flat_map(|i| split_lines(kind, &image_name(kind, i), si == 2))
                .collect();
            let path = main.join(format!("{split}-{}.txt", kind.dataset_name()));
            write_atomic(&path, join_lines(&lines).as_bytes())?;
            all[si].extend(lines);
        }
        summary
            .datasets
            .insert(kind.dataset_name().to_string(), counts);
    }
    for (split, lines) in ["train", "val", "test"].iter().zip(&all) {
        write_atomic(
            &main.join(format!("{split}.txt")),
            join_lines(lines).as_bytes(),
        )?;
    }
    Ok(summary)
}

fn join_lines(lines: &[String]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Difficulty {
        Difficulty::default()
    }

    #[test]
    fn deterministic_images() {
        for kind in Kind::ALL {
            for seed in [1u64, 99] {
                let a = generate(kind, seed, &defaults());
                let b = generate(kind, seed, &defaults());
                assert_eq!(a.0.as_raw(), b.0.as_raw());
                assert_eq!(a.1.as_raw(), b.1.as_raw());
                assert_eq!(a.0.dimensions(), a.1.dimensions());
            }
            let c = generate(kind, 2, &defaults());
            let d = generate(kind, 3, &defaults());
            assert_ne!(c.0.as_raw(), d.0.as_raw());
        }
    }

    #[test]
    fn labels_valid_and_nonempty() {
        for kind in Kind::ALL {
            for seed in 0..16u64 {
                let (img, lab) = generate(kind, image_seed(7, kind, seed as usize), &defaults());
                assert_eq!(img.dimensions(), lab.dimensions());
                let (w, h) = img.dimensions();
                assert!((224..=320).contains(&w) && (224..=320).contains(&h));
                let mut counts = [0usize; 256];
                for p in lab.as_raw() {
                    counts[*p as usize] += 1;
                }
                for (c, &n) in counts.iter().enumerate() {
                    if c >= kind.num_classes() as usize {
                        assert_eq!(n, 0, "{kind:?} seed {seed}: invalid class {c}");
                    } else {
                        assert!(n > 0, "{kind:?} seed {seed}: class {c} empty");
                    }
                }
                // Speckle, not flat shapes.
                let mean = img.as_raw().iter().map(|&p| p as f64).sum::<f64>() / (w * h) as f64;
                assert!(mean > 15.0 && mean < 220.0, "{kind:?} mean {mean}");
            }
        }
    }

    #[test]
    fn echo_fan_black_outside() {
        for seed in 0..12u64 {
            let clean = generate_sample(Kind::Echo, seed, &defaults(), Some(false));
            let (w, _) = clean.image.dimensions();
            assert!(!clean.valid[0] && !clean.valid[w as usize - 1]);
            let inside = clean.valid.iter().filter(|&&v| v).count();
            assert!(inside > clean.valid.len() / 3);
            for (i, (&p, &l)) in clean
                .image
                .as_raw()
                .iter()
                .zip(clean.label.as_raw())
                .enumerate()
            {
                if !clean.valid[i] {
                    assert_eq!(p, 0);
                    assert_eq!(l, 0);
                }
            }
            let over = generate_sample(Kind::Echo, seed, &defaults(), Some(true));
            for (i, &p) in over.image.as_raw().iter().enumerate() {
                if !over.valid[i] && !over.overlay[i] {
                    assert_eq!(p, 0);
                }
            }
        }
    }

    #[test]
    fn overlays_never_touch_label() {
        for kind in Kind::ALL {
            for seed in 0..6u64 {
                let a = generate_sample(kind, seed, &defaults(), Some(false));
                let b = generate_sample(kind, seed, &defaults(), Some(true));
                assert_eq!(a.label.as_raw(), b.label.as_raw());
                assert!(a.overlay.iter().all(|&m| !m));
                for (i, (&pa, &pb)) in a.image.as_raw().iter().zip(b.image.as_raw()).enumerate() {
                    if !b.overlay[i] {
                        assert_eq!(pa, pb);
                    }
                }
            }
        }
        // Some overlays are drawn by default, but not on every image.
        let drawn = (0..40u64)
            .filter(|&s| {
                generate_sample(Kind::Breast, s, &defaults(), None)
                    .overlay
                    .iter()
                    .any(|&m| m)
            })
            .count();
        assert!((5..=30).contains(&drawn), "{drawn} of 40 with overlays");
    }

    #[test]
    fn otsu_dice_below_half_on_defaults() {
        for kind in Kind::ALL {
            let n = 30;
            let mean = (0..n)
                .map(|i| {
                    let (img, lab) = generate(kind, image_seed(11, kind, i), &defaults());
                    otsu_dice(&img, &lab, 1)
                })
                .sum::<f64>()
                / n as f64;
            eprintln!("{kind:?}: mean best-Otsu Dice {mean:.3}");
            assert!(mean < 0.5, "{kind:?}: {mean}");
        }
    }

    #[test]
    fn cnr_within_requested_range() {
        for (lo, hi) in [(0.8, 2.0), (0.5, 0.9), (1.6, 2.2)] {
            let diff = Difficulty {
                cnr_min: lo,
                cnr_max: hi,
            };
            for kind in Kind::ALL {
                let n = 12;
                let mut inside = 0;
                let mut sum = 0.0;
                for i in 0..n {
                    let s = generate_sample(kind, image_seed(5, kind, i), &diff, Some(false));
                    let c = measure_cnr(&s.image, &s.label, 1).unwrap_or(f64::NAN);
                    sum += c;
                    if c >= lo - 0.25 && c <= hi + 0.25 {
                        inside += 1;
                    }
                    assert!(
                        (s.cnr_target - c).abs() < 0.6,
                        "{kind:?} target {} got {c}",
                        s.cnr_target
                    );
                }
                let mean = sum / n as f64;
                eprintln!("{kind:?} [{lo},{hi}]: mean CNR {mean:.2}, {inside}/{n} in range");
                assert!(inside * 10 >= n * 8, "{kind:?} [{lo},{hi}]: {inside}/{n}");
                assert!(
                    mean > lo - 0.15 && mean < hi + 0.15,
                    "{kind:?}: mean {mean}"
                );
            }
        }
    }

    #[test]
    fn written_layout_is_complete() -> Result<(), SynthError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tempdir")))?;
        let root = dir.path();
        let summary = write_dataset(root, 4, 3)?;
        assert_eq!(summary.total_images(), 12);
        let main = root.join("MainPatient");
        let class: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(main.join("class.json")).map_err(io_err(&main))?,
        )
        .map_err(|source| SynthError::Json {
            path: main.clone(),
            source,
        })?;
        for kind in Kind::ALL {
            assert_eq!(class[kind.dataset_name()], u64::from(kind.num_classes()));
        }
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(io_err(&p));
        let mut seen = std::collections::BTreeSet::new();
        for split in ["train", "val", "test"] {
            let global = read(main.join(format!("{split}.txt")))?;
            let mut per = String::new();
            for kind in Kind::ALL {
                let text = read(main.join(format!("{split}-{}.txt", kind.dataset_name())))?;
                let c = summary.datasets[kind.dataset_name()];
                let n = match split {
                    "train" => c.train,
                    "val" => c.val,
                    _ => c.test,
                };
                assert!(n >= 1);
                let per_img = if split == "test" && kind.num_classes() == 2 {
                    1
                } else {
                    kind.num_classes() as usize - 1
                };
                assert_eq!(text.lines().count(), n * per_img);
                per.push_str(&text);
            }
            assert_eq!(global, per);
            for line in global.lines() {
                let parts: Vec<&str> = line.split('/').collect();
                let (ds, name) = match parts.len() {
                    3 => {
                        let c: u8 = parts[0].parse().unwrap_or(0);
                        assert!(c >= 1);
                        (parts[1], parts[2])
                    }
                    2 => {
                        assert_eq!(split, "test");
                        (parts[0], parts[1])
                    }
                    _ => panic!("bad line {line}"),
                };
                let img = image::open(root.join(ds).join("img").join(format!("{name}.png")))
                    .map_err(|source| SynthError::Encode {
                        path: root.to_path_buf(),
                        source,
                    })?;
                let lab = image::open(root.join(ds).join("label").join(format!("{name}.png")))
                    .map_err(|source| SynthError::Encode {
                        path: root.to_path_buf(),
                        source,
                    })?;
                assert_eq!(img.width(), lab.width());
                assert_eq!(img.height(), lab.height());
                assert!(matches!(img, image::DynamicImage::ImageLuma8(_)));
                seen.insert((split, name.to_string()));
            }
        }
        let names: std::collections::BTreeSet<&String> = seen.iter().map(|(_, n)| n).collect();
        assert_eq!(names.len(), 12, "every image appears in exactly one split");
        assert_eq!(seen.len(), 12);
        // No temporary files left behind.
        for kind in Kind::ALL {
            for sub in ["img", "label"] {
                let d = root.join(kind.dataset_name()).join(sub);
                for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
                    let entry = entry.map_err(io_err(&d))?;
                    assert!(!entry.file_name().to_string_lossy().starts_with('.'));
                }
            }
        }
        // Same seed -> identical bytes.
        let dir2 = tempfile::tempdir().map_err(io_err(Path::new("tempdir")))?;
        write_dataset(dir2.path(), 4, 3)?;
        for kind in Kind::ALL {
            for i in 0..4 {
                for sub in ["img", "label"] {
                    let rel = Path::new(kind.dataset_name())
                        .join(sub)
                        .join(format!("{}.png", image_name(kind, i)));
                    let a = std::fs::read(root.join(&rel)).map_err(io_err(&rel))?;
                    let b = std::fs::read(dir2.path().join(&rel)).map_err(io_err(&rel))?;
                    assert_eq!(a, b);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn otsu_on_bimodal_image() {
        let mut img = GrayImage::new(20, 10);
        let mut lab = GrayImage::new(20, 10);
        for (x, y, p) in img.enumerate_pixels_mut() {
            let dark = x < 5;
            p[0] = if dark { 20 + (y as u8) } else { 200 };
            lab.put_pixel(x, y, Luma([u8::from(dark)]));
        }
        let t = otsu_threshold(&img);
        assert!(t > 29 && t <= 200, "t = {t}");
        assert!((otsu_dice(&img, &lab, 1) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn glyphs_cover_overlay_strings() {
        let mut rng = StdRng::seed_from_u64(1);
        for kind in Kind::ALL {
            for _ in 0..50 {
                for s in overlay_strings(kind, &mut rng) {
                    assert!(s.chars().all(|c| glyph(c).is_some()), "{s}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn split_counts_consistent(n in 0usize..500) {
            let c = split_counts(n);
            proptest::prop_assert_eq!(c.total(), n);
            if n >= 3 {
                proptest::prop_assert!(c.train >= 1 && c.val >= 1 && c.test >= 1);
                proptest::prop_assert!(c.train >= c.val && c.train >= c.test);
            }
        }

        #[test]
        fn image_seeds_differ(seed in proptest::prelude::any::<u64>(), i in 0usize..10_000) {
            proptest::prop_assert_ne!(image_seed(seed, Kind::Breast, i), image_seed(seed, Kind::Breast, i + 1));
            proptest::prop_assert_ne!(image_seed(seed, Kind::Breast, i), image_seed(seed, Kind::Echo, i));
        }
    }
}
