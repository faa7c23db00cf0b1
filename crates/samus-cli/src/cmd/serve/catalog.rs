//! The images a server offers: every PNG, JPEG, BMP, TIFF and DICOM file under `--images`,
//! listed once at start-up. Requests name an image only by its id (its place in
//! this list), never by a path, so no request can reach a file outside the folder.

use std::collections::HashSet;
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
        let mut samples = HashSet::new();
        for (name, path) in files {
            let (width, height) = match samus_data::io::image_dimensions(&path) {
                Ok(size) => size,
                Err(e) => {
                    skipped.push(format!("{name}: {e}"));
                    continue;
                }
            };
            let sample = unique_sample(&name, &mut samples);
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

/// The US30K sample name of a listed file: its relative path without the extension,
/// made safe (`scans/a b.png` -> `scans_a_b`), with the extension added when two
/// files would otherwise share it.
fn unique_sample(name: &str, taken: &mut HashSet<String>) -> String {
    let stem = match name.rsplit_once('.') {
        Some((stem, _)) => stem,
        None => name,
    };
    let mut sample = safe_name(stem);
    if !taken.insert(sample.clone()) {
        sample = safe_name(name);
        let mut n = 2;
        while !taken.insert(sample.clone()) {
            sample = format!("{}_{n}", safe_name(name));
            n += 1;
        }
    }
    sample
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
    fn sample_names_are_safe_and_unique() {
        let mut taken = HashSet::new();
        assert_eq!(unique_sample("a b.png", &mut taken), "a_b");
        assert_eq!(unique_sample("a b.jpg", &mut taken), "a_b_jpg");
        assert_eq!(unique_sample("sub/x.png", &mut taken), "sub_x");
    }
}
