//! Scanner-like overlays drawn on some images: caliper crosses on the target extent,
//! blocky 3x5 text (side, depth, frequency, gain) in a corner and depth-scale ticks.
//! They change image pixels only, never the label.

use image::{GrayImage, Luma};
use rand::rngs::StdRng;
use rand::Rng;

use super::noise::uni;
use super::Kind;

/// The 3x5 bitmap of a character (one row per byte, bit 2 leftmost), if it has one.
pub(super) fn glyph(c: char) -> Option<[u8; 5]> {
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

/// An image being painted, with the mask of the pixels painted so far.
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

/// One to three text lines for an image of `kind` (side, depth, frequency, gain...).
pub(super) fn overlay_strings(kind: Kind, rng: &mut StdRng) -> Vec<String> {
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

/// Draws overlays on `img` (caliper crosses on class 1 of `label`, text, depth ticks)
/// and returns the row-major mask of the pixels painted.
pub(super) fn draw_overlays(
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
