//! One sample of a source release before it is written: where its pixels come from,
//! what the release says about it, and its conversion to an 8-bit grey image and a
//! label map (pixel value = class id).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};

use super::volume::read_slice;
use crate::io::{grey8_from_image, read_image};
use crate::{Error, Result};

/// Where a sample sits in the splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The training split.
    Train,
    /// The validation split.
    Val,
    /// The test split.
    Test,
}

impl Role {
    /// The split file stem: `train`, `val` or `test`.
    pub fn split_name(self) -> &'static str {
        match self {
            Role::Train => "train",
            Role::Val => "val",
            Role::Test => "test",
        }
    }

    /// The three roles in split-file order.
    pub const ALL: [Role; 3] = [Role::Train, Role::Val, Role::Test];
}

/// The image of a sample.
#[derive(Debug, Clone)]
pub(crate) enum ImageSource {
    /// An image file of any supported format (PNG, JPEG, BMP, TIFF), colour or grey.
    File(PathBuf),
    /// A 2-D medical volume (NIfTI `.nii`/`.nii.gz` or MetaImage `.mhd`).
    Volume(PathBuf),
}

/// A closed outline's vertices in pixel coordinates.
pub(crate) type Polygon = Vec<(f32, f32)>;

/// The annotation of a sample.
#[derive(Debug, Clone)]
pub(crate) enum LabelSource {
    /// Binary masks, united: foreground where the grey value is at least 128 (which
    /// also reads JPEG-compressed masks right), or 1 in a mask of only 0 and 1;
    /// none: a negative (empty) label.
    Masks(Vec<PathBuf>),
    /// A closed outline (for example HC18's ellipse), filled.
    Outline(PathBuf),
    /// Polygons in image pixel coordinates (DDTI's XML), filled.
    Polygons(Vec<Polygon>),
    /// A label map whose values are translated (`--map`), or taken as class ids.
    LabelMap {
        /// The label file.
        path: PathBuf,
        /// Source value to class id; empty: values below `classes` are class ids,
        /// and for two classes any value of at least 128 is the target.
        map: BTreeMap<u8, u8>,
        /// The class count, background included.
        classes: u32,
    },
    /// A 2-D label volume whose values are class ids (CAMUS ground truth).
    Volume(PathBuf),
}

/// One sample of a source release.
#[derive(Debug, Clone)]
pub(crate) struct SourceItem {
    /// The release's own identifier (a file stem such as `bus_0001-l`), matched
    /// against folds files.
    pub release_id: String,
    /// The US30K name ([`super::safe_name`] of the release id, or a prefixed form).
    pub name: String,
    /// The patient or case, where the release records one; samples of one patient
    /// always share a split.
    pub patient: Option<String>,
    /// The class or pathology the release gives (`benign`, `malignant`, ...).
    pub class: Option<String>,
    /// Millimetres per pixel, where the release gives it.
    pub pixel_size_mm: Option<f64>,
    /// The split the release (or a folds file) puts the sample in.
    pub role: Option<Role>,
    /// The position in the release's numerically sorted list (for index-based folds
    /// files such as TG3K's `tg3k-trainval.json`).
    pub release_index: Option<usize>,
    /// The image.
    pub image: ImageSource,
    /// The annotation.
    pub label: LabelSource,
}

impl SourceItem {
    /// A sample of an image file with binary masks.
    pub fn with_masks(release_id: &str, image: PathBuf, masks: Vec<PathBuf>) -> Self {
        Self {
            release_id: release_id.to_string(),
            name: super::safe_name(release_id),
            patient: None,
            class: None,
            pixel_size_mm: None,
            role: None,
            release_index: None,
            image: ImageSource::File(image),
            label: LabelSource::Masks(masks),
        }
    }

    /// The image's source file: what a report names when the sample is passed over.
    pub fn image_path(&self) -> &Path {
        match &self.image {
            ImageSource::File(p) | ImageSource::Volume(p) => p,
        }
    }

