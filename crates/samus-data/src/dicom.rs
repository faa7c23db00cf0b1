//! DICOM ultrasound files, read with dicom-rs (`dicom-object`, `dicom-pixeldata`):
//! single- and multi-frame; MONOCHROME1/2, RGB, YBR_FULL and YBR_FULL_422; 8 and
//! 16 bit; uncompressed (explicit or implicit VR, deflated), RLE Lossless and JPEG
//! Baseline/Extended/Lossless. The physical pixel size comes from the Sequence of
//! Ultrasound Regions, else from Pixel Spacing; the frame times from Frame Time,
//! Frame Time Vector or Cine Rate.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use samus_data::dicom::DicomFile;
//!
//! let file = DicomFile::open("scan.dcm".as_ref())?;
//! let first = file.frame(0)?;                     // image::DynamicImage
//! if let Some(size) = file.pixel_size_at(400.0, 300.0) {
//!     println!("{} x {} mm per pixel", size.x_mm, size.y_mm);
//! }
//! # Ok(())
//! # }
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::{ConvertOptions, PixelDecoder, VoiLutOption};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use image::DynamicImage;

use crate::io::MAX_IMAGE_PIXELS;
use crate::{Error, Result};

/// Whether `path` is a DICOM file: the `DICM` mark after the 128-byte preamble, or
/// a `.dcm` / `.dicom` extension.
pub fn is_dicom(path: &Path) -> bool {
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

/// Transfer syntaxes whose pixel data this build decodes, with their names.
const DECODED_TRANSFER_SYNTAXES: [(&str, &str); 8] = [
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    (
        "1.2.840.10008.1.2.1.99",
        "Deflated Explicit VR Little Endian",
    ),
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline"),
    ("1.2.840.10008.1.2.4.51", "JPEG Extended"),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless"),
];

/// Where a pixel size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PixelSizeSource {
    /// A region of the Sequence of Ultrasound Regions (PhysicalDeltaX/Y).
    UltrasoundRegion,
    /// The Pixel Spacing attribute.
    PixelSpacing,
}

/// The physical size of one pixel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelSize {
    /// Millimetres per pixel along x (columns).
    pub x_mm: f64,
    /// Millimetres per pixel along y (rows).
    pub y_mm: f64,
    /// Where it came from.
    pub source: PixelSizeSource,
}

/// One item of the Sequence of Ultrasound Regions.
#[derive(Debug, Clone, PartialEq)]
pub struct UltrasoundRegion {
    /// Left column (RegionLocationMinX0).
    pub x0: u32,
    /// Top row.
    pub y0: u32,
    /// Right column, inclusive (RegionLocationMaxX1).
    pub x1: u32,
    /// Bottom row, inclusive.
    pub y1: u32,
    /// RegionSpatialFormat (1: 2D tissue or colour flow; 2: M-mode; 3: spectral;
    /// ...).
    pub spatial_format: u16,
    /// Millimetres per pixel, when both axes are in centimetres (unit code 3).
    pub size_mm: Option<(f64, f64)>,
}

impl UltrasoundRegion {
    fn contains(&self, x: f64, y: f64) -> bool {
        x >= f64::from(self.x0)
            && x <= f64::from(self.x1) + 1.0
            && y >= f64::from(self.y0)
            && y <= f64::from(self.y1) + 1.0
    }

    fn area(&self) -> u64 {
        (u64::from(self.x1.saturating_sub(self.x0)) + 1)
            * (u64::from(self.y1.saturating_sub(self.y0)) + 1)
    }
}

/// A DICOM file opened for its frames and its calibration.
pub struct DicomFile {
    path: PathBuf,
    object: DefaultDicomObject,
    frames: u32,
    width: u32,
    height: u32,
    regions: Vec<UltrasoundRegion>,
    pixel_spacing: Option<(f64, f64)>,
    frame_times_s: Vec<f64>,
}

impl std::fmt::Debug for DicomFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomFile")
            .field("path", &self.path)
            .field("frames", &self.frames)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("regions", &self.regions)
            .finish_non_exhaustive()
    }
}

