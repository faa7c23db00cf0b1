//! `samus segment --out-dir`: every image of a folder or glob with the prompts of a
//! JSON file (the same for all) or of a folder of `<stem>.json` files, split between
//! jobs and resumable like `samus auto` ([`ArchiveArgs`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::{DynamicImage, GrayImage};
use samus_model::Samus;

use super::prompt_file::{label_map, read_prompts, PromptEntry};
use super::SegmentArgs;
use crate::support::archive::{
    announce_done, expand_inputs, job_summary, output_names, progress_bar, ResultsTable, Unreadable,
};
use crate::support::calibration::{mm_cells, prompt_position, Calibration, MM_COLUMNS};
use crate::support::images::{area_and_mean_probability, open_image};
use crate::support::output::Outputs;
use crate::support::RunContext;

/// The columns of the results table: one row per image and prompt entry.
const RESULT_COLUMNS: [&str; 11] = [
    "name",
    "entry",
    "image",
    "area",
    "mean_probability",
    "predicted_iou",
    MM_COLUMNS[0],
    MM_COLUMNS[1],
    MM_COLUMNS[2],
    MM_COLUMNS[3],
    "seconds",
];

/// Where an image's prompts come from.
enum PromptSource {
    /// One file for every image.
    Shared(Vec<PromptEntry>),
    /// `<folder>/<stem>.json` per image.
    PerImage(PathBuf),
}

impl PromptSource {
    fn entries(&self, stem: &str) -> Result<Option<Vec<PromptEntry>>> {
        match self {
            PromptSource::Shared(entries) => Ok(Some(entries.clone())),
            PromptSource::PerImage(dir) => {
                let path = dir.join(format!("{stem}.json"));
                if path.is_file() {
                    Ok(Some(read_prompts(&path)?))
                } else {
                    Ok(None)
                }
            }
        }
    }
}

/// One image to segment.
struct Job {
    file: PathBuf,
    stem: String,
    entries: Vec<PromptEntry>,
}

/// Runs `samus segment --out-dir DIR`.
pub fn run(args: &SegmentArgs, out_dir: &Path, ctx: &RunContext) -> Result<()> {
    args.archive.validate()?;
    for (flag, given) in [
        ("--overlay", args.overlay.is_some()),
        ("--save-logits", args.save_logits.is_some()),
        ("--label-map", args.label_map.is_some()),
        ("--demo", args.demo),
    ] {
        if given {
            bail!("{flag} is for one image; with --out-dir every image's masks and label map go into that folder");
        }
    }
    let (Some(image), Some(prompts)) = (&args.image, &args.prompts) else {
        bail!(
            "--out-dir segments a folder: give --image FOLDER|GLOB and --prompts FILE.json|FOLDER"
        );
    };
    let source = if prompts.is_dir() {
        PromptSource::PerImage(prompts.clone())
    } else {
        PromptSource::Shared(read_prompts(prompts)?)
    };
    let all_files = expand_inputs(&[image.to_string_lossy().into_owned()])?;
    let all_stems = output_names(&all_files)?;
    let mut results = ResultsTable::open(
        args.archive.results_path(out_dir),
        &RESULT_COLUMNS,
        2,
        args.archive.overwrite,
    )?;
    let mask_of = |stem: &str, entry: &str| out_dir.join(format!("{stem}_{entry}.png"));
    let (mut jobs, mut done, mut without_prompts) = (Vec::new(), 0usize, 0usize);
    for (file, stem) in args
        .archive
        .select(&all_files)
        .into_iter()
        .zip(args.archive.select(&all_stems))
    {
        let Some(entries) = source.entries(&stem)? else {
            without_prompts += 1;
            continue;
        };
        let finished = entries
            .iter()
            .all(|e| results.contains(&[&stem, &e.name]) && mask_of(&stem, &e.name).is_file());
        if finished {
            done += 1;
        } else {
            jobs.push(Job {
                file,
                stem,
                entries,
            });
        }
    }
    if without_prompts > 0 {
        eprintln!(
            "warning: {without_prompts} image(s) have no <stem>.json in {} and are left out",
            prompts.display()
        );
    }
    announce_done(done, out_dir, args.json);
    let config_file = args.config.as_ref().map(PathBuf::from);
    let outputs = Outputs::guarding(
        all_files.iter().chain(
            [&args.checkpoint, &args.prompts, &config_file]
                .into_iter()
                .flatten(),
        ),
    );
    if jobs.is_empty() {
        outln!("nothing to do: every image of this part is done")?;
        return Ok(());
    }
    let (model, _) = super::load_model(args, ctx)?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create output folder {}", out_dir.display()))?;
    let progress = progress_bar(jobs.len())?;
    let mut failed = Unreadable::default();
    for job in &jobs {
        let start = Instant::now();
        // An unreadable scan is reported and passed over (a rerun tries it again).
        let image = match open_image(&job.file) {
            Ok(image) => image,
            Err(e) => {
                failed.pass_over(&progress, &e);
                continue;
            }
        };
        let rows = segment_one(&model, args, job, &image, out_dir, &outputs)?;
        let seconds = start.elapsed().as_secs_f64();
        for mut row in rows {
            row.push(format!("{seconds:.4}"));
            results.insert(row);
        }
        progress.inc(1);
        results.flush_now_and_then(&outputs)?;
    }
    results.flush(&outputs)?;
    progress.finish_and_clear();
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "images": jobs.len() - failed.count(),
                "skipped": done,
                "failed": failed.messages(),
                "without_prompts": without_prompts,
                "results": results.path().display().to_string(),
            })
        )?;
    } else {
        outln!(
            "{}",
            job_summary(jobs.len() - failed.count(), done, results.path())
        )?;
    }
    failed.finish()
}

