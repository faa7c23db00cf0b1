//! Folders of thousands of scans: the `--image` arguments expanded, the images split
//! between jobs (`--num-parts N --part-id K`, as nnU-Net's predict does), what is
//! already done skipped (`--overwrite` redoes it), one `results.csv` row per result,
//! and a progress bar with images/s and the time left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::output::Outputs;

/// How often the results table is rewritten while a job runs: an interrupted job
/// loses at most this much work.
const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// The options that split an image folder between jobs and resume it.
#[derive(Debug, Clone, Args)]
pub struct ArchiveArgs {
    /// Split the images between N jobs (machines, or tasks of any scheduler) that
    /// share --out-dir: this job takes every N-th image, starting at --part-id.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub num_parts: u32,
    /// This job's part, 0 to N-1.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub part_id: u32,
    /// Redo images whose results are already in --out-dir (by default they are
    /// skipped, so that an interrupted job continues where it stopped).
    #[arg(long)]
    pub overwrite: bool,
}

impl ArchiveArgs {
    /// Fails unless `--part-id` is below `--num-parts`.
    pub fn validate(&self) -> Result<()> {
        if self.part_id >= self.num_parts {
            bail!(
                "--part-id {}: the parts are 0 to {} (--num-parts {})",
                self.part_id,
                self.num_parts - 1,
                self.num_parts
            );
        }
        Ok(())
    }

    /// This job's share of `files`: every `num_parts`-th, from `part_id`.
    pub fn select<T: Clone>(&self, files: &[T]) -> Vec<T> {
        files
            .iter()
            .skip(self.part_id as usize)
            .step_by(self.num_parts as usize)
            .cloned()
            .collect()
    }

    /// `results.csv`, or `results-part<K>-of-<N>.csv` when the folder is shared
    /// between jobs (each job writes its own; `cat` joins them).
    pub fn results_path(&self, out_dir: &Path) -> PathBuf {
        if self.num_parts == 1 {
            out_dir.join("results.csv")
        } else {
            out_dir.join(format!(
                "results-part{}-of-{}.csv",
                self.part_id, self.num_parts
            ))
        }
    }
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expands `--image` arguments (files, folders of images, glob patterns) into
/// files, in order, without repeats.
pub fn expand_inputs(specs: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for spec in specs {
        let path = Path::new(spec);
        let found: Vec<PathBuf> = if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list folder {spec}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| samus_data::io::has_image_extension(p))
                .collect();
            entries.sort();
            entries
        } else if has_glob_chars(spec) && !path.exists() {
            let mut matches = Vec::new();
            for entry in glob::glob(spec).with_context(|| format!("bad glob pattern `{spec}`"))? {
                matches.push(entry.with_context(|| format!("cannot read a match of `{spec}`"))?);
            }
            matches.sort();
            matches
        } else if path.exists() {
            vec![path.to_path_buf()]
        } else {
            bail!("image {spec} does not exist");
        };
        if found.is_empty() {
            bail!("no images found in `{spec}`");
        }
        files.extend(found);
    }
    let mut seen = HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
    Ok(files)
}

/// Each file's stem, the name of its outputs in `--out-dir`; two inputs with the same
/// stem are refused.
pub fn output_names(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut seen: HashMap<String, &Path> = HashMap::new();
    files
        .iter()
        .map(|f| {
            let stem = f
                .file_stem()
                .and_then(|s| s.to_str())
                .with_context(|| format!("image {} has no usable file name", f.display()))?
                .to_string();
            if let Some(other) = seen.insert(stem.clone(), f) {
                bail!(
                    "images {} and {} would write the same mask names `{stem}_*.png`; run them separately",
                    other.display(),
                    f.display()
                );
            }
            Ok(stem)
        })
        .collect()
}

/// A progress bar over `len` images with images/s and the time left, on standard
/// error (hidden when it is not a terminal).
pub fn progress_bar(len: usize) -> Result<ProgressBar> {
    progress_bar_of(len, "images")
}

/// A progress bar over `len` things called `unit` (`images`, `frames`), with their
/// rate per second and the time left.
pub fn progress_bar_of(len: usize, unit: &str) -> Result<ProgressBar> {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit}, {{per_sec}}, {{elapsed_precise}} elapsed, ETA {{eta}} {{msg}}"
        ))
        .context("progress bar template")?,
    );
    Ok(bar)
}

/// Says on standard error how many images of this part are already done and
/// skipped (nothing when there are none, or with `--json`).
pub fn announce_done(done: usize, out_dir: &Path, json: bool) {
    if done > 0 && !json {
        eprintln!(
            "{done} image(s) already done in {} (skipped; --overwrite redoes them)",
            out_dir.display()
        );
    }
}

/// An archive job's last line: how many images were done now and before, and where
/// the results are.
pub fn job_summary(segmented: usize, already_done: usize, results: &Path) -> String {
    format!(
        "{segmented} image(s) segmented, {already_done} already done; results in {}",
        results.display()
    )
}

/// The images of an archive job that could not be read: each one is reported when
/// it happens and passed over, so that one broken scan cannot stop an archive; the
/// job then ends with an error naming the first (a rerun tries them again).
#[derive(Debug, Default)]
pub struct Unreadable {
    messages: Vec<String>,
}

