//! The reference transforms: the validation transform (resize only) and the training
//! augmentations of SPEC section 5, applied jointly to image and label.

use image::{GrayImage, ImageBuffer};
use rand::Rng;
use samus_model::preprocess::UnitGreyImage;

/// Side of the model input and of the full-size mask.
pub const IMAGE_SIZE: u32 = 256;
/// Side of the low-resolution mask the loss is computed on.
pub const LOW_MASK_SIZE: u32 = 128;

/// An image and its label map after a transform, at the model's sizes.
#[derive(Debug, Clone)]
pub struct TransformedPair {
    /// The image, `IMAGE_SIZE` square, values in [0, 1].
    pub image: UnitGreyImage,
    /// The label map (class ids), `IMAGE_SIZE` square.
    pub label: GrayImage,
    /// The label map, `LOW_MASK_SIZE` square.
    pub low_label: GrayImage,
}

/// Bilinear resize of an 8-bit image as PIL's `Image.resize(BILINEAR)` does it (a
/// triangle filter widened by the scale when shrinking, rounded to 8 bit), with
/// `fast_image_resize`'s SIMD kernels.
pub fn resize_bilinear_u8(image: &GrayImage, width: u32, height: u32) -> GrayImage {
    use fast_image_resize::{
        images::{Image, ImageRef},
        FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    };
    let fallback =
        || image::imageops::resize(image, width, height, image::imageops::FilterType::Triangle);
    let Ok(src) = ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8)
    else {
        return fallback();
    };
    let mut dst = Image::new(width, height, PixelType::U8);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    match Resizer::new().resize(&src, &mut dst, &options) {
        Ok(()) => GrayImage::from_raw(width, height, dst.into_vec()).unwrap_or_else(fallback),
        Err(_) => fallback(),
    }
}

/// Nearest-neighbour resize as PIL does it: output pixel `o` samples input
/// `floor((o + 0.5) * in / out)`.
pub fn resize_label_nearest(label: &GrayImage, width: u32, height: u32) -> GrayImage {
    if label.dimensions() == (width, height) {
        return label.clone();
    }
    let (w, h) = label.dimensions();
    if w == 0 || h == 0 {
        return GrayImage::new(width, height);
    }
    // The source row and column of every output row and column, computed once.
    let sources = |inp: u32, out: u32| -> Vec<usize> {
        (0..out)
            .map(|o| (((o as f64 + 0.5) * inp as f64 / out as f64) as u32).min(inp - 1) as usize)
            .collect()
    };
    let (columns, rows) = (sources(w, width), sources(h, height));
    let data = label.as_raw();
    let mut out = Vec::with_capacity(width as usize * height as usize);
    for &y in &rows {
        let row = &data[y * w as usize..(y + 1) * w as usize];
        out.extend(columns.iter().map(|&x| row[x]));
    }
    GrayImage::from_raw(width, height, out).unwrap_or_else(|| GrayImage::new(width, height))
}

/// The last step of every transform: image bilinear to 256 (8-bit, as PIL resizes,
/// then scaled to [0, 1]), label nearest to 256, low-resolution label nearest from the
/// 256 label to 128.
pub fn finish(image: &GrayImage, label: &GrayImage) -> TransformedPair {
    let label = resize_label_nearest(label, IMAGE_SIZE, IMAGE_SIZE);
    let low_label = resize_label_nearest(&label, LOW_MASK_SIZE, LOW_MASK_SIZE);
    let resized = if image.dimensions() == (IMAGE_SIZE, IMAGE_SIZE) {
        image.clone()
    } else {
        resize_bilinear_u8(image, IMAGE_SIZE, IMAGE_SIZE)
    };
    let unit: UnitGreyImage = ImageBuffer::from_raw(
        IMAGE_SIZE,
        IMAGE_SIZE,
        resized.as_raw().iter().map(|&v| v as f32 / 255.0).collect(),
    )
    .unwrap_or_else(|| ImageBuffer::new(IMAGE_SIZE, IMAGE_SIZE));
    TransformedPair {
        image: unit,
        label,
        low_label,
    }
}

/// The validation / test transform: no augmentation, just [`finish`].
pub fn validation_transform(image: &GrayImage, label: &GrayImage) -> TransformedPair {
    finish(image, label)
}

