//! Reading input images and writing masks and overlays.

use std::path::Path;

use ab_glyph::FontRef;
use anyhow::{bail, Context, Result};
use image::{DynamicImage, GrayImage, ImageFormat, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_hollow_rect_mut, draw_text_mut};
use imageproc::rect::Rect;
use samus_data::Sample;
use samus_model::{Label, PointPrompt};

/// Opacity of the mask tint in overlays.
const TINT_ALPHA: f32 = 0.45;
const TINT: [f32; 3] = [255.0, 60.0, 60.0];
const FOREGROUND_COLOUR: Rgb<u8> = Rgb([60, 220, 60]);
const BACKGROUND_COLOUR: Rgb<u8> = Rgb([230, 50, 230]);
const BOX_COLOUR: Rgb<u8> = Rgb([255, 210, 0]);
const OUTLINE_COLOUR: Rgb<u8> = Rgb([255, 40, 40]);
const CAPTION_COLOUR: Rgb<u8> = Rgb([255, 255, 255]);

/// Opens a PNG, JPEG, BMP or TIFF image (the format is read from the content), or
/// the first frame of a DICOM file.
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    if !path.exists() {
        bail!("image {} does not exist", path.display());
    }
    if samus_data::dicom::is_dicom(path) {
        return Ok(samus_data::io::read_image(path)?);
    }
    let format = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    match format.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Bmp | ImageFormat::Tiff) => {}
        Some(other) => bail!(
            "image {}: {other:?} is not supported (use PNG, JPEG, BMP or TIFF)",
            path.display()
        ),
        None => bail!(
            "image {}: not a PNG, JPEG, BMP or TIFF image",
            path.display()
        ),
    }
    // The pixel budget and the decoding limits are samus-data's, shared with the
    // dataset readers.
    let image = samus_data::io::read_image(path)?;
    if image.width() == 0 || image.height() == 0 {
        bail!("image {} is empty", path.display());
    }
    Ok(image)
}

/// A binary mask (0/1 per pixel, row-major) as a black and white PNG image.
pub fn mask_image(mask: &[u8], width: u32, height: u32) -> Result<GrayImage> {
    let pixels = mask.iter().map(|&m| if m > 0 { 255 } else { 0 }).collect();
    GrayImage::from_raw(width, height, pixels).context("mask size does not match the image")
}

/// A dataset sample's (transformed) image with a predicted mask of the same size and
/// the sample's click drawn, captioned.
pub fn sample_overlay(sample: &Sample, prediction: &[bool], caption: &str) -> Result<RgbImage> {
    let side = (sample.image.len() as f64).sqrt() as u32;
    let grey = GrayImage::from_raw(
        side,
        side,
        sample
            .image
            .iter()
            .map(|&v| (v * 255.0).round() as u8)
            .collect(),
    )
    .context("the sample image is not square")?;
    let mask: Vec<u8> = prediction.iter().map(|&p| u8::from(p)).collect();
    let label = if sample.click.label == 1 {
        Label::Foreground
    } else {
        Label::Background
    };
    let click = PointPrompt::new(sample.click.x as f32, sample.click.y as f32, label);
    Ok(overlay(
        &DynamicImage::ImageLuma8(grey),
        &mask_image(&mask, side, side)?,
        &[click],
        None,
        Some(caption),
    ))
}

/// Whether mask pixel `(x, y)` is set and touches an unset pixel or the border.
fn on_outline(mask: &GrayImage, x: u32, y: u32) -> bool {
    let (w, h) = mask.dimensions();
    let set = |x: i64, y: i64| {
        x >= 0
            && y >= 0
            && x < w as i64
            && y < h as i64
            && mask.get_pixel(x as u32, y as u32)[0] > 0
    };
    let (xi, yi) = (x as i64, y as i64);
    set(xi, yi) && !(set(xi - 1, yi) && set(xi + 1, yi) && set(xi, yi - 1) && set(xi, yi + 1))
}

