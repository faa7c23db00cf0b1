//! A US30K split as a dataset of transformed samples with prompts, and seeded,
//! shuffled batches decoded in parallel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::GrayImage;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use rayon::prelude::*;

use crate::io::{read_image_grey8, read_label};
use crate::prompt::{fixed_box, fixed_click, jittered_box, random_click, BoxPrompt, Click};
use crate::split::{read_split, ClassMap, SplitEntry, MAIN_PATIENT_DIR};
use crate::transform::{validation_transform, Augmentation, TransformedPair};
use crate::{Error, Result};

/// How prompts are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptMode {
    /// A random target click and a jittered box (training).
    Random,
    /// The fixed click and the exact box (validation and test).
    Fixed,
}

/// How a dataset reads and transforms its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetOptions {
    /// Training augmentations; `None` applies the validation transform.
    pub augmentation: Option<Augmentation>,
    /// How prompts are drawn.
    pub prompts: PromptMode,
    /// Target class of test lines, which carry none.
    pub test_class_id: u8,
    /// Skip samples whose files are missing or broken (and report them) instead of
    /// failing.
    pub skip_bad: bool,
    /// Seed of the shuffling, the augmentations and the random prompts.
    pub seed: u64,
    /// Bytes of decoded images and labels kept in memory, so that later epochs skip
    /// the PNG decoding (0: no cache). Samples are cached as they are first read until
    /// the budget is used up; the cache never evicts, so memory stays within it.
    pub cache_bytes: usize,
}

/// The decoded-image cache of [`DatasetOptions::training`]: 1 GiB.
pub const DEFAULT_TRAINING_CACHE_BYTES: usize = 1 << 30;

impl DatasetOptions {
    /// The reference training setup: augmentations, random prompts, seed 1234.
    pub fn training() -> Self {
        Self {
            augmentation: Some(Augmentation::default()),
            prompts: PromptMode::Random,
            test_class_id: 1,
            skip_bad: false,
            seed: 1234,
            cache_bytes: DEFAULT_TRAINING_CACHE_BYTES,
        }
    }

    /// The reference evaluation setup: validation transform, fixed prompts.
    pub fn evaluation() -> Self {
        Self {
            augmentation: None,
            prompts: PromptMode::Fixed,
            cache_bytes: 0,
            ..Self::training()
        }
    }

    /// Training options for `train*` splits, evaluation options otherwise.
    pub fn for_split(split: &str) -> Self {
        if split.contains("train") {
            Self::training()
        } else {
            Self::evaluation()
        }
    }
}

/// One sample, ready for the model.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The image, 256 x 256 values in [0, 1], row-major.
    pub image: Vec<f32>,
    /// Binary target, 256 x 256 (1 where the label equals the class id).
    pub mask: Vec<u8>,
    /// Binary target, 128 x 128.
    pub low_mask: Vec<u8>,
    /// The click prompt in the 256 frame.
    pub click: Click,
    /// The box prompt in the 256 frame.
    pub bbox: BoxPrompt,
    /// The source dataset.
    pub dataset: String,
    /// The target class.
    pub class_id: u8,
    /// The image's file stem.
    pub name: String,
    /// The image file's width and height (before the 256 x 256 transform).
    pub original_size: (u32, u32),
    /// Millimetres per pixel of the image file, from the dataset's `manifest.csv`
    /// (written by `samus data import` where the release records it).
    pub pixel_size_mm: Option<f64>,
}

/// A batch of samples, and the samples skipped under `skip_bad`.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The decoded samples, in batch order.
    pub samples: Vec<Sample>,
    /// Why each skipped sample was skipped.
    pub skipped: Vec<String>,
}

/// A split of a US30K-layout folder.
#[derive(Debug, Clone)]
pub struct Us30kSplit {
    root: PathBuf,
    split_path: PathBuf,
    entries: Vec<(usize, SplitEntry)>,
    classes: ClassMap,
    options: DatasetOptions,
    cache: Arc<DecodedCache>,
    pixel_sizes: Arc<HashMap<(String, String), f64>>,
}

/// Decoded image/label pairs by sample index, up to a byte budget (shared by clones
/// of a split).
#[derive(Debug, Default)]
struct DecodedCache {
    budget: usize,
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    pairs: HashMap<usize, Arc<(GrayImage, GrayImage)>>,
    bytes: usize,
}

