//! Validating a US30K-layout folder: what `samus data check` prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::io::read_label;
use crate::split::{read_split, ClassMap, SplitEntry, MAIN_PATIENT_DIR};
use crate::{Error, Result};

/// Counts for one source dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DatasetCounts {
    /// Classes according to `class.json`.
    pub classes: u32,
    /// Files in `img/`.
    pub images: usize,
    /// Files in `label/`.
    pub labels: usize,
    /// Split lines naming this dataset, per split file.
    pub split_lines: BTreeMap<String, usize>,
}

/// The result of checking a dataset folder.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// The folder checked.
    pub root: PathBuf,
    /// Per source dataset.
    pub datasets: BTreeMap<String, DatasetCounts>,
    /// Every problem found, one line each, naming the file (and line).
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn png_stems(dir: &Path) -> Vec<String> {
    let mut stems: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "png"))
                .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default();
    stems.sort();
    stems
}

/// Checks `root`: `class.json`, every split file (each line names a listed dataset and
/// a foreground class of it, `1..classes`; test lines without a class id count as
/// class 1), every image/label pair named by the splits (present, readable headers,
/// equal sizes, label values below the dataset's class count) and images without
/// labels.
pub fn check_dataset(root: &Path) -> CheckReport {
    let mut report = CheckReport {
        root: root.to_path_buf(),
        ..Default::default()
    };
    let main = root.join(MAIN_PATIENT_DIR);
    let classes = match ClassMap::read(&main.join("class.json")) {
        Ok(c) => c,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    for (name, n) in classes.datasets() {
        let dir = root.join(name);
        let images = png_stems(&dir.join("img"));
        let labels = png_stems(&dir.join("label"));
        if !dir.is_dir() {
            report.problems.push(format!(
                "{}: dataset folder listed in class.json is missing",
                dir.display()
            ));
        }
        for stem in images.iter().filter(|s| labels.binary_search(s).is_err()) {
            report.problems.push(format!(
                "{}: image without a label",
                dir.join("img").join(format!("{stem}.png")).display()
            ));
        }
        report.datasets.insert(
            name.to_string(),
            DatasetCounts {
                classes: n,
                images: images.len(),
                labels: labels.len(),
                ..Default::default()
            },
        );
    }
    let mut split_files: Vec<PathBuf> = std::fs::read_dir(&main)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "txt"))
                .collect()
        })
        .unwrap_or_default();
    split_files.sort();
    if split_files.is_empty() {
        report
            .problems
            .push(format!("{}: no split files (*.txt)", main.display()));
    }
    let mut to_verify: Vec<(String, usize, SplitEntry)> = Vec::new();
    for path in &split_files {
        let split = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        match read_split(path) {
            Err(e) => report.problems.push(e.to_string()),
            Ok(entries) => {
                for (line, entry) in entries {
                    match report.datasets.get_mut(&entry.dataset) {
                        None => report.problems.push(
                            Error::UnknownDataset {
                                path: path.clone(),
                                line,
                                dataset: entry.dataset,
                            }
                            .to_string(),
                        ),
                        Some(counts) => {
                            *counts.split_lines.entry(split.clone()).or_default() += 1;
                            // Test lines carry no class id: they are read as class
                            // 1, as `Us30kSplit::open` does by default.
                            let class_id = entry.class_id.unwrap_or(1);
                            if class_id == 0 || class_id >= counts.classes {
                                report.problems.push(
                                    Error::BadClassId {
                                        path: path.clone(),
                                        line,
                                        dataset: entry.dataset.clone(),
                                        class_id,
                                        classes: counts.classes,
                                    }
                                    .to_string(),
                                );
                            }
                            to_verify.push((path.display().to_string(), line, entry));
                        }
                    }
                }
            }
        }
    }
    // Each pair once, however many splits and classes name it.
    to_verify.sort_by(|a, b| (&a.2.dataset, &a.2.name).cmp(&(&b.2.dataset, &b.2.name)));
    to_verify.dedup_by(|a, b| a.2.dataset == b.2.dataset && a.2.name == b.2.name);
    let pair_problems: Vec<String> = to_verify
        .par_iter()
        .filter_map(|(split, line, entry)| {
            let n = classes.classes(&entry.dataset).unwrap_or(2);
            verify_pair(root, entry, n)
                .err()
                .map(|m| format!("{split}:{line}: {m}"))
        })
        .collect();
    report.problems.extend(pair_problems);
    report
}

