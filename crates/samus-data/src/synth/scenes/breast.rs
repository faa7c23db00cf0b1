//! A breast lesion seen by a linear probe: skin, subcutaneous fat, glandular tissue and
//! muscle over a benign or malignant lesion, with posterior shadowing or enhancement.

use rand::rngs::StdRng;
use rand::Rng;

use super::{striation, Grid, Maps, Scene, Star};
use crate::synth::noise::{
    blur_rows, lerp, random_waves, smooth_noise, smoothstep, soft_band, soft_inside, uni, wave_y,
    Wave,
};

/// A breast scene: layer depths, lesion shape, margins and echogenicities.
pub(super) struct BreastScene {
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
    /// Draws a random scene for an image of width / height `aspect`.
    pub(super) fn sample(rng: &mut StdRng, aspect: f32) -> Self {
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
