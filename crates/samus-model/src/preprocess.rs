//! Turning an image into the model's input (SPEC section 1): grey, resized to the
//! model's square input with bilinear filtering, scaled to [0, 1], no mean/std
//! normalisation.

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageBuffer, Luma};

use crate::error::Result;

/// Weights of OpenCV's RGB -> grey conversion, which the reference uses to read images.
pub const GREY_WEIGHTS: [f32; 3] = [0.299, 0.587, 0.114];

/// The image as grey values in [0, 1]: 8-bit values / 255, 16-bit values / 65535;
/// colour images are converted with [`GREY_WEIGHTS`] (8-bit results rounded to whole
/// grey levels, as OpenCV does), alpha is ignored.
pub fn to_grey_unit(image: &DynamicImage) -> UnitGreyImage {
    let (w, h) = (image.width(), image.height());
    let weighted =
        |r: f32, g: f32, b: f32| GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b;
    let data: Vec<f32> = match image {
        DynamicImage::ImageLuma8(img) => img.pixels().map(|p| p[0] as f32 / 255.0).collect(),
        DynamicImage::ImageLumaA8(img) => img.pixels().map(|p| p[0] as f32 / 255.0).collect(),
        DynamicImage::ImageLuma16(img) => img.pixels().map(|p| p[0] as f32 / 65535.0).collect(),
        DynamicImage::ImageLumaA16(img) => img.pixels().map(|p| p[0] as f32 / 65535.0).collect(),
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_) => image
            .to_rgb16()
            .pixels()
            .map(|p| weighted(p[0] as f32, p[1] as f32, p[2] as f32) / 65535.0)
            .collect(),
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => image
            .to_rgb32f()
            .pixels()
            .map(|p| weighted(p[0], p[1], p[2]).clamp(0.0, 1.0))
            .collect(),
        _ => image
            .to_rgb8()
            .pixels()
            .map(|p| weighted(p[0] as f32, p[1] as f32, p[2] as f32).round() / 255.0)
            .collect(),
    };
    ImageBuffer::from_raw(w, h, data).unwrap_or_else(|| ImageBuffer::new(w, h))
}

/// A grey image with values in [0, 1].
pub type UnitGreyImage = ImageBuffer<Luma<f32>, Vec<f32>>;

/// Resizes a grey image to `size x size` with a bilinear (triangle) filter that widens
/// when it shrinks, as PIL's bilinear resize does; returns it unchanged if it already
/// has that size.
pub fn resize_square(grey: UnitGreyImage, size: u32) -> UnitGreyImage {
    if grey.dimensions() == (size, size) {
        grey
    } else {
        image::imageops::resize(&grey, size, size, image::imageops::FilterType::Triangle)
    }
}

/// The model input for one image: `1 x 1 x size x size`, f32 in [0, 1]
/// ([`to_grey_unit`], then [`resize_square`]).
pub fn image_to_input(image: &DynamicImage, size: usize, device: &Device) -> Result<Tensor> {
    let grey = resize_square(to_grey_unit(image), size as u32);
    Ok(Tensor::from_vec(
        grey.into_raw(),
        (1, 1, size, size),
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgb};

    #[test]
    fn sixteen_bit_and_eight_bit_agree() {
        let img8 = ImageBuffer::from_fn(40, 30, |x, y| Luma([((x * 5 + y * 3) % 256) as u8]));
        let img16: ImageBuffer<Luma<u16>, Vec<u16>> =
            ImageBuffer::from_fn(40, 30, |x, y| Luma([img8.get_pixel(x, y)[0] as u16 * 257]));
        let a = image_to_input(&DynamicImage::ImageLuma8(img8), 32, &Device::Cpu).unwrap();
        let b = image_to_input(&DynamicImage::ImageLuma16(img16), 32, &Device::Cpu).unwrap();
        assert_eq!(a.dims(), &[1, 1, 32, 32]);
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn colour_uses_opencv_grey_weights_and_no_normalisation() {
        let rgb = ImageBuffer::from_pixel(4, 4, Rgb([200u8, 100, 50]));
        let input = image_to_input(&DynamicImage::ImageRgb8(rgb), 4, &Device::Cpu).unwrap();
        let v = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = (0.299f32 * 200.0 + 0.587 * 100.0 + 0.114 * 50.0).round() / 255.0;
        assert!(v.iter().all(|x| (x - want).abs() < 1e-6), "{v:?} vs {want}");
    }
}
