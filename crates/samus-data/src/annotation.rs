//! Labels drawn by a person (`samus serve`), saved straight into a US30K root so
//! that `samus data check` and `samus train` take them as they are.
//!
//! [`LabelStore::save`] writes `<root>/<dataset>/img/<name>.png` (8-bit grey) and
//! `label/<name>.png` (pixel = class id) atomically, keeps the label it replaces in
//! `label/.history/`, sets the dataset's class count in `MainPatient/class.json`
//! and lists the sample in `train-<dataset>.txt` and `train.txt`, one
//! `<class id>/<dataset>/<name>` line per class the label holds.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use image::GrayImage;
//! use samus_data::annotation::LabelStore;
//!
//! let root = std::env::temp_dir().join(format!("samus-labels-doc-{}", std::process::id()));
//! let store = LabelStore::open(&root, "Breast-Clinic", 2)?;
//! let scan = GrayImage::new(64, 48);
//! let mut label = GrayImage::new(64, 48);
//! label.put_pixel(10, 10, image::Luma([1]));
//! let saved = store.save("scan_0001", &scan, &label)?;
//! assert!(saved.previous.is_none());
//! assert!(store.is_labelled("scan_0001"));
//! assert!(samus_data::check::check_dataset(&root).is_ok());
//! # std::fs::remove_dir_all(&root)?;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use image::GrayImage;
use samus_core::atomic_write::OutputGuard;

use crate::import::writer::{merge_class_map, write_if_changed};
use crate::io::{create_dir, png_bytes};
use crate::split::{ClassMap, SplitEntry, MAIN_PATIENT_DIR};
use crate::{Error, Result};

/// The folder under `label/` that keeps every replaced label.
pub const HISTORY_DIR: &str = ".history";

/// The split that saved labels are listed in.
pub const LABEL_SPLIT: &str = "train";

/// What [`LabelStore::save`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedLabel {
    /// The image file (`img/<name>.png`).
    pub image: PathBuf,
    /// The label map (`label/<name>.png`).
    pub label: PathBuf,
    /// Where the label it replaced was kept (`label/.history/<name>.<ms>.png`), when
    /// there was a different one.
    pub previous: Option<PathBuf>,
    /// The class ids the label holds (its split lines).
    pub classes: Vec<u8>,
}

/// One dataset of a US30K root that labels are saved into. Saves are serialised, so
/// one store can be shared between threads.
#[derive(Debug)]
pub struct LabelStore {
    root: PathBuf,
    dataset: String,
    classes: u32,
    writing: Mutex<()>,
}

