//! A thyroid nodule seen by a linear probe: the gland under skin, subcutaneous tissue and
//! strap muscles, with the carotid, sometimes the trachea, and a nodule (halo, cystic
//! parts, calcifications) inside the gland.

use std::f32::consts::PI;

use rand::rngs::StdRng;
use rand::Rng;

use super::{striation, Grid, Maps, Scene, Star};
use crate::synth::noise::{
    lerp, random_waves, smooth_noise, smoothstep, soft_band, soft_inside, uni, wave_y, Wave,
};

/// A thyroid scene: layers, gland, vessels, the nodule and its echogenicities.
pub(super) struct ThyroidScene {
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
    /// Draws a random scene for an image of width / height `aspect`.
    pub(super) fn sample(rng: &mut StdRng, aspect: f32) -> Self {
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
