//! Acoustic rendering: a scene's echogenicity maps become random point scatterers,
//! convolved with a depth-dependent point-spread function (lateral Gaussian, axial
//! Gaussian-modulated cosine/sine pair), envelope-detected, attenuated with depth under a
//! partial time-gain compensation and log-compressed to 8 bit. [`render`] also
//! calibrates the amplitude gain of the target so that its contrast-to-noise ratio hits
//! the requested value.

use std::f32::consts::PI;

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;

use super::measurements::{cnr_of, cnr_regions};
use super::noise::{lerp, uni};
use super::scenes::{Grid, Scene};

/// The scanner of one image: pulse, beam, attenuation, gain and gray map.
#[derive(Clone, Debug)]
pub(super) struct Physics {
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
    /// Draws a random scanner; `sector` for the phased-array probe of the echo view.
    pub(super) fn sample(rng: &mut StdRng, sector: bool) -> Self {
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

/// Normalised Gaussian kernel of radius `ceil(3 sigma)` (at least 1).
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

/// `len` values of `row` from `start`.
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

/// Renders `scene` on `grid` to gray values in [0, 255] (row-major), with the target
/// gain calibrated so that the CNR of class 1 against the band `band` (inner, outer
/// radius in grid pixels) is `cnr_target`.
pub(super) fn render(
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