impl DicomFile {
    /// Opens `path` and reads its attributes; the pixel data is decoded frame by
    /// frame by [`DicomFile::frame`]. Fails, naming the file, on a file that is not
    /// DICOM or is cut short, without pixel data, or in a transfer syntax this build
    /// cannot decode (naming its UID and how to convert it).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Missing {
                path: path.to_path_buf(),
            });
        }
        let object = dicom_object::open_file(path).map_err(|e| {
            Error::source(
                path,
                format!("not a readable DICOM file ({})", first_line(&e)),
            )
        })?;
        let ts = object
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .trim()
            .to_string();
        if !DECODED_TRANSFER_SYNTAXES.iter().any(|(uid, _)| *uid == ts) {
            let name = TransferSyntaxRegistry
                .get(&ts)
                .map(|t| t.name().to_string());
            return Err(Error::source(
                path,
                format!(
                    "transfer syntax {ts}{} is not supported; convert the file to an uncompressed \
                     one first, e.g. `gdcmconv --raw IN OUT` or `dcmdjpeg`/`dcmdjp2k IN OUT`",
                    name.map_or_else(String::new, |n| format!(" ({n})"))
                ),
            ));
        }
        if object
            .element_opt(tags::PIXEL_DATA)
            .ok()
            .flatten()
            .is_none()
        {
            return Err(Error::source(path, "holds no pixel data (no image in it)"));
        }
        let int = |tag| -> Option<u32> {
            object
                .element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_int::<u32>().ok())
        };
        let (Some(height), Some(width)) = (int(tags::ROWS), int(tags::COLUMNS)) else {
            return Err(Error::source(path, "has pixel data but no Rows/Columns"));
        };
        if width == 0 || height == 0 {
            return Err(Error::source(
                path,
                format!("is {width}x{height} pixels: empty"),
            ));
        }
        if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
            return Err(Error::ImageTooLarge {
                path: path.to_path_buf(),
                width,
                height,
            });
        }
        let announced = int(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
        // A frame takes at least one byte (one fragment when encapsulated), so the
        // pixel data bounds the count a damaged header may announce.
        let held = object
            .element_opt(tags::PIXEL_DATA)
            .ok()
            .flatten()
            .and_then(|e| {
                let value = e.value();
                value
                    .fragments()
                    .map(<[_]>::len)
                    .or_else(|| value.primitive().map(|p| p.calculate_byte_len()))
            })
            .unwrap_or(0);
        if announced as usize > held {
            return Err(Error::source(
                path,
                format!(
                    "announces {announced} frames in Number of Frames, but its pixel data \
                     cannot hold that many (truncated or damaged)"
                ),
            ));
        }
        let frames = announced;
        let regions = ultrasound_regions(&object);
        let pixel_spacing = object
            .element_opt(tags::PIXEL_SPACING)
            .ok()
            .flatten()
            .and_then(|e| e.to_multi_float64().ok())
            .filter(|v| v.len() == 2 && v.iter().all(|s| s.is_finite() && *s > 0.0))
            // Pixel Spacing is row spacing (y), then column spacing (x).
            .map(|v| (v[1], v[0]));
        let frame_times_s = frame_times(&object, frames);
        Ok(Self {
            path: path.to_path_buf(),
            object,
            frames,
            width,
            height,
            regions,
            pixel_spacing,
            frame_times_s,
        })
    }

    /// Number of frames (1 for a single image).
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The Sequence of Ultrasound Regions.
    pub fn regions(&self) -> &[UltrasoundRegion] {
        &self.regions
    }

    /// Frame `index` (from 0) as an image: 8 or 16 bit, grey or RGB (YBR converted,
    /// MONOCHROME1 inverted).
    pub fn frame(&self, index: u32) -> Result<DynamicImage> {
        if index >= self.frames {
            return Err(Error::source(
                &self.path,
                format!("has {} frames; frame {index} does not exist", self.frames),
            ));
        }
        if let Some(image) = self.native_ybr_frame(index)? {
            return Ok(image);
        }
        let decoded = self.object.decode_pixel_data_frame(index).map_err(|e| {
            Error::source(
                &self.path,
                format!("cannot decode frame {index}: {}", first_line(&e)),
            )
        })?;
        // Ultrasound stores display values: they are kept as they are unless the
        // file gives a window; 16-bit words of fewer stored bits are scaled to the
        // full range.
        let windowed = self
            .object
            .element_opt(tags::WINDOW_CENTER)
            .ok()
            .flatten()
            .is_some();
        let voi = if windowed {
            VoiLutOption::First
        } else {
            VoiLutOption::Identity
        };
        let options = ConvertOptions::new().with_voi_lut(voi);
        let image = decoded
            .to_dynamic_image_with_options(0, &options)
            .map_err(|e| {
                Error::source(
                    &self.path,
                    format!("cannot convert frame {index}: {}", first_line(&e)),
                )
            })?;
        let stored = u32::from(decoded.bits_stored());
        let inverted = text_tag(&self.object, tags::PHOTOMETRIC_INTERPRETATION)
            .is_some_and(|p| p == "MONOCHROME1");
        Ok(match image {
            DynamicImage::ImageLuma16(mut grey) if !windowed && (9..16).contains(&stored) => {
                // dicom-pixeldata inverts MONOCHROME1 over the whole 16 bits: a
                // 12-bit value v comes as 65535 - v. Undo that, then invert and scale
                // within the stored range.
                let max = (1u32 << stored) - 1;
                for p in grey.pixels_mut() {
                    let v = if inverted {
                        max - (65535 - u32::from(p[0])).min(max)
                    } else {
                        u32::from(p[0]).min(max)
                    };
                    p[0] = (v * 65535 / max) as u16;
                }
                DynamicImage::ImageLuma16(grey)
            }
            other => other,
        })
    }

    /// Frame `index` of uncompressed 8-bit YBR_FULL or YBR_FULL_422 pixel data,
    /// converted to RGB here: dicom-pixeldata 0.10.1 adds 0.344 (Cb - 128) to
    /// green where the standard subtracts it (23 levels off on the test pattern of
    /// `tests/dicom.rs`), and slices YBR_FULL_422 frames as if they were full.
    /// `None` for every other layout.
    fn native_ybr_frame(&self, index: u32) -> Result<Option<DynamicImage>> {
        let text = |tag| text_tag(&self.object, tag);
        let photometric = text(tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
        let subsampled = match photometric.as_str() {
            "YBR_FULL" => false,
            "YBR_FULL_422" => true,
            _ => return Ok(None),
        };
        let ts = self
            .object
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .trim();
        let native = matches!(
            ts,
            "1.2.840.10008.1.2"
                | "1.2.840.10008.1.2.1"
                | "1.2.840.10008.1.2.1.99"
                | "1.2.840.10008.1.2.2"
        );
        let bits = text(tags::BITS_ALLOCATED).and_then(|b| b.parse::<u16>().ok());
        if !native || bits != Some(8) {
            return Ok(None);
        }
        let planar = text(tags::PLANAR_CONFIGURATION).is_some_and(|p| p == "1");
        let Some(bytes) = self
            .object
            .element_opt(tags::PIXEL_DATA)
            .ok()
            .flatten()
            .and_then(|e| e.to_bytes().ok())
        else {
            return Err(Error::source(&self.path, "cannot read its pixel data"));
        };
        let (w, h) = (self.width as usize, self.height as usize);
        if subsampled && w % 2 == 1 {
            return Err(Error::source(
                &self.path,
                format!("is YBR_FULL_422 with an odd width ({w}); the standard needs an even one"),
            ));
        }
        let per_frame = if subsampled { w * h * 2 } else { w * h * 3 };
        let start = per_frame * index as usize;
        let Some(frame) = bytes.get(start..start + per_frame) else {
            return Err(Error::source(
                &self.path,
                format!("its pixel data stops before the end of frame {index}"),
            ));
        };
        let ybr_at = |i: usize| -> [u8; 3] {
            if subsampled {
                // Y1 Y2 Cb Cr for each pair of pixels on a row.
                let pair = (i / 2) * 4;
                [frame[pair + i % 2], frame[pair + 2], frame[pair + 3]]
            } else if planar {
                [frame[i], frame[w * h + i], frame[2 * w * h + i]]
            } else {
                [frame[3 * i], frame[3 * i + 1], frame[3 * i + 2]]
            }
        };
        let mut rgb = image::RgbImage::new(self.width, self.height);
        for (i, p) in rgb.pixels_mut().enumerate() {
            p.0 = ybr_full_to_rgb(ybr_at(i));
        }
        Ok(Some(DynamicImage::ImageRgb8(rgb)))
    }

    /// The pixel size at `(x, y)`: from the 2D ultrasound region that contains the
    /// point (else the largest calibrated 2D region), else from Pixel Spacing.
    pub fn pixel_size_at(&self, x: f64, y: f64) -> Option<PixelSize> {
        let calibrated: Vec<&UltrasoundRegion> = self
            .regions
            .iter()
            .filter(|r| r.spatial_format == 1 && r.size_mm.is_some())
            .collect();
        let region = calibrated
            .iter()
            .find(|r| r.contains(x, y))
            .or_else(|| calibrated.iter().max_by_key(|r| r.area()));
        if let Some((x_mm, y_mm)) = region.and_then(|r| r.size_mm) {
            return Some(PixelSize {
                x_mm,
                y_mm,
                source: PixelSizeSource::UltrasoundRegion,
            });
        }
        self.pixel_spacing.map(|(x_mm, y_mm)| PixelSize {
            x_mm,
            y_mm,
            source: PixelSizeSource::PixelSpacing,
        })
    }

    /// The pixel size of the largest calibrated 2D region, else Pixel Spacing.
    pub fn pixel_size(&self) -> Option<PixelSize> {
        self.pixel_size_at(f64::NAN, f64::NAN)
    }

    /// The time of frame `index` from the first, in seconds, when the file says.
    pub fn frame_time_s(&self, index: u32) -> Option<f64> {
        self.frame_times_s.get(index as usize).copied()
    }
}

