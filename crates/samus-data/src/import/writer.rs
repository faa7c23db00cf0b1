//! Writing imported samples into a US30K root: PNGs, `class.json` (merged), the
//! dataset's split files and its lines in the global ones, and `manifest.csv`. A
//! file is only written when its content changes, always atomically, so that
//! importing twice changes nothing.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};

use samus_core::atomic_write::OutputGuard;

use super::item::{Role, SourceItem};
pub(crate) use crate::io::{create_dir, png_bytes};
use crate::split::{SplitEntry, MAIN_PATIENT_DIR};
use crate::{Error, Result};

/// Whether a write replaced the file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The file was new or its content differed.
    Changed,
    /// The file already held exactly these bytes.
    Unchanged,
}

/// Writes split lines to `path`, or removes it when there are none (an empty split
/// file is a problem for `samus data check`).
fn write_lines_or_remove(guard: &OutputGuard, path: &Path, text: &str) -> Result<Written> {
    if !text.is_empty() {
        return write_if_changed(guard, path, text.as_bytes());
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(Written::Changed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Written::Unchanged),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `bytes` to `path` unless it already holds them.
pub(crate) fn write_if_changed(guard: &OutputGuard, path: &Path, bytes: &[u8]) -> Result<Written> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(Written::Unchanged);
    }
    guard.write(path, bytes)?;
    Ok(Written::Changed)
}

/// Adds (or updates) `dataset`'s class count in `<root>/MainPatient/class.json`,
/// keeping every other dataset's entry.
pub(crate) fn merge_class_map(root: &Path, dataset: &str, classes: u32) -> Result<Written> {
    let path = root.join(MAIN_PATIENT_DIR).join("class.json");
    let mut map = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
            .map_err(|source| Error::ClassMap {
                path: path.clone(),
                source,
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Map::new(),
        Err(source) => return Err(Error::Io { path, source }),
    };
    map.insert(dataset.to_string(), classes.into());
    let json = serde_json::to_string_pretty(&map).map_err(|source| Error::EncodeJson {
        path: path.clone(),
        source,
    })? + "\n";
    write_if_changed(&OutputGuard::default(), &path, json.as_bytes())
}

/// The split lines of one sample: `<class id>/<dataset>/<name>` per foreground class
/// for training and validation; test lines are `<dataset>/<name>` for two classes
/// and one `<class id>/<dataset>/<name>` per class otherwise (as `samus synth`
/// writes them).
fn lines_of(dataset: &str, classes: u32, name: &str, role: Role) -> Vec<String> {
    if role == Role::Test && classes == 2 {
        return vec![format!("{dataset}/{name}")];
    }
    (1..classes)
        .map(|c| format!("{c}/{dataset}/{name}"))
        .collect()
}

/// Writes `<split>-<dataset>.txt` for the three splits and replaces `dataset`'s lines
/// in the global `train.txt`, `val.txt` and `test.txt` (other datasets' lines, and
/// their order, are kept). A split left without lines has no file.
pub(crate) fn write_splits(
    root: &Path,
    dataset: &str,
    classes: u32,
    items: &[&SourceItem],
) -> Result<()> {
    let main = root.join(MAIN_PATIENT_DIR);
    let guard = OutputGuard::default();
    for role in Role::ALL {
        let mut lines: Vec<String> = items
            .iter()
            .filter(|it| it.role == Some(role))
            .flat_map(|it| lines_of(dataset, classes, &it.name, role))
            .collect();
        lines.sort();
        let split = role.split_name();
        write_lines_or_remove(
            &guard,
            &main.join(format!("{split}-{dataset}.txt")),
            &joined(lines.iter().map(String::as_str)),
        )?;
        let global = main.join(format!("{split}.txt"));
        let old = match std::fs::read_to_string(&global) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(Error::Io {
                    path: global,
                    source,
                })
            }
        };
        let kept = old.lines().filter(|l| {
            !l.trim().is_empty()
                && l.parse::<SplitEntry>()
                    .map_or(true, |e| e.dataset != dataset)
        });
        let merged = joined(kept.chain(lines.iter().map(String::as_str)));
        write_lines_or_remove(&guard, &global, &merged)?;
    }
    Ok(())
}

fn joined<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// Writes `<root>/<dataset>/manifest.csv`: one row per sample with its name, split,
/// source file(s) relative to the source folder (`;`-separated), patient, class and
/// pixel size in millimetres (empty where the release has none).
pub(crate) fn write_manifest(
    root: &Path,
    dataset: &str,
    src: &Path,
    items: &[&SourceItem],
) -> Result<Written> {
    let path = root.join(dataset).join("manifest.csv");
    let encode = |e: csv::Error| Error::Source {
        path: path.clone(),
        reason: format!("cannot encode the manifest: {e}"),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "name",
        "split",
        "source",
        "patient",
        "class",
        "pixel_size_mm",
    ])
    .map_err(encode)?;
    let mut rows: Vec<&&SourceItem> = items.iter().collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    for it in rows {
        let sources: Vec<String> = it
            .source_files()
            .iter()
            .map(|p| relative(src, p).display().to_string())
            .collect();
        w.write_record([
            it.name.as_str(),
            it.role.map_or("", Role::split_name),
            &sources.join(";"),
            it.patient.as_deref().unwrap_or(""),
            it.class.as_deref().unwrap_or(""),
            &it.pixel_size_mm.map(|s| format!("{s}")).unwrap_or_default(),
        ])
        .map_err(encode)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::Source {
        path: path.clone(),
        reason: format!("cannot encode the manifest: {e}"),
    })?;
    write_if_changed(&OutputGuard::default(), &path, &bytes)
}

fn relative(base: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(base).unwrap_or(path).to_path_buf()
}

/// Per split, the number of samples.
pub(crate) fn split_counts(items: &[&SourceItem]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for role in Role::ALL {
        counts.insert(
            role.split_name().to_string(),
            items.iter().filter(|it| it.role == Some(role)).count(),
        );
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_datasets_keep_their_lines_and_class_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        create_dir(&root.join(MAIN_PATIENT_DIR)).unwrap();
        std::fs::write(root.join("MainPatient/class.json"), r#"{"Other": 4}"#).unwrap();
        std::fs::write(
            root.join("MainPatient/train.txt"),
            "1/Other/a\n1/Mine/stale\n2/Other/a\n",
        )
        .unwrap();
        assert_eq!(merge_class_map(root, "Mine", 2).unwrap(), Written::Changed);
        assert_eq!(
            merge_class_map(root, "Mine", 2).unwrap(),
            Written::Unchanged
        );
        let map: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("MainPatient/class.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(map["Other"], 4);
        assert_eq!(map["Mine"], 2);
        let mut item = SourceItem::with_masks("x 1", PathBuf::from("s/x 1.png"), vec![]);
        item.role = Some(Role::Train);
        let mut test = SourceItem::with_masks("y", PathBuf::from("s/y.png"), vec![]);
        test.role = Some(Role::Test);
        write_splits(root, "Mine", 2, &[&item, &test]).unwrap();
        let train = std::fs::read_to_string(root.join("MainPatient/train.txt")).unwrap();
        assert_eq!(train, "1/Other/a\n2/Other/a\n1/Mine/x_0001\n");
        let test_lines = std::fs::read_to_string(root.join("MainPatient/test-Mine.txt")).unwrap();
        assert_eq!(test_lines, "Mine/y\n");
        assert_eq!(
            lines_of("Echo", 4, "n", Role::Test),
            ["1/Echo/n", "2/Echo/n", "3/Echo/n"]
        );
    }
}
