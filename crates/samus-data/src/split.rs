//! Split files and the class map of `<root>/MainPatient/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{Error, Result};

/// Folder of a US30K root that holds `class.json` and the split files.
pub const MAIN_PATIENT_DIR: &str = "MainPatient";

/// One sample of a split: `<class id>/<dataset>/<name>` (train, val) or
/// `<dataset>/<name>` (test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitEntry {
    /// The target class, absent on test lines.
    pub class_id: Option<u32>,
    /// The source dataset, e.g. `Breast-BUSI`.
    pub dataset: String,
    /// The file stem of the image and the label.
    pub name: String,
}

impl FromStr for SplitEntry {
    type Err = String;

    fn from_str(line: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = line.trim().split('/').collect();
        // A part names one folder or file under the root: never `.`, `..` or a
        // backslash path, so that a split file cannot point outside the dataset.
        let nonempty = |s: &str, what: &str| {
            if s.is_empty() {
                Err(format!("empty {what} in `{line}`"))
            } else if s == "." || s == ".." || s.contains(['\\', '\0']) {
                Err(format!(
                    "{what} `{s}` in `{line}` is not a plain name (it would lead outside the dataset)"
                ))
            } else {
                Ok(s.to_string())
            }
        };
        match parts.as_slice() {
            [class, dataset, name] => {
                let class_id = class
                    .parse::<u32>()
                    .map_err(|_| format!("class id `{class}` in `{line}` is not a whole number"))?;
                Ok(Self {
                    class_id: Some(class_id),
                    dataset: nonempty(dataset, "dataset")?,
                    name: nonempty(name, "name")?,
                })
            }
            [dataset, name] => Ok(Self {
                class_id: None,
                dataset: nonempty(dataset, "dataset")?,
                name: nonempty(name, "name")?,
            }),
            _ => Err(format!(
                "`{line}` is neither `<class id>/<dataset>/<name>` nor `<dataset>/<name>`"
            )),
        }
    }
}

impl SplitEntry {
    /// `<root>/<dataset>/img/<name>.png`.
    pub fn image_path(&self, root: &Path) -> PathBuf {
        root.join(&self.dataset)
            .join("img")
            .join(format!("{}.png", self.name))
    }

    /// `<root>/<dataset>/label/<name>.png`.
    pub fn label_path(&self, root: &Path) -> PathBuf {
        root.join(&self.dataset)
            .join("label")
            .join(format!("{}.png", self.name))
    }
}

/// Reads a split file as `(line number, entry)` pairs; blank lines are skipped, a
/// malformed line is an error naming the file and the line, and an empty split is an
/// error.
pub fn read_split(path: &Path) -> Result<Vec<(usize, SplitEntry)>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry = line.parse().map_err(|reason| Error::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        })?;
        entries.push((i + 1, entry));
    }
    if entries.is_empty() {
        return Err(Error::EmptySplit {
            path: path.to_path_buf(),
        });
    }
    Ok(entries)
}

/// `class.json`: the number of classes of each dataset (background included).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassMap {
    classes: BTreeMap<String, u32>,
}

impl ClassMap {
    /// Reads `class.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let classes: BTreeMap<String, u32> =
            serde_json::from_str(&text).map_err(|source| Error::ClassMap {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self { classes })
    }

