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
//!
//! The files of this module:
//!
//! - `mod.rs` (here): the public API: [`Kind`], [`Difficulty`], [`split_counts`],
//!   [`image_seed`], [`image_name`] and the entry points [`generate`],
//!   [`generate_with_overlay`] and [`generate_sample`];
//! - `scenes/`: the analytic scenes (echogenicity maps and labels): `mod.rs` holds the
//!   rendering grid, the `Scene` trait and the star-shaped regions they are built from,
//!   `breast.rs`, `thyroid.rs` and `echo.rs` one scene each;
//! - `physics.rs`: the acoustic rendering (scatterers, point-spread function, envelope,
//!   attenuation, log compression) and the contrast calibration;
//! - `overlays.rs`: scanner overlays (caliper crosses, blocky text, depth ticks);
//! - `measurements.rs`: [`otsu_threshold`], [`otsu_dice`], [`measure_cnr`] and the
//!   chamfer distance they use;
//! - `noise.rs`: small numeric helpers (smooth noise, box blurs, waves, interpolation);
//! - `writer.rs`: [`write_dataset`] and [`write_dataset_with`], which write the US30K
//!   layout through [`samus_core::atomic_write`];
//! - `tests.rs`: the unit tests.

pub mod cine;
mod measurements;
mod noise;
mod overlays;
mod physics;
mod scenes;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;

use image::{GrayImage, Luma};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use measurements::{measure_cnr, otsu_dice, otsu_threshold};
pub use writer::{write_dataset, write_dataset_with};

use noise::resize_bilinear;
use overlays::draw_overlays;
use physics::{render, Physics};
use scenes::Grid;

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
/// Most images per kind [`write_dataset`] writes (three kinds, so three times as many
/// files in all); a larger count is an error rather than an allocation failure.
pub const MAX_PER_DATASET: usize = 100_000;
/// Fewest images per kind for which every split (train, val, test) gets one
/// ([`split_counts`]).
pub const MIN_PER_DATASET_ALL_SPLITS: usize = 3;
/// Probability that an image gets scanner-like overlays.
const OVERLAY_PROB: f64 = 0.4;

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

/// The SplitMix64 step: a well-mixed 64-bit hash of `z`.
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

/// Output size `(width, height)` of an image of `kind`.
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
    let scene = scenes::sample(kind, &mut rng, aspect);
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
