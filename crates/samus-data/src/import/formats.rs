//! The public releases' layouts: each lister walks a source folder and returns its
//! samples ([`SourceItem`]) and the files it passed over, with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::item::{ImageSource, LabelSource, Polygon, Role, SourceItem};
use super::{FolderLayout, Skipped};
use crate::{Error, Result};

/// What a lister found.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// The samples.
    pub items: Vec<SourceItem>,
    /// Files passed over, and why.
    pub skipped: Vec<Skipped>,
}

impl Listing {
    fn skip(&mut self, source: &Path, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            source: source.to_path_buf(),
            reason: reason.into(),
        });
    }
}

/// The folder `dir`, or an error naming it (and what should be in it).
fn require_dir(dir: &Path, what: &str) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::source(dir, format!("is not a folder; {what}")))
    }
}

fn stem_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_image(path: &Path) -> bool {
    crate::io::has_image_extension(path)
}

/// The image files of `dir` by stem, sorted (a folder that cannot be read is an
/// error naming it).
fn images_by_stem(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() && is_image(&path) {
            out.insert(stem_of(&path), path);
        }
    }
    Ok(out)
}

/// Stems ordered by their number when they are numbers (`2` before `10`), then by
/// text: the order of the releases' index-based folds files.
fn numeric_order(stems: &mut [String]) {
    stems.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        _ => a.cmp(b),
    });
}

/// `dir/<name>` if it is a folder, else `dir` (a release unpacked one level deeper or
/// not).
fn descend(dir: &Path, name: &str) -> PathBuf {
    let inner = dir.join(name);
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

/// BUSI (Al-Dhabyani et al. 2020): `Dataset_BUSI_with_GT/{benign,malignant,normal}/`
/// with `NAME.png` and its masks `NAME_mask.png`, `NAME_mask_1.png`, ... (united).
pub(crate) fn busi(src: &Path) -> Result<Listing> {
    let root = descend(src, "Dataset_BUSI_with_GT");
    let mut listing = Listing::default();
    let mut found = false;
    for class in ["benign", "malignant", "normal"] {
        let dir = root.join(class);
        if !dir.is_dir() {
            continue;
        }
        found = true;
        let files = images_by_stem(&dir)?;
        let mut masks: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
        for (stem, path) in &files {
            if let Some(image) = busi_mask_of(stem) {
                if files.contains_key(image) {
                    masks.entry(image).or_default().push(path.clone());
                } else {
                    listing.skip(path, format!("a mask whose image {image}.png is missing"));
                }
            }
        }
        for (stem, path) in &files {
            if stem.contains("_mask") {
                if busi_mask_of(stem).is_none() {
                    listing.skip(
                        path,
                        "named like a mask, but neither NAME_mask nor NAME_mask_N",
                    );
                }
                continue;
            }
            match masks.remove(stem.as_str()) {
                Some(m) => {
                    let mut item = SourceItem::with_masks(stem, path.clone(), m);
                    item.class = Some(class.to_string());
                    listing.items.push(item);
                }
                None => listing.skip(path, format!("no mask {stem}_mask.png beside it")),
            }
        }
    }
    if !found {
        return Err(Error::source(
            &root,
            "has none of the folders benign/, malignant/, normal/ of the BUSI release (Dataset_BUSI_with_GT)",
        ));
    }
    Ok(listing)
}

/// The image stem of a BUSI mask name (`NAME_mask`, `NAME_mask_N`), or `None`.
fn busi_mask_of(stem: &str) -> Option<&str> {
    let (image, suffix) = stem.split_at(stem.find("_mask")?);
    let suffix = &suffix["_mask".len()..];
    let numbered = suffix
        .strip_prefix('_')
        .is_some_and(|n| n.parse::<u32>().is_ok());
    (suffix.is_empty() || numbered).then_some(image)
}

/// BUS-BRA (Gomez-Flores et al. 2024): `Images/bus_NNNN-s.png`,
/// `Masks/mask_NNNN-s.png` and `bus_data.csv` (ID, Case, Histology, Pathology, ...);
/// the case is the patient.
pub(crate) fn busbra(src: &Path) -> Result<Listing> {
    let root = descend(src, "BUSBRA");
    let images = root.join("Images");
    let masks = root.join("Masks");
    require_dir(&images, "BUS-BRA keeps its scans in Images/")?;
    require_dir(&masks, "BUS-BRA keeps its masks in Masks/")?;
    let csv_path = root.join("bus_data.csv");
    let mut reader =
        csv::Reader::from_path(&csv_path).map_err(|e| Error::source(&csv_path, e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| Error::source(&csv_path, format!("has no readable header: {e}")))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| Error::source(&csv_path, format!("has no `{name}` column")))
    };
    let (id_col, case_col, pathology_col) = (column("ID")?, column("Case")?, column("Pathology")?);
    let mut listing = Listing::default();
    let mut listed = std::collections::BTreeSet::new();
    for (line, record) in reader.records().enumerate() {
        let record =
            record.map_err(|e| Error::source(&csv_path, format!("line {}: {e}", line + 2)))?;
        let field = |i: usize| record.get(i).map(str::trim).unwrap_or_default();
        let id = field(id_col);
        if id.is_empty() {
            return Err(Error::source(
                &csv_path,
                format!("line {}: empty ID", line + 2),
            ));
        }
        listed.insert(id.to_string());
        let image = images.join(format!("{id}.png"));
        let mask = masks.join(format!(
            "mask_{}.png",
            id.strip_prefix("bus_").unwrap_or(id)
        ));
        if !image.is_file() {
            listing.skip(
                &image,
                format!("listed in bus_data.csv (line {}) but missing", line + 2),
            );
            continue;
        }
        if !mask.is_file() {
            listing.skip(&image, format!("its mask {} is missing", mask.display()));
            continue;
        }
        let mut item = SourceItem::with_masks(id, image, vec![mask]);
        item.patient = Some(field(case_col).to_string()).filter(|c| !c.is_empty());
        item.class = Some(field(pathology_col).to_string()).filter(|c| !c.is_empty());
        if item.patient.is_none() {
            return Err(Error::source(
                &csv_path,
                format!("line {}: `{id}` has no Case", line + 2),
            ));
        }
        listing.items.push(item);
    }
    for (stem, path) in images_by_stem(&images)? {
        if !listed.contains(&stem) {
            listing.skip(&path, "not listed in bus_data.csv (its case is unknown)");
        }
    }
    Ok(listing)
}