/// Encodes one image once, predicts every entry, writes the masks and the label map;
/// returns the results rows (without the seconds).
fn segment_one(
    model: &Samus,
    args: &SegmentArgs,
    job: &Job,
    image: &DynamicImage,
    out_dir: &Path,
    outputs: &Outputs,
) -> Result<Vec<Vec<String>>> {
    let (w, h) = (image.width(), image.height());
    let embedding = model.embed(image)?;
    let mut logits = Vec::with_capacity(job.entries.len());
    let mut rows = Vec::with_capacity(job.entries.len());
    for entry in &job.entries {
        let prediction = model
            .predict(&embedding, &entry.prompts(args.multimask))
            .with_context(|| format!("{}: prompt entry `{}`", job.file.display(), entry.name))?;
        let best = prediction.best();
        let path = out_dir.join(format!("{}_{}.png", job.stem, entry.name));
        outputs.png(&DynamicImage::ImageLuma8(best.image.clone()), &path)?;
        let entry_logits = prediction.best_logits()?;
        let (area, mean) = area_and_mean_probability(&best.image, &entry_logits);
        let calibration = Calibration::of(
            args.pixel_size,
            Some(&job.file),
            prompt_position(&entry.points, entry.bbox),
        )?;
        let mut row = vec![
            job.stem.clone(),
            entry.name.clone(),
            job.file.display().to_string(),
            area.to_string(),
            format!("{mean:.6}"),
            format!("{:.6}", best.iou),
        ];
        row.extend(mm_cells(
            calibration.and_then(|c| c.measure(&best.image)).as_ref(),
        ));
        rows.push(row);
        logits.push(entry_logits);
    }
    if job.entries.iter().any(|e| e.class_id.is_some()) {
        let labels = GrayImage::from_raw(w, h, label_map(&job.entries, &logits))
            .context("label map size does not match the image")?;
        let path = out_dir.join(format!("{}_labels.png", job.stem));
        outputs.png(&DynamicImage::ImageLuma8(labels), &path)?;
    }
    Ok(rows)
}
