//! Importing public ultrasound releases, or any folder of scans and masks, into the
//! US30K layout: what `samus data import` runs.
//!
//! [`import_dataset`] lists a release in its own layout ([`ImportFormat`]), converts
//! every sample to an 8-bit grey PNG and a label PNG (pixel value = class id: masks
//! of one image united, outlines and polygons filled), splits the samples by patient
//! (never one patient on two sides) or by the release's folds, and writes
//! `<root>/<dataset>/img|label/`, `<root>/<dataset>/manifest.csv`, the dataset's
//! entry in `MainPatient/class.json` and its split files, and its lines in the global
//! ones. Names are made safe and stable ([`safe_name`]); a file is written only when
//! its content changes and always atomically, so importing twice changes nothing.
//! What could not be imported is reported with the reason ([`ImportReport`]).
//!
//! ```no_run
//! use samus_data::import::{import_dataset, ImportFormat, ImportOptions};
//!
//! let report = import_dataset(
//!     ImportFormat::Busbra,
//!     "downloads/BUSBRA".as_ref(),
//!     "datasets/US30K".as_ref(),
//!     &ImportOptions::default(),
//! )?;
//! println!("{} samples, {} skipped", report.imported(), report.skipped.len());
//! # Ok::<(), samus_data::Error>(())
//! ```

mod assign;
mod formats;
mod item;
mod name;
mod volume;
pub(crate) mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;
use samus_core::atomic_write::OutputGuard;
use serde::Serialize;

pub use item::Role;
pub use name::safe_name;

use assign::{apply_folds, assign_roles, SplitPlan};
use item::SourceItem;
use writer::{
    create_dir, merge_class_map, png_bytes, split_counts, write_if_changed, write_manifest,
    write_splits, Written,
};

use crate::split::MAIN_PATIENT_DIR;
use crate::{Error, Result};

/// A source layout that `samus data import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImportFormat {
    /// BUSI: `Dataset_BUSI_with_GT/{benign,malignant,normal}/NAME.png` and `NAME_mask*.png`.
    Busi,
    /// BUS-BRA: `Images/`, `Masks/`, `bus_data.csv`.
    Busbra,
    /// HC18: `training_set/NNN_HC.png`, `NNN_HC_Annotation.png` (ellipse outlines).
    Hc18,
    /// TN3K: `trainval-image|mask/`, `test-image|mask/`.
    Tn3k,
    /// DDTI: `N.xml` case files with polygon outlines, `N_M.jpg` images.
    Ddti,
    /// TG3K: `thyroid-image|mask/`.
    Tg3k,
    /// UDIAT Dataset B: `original/`, `GT/`.
    Udiat,
    /// CAMUS: `patientNNNN/` with NIfTI or MetaImage frames and `_gt` labels.
    Camus,
    /// Any folder, described by a [`FolderLayout`].
    Folder,
}

impl ImportFormat {
    /// Every format, in the order `samus data import --help` lists them.
    pub const ALL: [ImportFormat; 9] = [
        ImportFormat::Busi,
        ImportFormat::Busbra,
        ImportFormat::Hc18,
        ImportFormat::Tn3k,
        ImportFormat::Ddti,
        ImportFormat::Tg3k,
        ImportFormat::Udiat,
        ImportFormat::Camus,
        ImportFormat::Folder,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ImportFormat::Busi => "busi",
            ImportFormat::Busbra => "busbra",
            ImportFormat::Hc18 => "hc18",
            ImportFormat::Tn3k => "tn3k",
            ImportFormat::Ddti => "ddti",
            ImportFormat::Tg3k => "tg3k",
            ImportFormat::Udiat => "udiat",
            ImportFormat::Camus => "camus",
            ImportFormat::Folder => "folder",
        }
    }

    /// The US30K dataset folder it is imported into unless `--dataset` says otherwise.
    pub fn default_dataset(self) -> &'static str {
        match self {
            ImportFormat::Busi => "Breast-BUSI",
            ImportFormat::Busbra => "Breast-BUSBRA",
            ImportFormat::Hc18 => "FetalHead-HC18",
            ImportFormat::Tn3k => "ThyroidNodule-TN3K",
            ImportFormat::Ddti => "ThyroidNodule-DDTI",
            ImportFormat::Tg3k => "Thyroid-TG3K",
            ImportFormat::Udiat => "Breast-UDIAT",
            ImportFormat::Camus => "Echocardiography-CAMUS",
            ImportFormat::Folder => "Custom",
        }
    }
}