    /// The source files, image first, for the manifest.
    pub fn source_files(&self) -> Vec<&Path> {
        let mut files = vec![self.image_path()];
        match &self.label {
            LabelSource::Masks(ps) => files.extend(ps.iter().map(PathBuf::as_path)),
            LabelSource::Outline(p) | LabelSource::Volume(p) => files.push(p),
            LabelSource::LabelMap { path, .. } => files.push(path),
            LabelSource::Polygons(_) => {}
        }
        files
    }

    /// Decodes the sample: the image as 8-bit grey (as the loader reads it) and its
    /// label map of the same size.
    pub fn convert(&self) -> Result<(GrayImage, GrayImage)> {
        let (image, image_path) = match &self.image {
            ImageSource::File(p) => (grey8_from_image(&read_image(p)?), p),
            ImageSource::Volume(p) => (read_slice(p)?, p),
        };
        let (w, h) = image.dimensions();
        let same_size = |label: GrayImage, path: &Path| -> Result<GrayImage> {
            if label.dimensions() == (w, h) {
                Ok(label)
            } else {
                Err(Error::SizeMismatch {
                    image: image_path.clone(),
                    image_size: (w, h),
                    label: path.to_path_buf(),
                    label_size: label.dimensions(),
                })
            }
        };
        let label = match &self.label {
            LabelSource::Masks(paths) => {
                let mut label = GrayImage::new(w, h);
                for path in paths {
                    let mask = same_size(grey8_from_image(&read_image(path)?), path)?;
                    // A 0/1 mask marks its target with 1; any other with bright pixels.
                    let threshold = if mask.pixels().all(|p| p[0] <= 1) {
                        1
                    } else {
                        128
                    };
                    for (l, m) in label.pixels_mut().zip(mask.pixels()) {
                        if m[0] >= threshold {
                            l[0] = 1;
                        }
                    }
                }
                label
            }
            LabelSource::Outline(path) => {
                fill_outline(&same_size(grey8_from_image(&read_image(path)?), path)?)
            }
            LabelSource::Polygons(polygons) => fill_polygons(w, h, polygons),
            LabelSource::LabelMap { path, map, classes } => {
                let raw = same_size(crate::io::read_label(path)?, path)?;
                map_values(path, &raw, map, *classes)?
            }
            LabelSource::Volume(path) => same_size(read_slice(path)?, path)?,
        };
        Ok((image, label))
    }
}

/// Fills a closed outline: the outline's pixels and every pixel it encloses (not
/// 4-connected to the image border through background) become 1.
pub(crate) fn fill_outline(outline: &GrayImage) -> GrayImage {
    use imageproc::region_labelling::{connected_components, Connectivity};
    let (w, h) = outline.dimensions();
    // Label the background (non-outline) regions; the ones touching the border lie
    // outside the outline.
    let background = GrayImage::from_fn(w, h, |x, y| {
        Luma([u8::from(outline.get_pixel(x, y)[0] < 128)])
    });
    let regions = connected_components(&background, Connectivity::Four, Luma([0u8]));
    let mut outside = std::collections::HashSet::new();
    for x in 0..w {
        outside.insert(regions.get_pixel(x, 0)[0]);
        outside.insert(regions.get_pixel(x, h.saturating_sub(1))[0]);
    }
    for y in 0..h {
        outside.insert(regions.get_pixel(0, y)[0]);
        outside.insert(regions.get_pixel(w.saturating_sub(1), y)[0]);
    }
    GrayImage::from_fn(w, h, |x, y| {
        let region = regions.get_pixel(x, y)[0];
        // Region 0 is the outline itself.
        Luma([u8::from(region == 0 || !outside.contains(&region))])
    })
}

/// Fills polygons (pixel coordinates, any number of vertices) with 1.
pub(crate) fn fill_polygons(w: u32, h: u32, polygons: &[Polygon]) -> GrayImage {
    use imageproc::point::Point;
    let mut label = GrayImage::new(w, h);
    for polygon in polygons {
        let mut points: Vec<Point<i32>> = polygon
            .iter()
            .map(|&(x, y)| Point::new(x.round() as i32, y.round() as i32))
            .collect();
        points.dedup();
        // imageproc wants an open polygon of at least three distinct vertices.
        if points.len() > 1 && points.first() == points.last() {
            points.pop();
        }
        if points.len() >= 3 {
            imageproc::drawing::draw_polygon_mut(&mut label, &points, Luma([1u8]));
        }
    }
    label
}