/// The text of element `tag`, trimmed, if it is there.
fn text_tag(object: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    object
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
}

/// One YBR_FULL pixel as RGB (PS3.3 C.7.6.3.1.2, the inverse of its transform).
fn ybr_full_to_rgb([y, cb, cr]: [u8; 3]) -> [u8; 3] {
    let (y, cb, cr) = (f64::from(y), f64::from(cb) - 128.0, f64::from(cr) - 128.0);
    let r = y + 1.402 * cr;
    let g = y - 0.344_136 * cb - 0.714_136 * cr;
    let b = y + 1.772 * cb;
    [r, g, b].map(|v| v.round().clamp(0.0, 255.0) as u8)
}

/// The first line of an error (dicom-rs appends backtraces to some).
fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Centimetres, as unit code 3 of PhysicalUnitsX/YDirection.
const UNIT_CM: u16 = 3;

fn ultrasound_regions(object: &InMemDicomObject) -> Vec<UltrasoundRegion> {
    let Some(items) = object
        .element_opt(tags::SEQUENCE_OF_ULTRASOUND_REGIONS)
        .ok()
        .flatten()
        .and_then(|e| e.items())
    else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let int = |tag| {
                item.element_opt(tag)
                    .ok()
                    .flatten()
                    .and_then(|e| e.to_int::<u32>().ok())
            };
            let float = |tag| {
                item.element_opt(tag)
                    .ok()
                    .flatten()
                    .and_then(|e| e.to_float64().ok())
                    .filter(|v| v.is_finite() && *v > 0.0)
            };
            let units_cm = [
                tags::PHYSICAL_UNITS_X_DIRECTION,
                tags::PHYSICAL_UNITS_Y_DIRECTION,
            ]
            .iter()
            .all(|&t| int(t) == Some(u32::from(UNIT_CM)));
            let size_mm = match (float(tags::PHYSICAL_DELTA_X), float(tags::PHYSICAL_DELTA_Y)) {
                (Some(dx), Some(dy)) if units_cm => Some((dx * 10.0, dy * 10.0)),
                _ => None,
            };
            Some(UltrasoundRegion {
                x0: int(tags::REGION_LOCATION_MIN_X0)?,
                y0: int(tags::REGION_LOCATION_MIN_Y0)?,
                x1: int(tags::REGION_LOCATION_MAX_X1)?,
                y1: int(tags::REGION_LOCATION_MAX_Y1)?,
                spatial_format: int(tags::REGION_SPATIAL_FORMAT).unwrap_or(0) as u16,
                size_mm,
            })
        })
        .collect()
}