impl fmt::Display for ImportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ImportFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        ImportFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = ImportFormat::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format `{s}` (one of {})", names.join(", "))
            })
    }
}

/// How the `folder` format finds a sample's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderLayout {
    /// A glob relative to the source folder matching the images, e.g. `scans/*.png`.
    pub images: String,
    /// The mask(s) of an image, relative to the source folder, with `{stem}` for the
    /// image's file stem, e.g. `masks/{stem}_seg.png`; a glob (`masks/{stem}_*.png`)
    /// unites several binary masks.
    pub masks: String,
    /// Mask value to class id (`--map 255=1`); other non-zero values are an error.
    /// Empty: values below `classes` are class ids, and for two classes a mask
    /// with brighter values has its target where the value is at least 128.
    pub map: BTreeMap<u8, u8>,
    /// Classes, background included.
    pub classes: u32,
}

/// Options of [`import_dataset`]; [`ImportOptions::default`] gives the command line's
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// The dataset folder (default: [`ImportFormat::default_dataset`]).
    pub dataset: Option<String>,
    /// Validation fraction of all samples (default 0.1, or 0 where the release or the
    /// folds file fixes validation).
    pub val: Option<f64>,
    /// Test fraction of all samples (default 0.2, or 0 where the release or the folds
    /// file fixes the test set).
    pub test: Option<f64>,
    /// Seed of the split (default 1234, the reference's).
    pub seed: u64,
    /// A folds file that fixes splits (see `assign::apply_folds`).
    pub folds_from: Option<PathBuf>,
    /// The test fold of a folds CSV (1-based).
    pub fold: Option<u32>,
    /// Leave out samples with an empty label (default: import them as negatives).
    pub skip_empty: bool,
    /// The `folder` format's layout.
    pub folder: Option<FolderLayout>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            dataset: None,
            val: None,
            test: None,
            seed: 1234,
            folds_from: None,
            fold: None,
            skip_empty: false,
            folder: None,
        }
    }
}

impl ImportOptions {
    /// The `folder` format's layout, or the error saying it is needed.
    fn folder_layout(&self) -> Result<&FolderLayout> {
        self.folder.as_ref().ok_or_else(|| Error::BadOption {
            option: "--images/--masks",
            reason: "the folder format needs --images GLOB and --masks TEMPLATE".into(),
        })
    }

    fn validate(&self, format: ImportFormat) -> Result<()> {
        for (option, value) in [("--val", self.val), ("--test", self.test)] {
            if let Some(v) = value {
                if !(0.0..1.0).contains(&v) {
                    return Err(Error::BadOption {
                        option,
                        reason: format!("{v} is not a fraction in [0, 1)"),
                    });
                }
            }
        }
        if self.val.unwrap_or(0.0) + self.test.unwrap_or(0.0) >= 1.0 {
            return Err(Error::BadOption {
                option: "--val/--test",
                reason: "together they leave no training samples".into(),
            });
        }
        if self.fold.is_some() && self.folds_from.is_none() {
            return Err(Error::BadOption {
                option: "--fold",
                reason: "needs --folds-from FILE".into(),
            });
        }
        if let Some(name) = &self.dataset {
            let plain = !name.is_empty()
                && !name.starts_with('.')
                && name != MAIN_PATIENT_DIR
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !plain {
                return Err(Error::BadOption {
                    option: "--dataset",
                    reason: format!(
                        "`{name}` is not a plain folder name (letters, digits, `-`, `_`, `.`; not {MAIN_PATIENT_DIR})"
                    ),
                });
            }
        }
        match format {
            ImportFormat::Folder => {
                let layout = self.folder_layout()?;
                if !(2..=256).contains(&layout.classes) {
                    return Err(Error::BadOption {
                        option: "--classes",
                        reason: format!(
                            "{} classes: 2 to 256, background included",
                            layout.classes
                        ),
                    });
                }
                match layout
                    .map
                    .iter()
                    .find(|(_, &to)| u32::from(to) >= layout.classes)
                {
                    Some((from, to)) => Err(Error::BadOption {
                        option: "--map",
                        reason: format!(
                            "{from}={to}: class id {to} with {} classes",
                            layout.classes
                        ),
                    }),
                    None => Ok(()),
                }
            }
            _ if self.folder.is_some() => Err(Error::BadOption {
                option: "--images/--masks",
                reason: format!("only the folder format takes them, not {format}"),
            }),
            _ => Ok(()),
        }
    }
}

