//! The US30K data layout for SAMUS training and evaluation.
//!
//! US30K keeps one folder per source dataset (`<root>/<dataset>/img/<name>.png`,
//! `<root>/<dataset>/label/<name>.png`) and describes its splits in
//! `<root>/MainPatient/`: `class.json` (classes per dataset) and split files whose
//! lines name samples. This crate starts with reading that description: [`ClassMap`]
//! and [`split::read_split`]; datasets, transforms and prompt sampling build on it.
//!
//! ```
//! use samus_data::split::SplitEntry;
//!
//! let entry: SplitEntry = "1/Breast-BUSI/benign0001".parse().unwrap();
//! assert_eq!(entry.class_id, Some(1));
//! assert_eq!(entry.dataset, "Breast-BUSI");
//! assert_eq!(entry.image_path("/data/US30K".as_ref()).to_str(), Some("/data/US30K/Breast-BUSI/img/benign0001.png"));
//! ```

pub mod split;

pub use split::{ClassMap, DataError, SplitEntry};