/// Each frame's time from the first, in seconds: Frame Time Vector (increments,
/// ms), else Frame Time (ms per frame), else Cine Rate (frames per second).
fn frame_times(object: &InMemDicomObject, frames: u32) -> Vec<f64> {
    let floats = |tag| {
        object
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_multi_float64().ok())
    };
    if let Some(vector) = floats(tags::FRAME_TIME_VECTOR).filter(|v| v.len() == frames as usize) {
        let mut t = 0.0;
        return vector
            .iter()
            .enumerate()
            .map(|(i, ms)| {
                if i > 0 {
                    t += ms / 1000.0;
                }
                t
            })
            .collect();
    }
    let period_s = floats(tags::FRAME_TIME)
        .and_then(|v| v.first().copied())
        .filter(|ms| ms.is_finite() && *ms > 0.0)
        .map(|ms| ms / 1000.0)
        .or_else(|| {
            floats(tags::CINE_RATE)
                .and_then(|v| v.first().copied())
                .filter(|fps| fps.is_finite() && *fps > 0.0)
                .map(|fps| 1.0 / fps)
        });
    match period_s {
        Some(p) => (0..frames).map(|i| f64::from(i) * p).collect(),
        None => Vec::new(),
    }
}

/// One RGB pixel as YBR_FULL (PS3.3 C.7.6.3.1.2), unrounded.
fn rgb_to_ybr_full(rgb: [u8; 3]) -> [f64; 3] {
    let [r, g, b] = rgb.map(f64::from);
    [
        0.299 * r + 0.587 * g + 0.114 * b,
        -0.168_736 * r - 0.331_264 * g + 0.5 * b + 128.0,
        0.5 * r - 0.418_688 * g - 0.081_312 * b + 128.0,
    ]
}

