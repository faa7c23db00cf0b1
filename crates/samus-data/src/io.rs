//! Reading US30K images and label maps.

use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage};
use samus_model::preprocess::to_grey_unit;

/// Errors reading one sample's files.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file does not exist.
    #[error("{} does not exist", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but is not a decodable PNG (or other supported image).
    #[error("{} is not a readable image: {message}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// The image and its label map differ in size.
    #[error("{} is {}x{} but its label {} is {}x{}", image.display(), image_size.0, image_size.1, label.display(), label_size.0, label_size.1)]
    SizeMismatch {
        /// The image file.
        image: PathBuf,
        /// Its width and height.
        image_size: (u32, u32),
        /// The label file.
        label: PathBuf,
        /// Its width and height.
        label_size: (u32, u32),
    },
    /// The label map holds a value that cannot be a class id.
    #[error("{}: label value {value} is not a class id (0..=255)", path.display())]
    BadLabel {
        /// The label file.
        path: PathBuf,
        /// The offending value.
        value: u32,
    },
}

/// Decodes an image file of any supported format from its bytes.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<DynamicImage, ReadError> {
    image::load_from_memory(bytes).map_err(|e| ReadError::Unreadable {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, ReadError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing {
            path: path.to_path_buf(),
        },
        _ => ReadError::Unreadable {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    })
}

/// An image as 8-bit grey, as the reference reads it (`cv2.imread(path, 0)`): 8-bit
/// grey as is, colour by OpenCV's weights rounded, 16-bit scaled to 8 bit.
pub fn grey8_from_image(image: &DynamicImage) -> GrayImage {
    use samus_model::preprocess::GREY_WEIGHTS;
    let weighted = |r: u8, g: u8, b: u8| {
        let v =
            GREY_WEIGHTS[0] * r as f32 + GREY_WEIGHTS[1] * g as f32 + GREY_WEIGHTS[2] * b as f32;
        image::Luma([v.round().clamp(0.0, 255.0) as u8])
    };
    match image {
        DynamicImage::ImageLuma8(img) => img.clone(),
        DynamicImage::ImageLumaA8(img) => GrayImage::from_fn(img.width(), img.height(), |x, y| {
            image::Luma([img.get_pixel(x, y)[0]])
        }),
        DynamicImage::ImageRgb8(img) => GrayImage::from_fn(img.width(), img.height(), |x, y| {
            let p = img.get_pixel(x, y);
            weighted(p[0], p[1], p[2])
        }),
        DynamicImage::ImageRgba8(img) => GrayImage::from_fn(img.width(), img.height(), |x, y| {
            let p = img.get_pixel(x, y);
            weighted(p[0], p[1], p[2])
        }),
        other => {
            let unit = to_grey_unit(other);
            GrayImage::from_fn(unit.width(), unit.height(), |x, y| {
                image::Luma([(unit.get_pixel(x, y)[0] * 255.0).round().clamp(0.0, 255.0) as u8])
            })
        }
    }
}

/// Reads an ultrasound image as 8-bit grey ([`grey8_from_image`]).
pub fn read_image_grey8(path: &Path) -> Result<GrayImage, ReadError> {
    Ok(grey8_from_image(&decode(path, &read_bytes(path)?)?))
}

/// Converts a decoded label map to class ids: grey values are taken as they are (16-bit
/// maps must hold values up to 255), colour maps by their first channel.
pub fn label_from_image(path: &Path, image: &DynamicImage) -> Result<GrayImage, ReadError> {
    match image {
        DynamicImage::ImageLuma8(img) => Ok(img.clone()),
        DynamicImage::ImageLuma16(img) => {
            let mut out = GrayImage::new(img.width(), img.height());
            for (o, p) in out.pixels_mut().zip(img.pixels()) {
                if p[0] > 255 {
                    return Err(ReadError::BadLabel {
                        path: path.to_path_buf(),
                        value: u32::from(p[0]),
                    });
                }
                o[0] = p[0] as u8;
            }
            Ok(out)
        }
        other => {
            let rgb = other.to_rgb8();
            Ok(GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                image::Luma([rgb.get_pixel(x, y)[0]])
            }))
        }
    }
}

/// Reads a label map (pixel value = class id).
pub fn read_label(path: &Path) -> Result<GrayImage, ReadError> {
    label_from_image(path, &decode(path, &read_bytes(path)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes, and truncated or corrupted PNGs, never panic the reader.
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cut in 0usize..400, flip in 0usize..400) {
            let path = Path::new("fuzz.png");
            let _ = decode(path, &bytes);
            let mut png = Vec::new();
            GrayImage::from_fn(17, 9, |x, y| image::Luma([(x * 13 + y * 7) as u8]))
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            let mut broken = png.clone();
            if flip < broken.len() { broken[flip] ^= 0x5a; }
            broken.truncate(cut.max(1).min(broken.len()));
            if let Ok(img) = decode(path, &broken) {
                let _ = label_from_image(path, &img);
            }
        }
    }

    #[test]
    fn missing_and_unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.png");
        assert!(read_image_grey8(&missing)
            .unwrap_err()
            .to_string()
            .contains("nope.png does not exist"));
        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"not a png").unwrap();
        let err = read_label(&junk).unwrap_err().to_string();
        assert!(err.contains("junk.png is not a readable image"), "{err}");
    }
}