/// HC18 (van den Heuvel et al. 2018): `training_set/NNN_HC.png` (also `NNN_2HC.png`,
/// further images of the same fetus) with the ellipse outline
/// `NNN_HC_Annotation.png`, filled, and `training_set_pixel_size_and_HC.csv`
/// (filename, pixel size in mm, head circumference). The test set has no
/// annotations and is passed over.
pub(crate) fn hc18(src: &Path) -> Result<Listing> {
    let dir = descend(src, "training_set");
    require_dir(&dir, "HC18 keeps its annotated scans in training_set/")?;
    let mut pixel_size: BTreeMap<String, f64> = BTreeMap::new();
    let csv_path = [
        dir.join("training_set_pixel_size_and_HC.csv"),
        src.join("training_set_pixel_size_and_HC.csv"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    if let Some(csv_path) = &csv_path {
        let mut reader =
            csv::Reader::from_path(csv_path).map_err(|e| Error::source(csv_path, e.to_string()))?;
        for (line, record) in reader.records().enumerate() {
            let record =
                record.map_err(|e| Error::source(csv_path, format!("line {}: {e}", line + 2)))?;
            let (Some(name), Some(size)) = (record.get(0), record.get(1)) else {
                return Err(Error::source(
                    csv_path,
                    format!("line {}: too few columns", line + 2),
                ));
            };
            let size: f64 = size.trim().parse().map_err(|_| {
                Error::source(
                    csv_path,
                    format!("line {}: pixel size `{size}` is not a number", line + 2),
                )
            })?;
            pixel_size.insert(stem_of(Path::new(name.trim())), size);
        }
    }
    let files = images_by_stem(&dir)?;
    let mut listing = Listing::default();
    for (stem, path) in &files {
        if stem.ends_with("_Annotation") {
            if !files.contains_key(stem.trim_end_matches("_Annotation")) {
                listing.skip(path, "an annotation whose image is missing");
            }
            continue;
        }
        let Some(annotation) = files.get(&format!("{stem}_Annotation")) else {
            listing.skip(path, format!("no outline {stem}_Annotation.png beside it"));
            continue;
        };
        let mut item = SourceItem::with_masks(stem, path.clone(), vec![]);
        item.label = LabelSource::Outline(annotation.clone());
        item.patient = stem.split('_').next().map(str::to_string);
        item.pixel_size_mm = pixel_size.get(stem).copied();
        listing.items.push(item);
    }
    if let Some(test) = Some(src.join("test_set")).filter(|p| p.is_dir()) {
        listing.skip(&test, "HC18's test set has no public annotations");
    }
    Ok(listing)
}

/// Pairs of `image_dir/<stem>.*` and `mask_dir/<stem>.*` (any image format, JPEG
/// masks included), in numeric order, with their position in that order.
fn paired(
    listing: &mut Listing,
    image_dir: &Path,
    mask_dir: &Path,
    prefix: &str,
) -> Result<Vec<SourceItem>> {
    require_dir(image_dir, "see datasets/README.md for the layout")?;
    require_dir(mask_dir, "see datasets/README.md for the layout")?;
    let images = images_by_stem(image_dir)?;
    let masks = images_by_stem(mask_dir)?;
    let mut stems: Vec<String> = images.keys().cloned().collect();
    numeric_order(&mut stems);
    let mut items = Vec::new();
    for (index, stem) in stems.iter().enumerate() {
        let image = &images[stem];
        match masks.get(stem) {
            Some(mask) => {
                let mut item = SourceItem::with_masks(
                    &format!("{prefix}{stem}"),
                    image.clone(),
                    vec![mask.clone()],
                );
                item.release_index = Some(index);
                items.push(item);
            }
            None => listing.skip(image, format!("no mask {stem}.* in {}", mask_dir.display())),
        }
    }
    for (stem, mask) in &masks {
        if !images.contains_key(stem) {
            listing.skip(mask, "a mask whose image is missing");
        }
    }
    Ok(items)
}

/// TN3K (Gong et al. 2022): `trainval-image/`, `trainval-mask/`, `test-image/`,
/// `test-mask/` (`NNNN.jpg`); the release's test images stay the test split (named
/// `test-NNNN`), `--folds-from tn3k-trainval-fold0.json` fixes train and validation.
pub(crate) fn tn3k(src: &Path) -> Result<Listing> {
    let root = descend(src, "tn3k");
    let mut listing = Listing::default();
    let trainval = paired(
        &mut listing,
        &root.join("trainval-image"),
        &root.join("trainval-mask"),
        "",
    )?;
    let mut test = paired(
        &mut listing,
        &root.join("test-image"),
        &root.join("test-mask"),
        "test-",
    )?;
    for item in &mut test {
        item.role = Some(Role::Test);
        item.release_index = None;
    }
    listing.items = trainval.into_iter().chain(test).collect();
    Ok(listing)
}

/// TG3K (Gong et al. 2021): `thyroid-image/` and `thyroid-mask/` (`NNNN.jpg`);
/// `--folds-from tg3k-trainval.json` fixes train and validation.
pub(crate) fn tg3k(src: &Path) -> Result<Listing> {
    let root = descend(src, "tg3k");
    let mut listing = Listing::default();
    listing.items = paired(
        &mut listing,
        &root.join("thyroid-image"),
        &root.join("thyroid-mask"),
        "",
    )?;
    Ok(listing)
}

/// UDIAT, "Dataset B" (Yap et al. 2017): `original/NNNNNN.png` with `GT/NNNNNN.png`.
pub(crate) fn udiat(src: &Path) -> Result<Listing> {
    let root = descend(src, "BUS");
    let mut listing = Listing::default();
    listing.items = paired(&mut listing, &root.join("original"), &root.join("GT"), "")?;
    for item in &mut listing.items {
        item.release_index = None;
    }
    Ok(listing)
}

/// DDTI (Pedraza et al. 2015), as released: `N.xml` per case (`<number>`, `<tirads>`,
/// and per `<mark>` the `<image>` number and the nodule outline as JSON points in
/// `<svg>`), images `N_M.jpg`; the outlines are filled, the case is the patient.
pub(crate) fn ddti(src: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    let images = images_by_stem(src)?;
    let mut xmls: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(|source| Error::Io {
            path: src.to_path_buf(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")))
        .collect();
    if xmls.is_empty() {
        return Err(Error::source(
            src,
            "has no case files (N.xml) of the DDTI release",
        ));
    }
    xmls.sort();
    let mut used = std::collections::BTreeSet::new();
    for xml in &xmls {
        let case = match read_ddti_case(xml) {
            Ok(c) => c,
            Err(e) => {
                listing.skip(xml, e.to_string());
                continue;
            }
        };
        for (image_no, polygons) in &case.marks {
            let stem = format!("{}_{image_no}", case.number);
            let Some(image) = images.get(&stem) else {
                listing.skip(
                    xml,
                    format!("mark of image {image_no}, but {stem}.jpg is missing"),
                );
                continue;
            };
            used.insert(stem.clone());
            if polygons.is_empty() {
                listing.skip(image, format!("{} draws no outline for it", xml.display()));
                continue;
            }
            let mut item = SourceItem::with_masks(&stem, image.clone(), vec![]);
            item.label = LabelSource::Polygons(polygons.clone());
            item.patient = Some(case.number.clone());
            item.class = case.tirads.clone();
            listing.items.push(item);
        }
    }
    for (stem, path) in &images {
        if !used.contains(stem) {
            listing.skip(path, "no case file marks it");
        }
    }
    Ok(listing)
}

/// One DDTI case file.
struct DdtiCase {
    number: String,
    tirads: Option<String>,
    marks: Vec<(String, Vec<Polygon>)>,
}

fn read_ddti_case(path: &Path) -> Result<DdtiCase> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let doc = roxmltree::Document::parse(&text)
        .map_err(|e| Error::source(path, format!("is not XML: {e}")))?;
    let child_text = |node: roxmltree::Node, tag: &str| {
        node.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    let root = doc.root_element();
    let number =
        child_text(root, "number").ok_or_else(|| Error::source(path, "has no <number>"))?;
    let mut marks = Vec::new();
    for mark in root.children().filter(|c| c.has_tag_name("mark")) {
        let image = child_text(mark, "image")
            .ok_or_else(|| Error::source(path, "a <mark> has no <image>"))?;
        let mut polygons = Vec::new();
        if let Some(svg) = child_text(mark, "svg") {
            let shapes: serde_json::Value = serde_json::from_str(&svg).map_err(|e| {
                Error::source(path, format!("the <svg> of image {image} is not JSON: {e}"))
            })?;
            for shape in shapes.as_array().into_iter().flatten() {
                let points = shape
                    .get("points")
                    .and_then(|p| p.as_array())
                    .ok_or_else(|| {
                        Error::source(path, format!("a shape of image {image} has no points"))
                    })?;
                let polygon = points
                    .iter()
                    .map(|p| {
                        let coord = |k: &str| p.get(k).and_then(|v| v.as_f64());
                        match (coord("x"), coord("y")) {
                            (Some(x), Some(y)) => Ok((x as f32, y as f32)),
                            _ => Err(Error::source(
                                path,
                                format!("a point of image {image} is not {{\"x\", \"y\"}}: {p}"),
                            )),
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                polygons.push(polygon);
            }
        }
        marks.push((image, polygons));
    }
    Ok(DdtiCase {
        number,
        tirads: child_text(root, "tirads"),
        marks,
    })
}

/// CAMUS (Leclerc et al. 2019): per patient `patientNNNN/patientNNNN_{2CH,4CH}_{ED,ES}`
/// with `_gt` beside it, as NIfTI (`.nii.gz`, the current release's
/// `database_nifti/`) or MetaImage (`.mhd` + `.raw`, the original `training/`);
/// labels LV 1, myocardium 2, left atrium 3.
pub(crate) fn camus(src: &Path) -> Result<Listing> {
    let root = ["database_nifti", "training"]
        .iter()
        .map(|d| src.join(d))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| src.to_path_buf());
    let mut patients: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|source| Error::Io {
            path: root.clone(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && stem_of(p).starts_with("patient"))
        .collect();
    if patients.is_empty() {
        return Err(Error::source(
            &root,
            "has no patientNNNN/ folders of the CAMUS release",
        ));
    }
    patients.sort();
    let mut listing = Listing::default();
    for dir in &patients {
        let patient = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for view in ["2CH", "4CH"] {
            for phase in ["ED", "ES"] {
                let base = format!("{patient}_{view}_{phase}");
                let find = |stem: &str| {
                    [".nii.gz", ".nii", ".mhd"]
                        .iter()
                        .map(|ext| dir.join(format!("{stem}{ext}")))
                        .find(|p| p.is_file())
                };
                let Some(image) = find(&base) else { continue };
                let Some(gt) = find(&format!("{base}_gt")) else {
                    listing.skip(&image, format!("no ground truth {base}_gt beside it"));
                    continue;
                };
                let mut item = SourceItem::with_masks(&base, image.clone(), vec![]);
                item.image = ImageSource::Volume(image.clone());
                item.label = LabelSource::Volume(gt);
                item.patient = Some(patient.clone());
                item.class = Some(format!("{view} {phase}"));
                item.pixel_size_mm = super::volume::read_spacing(&image)?;
                listing.items.push(item);
            }
        }
    }
    Ok(listing)
}

/// Any folder: the images matched by `layout.images` (a glob relative to `src`), each
/// with the mask(s) of `layout.masks` with `{stem}` replaced by the image's stem (a
/// glob too: several matches are united).
pub(crate) fn folder(src: &Path, layout: &FolderLayout) -> Result<Listing> {
    let pattern = |p: &str| src.join(p).to_string_lossy().into_owned();
    let images = glob::glob(&pattern(&layout.images)).map_err(|e| Error::BadOption {
        option: "--images",
        reason: format!("`{}` is not a glob pattern: {e}", layout.images),
    })?;
    if !layout.masks.contains("{stem}") {
        return Err(Error::BadOption {
            option: "--masks",
            reason: format!(
                "`{}` has no {{stem}} (the image's file stem) to fill in",
                layout.masks
            ),
        });
    }
    let mut listing = Listing::default();
    let mut paths: Vec<PathBuf> = images.flatten().filter(|p| p.is_file()).collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::source(
            src,
            format!("has no file matching --images `{}`", layout.images),
        ));
    }
    for image in paths {
        let stem = stem_of(&image);
        let masks_pattern = pattern(
            &layout
                .masks
                .replace("{stem}", &glob::Pattern::escape(&stem)),
        );
        let mut masks: Vec<PathBuf> = glob::glob(&masks_pattern)
            .map_err(|e| Error::BadOption {
                option: "--masks",
                reason: format!("`{}` is not a glob pattern: {e}", layout.masks),
            })?
            .flatten()
            .filter(|p| p.is_file() && *p != image)
            .collect();
        masks.sort();
        if masks.is_empty() {
            listing.skip(&image, format!("no mask matches {masks_pattern}"));
            continue;
        }
        // A DICOM scan records its pixel size (its ultrasound region or Pixel
        // Spacing): the manifest keeps it, for measurements in mm at evaluation.
        let pixel_size_mm = if crate::dicom::is_dicom(&image) {
            // The manifest has one size per image: non-square pixels are left out
            // rather than measured wrong.
            crate::dicom::DicomFile::open(&image)?
                .pixel_size()
                .filter(|s| (s.x_mm - s.y_mm).abs() <= 1e-9 * s.x_mm)
                .map(|s| s.x_mm)
        } else {
            None
        };
        let mut item = SourceItem::with_masks(&stem, image, masks.clone());
        item.pixel_size_mm = pixel_size_mm;
        if layout.classes > 2 || !layout.map.is_empty() {
            if masks.len() > 1 {
                listing.skip(
                    item.image_path(),
                    format!(
                        "{} masks match, but a label map with --map or --classes must be one file",
                        masks.len()
                    ),
                );
                continue;
            }
            item.label = LabelSource::LabelMap {
                path: masks[0].clone(),
                map: layout.map.clone(),
                classes: layout.classes,
            };
        }
        listing.items.push(item);
    }
    Ok(listing)
}
