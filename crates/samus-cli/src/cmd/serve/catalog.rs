//! The images a server offers: every PNG, JPEG, BMP, TIFF and DICOM file under `--images`,
//! listed once at start-up. Requests name an image only by its id (its place in
//! this list), never by a path, so no request can reach a file outside the folder.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use samus_data::import::safe_name;

/// Folders deeper than this under `--images` are not listed.
const MAX_DEPTH: usize = 8;

/// One image of the folder.
#[derive(Debug, Clone)]
pub struct CatalogImage {
    /// Its id in the API.
    pub id: usize,
    /// Its path relative to `--images`, with `/` separators (shown on the page).
    pub name: String,
    /// Its sample name in the US30K layout (`img/<sample>.png`).
    pub sample: String,
    /// The file (canonical: inside the folder).
    pub path: PathBuf,
    /// Width in pixels (from the header).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// The images of `--images`, in name order.
#[derive(Debug)]
pub struct Catalog {
    images: Vec<CatalogImage>,
    /// Files left out, with the reason (printed at start-up).
    pub skipped: Vec<String>,
}

impl Catalog {
    /// Lists `dir` (and its sub-folders). Symbolic links that lead outside it and
    /// files whose header cannot be read are left out, each with a reason.
    pub fn scan(dir: &Path) -> Result<Self> {
        let root = dir
            .canonicalize()
            .with_context(|| format!("--images {}: cannot open the folder", dir.display()))?;
        if !root.is_dir() {
            bail!("--images {}: not a folder", dir.display());
        }
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        walk(&root, &root, 0, &mut files, &mut skipped)?;
        files.sort();
        let mut images = Vec::new();
        let mut readable = Vec::new();
        for (name, path) in files {
            match samus_data::io::image_dimensions(&path) {
                Ok(size) => readable.push((name, path, size)),
                Err(e) => skipped.push(format!("{name}: {e}")),
            }
        }
        let samples = sample_names(readable.iter().map(|(name, _, _)| name.as_str()));
        for ((name, path, (width, height)), sample) in readable.into_iter().zip(samples) {
            images.push(CatalogImage {
                id: images.len(),
                name,
                sample,
                path,
                width,
                height,
            });
        }
        if images.is_empty() {
            bail!(
                "--images {}: no PNG, JPEG, BMP, TIFF or DICOM images in it",
                dir.display()
            );
        }
        Ok(Self { images, skipped })
    }

    /// Every image.
    pub fn images(&self) -> &[CatalogImage] {
        &self.images
    }

    /// The image with id `id`.
    pub fn get(&self, id: usize) -> Option<&CatalogImage> {
        self.images.get(id)
    }
}

/// The US30K sample names of the listed files (relative paths): each path without
/// its extension, made safe (`scans/a b.png` -> `scans_a_b`). Files whose names
/// would meet (`a.png` and `a.jpg`, or `A.png` and `a.png` on a file system that
/// ignores case) all keep their extension (`a_png`, `a_jpg`), whatever order they
/// come in, so that a saved label never passes to another file.
fn sample_names<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> Vec<String> {
    let stem_of = |name: &'a str| safe_name(name.rsplit_once('.').map_or(name, |(stem, _)| stem));
    let mut sharing: HashMap<String, usize> = HashMap::new();
    for name in names.clone() {
        *sharing.entry(stem_of(name).to_lowercase()).or_default() += 1;
    }
    let mut taken = HashSet::new();
    names
        .into_iter()
        .map(|name| {
            let stem = stem_of(name);
            let base = if sharing[&stem.to_lowercase()] == 1 {
                stem
            } else {
                safe_name(name)
            };
            let mut sample = base.clone();
            let mut n = 2;
            while !taken.insert(sample.to_lowercase()) {
                sample = format!("{base}_{n}");
                n += 1;
            }
            sample
        })
        .collect()
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    files: &mut Vec<(String, PathBuf)>,
    skipped: &mut Vec<String>,
) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with('.') {
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .map(|p| p.to_string_lossy().replace('\\', "/"))
            .unwrap_or_else(|_| file_name.clone());
        // Follow links only to places inside the folder.
        let Ok(real) = path.canonicalize() else {
            skipped.push(format!("{relative}: a broken link"));
            continue;
        };
        if !real.starts_with(root) {
            skipped.push(format!("{relative}: a link to outside the folder"));
            continue;
        }
        if real.is_dir() {
            if depth < MAX_DEPTH {
                walk(root, &path, depth + 1, files, skipped)?;
            }
            continue;
        }
        if samus_data::io::has_image_extension(&path) {
            files.push((relative, real));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_names_are_safe_unique_and_independent_of_order() {
        assert_eq!(
            sample_names(["a b.png", "sub/x.png", "c.png"]),
            ["a_b", "sub_x", "c"]
        );
        // Names that meet keep their extensions, in either order, ignoring case.
        assert_eq!(sample_names(["a.jpg", "a.png"]), ["a_jpg", "a_png"]);
        assert_eq!(sample_names(["a.png", "a.jpg"]), ["a_png", "a_jpg"]);
        assert_eq!(sample_names(["A.png", "a.png"]), ["A_png", "a_png_2"]);
        // A stem that is another file's full name still gets its own sample.
        assert_eq!(
            sample_names(["a.png", "a.jpg", "a_png.bmp"]),
            ["a_png", "a_jpg", "a_png_2"]
        );
    }
}
