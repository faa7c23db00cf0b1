//! Measurements on generated images: the Otsu threshold and the best Dice a global
//! threshold reaches, and the contrast-to-noise ratio of a target against the band of
//! pixels around it (found with a chamfer distance transform).

use image::GrayImage;

use super::{BAND_IN, BAND_OUT};

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

/// Chamfer distance (steps 1 and sqrt 2, two passes) of every pixel to `label == class_id`.
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

/// Row-major indices of a target and of the ring of surroundings around it.
pub(super) type Regions = (Vec<usize>, Vec<usize>);

/// The target `label == class_id` and the ring of its surroundings between `d_in` and
/// `d_out` pixels away (see [`measure_cnr`]); `None` when either has fewer than 8 pixels.
pub(super) fn cnr_regions(
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
pub(super) fn cnr_of(vals: &[f32], target: &[usize], ring: &[usize]) -> f64 {
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