/// How [`write_dicom`] stores the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DicomPixels {
    /// 8-bit grey, MONOCHROME2.
    Grey8,
    /// 16-bit grey, MONOCHROME2.
    Grey16,
    /// 8-bit grey stored inverted as MONOCHROME1 (reads back as the original).
    Grey8Inverted,
    /// The top 12 bits of 16-bit grey, stored inverted as MONOCHROME1 in 16-bit
    /// words (Bits Stored 12): reads back as the 12-bit values scaled to 16 bits.
    Grey12Inverted,
    /// 8-bit RGB.
    Rgb8,
    /// 8-bit YBR_FULL (stored from RGB with the standard's transform).
    YbrFull8,
    /// 8-bit YBR_FULL_422: full-resolution Y, Cb and Cr shared by each pair of
    /// pixels on a row (even widths only).
    YbrFull422,
}

/// What [`write_dicom`] writes besides the frames.
#[derive(Debug, Clone, Default)]
pub struct DicomCalibration {
    /// Millimetres per pixel (x, y), written as one 2D ultrasound region covering
    /// the image (PhysicalDeltaX/Y in cm).
    pub region_mm: Option<(f64, f64)>,
    /// Millimetres per pixel (x, y), written as Pixel Spacing.
    pub pixel_spacing_mm: Option<(f64, f64)>,
    /// Milliseconds between frames (Frame Time).
    pub frame_time_ms: Option<f64>,
}