/// Translates a label map's values into class ids.
fn map_values(
    path: &Path,
    raw: &GrayImage,
    map: &BTreeMap<u8, u8>,
    classes: u32,
) -> Result<GrayImage> {
    let mut out = GrayImage::new(raw.width(), raw.height());
    let mut lut = [None::<u8>; 256];
    if map.is_empty() {
        let as_ids = raw.pixels().all(|p| u32::from(p[0]) < classes);
        for (v, slot) in lut.iter_mut().enumerate() {
            *slot = if as_ids && (v as u32) < classes {
                Some(v as u8)
            } else if !as_ids && classes == 2 {
                Some(u8::from(v >= 128))
            } else {
                None
            };
        }
    } else {
        lut[0] = Some(0);
        for (&from, &to) in map {
            lut[usize::from(from)] = Some(to);
        }
    }
    for (o, p) in out.pixels_mut().zip(raw.pixels()) {
        o[0] = match lut[usize::from(p[0])] {
            Some(v) => v,
            None if map.is_empty() => {
                return Err(Error::LabelOutOfRange {
                    path: path.to_path_buf(),
                    value: p[0],
                    classes,
                })
            }
            None => {
                return Err(Error::UnmappedLabel {
                    path: path.to_path_buf(),
                    value: p[0],
                })
            }
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ellipse_outline_is_filled_inside_only() {
        let mut outline = GrayImage::new(40, 30);
        imageproc::drawing::draw_hollow_ellipse_mut(&mut outline, (20, 15), 12, 8, Luma([255]));
        let filled = fill_outline(&outline);
        assert_eq!(filled.get_pixel(20, 15)[0], 1, "centre");
        assert_eq!(filled.get_pixel(1, 1)[0], 0, "corner");
        assert_eq!(filled.get_pixel(32, 15)[0], 1, "on the outline");
        let inside = filled.pixels().filter(|p| p[0] == 1).count();
        // pi * 12 * 8 = 301.6 pixels, give or take the outline's width.
        assert!((280..=360).contains(&inside), "{inside}");
    }

    #[test]
    fn polygons_are_filled() {
        let square = vec![(2.0, 2.0), (7.0, 2.0), (7.0, 7.0), (2.0, 7.0), (2.0, 2.0)];
        let label = fill_polygons(10, 10, &[square, vec![(1.0, 1.0)]]);
        assert_eq!(label.get_pixel(4, 4)[0], 1);
        assert_eq!(label.get_pixel(8, 8)[0], 0);
        assert_eq!(label.pixels().filter(|p| p[0] == 1).count(), 36);
    }

    #[test]
    fn label_maps_are_translated_or_refused_with_the_value() {
        let raw = GrayImage::from_fn(4, 1, |x, _| Luma([[0, 255, 255, 7][x as usize]]));
        let path = Path::new("m.png");
        let mapped = map_values(path, &raw, &BTreeMap::from([(255, 1), (7, 2)]), 3).unwrap();
        assert_eq!(mapped.as_raw(), &[0, 1, 1, 2]);
        let err = map_values(path, &raw, &BTreeMap::from([(255, 1)]), 3).unwrap_err();
        assert!(err.to_string().contains("value 7"), "{err}");
        // Without a map: 2 classes binarise at 128, more classes need ids.
        let binary = map_values(path, &raw, &BTreeMap::new(), 2).unwrap();
        assert_eq!(binary.as_raw(), &[0, 1, 1, 0]);
        assert!(map_values(path, &raw, &BTreeMap::new(), 4).is_err());
        let ids = GrayImage::from_fn(3, 1, |x, _| Luma([x as u8]));
        assert_eq!(
            map_values(path, &ids, &BTreeMap::new(), 4)
                .unwrap()
                .as_raw(),
            &[0, 1, 2]
        );
    }
}
