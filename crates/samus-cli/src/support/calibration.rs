//! Millimetres for results: the pixel size a command measures with (`--pixel-size`,
//! else the DICOM file's calibration at the prompt), and the measurement columns
//! of the results tables.

use std::path::Path;

use anyhow::Result;
use image::GrayImage;
use samus_data::dicom::{DicomFile, PixelSizeSource};
use samus_data::measure::{measure_mask, Measurements};
use samus_model::PointPrompt;

/// The pixel size to measure with, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Millimetres per pixel, x then y.
    pub mm: (f64, f64),
    /// `--pixel-size`, `DICOM ultrasound region` or `DICOM pixel spacing`.
    pub source: &'static str,
}

impl Calibration {
    /// `given` (from `--pixel-size`), else the calibration of `image` when it is a
    /// DICOM file, at `at` (the prompt; NaN for the largest region).
    pub fn of(
        given: Option<(f64, f64)>,
        image: Option<&Path>,
        at: (f64, f64),
    ) -> Result<Option<Self>> {
        if let Some(mm) = given {
            return Ok(Some(Self {
                mm,
                source: "--pixel-size",
            }));
        }
        let Some(path) = image.filter(|p| samus_data::dicom::is_dicom(p)) else {
            return Ok(None);
        };
        let file = DicomFile::open(path)?;
        Ok(file.pixel_size_at(at.0, at.1).map(|s| Self {
            mm: (s.x_mm, s.y_mm),
            source: match s.source {
                PixelSizeSource::UltrasoundRegion => "DICOM ultrasound region",
                _ => "DICOM pixel spacing",
            },
        }))
    }

    /// The measurements of `mask` (`None` when it is empty).
    pub fn measure(&self, mask: &GrayImage) -> Option<Measurements> {
        measure_mask(mask, self.mm)
    }
}

/// Where a prompt is, for choosing the ultrasound region that calibrates it: the
/// first point, else the box's centre, else NaN (no prompt: the largest region).
pub fn prompt_position(points: &[PointPrompt], bbox: Option<[f32; 4]>) -> (f64, f64) {
    points
        .first()
        .map(|p| (f64::from(p.x), f64::from(p.y)))
        .or(bbox.map(|b| (f64::from(b[0] + b[2]) / 2.0, f64::from(b[1] + b[3]) / 2.0)))
        .unwrap_or((f64::NAN, f64::NAN))
}

/// The measurement columns of the results tables (empty where no pixel size is
/// known).
pub const MM_COLUMNS: [&str; 4] = [
    "area_mm2",
    "equivalent_diameter_mm",
    "perimeter_mm",
    "ellipse_circumference_mm",
];

/// The cells of [`MM_COLUMNS`] for `measurements`.
pub fn mm_cells(measurements: Option<&Measurements>) -> Vec<String> {
    match measurements {
        Some(m) => vec![
            format!("{:.3}", m.area_mm2),
            format!("{:.3}", m.equivalent_diameter_mm),
            format!("{:.3}", m.perimeter_mm),
            format!("{:.3}", m.ellipse_circumference_mm),
        ],
        None => vec![String::new(); MM_COLUMNS.len()],
    }
}