fn verify_pair(root: &Path, entry: &SplitEntry, classes: u32) -> Result<()> {
    let image_path = entry.image_path(root);
    let label_path = entry.label_path(root);
    for p in [&image_path, &label_path] {
        if !p.exists() {
            return Err(Error::Missing { path: p.clone() });
        }
    }
    let image_size = image::image_dimensions(&image_path).map_err(|source| Error::Decode {
        path: image_path.clone(),
        source,
    })?;
    let label = read_label(&label_path)?;
    if image_size != label.dimensions() {
        return Err(Error::SizeMismatch {
            image: image_path,
            image_size,
            label: label_path,
            label_size: label.dimensions(),
        });
    }
    // 2-class datasets may store the foreground as any value above 0 (e.g. 255).
    if classes > 2 {
        if let Some(bad) = label
            .pixels()
            .map(|p| p[0])
            .find(|&v| u32::from(v) >= classes)
        {
            return Err(Error::LabelOutOfRange {
                path: label_path,
                value: bad,
                classes,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::GrayImage;

    #[test]
    fn finds_counts_and_problems() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("MainPatient")).unwrap();
        std::fs::write(root.join("MainPatient/class.json"), r#"{"A": 2, "B": 3}"#).unwrap();
        for d in ["A", "B"] {
            std::fs::create_dir_all(root.join(d).join("img")).unwrap();
            std::fs::create_dir_all(root.join(d).join("label")).unwrap();
        }
        GrayImage::new(8, 8).save(root.join("A/img/x.png")).unwrap();
        GrayImage::new(8, 8)
            .save(root.join("A/label/x.png"))
            .unwrap();
        GrayImage::new(8, 8)
            .save(root.join("A/img/lonely.png"))
            .unwrap();
        GrayImage::new(8, 8).save(root.join("B/img/y.png")).unwrap();
        GrayImage::from_pixel(8, 8, image::Luma([7]))
            .save(root.join("B/label/y.png"))
            .unwrap();
        std::fs::write(
            root.join("MainPatient/train.txt"),
            "1/A/x\n1/B/y\n1/C/z\n1/A/gone\n",
        )
        .unwrap();
        let report = check_dataset(root);
        assert_eq!(report.datasets["A"].images, 2);
        assert_eq!(report.datasets["A"].split_lines["train"], 2);
        let all = report.problems.join("\n");
        assert!(all.contains("lonely.png: image without a label"), "{all}");
        assert!(
            all.contains("train.txt:3: dataset `C` is not in class.json"),
            "{all}"
        );
        assert!(
            all.contains("train.txt:4:") && all.contains("gone.png does not exist"),
            "{all}"
        );
        assert!(
            all.contains("label value 7 but the dataset has 3 classes"),
            "{all}"
        );
        assert_eq!(report.problems.len(), 4, "{all}");
    }

    #[test]
    fn class_ids_outside_the_foreground_classes_are_problems() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("MainPatient")).unwrap();
        std::fs::write(
            root.join("MainPatient/class.json"),
            r#"{"A": 2, "E": 4, "Bg": 1}"#,
        )
        .unwrap();
        for (d, stem) in [("A", "x"), ("E", "y"), ("Bg", "z")] {
            std::fs::create_dir_all(root.join(d).join("img")).unwrap();
            std::fs::create_dir_all(root.join(d).join("label")).unwrap();
            for sub in ["img", "label"] {
                GrayImage::new(8, 8)
                    .save(root.join(d).join(sub).join(format!("{stem}.png")))
                    .unwrap();
            }
        }
        std::fs::write(
            root.join("MainPatient/train.txt"),
            "1/A/x\n9/A/x\n0/A/x\n2/A/x\n3/E/y\n4/E/y\n",
        )
        .unwrap();
        std::fs::write(root.join("MainPatient/test.txt"), "A/x\nBg/z\n").unwrap();
        let report = check_dataset(root);
        let all = report.problems.join("\n");
        for needle in [
            "train.txt:2: class id 9 is not a foreground class of `A` (it has 2 classes)",
            "train.txt:3: class id 0 is not a foreground class of `A`",
            "train.txt:4: class id 2 is not a foreground class of `A`",
            "train.txt:6: class id 4 is not a foreground class of `E` (it has 4 classes)",
            "test.txt:2: class id 1 is not a foreground class of `Bg` (it has 1 classes)",
        ] {
            assert!(all.contains(needle), "`{needle}` missing from:\n{all}");
        }
        assert_eq!(report.problems.len(), 5, "{all}");
        assert_eq!(report.datasets["A"].split_lines["train"], 4);
    }
}