impl LabelStore {
    /// A store for `dataset` (a plain name such as `Breast-Clinic`) with `classes`
    /// classes, background included (2 for one structure). When `class.json` already
    /// lists the dataset with another class count, that is an error: the labels would
    /// not mean what the dataset's other samples mean.
    pub fn open(root: impl AsRef<Path>, dataset: &str, classes: u32) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let plain = !dataset.is_empty()
            && dataset
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain {
            return Err(Error::BadOption {
                option: "--dataset",
                reason: format!(
                    "`{dataset}` is not a plain dataset name (letters, digits, `-` and `_`, e.g. Breast-Clinic)"
                ),
            });
        }
        if !(2..=256).contains(&classes) {
            return Err(Error::BadOption {
                option: "--classes",
                reason: format!(
                    "{} structure classes: give between 1 and 255",
                    classes.saturating_sub(1)
                ),
            });
        }
        let class_json = root.join(MAIN_PATIENT_DIR).join("class.json");
        if class_json.exists() {
            let map = ClassMap::read(&class_json)?;
            if let Some(existing) = map.classes(dataset).filter(|&c| c != classes) {
                return Err(Error::Source {
                    path: class_json,
                    reason: format!(
                        "dataset {dataset} has {existing} classes there, not {classes}; \
                         pass the same --classes or another --dataset"
                    ),
                });
            }
        }
        Ok(Self {
            root,
            dataset: dataset.to_string(),
            classes,
            writing: Mutex::new(()),
        })
    }

    /// The US30K root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dataset name.
    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// Classes, background included.
    pub fn classes(&self) -> u32 {
        self.classes
    }

    /// `<root>/<dataset>/img/<name>.png`.
    pub fn image_path(&self, name: &str) -> PathBuf {
        self.root
            .join(&self.dataset)
            .join("img")
            .join(format!("{name}.png"))
    }

    /// `<root>/<dataset>/label/<name>.png`.
    pub fn label_path(&self, name: &str) -> PathBuf {
        self.root
            .join(&self.dataset)
            .join("label")
            .join(format!("{name}.png"))
    }

    /// Whether `name` has a saved label.
    pub fn is_labelled(&self, name: &str) -> bool {
        self.label_path(name).is_file()
    }

    /// The saved label map of `name`, if there is one.
    pub fn read_label(&self, name: &str) -> Result<Option<GrayImage>> {
        let path = self.label_path(name);
        if !path.is_file() {
            return Ok(None);
        }
        crate::io::read_label(&path).map(Some)
    }

    /// Saves `image` and its `label` map (pixel = class id, below [`Self::classes`])
    /// as sample `name` (a file stem such as [`crate::import::safe_name`] gives).
    /// A different label already saved under the name is kept in `label/.history/`.
    pub fn save(&self, name: &str, image: &GrayImage, label: &GrayImage) -> Result<SavedLabel> {
        let _writing = self.lock();
        self.write_sample(name, image, label)
    }

    /// Sets the pixels of class `class` in sample `name`'s label map to `mask`
    /// (pixels of 128 and above are in) and saves it with `image`, leaving the other
    /// classes as saved. The saved map is read and written back under the store's
    /// lock, so two changes at once to different classes both stay.
    pub fn save_class(
        &self,
        name: &str,
        image: &GrayImage,
        class: u8,
        mask: &GrayImage,
    ) -> Result<SavedLabel> {
        crate::io::check_same_size(&self.image_path(name), image, &self.label_path(name), mask)?;
        let _writing = self.lock();
        let mut label = self
            .read_label(name)?
            .filter(|l| l.dimensions() == image.dimensions())
            .unwrap_or_else(|| GrayImage::new(image.width(), image.height()));
        for (l, m) in label.pixels_mut().zip(mask.pixels()) {
            if m[0] >= 128 {
                l[0] = class;
            } else if l[0] == class {
                l[0] = 0;
            }
        }
        self.write_sample(name, image, &label)
    }

    /// One save at a time: the split files and class.json are read, changed and
    /// written back.
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`Self::save`] with the lock held.
    fn write_sample(&self, name: &str, image: &GrayImage, label: &GrayImage) -> Result<SavedLabel> {
        let image_path = self.image_path(name);
        let label_path = self.label_path(name);
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
            return Err(Error::BadOption {
                option: "name",
                reason: format!("`{name}` is not a file stem"),
            });
        }
        crate::io::check_same_size(&image_path, image, &label_path, label)?;
        if let Some(&value) = label
            .as_raw()
            .iter()
            .find(|&&v| u32::from(v) >= self.classes)
        {
            return Err(Error::LabelOutOfRange {
                path: label_path,
                value,
                classes: self.classes,
            });
        }
        let mut present = [false; 256];
        for &v in label.as_raw() {
            present[usize::from(v)] = true;
        }
        let classes: Vec<u8> = (1..=255u8).filter(|&c| present[usize::from(c)]).collect();

        let guard = OutputGuard::default();
        for dir in [&image_path, &label_path] {
            if let Some(parent) = dir.parent() {
                create_dir(parent)?;
            }
        }
        create_dir(&self.root.join(MAIN_PATIENT_DIR))?;
        write_if_changed(&guard, &image_path, &png_bytes(&image_path, image)?)?;
        let label_bytes = png_bytes(&label_path, label)?;
        let previous = self.keep_previous(name, &label_path, &label_bytes)?;
        write_if_changed(&guard, &label_path, &label_bytes)?;
        merge_class_map(&self.root, &self.dataset, self.classes)?;
        let lines: Vec<String> = classes
            .iter()
            .map(|c| format!("{c}/{}/{name}", self.dataset))
            .collect();
        let main = self.root.join(MAIN_PATIENT_DIR);
        for file in [
            format!("{LABEL_SPLIT}-{}.txt", self.dataset),
            format!("{LABEL_SPLIT}.txt"),
        ] {
            self.replace_lines(&guard, &main.join(file), name, &lines)?;
        }
        Ok(SavedLabel {
            image: image_path,
            label: label_path,
            previous,
            classes,
        })
    }

    /// Copies the label at `label_path` into the history folder when `new_bytes`
    /// would change it; returns where it went.
    fn keep_previous(
        &self,
        name: &str,
        label_path: &Path,
        new_bytes: &[u8],
    ) -> Result<Option<PathBuf>> {
        let old = match std::fs::read(label_path) {
            Ok(old) if old == new_bytes => return Ok(None),
            Ok(old) => old,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    path: label_path.to_path_buf(),
                    source,
                })
            }
        };
        let history = label_path.parent().unwrap_or(&self.root).join(HISTORY_DIR);
        create_dir(&history)?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut kept = history.join(format!("{name}.{millis}.png"));
        let mut n = 1;
        while kept.exists() {
            kept = history.join(format!("{name}.{millis}-{n}.png"));
            n += 1;
        }
        OutputGuard::default().write(&kept, &old)?;
        Ok(Some(kept))
    }

    /// Replaces this dataset's lines for `name` in a split file with `lines`, keeping
    /// every other line in its order; a file left empty is removed.
    fn replace_lines(
        &self,
        guard: &OutputGuard,
        path: &Path,
        name: &str,
        lines: &[String],
    ) -> Result<()> {
        let old = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut text = String::new();
        for line in old.lines().filter(|l| !l.trim().is_empty()) {
            let ours = line
                .parse::<SplitEntry>()
                .is_ok_and(|e| e.dataset == self.dataset && e.name == name);
            if !ours {
                text.push_str(line);
                text.push('\n');
            }
        }
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        if text.is_empty() {
            return match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(Error::Io {
                    path: path.to_path_buf(),
                    source,
                }),
            };
        }
        write_if_changed(guard, path, text.as_bytes()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::check_dataset;

    fn label_with(classes: &[(u32, u32, u8)]) -> GrayImage {
        let mut label = GrayImage::new(32, 24);
        for &(x, y, c) in classes {
            label.put_pixel(x, y, image::Luma([c]));
        }
        label
    }

    #[test]
    fn a_saved_label_passes_the_check_and_lists_its_classes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LabelStore::open(dir.path(), "Echo-Clinic", 4).unwrap();
        let saved = store
            .save(
                "a4c_0001",
                &GrayImage::new(32, 24),
                &label_with(&[(1, 1, 1), (2, 2, 3)]),
            )
            .unwrap();
        assert_eq!(saved.classes, vec![1, 3]);
        let report = check_dataset(dir.path());
        assert!(report.is_ok(), "{:?}", report.problems);
        let train = std::fs::read_to_string(dir.path().join("MainPatient/train.txt")).unwrap();
        assert_eq!(train, "1/Echo-Clinic/a4c_0001\n3/Echo-Clinic/a4c_0001\n");
        let class_json =
            std::fs::read_to_string(dir.path().join("MainPatient/class.json")).unwrap();
        assert!(class_json.contains("\"Echo-Clinic\": 4"), "{class_json}");
    }

    #[test]
    fn replacing_a_label_keeps_the_previous_one_and_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join(MAIN_PATIENT_DIR);
        std::fs::create_dir_all(&main).unwrap();
        std::fs::write(main.join("train.txt"), "1/Other/x_0001\n").unwrap();
        let store = LabelStore::open(dir.path(), "Breast-Clinic", 3).unwrap();
        let image = GrayImage::new(32, 24);
        let first = label_with(&[(3, 3, 1)]);
        store.save("s", &image, &first).unwrap();
        // The same label again changes nothing and keeps no copy.
        assert_eq!(store.save("s", &image, &first).unwrap().previous, None);
        let second = label_with(&[(4, 4, 2)]);
        let saved = store.save("s", &image, &second).unwrap();
        let kept = saved.previous.expect("the first label is kept");
        assert_eq!(crate::io::read_label(&kept).unwrap(), first);
        assert_eq!(store.read_label("s").unwrap(), Some(second));
        let train = std::fs::read_to_string(main.join("train.txt")).unwrap();
        assert_eq!(train, "1/Other/x_0001\n2/Breast-Clinic/s\n");
        // An empty label takes the sample out of the split (no class to train on).
        store.save("s", &image, &GrayImage::new(32, 24)).unwrap();
        assert!(!main.join("train-Breast-Clinic.txt").exists());
        assert_eq!(
            std::fs::read_to_string(main.join("train.txt")).unwrap(),
            "1/Other/x_0001\n"
        );
    }

    #[test]
    fn class_changes_at_once_all_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = LabelStore::open(dir.path(), "Thyroid-Clinic", 9).unwrap();
        let image = GrayImage::new(32, 24);
        std::thread::scope(|scope| {
            for class in 1..=8u8 {
                let (store, image) = (&store, &image);
                scope.spawn(move || {
                    let mut mask = GrayImage::new(32, 24);
                    mask.put_pixel(u32::from(class), 5, image::Luma([255]));
                    store.save_class("s", image, class, &mask).unwrap();
                });
            }
        });
        let label = store.read_label("s").unwrap().unwrap();
        for class in 1..=8u8 {
            assert_eq!(label.get_pixel(u32::from(class), 5)[0], class);
        }
        // Setting a class again replaces only that class.
        let mut mask = GrayImage::new(32, 24);
        mask.put_pixel(20, 20, image::Luma([255]));
        store.save_class("s", &image, 3, &mask).unwrap();
        let label = store.read_label("s").unwrap().unwrap();
        assert_eq!(
            (
                label.get_pixel(3, 5)[0],
                label.get_pixel(20, 20)[0],
                label.get_pixel(4, 5)[0]
            ),
            (0, 3, 4)
        );
        let err = store.save_class("s", &image, 9, &mask).unwrap_err();
        assert!(err.to_string().contains("label value 9"), "{err}");
    }

    #[test]
    fn bad_saves_are_refused_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let store = LabelStore::open(dir.path(), "B", 2).unwrap();
        let err = store
            .save("s", &GrayImage::new(32, 24), &label_with(&[(0, 0, 2)]))
            .unwrap_err();
        assert!(err.to_string().contains("label value 2"), "{err}");
        let err = store
            .save("s", &GrayImage::new(30, 24), &GrayImage::new(32, 24))
            .unwrap_err();
        assert!(err.to_string().contains("30x24"), "{err}");
        let err = store
            .save("../s", &GrayImage::new(2, 2), &GrayImage::new(2, 2))
            .unwrap_err();
        assert!(err.to_string().contains("not a file stem"), "{err}");
        assert!(LabelStore::open(dir.path(), "../x", 2).is_err());
        assert!(LabelStore::open(dir.path(), "B", 1).is_err());
        store
            .save("t", &GrayImage::new(2, 2), &GrayImage::new(2, 2))
            .unwrap();
        let err = LabelStore::open(dir.path(), "B", 3).unwrap_err();
        assert!(err.to_string().contains("has 2 classes"), "{err}");
    }
}