impl DecodedCache {
    fn new(budget: usize) -> Self {
        Self {
            budget,
            state: Mutex::default(),
        }
    }

    fn get(&self, index: usize) -> Option<Arc<(GrayImage, GrayImage)>> {
        if self.budget == 0 {
            return None;
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.pairs.get(&index).cloned()
    }

    /// Keeps `pair` if it fits the budget.
    fn offer(&self, index: usize, pair: &Arc<(GrayImage, GrayImage)>) {
        if self.budget == 0 {
            return;
        }
        let size = pair.0.as_raw().len() + pair.1.as_raw().len();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.bytes + size <= self.budget && !state.pairs.contains_key(&index) {
            state.bytes += size;
            state.pairs.insert(index, Arc::clone(pair));
        }
    }

    fn bytes(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

/// Mixes the seed, the epoch and the sample index into one per-sample seed, so that
/// samples decoded in parallel get the same random numbers as in sequence.
fn sample_seed(seed: u64, epoch: u64, index: usize) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The binary target of a label map for `class_id` (2-class datasets: values above 1
/// count as 1).
fn binary_target(label: &GrayImage, classes: u32, class_id: u8) -> Vec<u8> {
    let collapse = classes == 2;
    label
        .as_raw()
        .iter()
        .map(|&v| {
            let v = if collapse { v.min(1) } else { v };
            u8::from(v == class_id)
        })
        .collect()
}

impl Us30kSplit {
    /// Opens split `split` (e.g. `train`, `val`, `test-Breast-BUSI`) of the dataset at
    /// `root`: reads `class.json` and the split file, and checks that every line names
    /// a listed dataset and a valid class.
    pub fn open(root: impl AsRef<Path>, split: &str, options: DatasetOptions) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let main = root.join(MAIN_PATIENT_DIR);
        let classes = ClassMap::read(&main.join("class.json"))?;
        let split_path = main.join(format!("{split}.txt"));
        let entries = read_split(&split_path)?;
        for (line, entry) in &entries {
            let Some(n) = classes.classes(&entry.dataset) else {
                return Err(Error::UnknownDataset {
                    path: split_path.clone(),
                    line: *line,
                    dataset: entry.dataset.clone(),
                });
            };
            let class_id = entry.class_id.unwrap_or(u32::from(options.test_class_id));
            if class_id == 0 || class_id >= n {
                return Err(Error::BadClassId {
                    path: split_path.clone(),
                    line: *line,
                    dataset: entry.dataset.clone(),
                    class_id,
                    classes: n,
                });
            }
        }
        let pixel_sizes = Arc::new(read_pixel_sizes(&root, &entries)?);
        Ok(Self {
            root,
            split_path,
            entries,
            classes,
            cache: Arc::new(DecodedCache::new(options.cache_bytes)),
            options,
            pixel_sizes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the split is empty (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of decoded images and labels held by the cache
    /// ([`DatasetOptions::cache_bytes`]).
    pub fn cached_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// The split's entries with their line numbers.
    pub fn entries(&self) -> &[(usize, SplitEntry)] {
        &self.entries
    }

    /// Sample `index` with the random numbers of epoch 0.
    pub fn get(&self, index: usize) -> Result<Sample> {
        self.get_in_epoch(index, 0)
    }

    /// Sample `index` with the random numbers of `epoch` (augmentations and random
    /// prompts differ from epoch to epoch, and are the same on every run).
    pub fn get_in_epoch(&self, index: usize, epoch: u64) -> Result<Sample> {
        let (line, entry) = self
            .entries
            .get(index)
            .ok_or_else(|| Error::IndexOutOfRange {
                path: self.split_path.clone(),
                index,
                len: self.entries.len(),
            })?;
        let in_context = |source: Error| Error::Sample {
            split: self.split_path.clone(),
            line: *line,
            source: Box::new(source),
        };
        let pair = match self.cache.get(index) {
            Some(pair) => pair,
            None => {
                let pair = Arc::new(self.read_pair(entry).map_err(in_context)?);
                self.cache.offer(index, &pair);
                pair
            }
        };
        let (image, label) = (&pair.0, &pair.1);
        let original_size = image.dimensions();
        let classes = self.classes.classes(&entry.dataset).unwrap_or(2);
        let class_id = entry
            .class_id
            .unwrap_or(u32::from(self.options.test_class_id)) as u8;
        let mut rng = StdRng::seed_from_u64(sample_seed(self.options.seed, epoch, index));
        let TransformedPair {
            image,
            label,
            low_label,
        } = match &self.options.augmentation {
            Some(aug) => aug.apply(&mut rng, image, label),
            None => validation_transform(image, label),
        };
        let mask = binary_target(&label, classes, class_id);
        let low_mask = binary_target(&low_label, classes, class_id);
        let target =
            GrayImage::from_raw(label.width(), label.height(), mask.clone()).unwrap_or_default();
        let (click, bbox) = match self.options.prompts {
            PromptMode::Random => (
                random_click(&mut rng, &target, 1),
                jittered_box(&mut rng, &target, 1),
            ),
            PromptMode::Fixed => (fixed_click(&target, 1), fixed_box(&target, 1)),
        };
        Ok(Sample {
            image: image.into_raw(),
            mask,
            low_mask,
            click: click.unwrap_or(Click {
                x: 0,
                y: 0,
                label: 0,
            }),
            bbox,
            dataset: entry.dataset.clone(),
            class_id,
            name: entry.name.clone(),
            original_size,
            pixel_size_mm: self
                .pixel_sizes
                .get(&(entry.dataset.clone(), entry.name.clone()))
                .copied(),
        })
    }

    fn read_pair(&self, entry: &SplitEntry) -> Result<(GrayImage, GrayImage)> {
        let image_path = entry.image_path(&self.root);
        let label_path = entry.label_path(&self.root);
        let image = read_image_grey8(&image_path)?;
        let label = read_label(&label_path)?;
        crate::io::check_same_size(&image_path, &image, &label_path, &label)?;
        Ok((image, label))
    }

    /// Shuffled batches of `batch_size` for `epoch`, decoded in parallel one batch at a
    /// time (memory stays at one batch). The order depends only on the seed and the
    /// epoch. With `skip_bad`, broken samples are left out and listed in
    /// [`Batch::skipped`]; otherwise the first broken sample ends the iteration with
    /// its error.
    pub fn batches(
        &self,
        batch_size: usize,
        epoch: u64,
    ) -> impl Iterator<Item = Result<Batch>> + '_ {
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(sample_seed(
            self.options.seed,
            epoch,
            usize::MAX,
        )));
        let chunks: Vec<Vec<usize>> = order
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect();
        chunks.into_iter().map(move |chunk| {
            let decoded: Vec<Result<Sample>> = chunk
                .par_iter()
                .map(|&i| self.get_in_epoch(i, epoch))
                .collect();
            let mut batch = Batch::default();
            for result in decoded {
                match result {
                    Ok(sample) => batch.samples.push(sample),
                    Err(e) if self.options.skip_bad => batch.skipped.push(e.to_string()),
                    Err(e) => return Err(e),
                }
            }
            Ok(batch)
        })
    }
}

/// The pixel sizes of the split's datasets by (dataset, sample name), from each
/// dataset's `manifest.csv` (its `name` and `pixel_size_mm` columns) where there is
/// one; blank sizes are left out.
fn read_pixel_sizes(
    root: &Path,
    entries: &[(usize, SplitEntry)],
) -> Result<HashMap<(String, String), f64>> {
    let datasets: std::collections::BTreeSet<&str> =
        entries.iter().map(|(_, e)| e.dataset.as_str()).collect();
    let mut sizes = HashMap::new();
    for dataset in datasets {
        let path = root.join(dataset).join("manifest.csv");
        if !path.is_file() {
            continue;
        }
        let bad = |reason: String| Error::Source {
            path: path.clone(),
            reason,
        };
        let mut reader = csv::Reader::from_path(&path).map_err(|e| bad(e.to_string()))?;
        let header = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
        let column = |name: &str| header.iter().position(|h| h == name);
        let (Some(name_col), Some(size_col)) = (column("name"), column("pixel_size_mm")) else {
            continue;
        };
        for (line, record) in reader.records().enumerate() {
            let record = record.map_err(|e| bad(format!("line {}: {e}", line + 2)))?;
            let (Some(name), Some(size)) = (record.get(name_col), record.get(size_col)) else {
                continue;
            };
            if size.trim().is_empty() {
                continue;
            }
            let mm: f64 = size
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    bad(format!(
                        "line {}: pixel_size_mm `{size}` is not a positive number",
                        line + 2
                    ))
                })?;
            sizes.insert((dataset.to_string(), name.to_string()), mm);
        }
    }
    Ok(sizes)
}