/// Probabilities and ranges of the training augmentations (defaults: SPEC section 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    /// Probability of a gamma change `x^(1/g)`, g drawn from {1.0, 1.1, ..., 2.4}.
    pub p_gamma: f64,
    /// Probability of a rotation about the centre.
    pub p_rotate: f64,
    /// Largest rotation, degrees (drawn uniformly in +-this).
    pub max_degrees: f32,
    /// Probability of an upscale by U[1, max_scale] of the output size, then a random
    /// crop of the output size.
    pub p_scale: f64,
    /// Largest upscale factor.
    pub max_scale: f64,
    /// Probability of a contrast change around the mean by a factor drawn from
    /// `contrast`.
    pub p_contrast: f64,
    /// Range of the contrast factor.
    pub contrast: (f32, f32),
    /// Probability of a left-right mirror image (not in the reference, which never
    /// mirrors; 0 in [`Augmentation::default`] and [`Augmentation::light`], and then
    /// no random number is drawn for it, so their streams stay the reference's).
    pub p_hflip: f64,
}

impl Default for Augmentation {
    fn default() -> Self {
        Self {
            p_gamma: 0.5,
            p_rotate: 0.5,
            max_degrees: 30.0,
            p_scale: 0.5,
            max_scale: 1.3,
            p_contrast: 0.5,
            contrast: (0.8, 2.0),
            p_hflip: 0.0,
        }
    }
}

impl Augmentation {
    /// A lighter preset for short runs from random weights, where the model sees each
    /// image only a few times: the reference's transforms at probability 0.25, with
    /// rotations of at most 15 degrees, upscales of at most 1.15 and contrast factors
    /// in 0.9-1.5.
    pub fn light() -> Self {
        Self {
            p_gamma: 0.25,
            p_rotate: 0.25,
            max_degrees: 15.0,
            p_scale: 0.25,
            max_scale: 1.15,
            p_contrast: 0.25,
            contrast: (0.9, 1.5),
            p_hflip: 0.0,
        }
    }

    /// Mirror images only: left-right with probability 0.5, none of the reference's
    /// transforms. Ultrasound scans keep the probe at the top, so only the left-right
    /// mirror gives images a scanner could have made.
    pub fn mirror_only() -> Self {
        Self {
            p_gamma: 0.0,
            p_rotate: 0.0,
            max_degrees: 0.0,
            p_scale: 0.0,
            max_scale: 1.0,
            p_contrast: 0.0,
            contrast: (1.0, 1.0),
            p_hflip: 0.5,
        }
    }

    /// Augments the 8-bit `image` and `label` jointly with the random numbers of
    /// `rng`, then applies [`finish`]. Like the reference, intensity changes work on 8
    /// bit; geometric changes move image and label identically (rotation samples both
    /// at the nearest pixel, as the reference does).
    pub fn apply<R: Rng>(
        &self,
        rng: &mut R,
        image: &GrayImage,
        label: &GrayImage,
    ) -> TransformedPair {
        let mut image = image.clone();
        let mut label = label.clone();
        if rng.random::<f64>() < self.p_gamma {
            let g = rng.random_range(10..25) as f64 / 10.0;
            // 255 (v / 255)^(1/g), truncated to 8 bit as the reference does.
            let table: Vec<u8> = (0..=255u32)
                .map(|v| (255.0 * (v as f64 / 255.0).powf(1.0 / g)) as u8)
                .collect();
            for p in image.pixels_mut() {
                p[0] = table[p[0] as usize];
            }
        }
        if rng.random::<f64>() < self.p_rotate {
            let degrees = rng.random_range(-self.max_degrees..=self.max_degrees);
            (image, label) = rotate_pair_nearest(&image, &label, degrees.to_radians());
        }
        if rng.random::<f64>() < self.p_scale {
            let scale = rng.random_range(1.0..self.max_scale);
            let side = ((IMAGE_SIZE as f64 * scale) as u32).max(IMAGE_SIZE);
            image = resize_bilinear_u8(&image, side, side);
            label = resize_label_nearest(&label, side, side);
            let x = rng.random_range(0..=side - IMAGE_SIZE);
            let y = rng.random_range(0..=side - IMAGE_SIZE);
            image = crop(&image, x, y, IMAGE_SIZE);
            label = crop(&label, x, y, IMAGE_SIZE);
        }
        if rng.random::<f64>() < self.p_contrast {
            let factor = rng.random_range(self.contrast.0..=self.contrast.1);
            image = adjust_contrast(&image, factor);
        }
        if self.p_hflip > 0.0 && rng.random::<f64>() < self.p_hflip {
            image::imageops::flip_horizontal_in_place(&mut image);
            image::imageops::flip_horizontal_in_place(&mut label);
        }
        finish(&image, &label)
    }
}