/// The image with the mask filled (tinted) and outlined, the prompts drawn (points
/// coloured by label, the box), and `caption` (e.g. the predicted IoU) in a corner.
pub fn overlay(
    image: &DynamicImage,
    mask: &GrayImage,
    points: &[PointPrompt],
    bbox: Option<[f32; 4]>,
    caption: Option<&str>,
) -> RgbImage {
    let mut out = image.to_rgb8();
    for (pixel, m) in out.pixels_mut().zip(mask.pixels()) {
        if m[0] > 0 {
            for c in 0..3 {
                pixel[c] =
                    ((1.0 - TINT_ALPHA) * pixel[c] as f32 + TINT_ALPHA * TINT[c]).round() as u8;
            }
        }
    }
    if mask.dimensions() == out.dimensions() {
        for y in 0..mask.height() {
            for x in 0..mask.width() {
                if on_outline(mask, x, y) {
                    out.put_pixel(x, y, OUTLINE_COLOUR);
                }
            }
        }
    }
    let radius = ((out.width().min(out.height()) as f32) / 80.0).max(2.0) as i32;
    for p in points {
        let colour = if p.label == Label::Foreground {
            FOREGROUND_COLOUR
        } else {
            BACKGROUND_COLOUR
        };
        draw_filled_circle_mut(
            &mut out,
            (p.x.round() as i32, p.y.round() as i32),
            radius,
            colour,
        );
    }
    if let Some([x0, y0, x1, y1]) = bbox {
        let w = (x1 - x0).round().max(1.0) as u32;
        let h = (y1 - y0).round().max(1.0) as u32;
        draw_hollow_rect_mut(
            &mut out,
            Rect::at(x0.round() as i32, y0.round() as i32).of_size(w, h),
            BOX_COLOUR,
        );
    }
    if let (Some(text), Ok(font)) = (caption, FontRef::try_from_slice(samus_train::curve::FONT)) {
        let size = (out.height() as f32 / 20.0).clamp(10.0, 28.0);
        let margin = (size / 3.0) as i32;
        // A dark shadow first, so that the text reads on bright and dark images.
        draw_text_mut(
            &mut out,
            Rgb([0, 0, 0]),
            margin + 1,
            margin + 1,
            size,
            &font,
            text,
        );
        draw_text_mut(&mut out, CAPTION_COLOUR, margin, margin, size, &font, text);
    }
    out
}

/// A mask's area in pixels and the mean foreground probability (the sigmoid of its
/// logits at the image's size, row by row) inside it; 0 for an empty mask.
pub fn area_and_mean_probability(mask: &GrayImage, logits: &[f32]) -> (usize, f32) {
    let (area, sum) = mask
        .as_raw()
        .iter()
        .zip(logits)
        .filter(|(m, _)| **m > 0)
        .fold((0usize, 0f64), |(n, s), (_, l)| {
            (n + 1, s + f64::from(1.0 / (1.0 + (-l).exp())))
        });
    let mean = if area == 0 {
        0.0
    } else {
        (sum / area as f64) as f32
    };
    (area, mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    #[test]
    fn overlay_fills_outlines_and_captions() {
        let image = DynamicImage::ImageLuma8(GrayImage::from_pixel(120, 120, Luma([90])));
        let mask = GrayImage::from_fn(120, 120, |x, y| {
            Luma([u8::from((40..80).contains(&x) && (40..80).contains(&y)) * 255])
        });
        let out = overlay(
            &image,
            &mask,
            &[PointPrompt::foreground(60.0, 60.0)],
            None,
            Some("IoU 0.9"),
        );
        assert_eq!(
            *out.get_pixel(40, 50),
            OUTLINE_COLOUR,
            "the edge is outlined"
        );
        let inside = out.get_pixel(50, 50);
        assert!(inside[0] > inside[1], "the inside is tinted: {inside:?}");
        assert_eq!(
            *out.get_pixel(100, 100),
            Rgb([90, 90, 90]),
            "outside untouched"
        );
        assert_eq!(
            *out.get_pixel(60, 60),
            FOREGROUND_COLOUR,
            "the point is drawn"
        );
        // Anti-aliased text: count the bright pixels of the corner it is drawn in.
        let bright = (0..70)
            .flat_map(|x| (0..20).map(move |y| (x, y)))
            .filter(|&(x, y)| out.get_pixel(x, y)[0] > 180)
            .count();
        assert!(bright > 10, "the caption is drawn ({bright} bright pixels)");
    }
}
