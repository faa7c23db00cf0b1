//! Prompt sampling from a target mask, as SPEC section 5 describes: clicks (random or
//! fixed), boxes (jittered or exact), several positive and negative clicks, and the
//! "class absent" case.
//!
//! Coordinates are integer pixels `(x, y)` of the mask's frame (the 256 frame after the
//! transforms). A mask is "present" where its pixels equal the class id.

use image::GrayImage;
use rand::Rng;

/// A click: pixel `(x, y)` and label (1 foreground, 0 background).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Click {
    /// Column.
    pub x: u32,
    /// Row.
    pub y: u32,
    /// 1 on the target, 0 on the background.
    pub label: i64,
}

/// A box `[x0, y0, x1, y1]` (inclusive pixel extremes), or `[-1, -1, S, S]` when the
/// class is absent.
pub type BoxPrompt = [i64; 4];

/// Relative range of the jittered box size.
pub const BOX_SIZE_JITTER: f64 = 0.05;
/// Largest shift of the jittered box centre, as a fraction of the image side.
pub const BOX_SHIFT_FRACTION: f64 = 0.05;

fn pixels_where(mask: &GrayImage, class_id: u8, equal: bool) -> Vec<(u32, u32)> {
    // Row-major order, as numpy's argwhere.
    mask.enumerate_pixels()
        .filter(|(_, _, p)| (p[0] == class_id) == equal)
        .map(|(x, y, _)| (x, y))
        .collect()
}

/// The pool a click is drawn from, without listing it: the class's pixels with label
/// 1, or, when the class is absent, the background's with label 0. `nth` finds the
/// pool's element `k` in row-major order.
struct ClickPool<'a> {
    mask: &'a GrayImage,
    class_id: u8,
    /// Whether the pool is the class's pixels (label 1) or the background (label 0).
    target: bool,
    len: usize,
}

impl<'a> ClickPool<'a> {
    fn new(mask: &'a GrayImage, class_id: u8) -> Self {
        let on_target = mask.as_raw().iter().filter(|&&v| v == class_id).count();
        let (target, len) = if on_target > 0 {
            (true, on_target)
        } else {
            (false, mask.as_raw().len())
        };
        Self {
            mask,
            class_id,
            target,
            len,
        }
    }

    fn label(&self) -> i64 {
        i64::from(self.target)
    }

    fn nth(&self, k: usize) -> Option<(u32, u32)> {
        let width = self.mask.width() as usize;
        let index = self
            .mask
            .as_raw()
            .iter()
            .enumerate()
            .filter(|&(_, &v)| (v == self.class_id) == self.target)
            .nth(k)?
            .0;
        Some(((index % width) as u32, (index / width) as u32))
    }
}

/// The validation click: the middle element of the row-major list of target pixels
/// (background pixels, label 0, when the class is absent). `None` only for an empty
/// mask.
pub fn fixed_click(mask: &GrayImage, class_id: u8) -> Option<Click> {
    let pool = ClickPool::new(mask, class_id);
    let (x, y) = pool.nth(pool.len / 2)?;
    Some(Click {
        x,
        y,
        label: pool.label(),
    })
}

/// The training click: a uniformly random target pixel (a background pixel with
/// label 0 when the class is absent).
pub fn random_click<R: Rng>(rng: &mut R, mask: &GrayImage, class_id: u8) -> Option<Click> {
    let pool = ClickPool::new(mask, class_id);
    if pool.len == 0 {
        return None;
    }
    let (x, y) = pool.nth(rng.random_range(0..pool.len))?;
    Some(Click {
        x,
        y,
        label: pool.label(),
    })
}