/// Rotates an image and its label map together by `theta` radians about the image
/// centre (clockwise, exactly as imageproc's `rotate_about_center` with nearest
/// sampling and a 0 border), computing each output pixel's source position once for
/// both. A label of another size than the image is rotated on its own.
pub fn rotate_pair_nearest(
    image: &GrayImage,
    label: &GrayImage,
    theta: f32,
) -> (GrayImage, GrayImage) {
    if image.dimensions() != label.dimensions() {
        return (rotate_nearest(image, theta), rotate_nearest(label, theta));
    }
    let (w, h) = image.dimensions();
    let map = RotationMap::new(w, h, theta);
    let (src_image, src_label) = (image.as_raw(), label.as_raw());
    let mut out_image = vec![0u8; src_image.len()];
    let mut out_label = vec![0u8; src_label.len()];
    map.for_each_source(|dst, src| {
        out_image[dst] = src_image[src];
        out_label[dst] = src_label[src];
    });
    (
        GrayImage::from_raw(w, h, out_image).unwrap_or_else(|| GrayImage::new(w, h)),
        GrayImage::from_raw(w, h, out_label).unwrap_or_else(|| GrayImage::new(w, h)),
    )
}

/// [`rotate_pair_nearest`] for a single image.
pub fn rotate_nearest(image: &GrayImage, theta: f32) -> GrayImage {
    let (w, h) = image.dimensions();
    let src = image.as_raw();
    let mut out = vec![0u8; src.len()];
    RotationMap::new(w, h, theta).for_each_source(|dst, s| out[dst] = src[s]);
    GrayImage::from_raw(w, h, out).unwrap_or_else(|| GrayImage::new(w, h))
}

/// The inverse affine map of a rotation about the centre of a `width` x `height`
/// image, composed in the same order and precision as imageproc composes it, so that
/// the nearest source pixels (and their ties) are the same.
struct RotationMap {
    width: u32,
    height: u32,
    inverse: [f32; 9],
}

impl RotationMap {
    fn new(width: u32, height: u32, theta: f32) -> Self {
        let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
        let (s, c) = theta.sin_cos();
        let undo_rotation = [c, s, 0.0, -s, c, 0.0, 0.0, 0.0, 1.0];
        let to_origin = [1.0, 0.0, -cx, 0.0, 1.0, -cy, 0.0, 0.0, 1.0];
        let from_origin = [1.0, 0.0, cx, 0.0, 1.0, cy, 0.0, 0.0, 1.0];
        let inverse = mul3x3(from_origin, mul3x3(undo_rotation, to_origin));
        Self {
            width,
            height,
            inverse,
        }
    }

    /// Calls `visit(output index, source index)` for every output pixel whose nearest
    /// source pixel lies inside the image (row-major indices).
    fn for_each_source(&self, mut visit: impl FnMut(usize, usize)) {
        let t = &self.inverse;
        let (w, h) = (self.width as f32, self.height as f32);
        // The column terms are the same on every row; each position is still summed
        // as imageproc sums it, `(t0 x + t1 y) + t2`, then `+ 0.5` for the rounding.
        let column_x: Vec<f32> = (0..self.width).map(|x| t[0] * x as f32).collect();
        let column_y: Vec<f32> = (0..self.width).map(|x| t[3] * x as f32).collect();
        let mut sources = vec![u32::MAX; self.width as usize];
        let width = self.width as i32;
        for y in 0..self.height {
            let (row_x, row_y) = (t[1] * y as f32, t[4] * y as f32);
            // A loop the compiler vectorises: the source index, or u32::MAX outside.
            for ((source, &col_x), &col_y) in sources.iter_mut().zip(&column_x).zip(&column_y) {
                let sx = col_x + row_x + t[2] + 0.5;
                let sy = col_y + row_y + t[5] + 0.5;
                // floor(s) for s >= 0 is the truncation; s < 0 is outside. Bitwise
                // `&` and selects keep the loop free of branches.
                let inside = (sx >= 0.0) & (sy >= 0.0) & (sx < w) & (sy < h);
                let (sx, sy) = if inside { (sx, sy) } else { (0.0, 0.0) };
                let index = (sy as i32) * width + sx as i32;
                *source = if inside { index as u32 } else { u32::MAX };
            }
            let row = y as usize * self.width as usize;
            for (x, &source) in sources.iter().enumerate() {
                if source != u32::MAX {
                    visit(row + x, source as usize);
                }
            }
        }
    }
}

