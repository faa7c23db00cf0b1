//! Reading input images and writing masks and overlays.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{DynamicImage, GrayImage, ImageFormat, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_hollow_rect_mut};
use imageproc::rect::Rect;
use samus_model::{BoxPrompt, Point};

use crate::output::write_atomically;

/// Opacity of the mask tint in overlays.
const TINT_ALPHA: f32 = 0.45;
const TINT: [f32; 3] = [255.0, 60.0, 60.0];
const FOREGROUND_COLOUR: Rgb<u8> = Rgb([60, 220, 60]);
const BACKGROUND_COLOUR: Rgb<u8> = Rgb([230, 50, 230]);
const BOX_COLOUR: Rgb<u8> = Rgb([255, 210, 0]);

fn is_dicom(path: &Path) -> bool {
    let by_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("dcm") || e.eq_ignore_ascii_case("dicom"));
    let mut head = [0u8; 132];
    let by_magic = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[128..132] == b"DICM";
    by_name || by_magic
}

/// Opens a PNG, JPEG, BMP or TIFF image (the format is read from the content).
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    if !path.exists() {
        bail!("image {} does not exist", path.display());
    }
    if is_dicom(path) {
        bail!(
            "image {}: DICOM is not supported; export the frame as PNG (e.g. with dcmj2pnm or pydicom)",
            path.display()
        );
    }
    let reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    match reader.format() {
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
    let image = reader
        .decode()
        .with_context(|| format!("image {} is corrupt or truncated", path.display()))?;
    if image.width() == 0 || image.height() == 0 {
        bail!("image {} is empty", path.display());
    }
    Ok(image)
}

/// Writes an image as PNG, atomically.
pub fn save_png(image: &DynamicImage, path: &Path) -> Result<()> {
    write_atomically(path, |file| {
        let mut buffered = std::io::BufWriter::new(file);
        image
            .write_to(&mut buffered, ImageFormat::Png)
            .context("PNG encoding failed")?;
        Ok(())
    })
}

/// A binary mask (0/1 per pixel, row-major) as a black and white PNG image.
pub fn mask_image(mask: &[u8], width: u32, height: u32) -> Result<GrayImage> {
    let pixels = mask.iter().map(|&m| if m > 0 { 255 } else { 0 }).collect();
    GrayImage::from_raw(width, height, pixels).context("mask size does not match the image")
}

/// The image with the mask tinted and the prompts drawn.
pub fn overlay(
    image: &DynamicImage,
    mask: &GrayImage,
    points: &[Point],
    bbox: Option<BoxPrompt>,
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
    let radius = ((out.width().min(out.height()) as f32) / 80.0).max(2.0) as i32;
    for p in points {
        let colour = if p.label == 1 {
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
    out
}