/// `positive` random target clicks (label 1) then `negative` random background clicks
/// (label 0); a side with no pixels contributes none.
pub fn positive_negative_clicks<R: Rng>(
    rng: &mut R,
    mask: &GrayImage,
    class_id: u8,
    positive: usize,
    negative: usize,
) -> Vec<Click> {
    let mut clicks = Vec::with_capacity(positive + negative);
    for (equal, count, label) in [(true, positive, 1), (false, negative, 0)] {
        let pool = pixels_where(mask, class_id, equal);
        if pool.is_empty() {
            continue;
        }
        for _ in 0..count {
            let (x, y) = pool[rng.random_range(0..pool.len())];
            clicks.push(Click { x, y, label });
        }
    }
    clicks
}

fn absent_box(mask: &GrayImage) -> BoxPrompt {
    [-1, -1, i64::from(mask.width()), i64::from(mask.height())]
}

/// The exact tight box of the target, `[-1, -1, W, H]` when the class is absent.
pub fn fixed_box(mask: &GrayImage, class_id: u8) -> BoxPrompt {
    let width = mask.width() as usize;
    let mut extent: Option<[i64; 4]> = None;
    for (y, row) in mask.as_raw().chunks_exact(width.max(1)).enumerate() {
        let Some(first) = row.iter().position(|&v| v == class_id) else {
            continue;
        };
        let last = row.iter().rposition(|&v| v == class_id).unwrap_or(first);
        let (x0, x1, y) = (first as i64, last as i64, y as i64);
        extent = Some(match extent {
            None => [x0, y, x1, y],
            Some([a0, b0, a1, _]) => [a0.min(x0), b0, a1.max(x1), y],
        });
    }
    extent.unwrap_or_else(|| absent_box(mask))
}