/// Writes `frames` (all of one size) as an uncompressed ultrasound DICOM file
/// (Explicit VR Little Endian; multi-frame when there are several): for tests,
/// examples and tools that need DICOM input.
pub fn write_dicom(
    path: &Path,
    frames: &[DynamicImage],
    pixels: DicomPixels,
    calibration: &DicomCalibration,
) -> Result<()> {
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::meta::FileMetaTableBuilder;

    let Some(first) = frames.first() else {
        return Err(Error::source(path, "no frames to write"));
    };
    let (w, h) = (first.width(), first.height());
    if frames.iter().any(|f| (f.width(), f.height()) != (w, h)) {
        return Err(Error::source(path, "frames of different sizes"));
    }
    let (Ok(rows), Ok(cols)) = (u16::try_from(h), u16::try_from(w)) else {
        return Err(Error::source(
            path,
            format!("{w}x{h}: DICOM rows and columns stop at 65535"),
        ));
    };
    let (photometric, samples, bits) = match pixels {
        DicomPixels::Grey8 => ("MONOCHROME2", 1u16, 8u16),
        DicomPixels::Grey16 => ("MONOCHROME2", 1, 16),
        DicomPixels::Grey12Inverted => ("MONOCHROME1", 1, 16),
        DicomPixels::Grey8Inverted => ("MONOCHROME1", 1, 8),
        DicomPixels::Rgb8 => ("RGB", 3, 8),
        DicomPixels::YbrFull8 => ("YBR_FULL", 3, 8),
        DicomPixels::YbrFull422 => ("YBR_FULL_422", 3, 8),
    };
    let stored = if pixels == DicomPixels::Grey12Inverted {
        12u16
    } else {
        bits
    };
    if pixels == DicomPixels::YbrFull422 && w % 2 == 1 {
        return Err(Error::source(
            path,
            format!("YBR_FULL_422 needs an even width, not {w}"),
        ));
    }
    let mut bytes: Vec<u8> = Vec::new();
    let mut words: Vec<u16> = Vec::new();
    for frame in frames {
        match pixels {
            DicomPixels::Grey8 => bytes.extend(frame.to_luma8().into_raw()),
            DicomPixels::Grey8Inverted => {
                bytes.extend(frame.to_luma8().into_raw().into_iter().map(|v| 255 - v))
            }
            DicomPixels::Grey16 => words.extend(frame.to_luma16().into_raw()),
            DicomPixels::Grey12Inverted => words.extend(
                frame
                    .to_luma16()
                    .into_raw()
                    .into_iter()
                    .map(|v| 4095 - (v >> 4)),
            ),
            DicomPixels::Rgb8 => bytes.extend(frame.to_rgb8().into_raw()),
            DicomPixels::YbrFull8 => {
                for p in frame.to_rgb8().pixels() {
                    bytes.extend(rgb_to_ybr_full(p.0).map(|v| v.round().clamp(0.0, 255.0) as u8));
                }
            }
            DicomPixels::YbrFull422 => {
                let rgb = frame.to_rgb8();
                for pair in rgb.as_raw().chunks_exact(6) {
                    let a = rgb_to_ybr_full([pair[0], pair[1], pair[2]]);
                    let b = rgb_to_ybr_full([pair[3], pair[4], pair[5]]);
                    bytes.extend(
                        [a[0], b[0], (a[1] + b[1]) / 2.0, (a[2] + b[2]) / 2.0]
                            .map(|v| v.round().clamp(0.0, 255.0) as u8),
                    );
                }
            }
        }
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    const US_MULTIFRAME: &str = "1.2.840.10008.5.1.4.1.1.3.1";
    const US_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.6.1";
    let sop_class = if frames.len() > 1 {
        US_MULTIFRAME
    } else {
        US_IMAGE
    };
    let instance = "2.25.1234567890123456789";
    let mut elements = vec![
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(sop_class)),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(instance),
        ),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("US")),
        DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(samples),
        ),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from(photometric),
        ),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(bits)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(stored)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(stored - 1)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
    ];
    if samples == 3 {
        elements.push(DataElement::new(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
    }
    if frames.len() > 1 {
        elements.push(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from(frames.len().to_string()),
        ));
    }
    if let Some(ms) = calibration.frame_time_ms {
        elements.push(DataElement::new(
            tags::FRAME_TIME,
            VR::DS,
            PrimitiveValue::from(format!("{ms}")),
        ));
    }
    if let Some((x, y)) = calibration.pixel_spacing_mm {
        elements.push(DataElement::new(
            tags::PIXEL_SPACING,
            VR::DS,
            PrimitiveValue::from(format!("{y}\\{x}")),
        ));
    }
    if let Some((x_mm, y_mm)) = calibration.region_mm {
        let region = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::REGION_SPATIAL_FORMAT,
                VR::US,
                PrimitiveValue::from(1u16),
            ),
            DataElement::new(
                tags::REGION_LOCATION_MIN_X0,
                VR::UL,
                PrimitiveValue::from(0u32),
            ),
            DataElement::new(
                tags::REGION_LOCATION_MIN_Y0,
                VR::UL,
                PrimitiveValue::from(0u32),
            ),
            DataElement::new(
                tags::REGION_LOCATION_MAX_X1,
                VR::UL,
                PrimitiveValue::from(w - 1),
            ),
            DataElement::new(
                tags::REGION_LOCATION_MAX_Y1,
                VR::UL,
                PrimitiveValue::from(h - 1),
            ),
            DataElement::new(
                tags::PHYSICAL_UNITS_X_DIRECTION,
                VR::US,
                PrimitiveValue::from(UNIT_CM),
            ),
            DataElement::new(
                tags::PHYSICAL_UNITS_Y_DIRECTION,
                VR::US,
                PrimitiveValue::from(UNIT_CM),
            ),
            DataElement::new(
                tags::PHYSICAL_DELTA_X,
                VR::FD,
                PrimitiveValue::from(x_mm / 10.0),
            ),
            DataElement::new(
                tags::PHYSICAL_DELTA_Y,
                VR::FD,
                PrimitiveValue::from(y_mm / 10.0),
            ),
        ]);
        elements.push(DataElement::new(
            tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
            VR::SQ,
            DataSetSequence::from(vec![region]),
        ));
    }
    let pixel_data = if bits == 16 {
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(words.into()))
    } else {
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes))
    };
    elements.push(pixel_data);
    let object = InMemDicomObject::from_element_iter(elements)
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2.1")
                .media_storage_sop_class_uid(sop_class)
                .media_storage_sop_instance_uid(instance),
        )
        .map_err(|e| {
            Error::source(
                path,
                format!("cannot build the DICOM header: {}", first_line(&e)),
            )
        })?;
    let mut out = Vec::new();
    object
        .write_all(&mut out)
        .map_err(|e| Error::source(path, format!("cannot encode DICOM: {}", first_line(&e))))?;
    samus_core::atomic_write::write_atomic(path, &out)?;
    Ok(())
}
