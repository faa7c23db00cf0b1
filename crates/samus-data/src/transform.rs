//! The reference transforms: the validation transform (resize only) and the training
//! augmentations of SPEC section 5, applied jointly to image and label.

use image::{GrayImage, ImageBuffer, Luma};
use imageproc::geometric_transformations::{rotate_about_center, Border, Interpolation};
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
        images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    };
    let fallback =
        || image::imageops::resize(image, width, height, image::imageops::FilterType::Triangle);
    let Ok(src) = Image::from_vec_u8(
        image.width(),
        image.height(),
        image.as_raw().clone(),
        PixelType::U8,
    ) else {
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
        }
    }
}

impl Augmentation {
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
            let theta = degrees.to_radians();
            image = rotate_about_center(
                &image,
                theta,
                Interpolation::Nearest,
                Border::Constant(Luma([0])),
            );
            label = rotate_about_center(
                &label,
                theta,
                Interpolation::Nearest,
                Border::Constant(Luma([0])),
            );
        }
        if rng.random::<f64>() < self.p_scale {
            let scale = rng.random_range(1.0..self.max_scale);
            let side = ((IMAGE_SIZE as f64 * scale) as u32).max(IMAGE_SIZE);
            image = resize_bilinear_u8(&image, side, side);
            label = resize_label_nearest(&label, side, side);
            let x = rng.random_range(0..=side - IMAGE_SIZE);
            let y = rng.random_range(0..=side - IMAGE_SIZE);
            image = image::imageops::crop_imm(&image, x, y, IMAGE_SIZE, IMAGE_SIZE).to_image();
            label = image::imageops::crop_imm(&label, x, y, IMAGE_SIZE, IMAGE_SIZE).to_image();
        }
        if rng.random::<f64>() < self.p_contrast {
            let factor = rng.random_range(self.contrast.0..=self.contrast.1);
            image = adjust_contrast(&image, factor);
        }
        finish(&image, &label)
    }
}

/// Blends the image with its mean grey, `mean + factor * (x - mean)` rounded and
/// clipped to 8 bit (PIL's `ImageEnhance.Contrast`, which torchvision uses on PIL
/// images; the mean is rounded to a grey level).
pub fn adjust_contrast(image: &GrayImage, factor: f32) -> GrayImage {
    let n = (image.width() as usize * image.height() as usize).max(1);
    let mean = (image.pixels().map(|p| p[0] as f64).sum::<f64>() / n as f64).round() as f32;
    let table: Vec<u8> = (0..=255u32)
        .map(|v| {
            (mean + factor * (v as f32 - mean))
                .round()
                .clamp(0.0, 255.0) as u8
        })
        .collect();
    GrayImage::from_fn(image.width(), image.height(), |x, y| {
        Luma([table[image.get_pixel(x, y)[0] as usize]])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let always = Augmentation { p_gamma: 1.0, p_rotate: 1.0, p_scale: 1.0, p_contrast: 1.0, ..Default::default() };
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
    fn nearest_follows_pil_centre_rule() {
        let label = GrayImage::from_fn(3, 1, |x, _| Luma([x as u8]));
        let out = resize_label_nearest(&label, 2, 1);
        // (0 + 0.5) * 1.5 = 0.75 -> 0; (1 + 0.5) * 1.5 = 2.25 -> 2
        assert_eq!(out.as_raw(), &vec![0, 2]);
    }
}