/// 3x3 row-major product, summed in the order imageproc sums it.
fn mul3x3(a: [f32; 9], b: [f32; 9]) -> [f32; 9] {
    let mut out = [0.0; 9];
    for r in 0..3 {
        for c in 0..3 {
            out[r * 3 + c] = a[r * 3] * b[c] + a[r * 3 + 1] * b[3 + c] + a[r * 3 + 2] * b[6 + c];
        }
    }
    out
}

/// The `side` x `side` window of `image` at column `x`, row `y` (inside the image),
/// copied row by row.
fn crop(image: &GrayImage, x: u32, y: u32, side: u32) -> GrayImage {
    let width = image.width() as usize;
    let (x, y, side) = (x as usize, y as usize, side as usize);
    let mut out = Vec::with_capacity(side * side);
    for row in image.as_raw().chunks_exact(width).skip(y).take(side) {
        out.extend_from_slice(&row[x..x + side]);
    }
    let side = side as u32;
    GrayImage::from_raw(side, side, out).unwrap_or_else(|| GrayImage::new(side, side))
}

/// Blends the image with its mean grey, `mean + factor * (x - mean)` rounded and
/// clipped to 8 bit (PIL's `ImageEnhance.Contrast`, which torchvision uses on PIL
/// images; the mean is rounded to a grey level).
pub fn adjust_contrast(image: &GrayImage, factor: f32) -> GrayImage {
    let n = (image.width() as usize * image.height() as usize).max(1);
    let sum: u64 = image.as_raw().iter().map(|&v| u64::from(v)).sum();
    let mean = (sum as f64 / n as f64).round() as f32;
    let table: Vec<u8> = (0..=255u32)
        .map(|v| {
            (mean + factor * (v as f32 - mean))
                .round()
                .clamp(0.0, 255.0) as u8
        })
        .collect();
    let mut out = image.clone();
    for p in out.iter_mut() {
        *p = table[*p as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    /// An image whose intensity marks the label: bright inside, dark outside.
    fn marked_pair(w: u32, h: u32, cx: f32, cy: f32, r: f32) -> (GrayImage, GrayImage) {
        let label = GrayImage::from_fn(w, h, |x, y| {
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            Luma([u8::from(d <= r)])
        });
        let image = GrayImage::from_fn(w, h, |x, y| {
            Luma([if label.get_pixel(x, y)[0] == 1 {
                230
            } else {
                77
            }])
        });
        (image, label)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn augmentation_keeps_masks_binary_and_aligned(
            seed in 0u64..10_000, w in 180u32..340, h in 180u32..340, fx in 0.3f32..0.7, fy in 0.3f32..0.7,
        ) {
            let (image, label) = marked_pair(w, h, w as f32 * fx, h as f32 * fy, w.min(h) as f32 * 0.2);
            let always = Augmentation { p_gamma: 1.0, p_rotate: 1.0, p_scale: 1.0, p_contrast: 1.0, p_hflip: 1.0, ..Default::default() };
            let out = always.apply(&mut StdRng::seed_from_u64(seed), &image, &label);
            prop_assert_eq!(out.label.dimensions(), (IMAGE_SIZE, IMAGE_SIZE));
            prop_assert_eq!(out.low_label.dimensions(), (LOW_MASK_SIZE, LOW_MASK_SIZE));
            prop_assert!(out.label.pixels().all(|p| p[0] <= 1));
            prop_assert!(out.low_label.pixels().all(|p| p[0] <= 1));
            // Away from the mask's edge (where bilinear image resizing blends) and the
            // rotation fill, the image is bright exactly where the mask is set.
            let side = IMAGE_SIZE as i64;
            let mut interior = Vec::new();
            for y in 2..side - 2 {
                for x in 2..side - 2 {
                    let m = out.label.get_pixel(x as u32, y as u32)[0];
                    let uniform = (-2..=2).all(|dy| (-2..=2).all(|dx| out.label.get_pixel((x + dx) as u32, (y + dy) as u32)[0] == m));
                    let v = out.image.get_pixel(x as u32, y as u32)[0];
                    if uniform && v > 0.0 {
                        interior.push((m == 1, v));
                    }
                }
            }
            let mean = |inside: bool| {
                let vals: Vec<f32> = interior.iter().filter(|(m, _)| *m == inside).map(|(_, v)| *v).collect();
                vals.iter().sum::<f32>() / vals.len().max(1) as f32
            };
            // The two intensities stay ordered under gamma and contrast.
            let midpoint = 0.5 * (mean(true) + mean(false));
            let checked = interior.len();
            let agree = interior.iter().filter(|(m, v)| (*v > midpoint) == *m).count();
            prop_assert!(checked > 1000);
            prop_assert!(agree as f64 >= 0.999 * checked as f64, "{agree}/{checked}");
        }

        #[test]
        fn augmentation_is_deterministic(seed in 0u64..10_000) {
            let (image, label) = marked_pair(300, 220, 150.0, 100.0, 40.0);
            let aug = Augmentation::default();
            let a = aug.apply(&mut StdRng::seed_from_u64(seed), &image, &label);
            let b = aug.apply(&mut StdRng::seed_from_u64(seed), &image, &label);
            prop_assert_eq!(a.image.as_raw(), b.image.as_raw());
            prop_assert_eq!(a.label.as_raw(), b.label.as_raw());
        }
    }

    #[test]
    fn the_mirror_draws_a_random_number_only_when_it_can_happen() {
        use rand::{Rng, RngCore};
        let (image, label) = marked_pair(64, 48, 30.0, 20.0, 10.0);
        let never = Augmentation {
            p_gamma: 0.0,
            p_rotate: 0.0,
            p_scale: 0.0,
            p_contrast: 0.0,
            ..Default::default()
        };
        // The reference's four decisions are drawn whatever their probability; the
        // mirror's only when its probability is above 0.
        for (augmentation, draws) in [
            (never, 4),
            (
                Augmentation {
                    p_hflip: 0.5,
                    ..never
                },
                5,
            ),
        ] {
            let mut rng = StdRng::seed_from_u64(3);
            augmentation.apply(&mut rng, &image, &label);
            let mut replay = StdRng::seed_from_u64(3);
            for _ in 0..draws {
                replay.random::<f64>();
            }
            assert_eq!(rng.next_u64(), replay.next_u64(), "{draws} draws");
        }
    }

    #[test]
    fn mirror_only_mirrors_image_and_label_together_or_leaves_both() {
        let (image, label) = marked_pair(300, 220, 90.0, 100.0, 40.0);
        let plain = validation_transform(&image, &label);
        let mirrored = validation_transform(
            &image::imageops::flip_horizontal(&image),
            &image::imageops::flip_horizontal(&label),
        );
        assert_ne!(plain.label.as_raw(), mirrored.label.as_raw());
        let mut rng = StdRng::seed_from_u64(7);
        let (mut kept, mut flipped) = (0, 0);
        for _ in 0..64 {
            let out = Augmentation::mirror_only().apply(&mut rng, &image, &label);
            let same = |a: &TransformedPair| {
                a.image.as_raw() == out.image.as_raw()
                    && a.label.as_raw() == out.label.as_raw()
                    && a.low_label.as_raw() == out.low_label.as_raw()
            };
            match (same(&plain), same(&mirrored)) {
                (true, false) => kept += 1,
                (false, true) => flipped += 1,
                other => panic!("neither the pair nor its mirror image: {other:?}"),
            }
        }
        assert!(kept > 10 && flipped > 10, "{kept} kept, {flipped} mirrored");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn pair_rotation_equals_imageproc(
            w in 1u32..90, h in 1u32..90, degrees in -180f32..180.0, seed in 0u64..1000,
        ) {
            use imageproc::geometric_transformations::{rotate_about_center, Border, Interpolation};
            use rand::RngCore;
            let mut rng = StdRng::seed_from_u64(seed);
            let mut noise = |w, h| GrayImage::from_fn(w, h, |_, _| Luma([rng.next_u32() as u8]));
            let (image, label) = (noise(w, h), noise(w, h));
            let theta = degrees.to_radians();
            let (rotated, rotated_label) = rotate_pair_nearest(&image, &label, theta);
            let expected = |i: &GrayImage| rotate_about_center(i, theta, Interpolation::Nearest, Border::Constant(Luma([0])));
            let (want, want_label) = (expected(&image), expected(&label));
            prop_assert_eq!(rotated.as_raw(), want.as_raw());
            prop_assert_eq!(rotated_label.as_raw(), want_label.as_raw());
        }
    }

    #[test]
    fn nearest_follows_pil_centre_rule() {
        let label = GrayImage::from_fn(3, 1, |x, _| Luma([x as u8]));
        let out = resize_label_nearest(&label, 2, 1);
        // (0 + 0.5) * 1.5 = 0.75 -> 0; (1 + 0.5) * 1.5 = 2.25 -> 2
        assert_eq!(out.as_raw(), &vec![0, 2]);
    }
}
