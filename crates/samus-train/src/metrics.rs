//! Segmentation metrics of SPEC section 7, per image on binary masks.
//!
//! Dice, IoU, accuracy, sensitivity and specificity carry a smoothing term of 1e-5
//! as in the reference. The Hausdorff distance (HD) and its 95th percentile (HD95) are
//! spatial: between the boundaries of the two masks (a mask minus its erosion by the
//! 4-neighbour cross, pixels outside the image counting as background), in pixels;
//! they are undefined (`None`) when either mask is empty.

use serde::Serialize;

/// Smoothing term of the overlap metrics.
pub const SMOOTH: f64 = 1e-5;

/// The metrics of one prediction against its ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MaskMetrics {
    /// `(2 TP + s) / (2 TP + FP + FN + s)`.
    pub dice: f64,
    /// `(TP + s) / (TP + FP + FN + s)`.
    pub iou: f64,
    /// `(TP + TN + s) / (N + s)`.
    pub acc: f64,
    /// Sensitivity `(TP + s) / (TP + FN + s)`.
    pub se: f64,
    /// Specificity `(TN + s) / (TN + FP + s)`.
    pub sp: f64,
    /// Hausdorff distance between the boundaries, pixels.
    pub hd: Option<f64>,
    /// 95th percentile of the boundary distances of both directions pooled, pixels.
    pub hd95: Option<f64>,
}

/// The boundary pixels `(x, y)` of a mask: set pixels with an unset 4-neighbour (or on
/// the image edge).
pub fn boundary(mask: &[bool], width: usize, height: usize) -> Vec<(i64, i64)> {
    let at = |x: i64, y: i64| {
        x >= 0
            && y >= 0
            && (x as usize) < width
            && (y as usize) < height
            && mask[y as usize * width + x as usize]
    };
    let mut out = Vec::new();
    for y in 0..height as i64 {
        for x in 0..width as i64 {
            if at(x, y) && !(at(x - 1, y) && at(x + 1, y) && at(x, y - 1) && at(x, y + 1)) {
                out.push((x, y));
            }
        }
    }
    out
}

/// For every point of `from`, the Euclidean distance to the nearest point of `to`.
fn nearest_distances(from: &[(i64, i64)], to: &[(i64, i64)]) -> Vec<f64> {
    from.iter()
        .map(|&(x, y)| {
            to.iter()
                .map(|&(u, v)| (x - u) * (x - u) + (y - v) * (y - v))
                .min()
                .map_or(f64::INFINITY, |d2| (d2 as f64).sqrt())
        })
        .collect()
}

/// The `q`-th percentile (0..=100) with linear interpolation between order statistics
/// (numpy's default).
pub fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = q / 100.0 * (values.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    Some(values[lo] + (values[hi] - values[lo]) * (rank - lo as f64))
}

/// `(HD, HD95)` between the boundaries of two masks; `None` when either is empty.
pub fn hausdorff(pred: &[bool], gt: &[bool], width: usize, height: usize) -> Option<(f64, f64)> {
    let a = boundary(pred, width, height);
    let b = boundary(gt, width, height);
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut pooled = nearest_distances(&a, &b);
    pooled.extend(nearest_distances(&b, &a));
    let hd = pooled.iter().cloned().fold(0.0, f64::max);
    let hd95 = percentile(&mut pooled, 95.0)?;
    Some((hd, hd95))
}

/// All metrics of `pred` against `gt` (row-major binary masks of `width x height`).
pub fn mask_metrics(pred: &[bool], gt: &[bool], width: usize, height: usize) -> MaskMetrics {
    let (mut tp, mut fp, mut fn_, mut tn) = (0f64, 0f64, 0f64, 0f64);
    for (&p, &g) in pred.iter().zip(gt) {
        match (p, g) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            (false, false) => tn += 1.0,
        }
    }
    let distances = hausdorff(pred, gt, width, height);
    MaskMetrics {
        dice: (2.0 * tp + SMOOTH) / (2.0 * tp + fp + fn_ + SMOOTH),
        iou: (tp + SMOOTH) / (tp + fp + fn_ + SMOOTH),
        acc: (tp + tn + SMOOTH) / (tp + tn + fp + fn_ + SMOOTH),
        se: (tp + SMOOTH) / (tp + fn_ + SMOOTH),
        sp: (tn + SMOOTH) / (tn + fp + SMOOTH),
        hd: distances.map(|d| d.0),
        hd95: distances.map(|d| d.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_like_numpy() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1, 2, 3, 4], 95) = 3.85
        assert!((percentile(&mut v, 95.0).unwrap() - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&mut [], 50.0), None);
    }

    #[test]
    fn boundary_of_a_square_is_its_ring() {
        let (w, h) = (6, 5);
        let mask: Vec<bool> = (0..w * h)
            .map(|i| (1..5).contains(&(i % w)) && (1..4).contains(&(i / w)))
            .collect();
        // A 4 x 3 block: 10 ring pixels, 2 interior.
        assert_eq!(boundary(&mask, w, h).len(), 10);
        let full = vec![true; w * h];
        assert_eq!(
            boundary(&full, w, h).len(),
            2 * w + 2 * h - 4,
            "the image edge bounds the mask"
        );
    }
}