    /// The datasets listed, in name order.
    pub fn datasets(&self) -> impl Iterator<Item = (&str, u32)> {
        self.classes.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Number of classes of `dataset`, if it is listed.
    pub fn classes(&self, dataset: &str) -> Option<u32> {
        self.classes.get(dataset).copied()
    }

    /// The binary target of a label pixel: for 2-class datasets any value above 1
    /// counts as 1; the target is `label == class_id`.
    pub fn is_target(&self, dataset: &str, label: u8, class_id: u32) -> Option<bool> {
        let classes = self.classes(dataset)?;
        let label = if classes == 2 && label > 1 { 1 } else { label };
        Some(u32::from(label) == class_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any line, and any edit of a valid one, parses or is refused with a
        /// message quoting it; what parses stays inside the dataset root.
        #[test]
        fn split_lines_never_panic_or_lead_outside_the_root(
            line in "[0-9a-zA-Z./\\\\ _-]{0,40}",
            cut in 0usize..40,
            insert in "[./\\\\0-9]{0,4}",
        ) {
            let valid = "2/Breast-BUSI/benign (12)";
            let at = cut.min(valid.len());
            let edited = format!("{}{insert}{}", &valid[..at], &valid[at..]);
            for text in [line.as_str(), edited.as_str()] {
                match text.parse::<SplitEntry>() {
                    Ok(entry) => {
                        let root = Path::new("/data/US30K");
                        for path in [entry.image_path(root), entry.label_path(root)] {
                            prop_assert!(path.starts_with(root));
                            prop_assert!(path
                                .components()
                                .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::RootDir)));
                        }
                    }
                    Err(message) => prop_assert!(message.contains(text.trim()) || text.trim().is_empty()),
                }
            }
        }

        /// `class.json` text of any shape is read or refused, never a panic.
        #[test]
        fn class_maps_never_panic(text in "[{}\\[\\]\":,0-9a-z -]{0,60}") {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("class.json");
            std::fs::write(&path, &text).unwrap();
            if let Err(e) = ClassMap::read(&path) {
                prop_assert!(e.to_string().contains("class.json"));
            }
        }
    }

    #[test]
    fn parts_that_lead_outside_the_root_are_refused() {
        for line in ["1/../etc", "1/Breast-BUSI/..", "./x", "1/a\\..\\b/x"] {
            let err = line.parse::<SplitEntry>().unwrap_err();
            assert!(err.contains("not a plain name"), "{line}: {err}");
        }
    }

    #[test]
    fn parses_train_and_test_lines() {
        let e: SplitEntry = "3/Echocardiography-CAMUS/patient0001_2CH_ED"
            .parse()
            .unwrap();
        assert_eq!(e.class_id, Some(3));
        let e: SplitEntry = " ThyroidNodule-TN3K/0042 ".parse().unwrap();
        assert_eq!(
            (e.class_id, e.dataset.as_str(), e.name.as_str()),
            (None, "ThyroidNodule-TN3K", "0042")
        );
        assert!("x/BUSI/a"
            .parse::<SplitEntry>()
            .unwrap_err()
            .contains("`x`"));
        assert!("a".parse::<SplitEntry>().is_err());
        assert!("1//a"
            .parse::<SplitEntry>()
            .unwrap_err()
            .contains("empty dataset"));
    }

    #[test]
    fn bad_line_names_file_and_line_and_empty_split_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.txt");
        std::fs::write(&path, "1/BUSI/a\n\n1/BUSI/b/c/d\n").unwrap();
        let err = read_split(&path).unwrap_err().to_string();
        assert!(err.contains("train.txt:3:"), "{err}");
        std::fs::write(&path, "\n  \n").unwrap();
        assert!(matches!(read_split(&path), Err(Error::EmptySplit { .. })));
        std::fs::write(&path, "1/BUSI/a\nBUSI/b\n").unwrap();
        assert_eq!(read_split(&path).unwrap().len(), 2);
    }

    #[test]
    fn class_map_target_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("class.json");
        std::fs::write(&path, r#"{"Breast-BUSI": 2, "Echocardiography-CAMUS": 4}"#).unwrap();
        let map = ClassMap::read(&path).unwrap();
        assert_eq!(map.is_target("Breast-BUSI", 255, 1), Some(true));
        assert_eq!(map.is_target("Breast-BUSI", 0, 1), Some(false));
        assert_eq!(map.is_target("Echocardiography-CAMUS", 2, 2), Some(true));
        assert_eq!(map.is_target("Echocardiography-CAMUS", 3, 2), Some(false));
        assert_eq!(map.is_target("Unknown", 1, 1), None);
        std::fs::write(&path, r#"{"Breast-BUSI": "two"}"#).unwrap();
        assert!(ClassMap::read(&path)
            .unwrap_err()
            .to_string()
            .contains("class.json"));
    }
}
