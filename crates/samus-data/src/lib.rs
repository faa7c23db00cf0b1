//! The US30K data layout for SAMUS training and evaluation.
//!
//! US30K keeps one folder per source dataset (`<root>/<dataset>/img/<name>.png`,
//! `<root>/<dataset>/label/<name>.png`) and describes its splits in
//! `<root>/MainPatient/`: `class.json` (classes per dataset) and split files whose
//! lines name samples. [`Us30kSplit`] opens a split and yields [`Sample`]s: the image
//! at 256 x 256 in [0, 1], the binary target at 256 and 128, a click and a box
//! prompt, transformed as the reference does ([`transform`], [`prompt`]); its
//! [`Us30kSplit::batches`] decode seeded, shuffled batches in parallel. Every fallible
//! function returns [`Result`], whose [`Error`] names the file (and line) at fault;
//! every file written ([`synth::write_dataset`], [`import::import_dataset`]) goes
//! through [`samus_core::atomic_write`]. [`import`] converts the public releases
//! (BUSI, BUS-BRA, HC18, TN3K, DDTI, TG3K, UDIAT, CAMUS) and plain folders into the
//! layout, split by patient.
//!
//! ```
//! use samus_data::split::SplitEntry;
//!
//! let entry: SplitEntry = "1/Breast-BUSI/benign0001".parse().unwrap();
//! assert_eq!(entry.class_id, Some(1));
//! assert_eq!(entry.dataset, "Breast-BUSI");
//! assert_eq!(entry.image_path("/data/US30K".as_ref()).to_str(), Some("/data/US30K/Breast-BUSI/img/benign0001.png"));
//! ```

pub mod annotation;
pub mod check;
pub mod dataset;
pub mod dicom;
mod error;
pub mod frames;
pub mod import;
pub mod io;
pub mod measure;
pub mod prompt;
pub mod split;
pub mod synth;
pub mod transform;

pub use dataset::{Batch, DatasetOptions, PromptMode, Sample, Us30kSplit};
pub use error::{Error, Result};
pub use split::{ClassMap, SplitEntry};
