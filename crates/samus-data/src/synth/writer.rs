//! Writing a synthetic dataset in the US30K layout: `class.json`, the split files and
//! the image and label PNGs, every file through [`samus_core::atomic_write`].

use std::collections::BTreeMap;

use std::path::Path;

use image::GrayImage;
use rayon::prelude::*;
use samus_core::atomic_write::write_atomic;

use super::{
    generate, image_name, image_seed, split_counts, DatasetSummary, Difficulty, Kind,
    MAX_PER_DATASET,
};
use crate::io::{create_dir, png_bytes};
use crate::{Error, Result};

/// Encodes `img` as PNG and writes it atomically to `path`.
fn write_png(path: &Path, img: &GrayImage) -> Result<()> {
    Ok(write_atomic(path, &png_bytes(path, img)?)?)
}

/// Split-file lines for one image.
///
/// Train/val lines are `<class id>/<dataset>/<name>`, one per foreground class. Test lines are
/// `<dataset>/<name>` for 2-class datasets (as in the SAMUS reference lists) but
/// `<class id>/<dataset>/<name>` (one per class) for multi-class datasets such as the echo set,
/// so that the evaluated class is explicit.
fn split_lines(kind: Kind, name: &str, test: bool) -> Vec<String> {
    let ds = kind.dataset_name();
    if test && kind.num_classes() == 2 {
        return vec![format!("{ds}/{name}")];
    }
    (1..kind.num_classes())
        .map(|c| format!("{c}/{ds}/{name}"))
        .collect()
}

/// Writes `per_dataset` images of each kind at default difficulty in the US30K layout.
///
/// Layout: `MainPatient/{class.json, train.txt, val.txt, test.txt}`, per-dataset
/// `MainPatient/{train,val,test}-<dataset>.txt`, and `<dataset>/{img,label}/<name>.png`.
/// Line formats: train/val lines are
/// `<class id>/<dataset>/<name>`; test lines are `<dataset>/<name>` for the 2-class datasets and
/// `<class id>/<dataset>/<name>` for the 4-class echo dataset. Images are split 70/15/15 in
/// index order (see [`split_counts`]), generated in parallel, and every file is written
/// atomically ([`samus_core::atomic_write`]: a temporary file in the same folder, then a
/// rename), so an interrupted run never leaves a truncated file.
pub fn write_dataset(out: &Path, per_dataset: usize, seed: u64) -> Result<DatasetSummary> {
    write_dataset_with(out, per_dataset, seed, &Difficulty::default())
}

/// Like [`write_dataset`] with an explicit [`Difficulty`]. More than
/// [`MAX_PER_DATASET`] images per kind is [`Error::TooManyImages`], before anything is
/// written.
pub fn write_dataset_with(
    out: &Path,
    per_dataset: usize,
    seed: u64,
    difficulty: &Difficulty,
) -> Result<DatasetSummary> {
    if per_dataset > MAX_PER_DATASET {
        return Err(Error::TooManyImages {
            requested: per_dataset,
            max: MAX_PER_DATASET,
        });
    }
    let main = out.join("MainPatient");
    create_dir(&main)?;
    for kind in Kind::ALL {
        for sub in ["img", "label"] {
            let d = out.join(kind.dataset_name()).join(sub);
            create_dir(&d)?;
        }
    }
    let class_path = main.join("class.json");
    let mut classes = serde_json::Map::new();
    for kind in Kind::ALL {
        classes.insert(kind.dataset_name().to_string(), kind.num_classes().into());
    }
    let json =
        serde_json::to_string_pretty(&serde_json::Value::Object(classes)).map_err(|source| {
            Error::EncodeJson {
                path: class_path.clone(),
                source,
            }
        })?;
    write_atomic(&class_path, json.as_bytes())?;

    let jobs: Vec<(Kind, usize)> = Kind::ALL
        .iter()
        .flat_map(|&k| (0..per_dataset).map(move |i| (k, i)))
        .collect();
    jobs.par_iter().try_for_each(|&(kind, i)| {
        let (img, lab) = generate(kind, image_seed(seed, kind, i), difficulty);
        let name = format!("{}.png", image_name(kind, i));
        let ds = out.join(kind.dataset_name());
        write_png(&ds.join("img").join(&name), &img)?;
        write_png(&ds.join("label").join(&name), &lab)
    })?;

    let counts = split_counts(per_dataset);
    let mut summary = DatasetSummary {
        root: out.to_path_buf(),
        datasets: BTreeMap::new(),
    };
    let mut all: [Vec<String>; 3] = Default::default();
    for kind in Kind::ALL {
        let ranges = [
            0..counts.train,
            counts.train..counts.train + counts.val,
            counts.train + counts.val..per_dataset,
        ];
        for (si, (split, range)) in ["train", "val", "test"].iter().zip(ranges).enumerate() {
            let lines: Vec<String> = range
                .flat_map(|i| split_lines(kind, &image_name(kind, i), si == 2))
                .collect();
            let path = main.join(format!("{split}-{}.txt", kind.dataset_name()));
            write_atomic(&path, join_lines(&lines).as_bytes())?;
            all[si].extend(lines);
        }
        summary
            .datasets
            .insert(kind.dataset_name().to_string(), counts);
    }
    for (split, lines) in ["train", "val", "test"].iter().zip(&all) {
        write_atomic(
            &main.join(format!("{split}.txt")),
            join_lines(lines).as_bytes(),
        )?;
    }
    Ok(summary)
}

/// The lines, each ended by a newline.
fn join_lines(lines: &[String]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}