impl Unreadable {
    /// Reports `error` above the progress bar and counts the image as done.
    pub fn pass_over(&mut self, progress: &ProgressBar, error: &anyhow::Error) {
        let message = format!("{error:#}");
        progress.suspend(|| eprintln!("warning: {message} (passed over)"));
        self.messages.push(message);
        progress.inc(1);
    }

    /// The messages, in order.
    pub fn messages(&self) -> &[String] {
        &self.messages
    }

    /// The images passed over.
    pub fn count(&self) -> usize {
        self.messages.len()
    }

    /// Fails, naming the first image, when any was passed over.
    pub fn finish(&self) -> Result<()> {
        if let Some(first) = self.messages.first() {
            bail!(
                "{} image(s) could not be read and were passed over (the others are done; a rerun tries them again); the first: {first}",
                self.messages.len()
            );
        }
        Ok(())
    }
}

/// `results.csv` of an archive job: one row per result, keyed by its first
/// `key_columns` columns; rows of earlier runs are kept (unless `--overwrite`),
/// and the file is rewritten atomically every few seconds and at the end.
pub struct ResultsTable {
    path: PathBuf,
    header: Vec<String>,
    key_columns: usize,
    rows: BTreeMap<Vec<String>, Vec<String>>,
    last_flush: Instant,
}

impl ResultsTable {
    /// Opens the table at `path` with `header`; an existing file is read (and must
    /// have the same columns) unless `overwrite`.
    pub fn open(
        path: PathBuf,
        header: &[&str],
        key_columns: usize,
        overwrite: bool,
    ) -> Result<Self> {
        let mut table = Self {
            path,
            header: header.iter().map(|h| h.to_string()).collect(),
            key_columns,
            rows: BTreeMap::new(),
            last_flush: Instant::now(),
        };
        if overwrite || !table.path.exists() {
            return Ok(table);
        }
        let mut reader = csv::Reader::from_path(&table.path)
            .with_context(|| format!("cannot read {}", table.path.display()))?;
        let found: Vec<String> = reader
            .headers()
            .with_context(|| format!("{}: no readable header", table.path.display()))?
            .iter()
            .map(str::to_string)
            .collect();
        if found != table.header {
            bail!(
                "{} has the columns `{}`, not `{}` (written by another command?): use --overwrite or another --out-dir",
                table.path.display(),
                found.join(","),
                table.header.join(",")
            );
        }
        for (line, record) in reader.records().enumerate() {
            let record =
                record.with_context(|| format!("{}: line {}", table.path.display(), line + 2))?;
            let row: Vec<String> = record.iter().map(str::to_string).collect();
            if row.len() != table.header.len() {
                bail!(
                    "{}: line {} has {} fields, not {}",
                    table.path.display(),
                    line + 2,
                    row.len(),
                    table.header.len()
                );
            }
            table.rows.insert(row[..key_columns].to_vec(), row);
        }
        Ok(table)
    }

    /// Whether a row with this key is in the table.
    pub fn contains(&self, key: &[&str]) -> bool {
        let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
        self.rows.contains_key(&key)
    }

    /// Adds (or replaces) a row; its first `key_columns` fields are its key.
    pub fn insert(&mut self, row: Vec<String>) {
        self.rows.insert(row[..self.key_columns].to_vec(), row);
    }

    /// Rewrites the file when the last write is more than a few seconds old.
    pub fn flush_now_and_then(&mut self, outputs: &Outputs) -> Result<()> {
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush(outputs)?;
        }
        Ok(())
    }

    /// Rewrites the file (atomically), rows sorted by key.
    pub fn flush(&mut self, outputs: &Outputs) -> Result<()> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&self.header)?;
        for row in self.rows.values() {
            w.write_record(row)?;
        }
        let bytes = w.into_inner().context("encoding the results table")?;
        outputs.bytes(&self.path, &bytes)?;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_image_once() {
        let files: Vec<usize> = (0..23).collect();
        let mut seen = Vec::new();
        for part_id in 0..4 {
            let args = ArchiveArgs {
                num_parts: 4,
                part_id,
                overwrite: false,
            };
            args.validate().unwrap();
            seen.extend(args.select(&files));
        }
        seen.sort();
        assert_eq!(seen, files);
        let bad = ArchiveArgs {
            num_parts: 2,
            part_id: 2,
            overwrite: false,
        };
        assert!(bad.validate().unwrap_err().to_string().contains("0 to 1"));
        assert_eq!(
            bad.results_path(Path::new("o")),
            Path::new("o/results-part2-of-2.csv")
        );
    }

    #[test]
    fn the_table_keeps_earlier_rows_and_refuses_other_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        let outputs = Outputs::default();
        let mut t = ResultsTable::open(path.clone(), &["name", "area"], 1, false).unwrap();
        t.insert(vec!["b".into(), "2".into()]);
        t.insert(vec!["a".into(), "1".into()]);
        t.flush(&outputs).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "name,area\na,1\nb,2\n"
        );
        let t = ResultsTable::open(path.clone(), &["name", "area"], 1, false).unwrap();
        assert!(t.contains(&["a"]) && !t.contains(&["c"]));
        assert!(
            !ResultsTable::open(path.clone(), &["name", "area"], 1, true)
                .unwrap()
                .contains(&["a"])
        );
        let err = ResultsTable::open(path, &["name", "iou"], 1, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--overwrite"), "{err}");
    }
}
