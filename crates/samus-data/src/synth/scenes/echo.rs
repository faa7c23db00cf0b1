//! An apical 4/2-chamber echocardiography view in a sector fan: the left ventricle
//! (cavity and myocardium), the left atrium, sometimes the right heart, and the mitral
//! leaflets.

use std::f32::consts::PI;

use rand::rngs::StdRng;
use rand::Rng;

use super::{segment_distance, Grid, Maps, Scene, Star};
use crate::synth::noise::{lerp, smooth_noise, smoothstep, soft_band, soft_inside, uni};
use crate::synth::{ECHO_LA, ECHO_LV, ECHO_MYO};

/// An apical echo scene: sector geometry, chambers, leaflets and echogenicities.
pub(super) struct EchoScene {
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
    /// Draws a random scene for an image of width / height `aspect`.
    pub(super) fn sample(rng: &mut StdRng, aspect: f32) -> Self {
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