/// A source file that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The file (or folder).
    pub source: PathBuf,
    /// Why it was passed over.
    pub reason: String,
}

/// What [`import_dataset`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The format read.
    pub format: String,
    /// The dataset folder written.
    pub dataset: String,
    /// Its classes, background included.
    pub classes: u32,
    /// Samples whose image or label was written (new or changed).
    pub written: usize,
    /// Samples whose files already held exactly this content.
    pub unchanged: usize,
    /// Imported samples with an empty label (negatives).
    pub negatives: usize,
    /// Patients (or cases) among the imported samples, where the release has them.
    pub patients: Option<usize>,
    /// Samples per split.
    pub splits: BTreeMap<String, usize>,
    /// Files passed over, with the reason.
    pub skipped: Vec<Skipped>,
    /// Release ids a folds file names that the source does not have.
    pub unknown_in_folds: Vec<String>,
}

impl ImportReport {
    /// Samples imported (written or unchanged).
    pub fn imported(&self) -> usize {
        self.written + self.unchanged
    }
}

/// Imports `src`, a release in `format`'s layout, into the US30K root `root` (created
/// if needed; other datasets in it are kept). See the [module docs](self).
pub fn import_dataset(
    format: ImportFormat,
    src: &Path,
    root: &Path,
    options: &ImportOptions,
) -> Result<ImportReport> {
    options.validate(format)?;
    if !src.is_dir() {
        return Err(Error::Source {
            path: src.to_path_buf(),
            reason: "is not a folder (give the folder the release was unpacked into)".into(),
        });
    }
    let dataset = options
        .dataset
        .clone()
        .unwrap_or_else(|| format.default_dataset().to_string());
    let classes = match format {
        ImportFormat::Camus => 4,
        ImportFormat::Folder => options.folder.as_ref().map_or(2, |l| l.classes),
        _ => 2,
    };
    let mut listing = match format {
        ImportFormat::Busi => formats::busi(src)?,
        ImportFormat::Busbra => formats::busbra(src)?,
        ImportFormat::Hc18 => formats::hc18(src)?,
        ImportFormat::Tn3k => formats::tn3k(src)?,
        ImportFormat::Ddti => formats::ddti(src)?,
        ImportFormat::Tg3k => formats::tg3k(src)?,
        ImportFormat::Udiat => formats::udiat(src)?,
        ImportFormat::Camus => formats::camus(src)?,
        ImportFormat::Folder => formats::folder(src, options.folder_layout()?)?,
    };
    // Two sources that would share a name: the first keeps it.
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut items: Vec<SourceItem> = Vec::with_capacity(listing.items.len());
    for item in std::mem::take(&mut listing.items) {
        let first = item.image_path().to_path_buf();
        match names.get(&item.name) {
            Some(other) => listing.skipped.push(Skipped {
                source: first,
                reason: format!("its name {} is taken by {}", item.name, other.display()),
            }),
            None => {
                names.insert(item.name.clone(), first);
                items.push(item);
            }
        }
    }
    if items.is_empty() {
        return Err(Error::Source {
            path: src.to_path_buf(),
            reason: format!(
                "holds no sample in the {format} layout ({} file(s) passed over)",
                listing.skipped.len()
            ),
        });
    }
    let unknown_in_folds = match &options.folds_from {
        Some(file) => apply_folds(&mut items, file, options.fold)?,
        None => Vec::new(),
    };
    let fixed = |role: Role| items.iter().any(|it| it.role == Some(role));
    let plan = SplitPlan {
        val: options
            .val
            .unwrap_or(if fixed(Role::Val) { 0.0 } else { 0.1 }),
        test: options
            .test
            .unwrap_or(if fixed(Role::Test) { 0.0 } else { 0.2 }),
        seed: options.seed,
    };

    assign_roles(&mut items, plan);

    // Convert and write in parallel, one sample at a time in memory per thread.
    let ds_dir = root.join(&dataset);
    for dir in [
        root.join(MAIN_PATIENT_DIR),
        ds_dir.join("img"),
        ds_dir.join("label"),
    ] {
        create_dir(&dir)?;
    }
    let outcomes: Vec<Outcome> = items
        .par_iter()
        .map(|item| import_one(item, &ds_dir, options.skip_empty))
        .collect::<Result<_>>()?;
    let mut kept: Vec<SourceItem> = Vec::new();
    let (mut written, mut unchanged, mut negatives) = (0, 0, 0);
    for (item, outcome) in items.into_iter().zip(outcomes) {
        let first = item.image_path().to_path_buf();
        match outcome {
            Outcome::Imported { written: w, empty } => {
                if w == Written::Changed {
                    written += 1;
                } else {
                    unchanged += 1;
                }
                negatives += usize::from(empty);
                kept.push(item);
            }
            Outcome::Skipped(reason) => listing.skipped.push(Skipped {
                source: first,
                reason,
            }),
        }
    }
    if kept.is_empty() {
        return Err(Error::Source {
            path: src.to_path_buf(),
            reason: format!(
                "no sample could be imported ({} file(s) passed over)",
                listing.skipped.len()
            ),
        });
    }
    let refs: Vec<&SourceItem> = kept.iter().collect();
    merge_class_map(root, &dataset, classes)?;
    write_splits(root, &dataset, classes, &refs)?;
    write_manifest(root, &dataset, src, &refs)?;

    let patients: BTreeSet<&str> = kept.iter().filter_map(|it| it.patient.as_deref()).collect();
    listing.skipped.sort_by(|a, b| a.source.cmp(&b.source));
    Ok(ImportReport {
        format: format.name().to_string(),
        dataset,
        classes,
        written,
        unchanged,
        negatives,
        patients: (!patients.is_empty()).then_some(patients.len()),
        splits: split_counts(&refs),
        skipped: listing.skipped,
        unknown_in_folds,
    })
}

