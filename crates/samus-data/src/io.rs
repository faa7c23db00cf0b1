//! Reading US30K images and label maps.

use std::path::Path;

use image::{DynamicImage, GrayImage};
use samus_model::preprocess::to_grey_unit;

use crate::{Error, Result};

/// Largest image accepted, in pixels (10,000 x 10,000): far above any scanner's
/// frame, below what would exhaust memory.
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;
/// Bytes an image may take while it is decoded (100 megapixels of 16-bit RGBA).
const MAX_DECODE_BYTES: u64 = MAX_IMAGE_PIXELS * 8;

/// Decodes an image file of any supported format from its bytes. Its size is read
/// from its header first: beyond [`MAX_IMAGE_PIXELS`] it is refused with
/// [`Error::ImageTooLarge`] before anything is allocated; within it, every image
/// decodes (the `image` crate's default 512 MiB limit would refuse a large 16-bit
/// colour scan).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<DynamicImage> {
    let decode_error = |source| Error::Decode {
        path: path.to_path_buf(),
        source,
    };
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode_error(image::ImageError::IoError(e)))
    };
    let (width, height) = reader()?.into_dimensions().map_err(decode_error)?;
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(Error::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = reader()?;
    reader.limits(limits);
    reader.decode().map_err(decode_error)
}

/// PNG bytes of an 8-bit grey image (`path`: where it is going, for the error).
pub(crate) fn png_bytes(path: &Path, img: &GrayImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|source| Error::EncodePng {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(buf.into_inner())
}

/// Creates the folder `path` and its parents.
pub(crate) fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// File extensions of the images the readers take (any case): PNG, JPEG, BMP,
/// TIFF and DICOM.
pub const IMAGE_EXTENSIONS: [&str; 8] =
    ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// An image and its label must be the same size: [`Error::SizeMismatch`] names
/// both files when they are not.
pub fn check_same_size(
    image_path: &Path,
    image: &GrayImage,
    label_path: &Path,
    label: &GrayImage,
) -> Result<()> {
    if image.dimensions() == label.dimensions() {
        return Ok(());
    }
    Err(Error::SizeMismatch {
        image: image_path.to_path_buf(),
        image_size: image.dimensions(),
        label: label_path.to_path_buf(),
        label_size: label.dimensions(),
    })
}

/// Reads and decodes an image file ([`decode`]); a DICOM file gives its first
/// frame ([`crate::dicom::DicomFile`]).
pub fn read_image(path: &Path) -> Result<DynamicImage> {
    if crate::dicom::is_dicom(path) {
        return crate::dicom::DicomFile::open(path)?.frame(0);
    }
    decode(path, &read_bytes(path)?)
}

/// An image file's width and height, from its header (DICOM: its attributes).
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    if crate::dicom::is_dicom(path) {
        let file = crate::dicom::DicomFile::open(path)?;
        return Ok((file.width(), file.height()));
    }
    image::image_dimensions(path).map_err(|source| Error::Decode {
        path: path.to_path_buf(),
        source,
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::Missing {
            path: path.to_path_buf(),
        },
        _ => Error::Io {
            path: path.to_path_buf(),
            source,
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
pub fn read_image_grey8(path: &Path) -> Result<GrayImage> {
    Ok(grey8_from_image(&read_image(path)?))
}

/// Converts a decoded label map to class ids: grey values are taken as they are (16-bit
/// maps must hold values up to 255), colour maps by their first channel.
pub fn label_from_image(path: &Path, image: &DynamicImage) -> Result<GrayImage> {
    match image {
        DynamicImage::ImageLuma8(img) => Ok(img.clone()),
        DynamicImage::ImageLuma16(img) => {
            let mut out = GrayImage::new(img.width(), img.height());
            for (o, p) in out.pixels_mut().zip(img.pixels()) {
                if p[0] > 255 {
                    return Err(Error::BadLabel {
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
pub fn read_label(path: &Path) -> Result<GrayImage> {
    label_from_image(path, &read_image(path)?)
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