/// The training box: the tight box with its width and height scaled by
/// `U[0.95, 1.05]` and its centre shifted by up to 5% of the image side on each axis,
/// clipped to the image; `[-1, -1, W, H]` when the class is absent.
///
/// (The reference code draws the box size independently of the target; SPEC section 5
/// defines the jitter relative to the target, which is what is implemented.)
pub fn jittered_box<R: Rng>(rng: &mut R, mask: &GrayImage, class_id: u8) -> BoxPrompt {
    let tight = fixed_box(mask, class_id);
    if tight[0] < 0 {
        return tight;
    }
    let (w, h) = (mask.width() as f64, mask.height() as f64);
    let [x0, y0, x1, y1] = tight.map(|v| v as f64);
    let sw = (x1 - x0 + 1.0) * rng.random_range(1.0 - BOX_SIZE_JITTER..=1.0 + BOX_SIZE_JITTER);
    let sh = (y1 - y0 + 1.0) * rng.random_range(1.0 - BOX_SIZE_JITTER..=1.0 + BOX_SIZE_JITTER);
    let cx = (x0 + x1) / 2.0 + rng.random_range(-BOX_SHIFT_FRACTION..=BOX_SHIFT_FRACTION) * w;
    let cy = (y0 + y1) / 2.0 + rng.random_range(-BOX_SHIFT_FRACTION..=BOX_SHIFT_FRACTION) * h;
    let clip = |v: f64, hi: f64| v.round().clamp(0.0, hi - 1.0) as i64;
    [
        clip(cx - (sw - 1.0) / 2.0, w),
        clip(cy - (sh - 1.0) / 2.0, h),
        clip(cx + (sw - 1.0) / 2.0, w),
        clip(cy + (sh - 1.0) / 2.0, h),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn rect_mask(w: u32, h: u32, r: [u32; 4], class: u8) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| {
            Luma([if x >= r[0] && x <= r[2] && y >= r[1] && y <= r[3] {
                class
            } else {
                0
            }])
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The clicks and boxes equal the ones taken from the explicit row-major list
        /// of pixels (the definition), on random sparse masks with absent classes.
        #[test]
        fn prompts_equal_the_listed_pixel_definition(
            w in 1u32..40, h in 1u32..40, density in 0.0f64..0.3, seed in 0u64..1000,
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let mask = GrayImage::from_fn(w, h, |_, _| Luma([u8::from(rng.random_bool(density))]));
            let listed = pixels_where(&mask, 1, true);
            let (pool, label) = if listed.is_empty() { (pixels_where(&mask, 1, false), 0) } else { (listed.clone(), 1) };
            let click = |(x, y): (u32, u32)| Click { x, y, label };
            prop_assert_eq!(fixed_click(&mask, 1), pool.get(pool.len() / 2).copied().map(click));
            let drawn = random_click(&mut StdRng::seed_from_u64(seed), &mask, 1);
            let want = pool[StdRng::seed_from_u64(seed).random_range(0..pool.len())];
            prop_assert_eq!(drawn, Some(click(want)));
            let tight = listed.iter().fold(None, |acc: Option<[i64; 4]>, &(x, y)| {
                let (x, y) = (i64::from(x), i64::from(y));
                Some(acc.map_or([x, y, x, y], |[a, b, c, d]| [a.min(x), b.min(y), c.max(x), d.max(y)]))
            });
            prop_assert_eq!(fixed_box(&mask, 1), tight.unwrap_or([-1, -1, i64::from(w), i64::from(h)]));
        }
    }

    #[test]
    fn fixed_click_is_middle_of_raster_order() {
        let mask = rect_mask(10, 10, [2, 3, 4, 4], 1);
        // Target pixels in row-major order: (2,3) (3,3) (4,3) (2,4) (3,4) (4,4): middle = index 3.
        assert_eq!(
            fixed_click(&mask, 1),
            Some(Click {
                x: 2,
                y: 4,
                label: 1
            })
        );
        assert_eq!(fixed_box(&mask, 1), [2, 3, 4, 4]);
    }

    #[test]
    fn absent_class_gives_background_click_and_full_box() {
        let mask = rect_mask(8, 6, [1, 1, 2, 2], 1);
        let click = fixed_click(&mask, 2).unwrap();
        assert_eq!(click.label, 0);
        assert_eq!(mask.get_pixel(click.x, click.y)[0], 0);
        assert_eq!(fixed_box(&mask, 2), [-1, -1, 8, 6]);
        assert_eq!(
            jittered_box(&mut StdRng::seed_from_u64(1), &mask, 2),
            [-1, -1, 8, 6]
        );
        assert_eq!(
            random_click(&mut StdRng::seed_from_u64(1), &mask, 2)
                .unwrap()
                .label,
            0
        );
    }

    proptest! {
        #[test]
        fn random_prompts_respect_the_mask(seed in 0u64..5000, x0 in 0u32..100, y0 in 0u32..100, w in 1u32..120, h in 1u32..120) {
            let r = [x0, y0, (x0 + w).min(255), (y0 + h).min(255)];
            let mask = rect_mask(256, 256, r, 1);
            let mut rng = StdRng::seed_from_u64(seed);
            let c = random_click(&mut rng, &mask, 1).unwrap();
            prop_assert_eq!(c.label, 1);
            prop_assert_eq!(mask.get_pixel(c.x, c.y)[0], 1);
            let b = jittered_box(&mut rng, &mask, 1);
            let tight = fixed_box(&mask, 1);
            let shift = (0.05 * 256.0f64).ceil() as i64 + 1;
            let slack = |len: i64| (0.05 * len as f64).ceil() as i64 / 2 + 1;
            let (tw, th) = (tight[2] - tight[0] + 1, tight[3] - tight[1] + 1);
            prop_assert!(b[0] <= b[2] && b[1] <= b[3]);
            prop_assert!(b.iter().all(|&v| (0..256).contains(&v)));
            prop_assert!((b[0] - tight[0]).abs() <= shift + slack(tw));
            prop_assert!((b[2] - tight[2]).abs() <= shift + slack(tw));
            prop_assert!((b[1] - tight[1]).abs() <= shift + slack(th));
            prop_assert!((b[3] - tight[3]).abs() <= shift + slack(th));
            let clicks = positive_negative_clicks(&mut rng, &mask, 1, 3, 2);
            prop_assert_eq!(clicks.len(), 5);
            for c in &clicks {
                prop_assert_eq!(mask.get_pixel(c.x, c.y)[0] == 1, c.label == 1);
            }
        }
    }
}