/// What became of one sample.
enum Outcome {
    /// Its image and label are in the dataset folder.
    Imported {
        /// Whether either file changed.
        written: Written,
        /// Whether its label is empty (a negative).
        empty: bool,
    },
    /// It could not be read or converted (or is empty with `--skip-empty`).
    Skipped(String),
}

/// Converts one sample and writes its two PNGs (where they changed). A source that
/// cannot be read is skipped with the reason; a file that cannot be written stops
/// the import.
fn import_one(item: &SourceItem, ds_dir: &Path, skip_empty: bool) -> Result<Outcome> {
    let (image, label) = match item.convert() {
        Ok(pair) => pair,
        Err(e) => return Ok(Outcome::Skipped(e.to_string())),
    };
    let empty = label.pixels().all(|p| p[0] == 0);
    if empty && skip_empty {
        return Ok(Outcome::Skipped("its label is empty (--skip-empty)".into()));
    }
    let guard = OutputGuard::new(item.source_files());
    let name = format!("{}.png", item.name);
    let image_path = ds_dir.join("img").join(&name);
    let label_path = ds_dir.join("label").join(&name);
    let a = write_if_changed(&guard, &image_path, &png_bytes(&image_path, &image)?)?;
    let b = write_if_changed(&guard, &label_path, &png_bytes(&label_path, &label)?)?;
    let written = if a == Written::Unchanged && b == Written::Unchanged {
        Written::Unchanged
    } else {
        Written::Changed
    };
    Ok(Outcome::Imported { written, empty })
}

#[cfg(test)]
mod tests;
