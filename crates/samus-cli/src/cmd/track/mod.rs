//! `samus track`: one structure through the frames of a cine loop (a multi-frame
//! DICOM, a video, a folder of frames), from a prompt on one frame propagated
//! forwards and backwards, or AutoSAMUS on every frame; masks, an animated overlay,
//! the area of every frame as CSV and as a chart.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use image::{DynamicImage, GrayImage};
use samus_data::frames::{Frame, FrameSequence};
use samus_data::measure::measure_mask;
use samus_model::tracking::{TrackConfig, TrackStep, Tracker};
use samus_model::{ImageEmbedding, PointPrompt, Prediction, Prompts, Samus};
use serde::Serialize;

use crate::cmd::segment::{parse_box, parse_pixel_size, parse_point};
use crate::support::archive::progress_bar_of;
use crate::support::calibration::prompt_position;
use crate::support::model::{warn_if_sam, Checkpoint};
use crate::support::output::{check_output_folder, Outputs};
use crate::support::RunContext;

mod animation;
mod chart;

/// Examples shown by `samus track --help`.
pub const EXAMPLES: &str = "\
Examples:
  # A point on the left ventricle in frame 12 of an echo loop, followed through
  # the whole loop (forwards and backwards)
  samus track --checkpoint samus_camus.safetensors --input a4c_loop.dcm \\
      --frame 12 --point 310,240 --out-dir lv_track

  # A box on the first frame of a handheld clip, every second frame
  samus track --checkpoint samus_vit_b.safetensors --input clip.mp4 \\
      --box 200,150,420,330 --every 2 --out-dir clip_track

  # AutoSAMUS on every frame of a folder of frames, summary as JSON
  samus track --checkpoint autosamus.safetensors --input frames/ --auto \\
      --out-dir auto_track --json

Writes DIR/masks/frame_NNNN.png, DIR/overlay.gif (each frame with its mask, frame
number and area), DIR/areas.csv (frame, time_s, area_px, area_mm2, predicted_iou,
step) and DIR/areas.png (area over time, the largest and smallest marked: for a left
ventricle, end diastole and end systole; the fractional area change is printed).
Video input needs ffmpeg on PATH (or SAMUS_FFMPEG).";

/// Arguments of `samus track`.
#[derive(Debug, Args)]
pub struct TrackArgs {
    /// SAMUS checkpoint (with --auto: AutoSAMUS, or SAMUS with --apg).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Auto prompt generator weights, for --auto with a SAMUS checkpoint.
    #[arg(long, value_name = "FILE", requires = "auto")]
    apg: Option<PathBuf>,
    /// Model configuration: a preset (vit_b, vit_l, vit_h, tiny) or a JSON file.
    #[arg(long, value_name = "PRESET|FILE")]
    config: Option<String>,
    /// The frames: a multi-frame DICOM, a video (.mp4, .avi, .mov, .mkv, .webm),
    /// a folder of images (in name order) or one image.
    #[arg(long, value_name = "FILE|DIR")]
    input: PathBuf,
    /// The frame the prompts are on (from 0).
    #[arg(long, value_name = "K", default_value_t = 0)]
    frame: u32,
    /// Point prompt on frame K, `x,y` or `x,y,label` (1 foreground, 0 background).
    #[arg(long = "point", value_name = "X,Y[,LABEL]", value_parser = parse_point, allow_hyphen_values = true)]
    points: Vec<PointPrompt>,
    /// Box prompt on frame K.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1", value_parser = parse_box, allow_hyphen_values = true)]
    bbox: Option<[f32; 4]>,
    /// Segment every frame with AutoSAMUS instead of propagating a prompt.
    #[arg(long, conflicts_with_all = ["points", "bbox"])]
    auto: bool,
    /// Where the masks, overlay.gif, areas.csv and areas.png go.
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// Segment every Nth frame (counted from frame K).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    every: u32,
    /// Re-detect when the predicted IoU of a propagated mask falls below this.
    #[arg(long, value_name = "IOU", default_value_t = TrackConfig::default().min_iou)]
    min_iou: f32,
    /// Pixel size in millimetres, `MM` or `X_MM,Y_MM` (a calibrated DICOM gives its
    /// own): adds the area in mm².
    #[arg(long, value_name = "MM[,MM]", value_parser = parse_pixel_size)]
    pixel_size: Option<(f64, f64)>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// One frame's row of areas.csv.
#[derive(Debug, Clone, Serialize)]
pub struct FrameArea {
    /// Frame index.
    pub frame: u32,
    /// Seconds from the first frame, when known.
    pub time_s: Option<f64>,
    /// Mask area in pixels.
    pub area_px: usize,
    /// Mask area in mm², when calibrated.
    pub area_mm2: Option<f64>,
    /// The model's predicted IoU.
    pub predicted_iou: f32,
    /// How the mask was found.
    pub step: TrackStep,
}

impl FrameArea {
    /// The area in mm² when calibrated, else in pixels.
    fn area(&self) -> f64 {
        self.area_mm2.unwrap_or(self.area_px as f64)
    }
}

/// The frame of largest or smallest area.
#[derive(Debug, Serialize)]
struct Extreme {
    frame: u32,
    time_s: Option<f64>,
    area_px: usize,
    area_mm2: Option<f64>,
}

#[derive(Debug, Serialize)]
struct TrackSummary {
    input: String,
    frames: u32,
    segmented: usize,
    mode: &'static str,
    out_dir: String,
    pixel_size_mm: Option<[f64; 2]>,
    largest: Option<Extreme>,
    smallest: Option<Extreme>,
    /// (largest - smallest) / largest.
    fractional_area_change: Option<f64>,
    redetected: usize,
    lost: usize,
    frames_per_s: f64,
}

/// The model a track runs.
enum TrackModel {
    Prompted(Samus),
    Auto(samus_apg::AutoSamus),
}

impl TrackModel {
    fn samus(&self) -> &Samus {
        match self {
            TrackModel::Prompted(m) => m,
            TrackModel::Auto(m) => m.samus(),
        }
    }

    fn embed(&self, frame: &Frame) -> Result<ImageEmbedding> {
        Ok(self.samus().embed(&frame.image)?)
    }
}

/// Runs `samus track`.
pub fn run(args: TrackArgs, ctx: &RunContext) -> Result<()> {
    if !args.auto && args.points.is_empty() && args.bbox.is_none() {
        bail!("give a prompt on frame --frame K (--point x,y or --box x0,y0,x1,y1), or --auto");
    }
    if !(0.0..=1.0).contains(&args.min_iou) {
        bail!("--min-iou {}: give a value from 0 to 1", args.min_iou);
    }
    let sequence = FrameSequence::open(&args.input)?;
    if let Some(n) = sequence
        .len()
        .filter(|&n| args.frame >= n && !is_estimate(&sequence))
    {
        bail!(
            "--frame {}: {} has {n} frame(s), numbered from 0",
            args.frame,
            args.input.display()
        );
    }
    check_output_folder("--out-dir", &args.out_dir, "the track's folder")?;
    if args.input.is_dir() && inside(&args.out_dir, &args.input) {
        bail!(
            "--out-dir {}: is inside the --input folder {}, whose images are the frames; \
             write the track elsewhere",
            args.out_dir.display(),
            args.input.display()
        );
    }
    let masks_dir = args.out_dir.join("masks");
    std::fs::create_dir_all(&masks_dir)
        .with_context(|| format!("cannot create {}", masks_dir.display()))?;
    let config_file = args.config.as_ref().map(PathBuf::from);
    let outputs = Outputs::guarding(
        [
            Some(&args.input),
            Some(&args.checkpoint),
            args.apg.as_ref(),
            config_file.as_ref(),
        ]
        .into_iter()
        .flatten(),
    );
    let model = load(&args, ctx)?;
    let pixel_mm = match args.pixel_size {
        Some(mm) => Some(mm),
        None => {
            let (x, y) = prompt_position(&args.points, args.bbox);
            sequence.pixel_size_at(x, y).map(|s| (s.x_mm, s.y_mm))
        }
    };

    let started = Instant::now();
    let expected = sequence.len().map_or(0, |n| {
        n.saturating_sub(args.frame % args.every)
            .div_ceil(args.every)
    });
    let progress = progress_bar_of(expected as usize, "frames")?;
    if args.json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let writer = MaskWriter {
        outputs: &outputs,
        dir: &masks_dir,
        pixel_mm,
    };
    let mut rows = Vec::new();
    let mut frames_seen = 0u32;
    let mut record = |frame: &Frame, prediction: &Prediction, step: TrackStep| -> Result<()> {
        rows.push(writer.write(frame.index, frame.time_s, prediction, step)?);
        progress.inc(1);
        Ok(())
    };
    match &model {
        TrackModel::Auto(auto) => {
            for frame in sequence.frames()? {
                let frame = frame?;
                frames_seen = frame.index + 1;
                if !selected(frame.index, &args) {
                    continue;
                }
                let prediction = auto.segment(&model.embed(&frame)?)?;
                record(&frame, &prediction, TrackStep::Seeded)?;
            }
        }
        TrackModel::Prompted(samus) => {
            let seed = Prompts::new()
                .points(args.points.iter().copied())
                .maybe_bbox(args.bbox)
                .multimask(args.bbox.is_none() && args.points.len() == 1);
            let config = TrackConfig::default().min_iou(args.min_iou);
            let mut forward = Tracker::new(seed, config);
            let mut backward = None;
            // Frames before K wait (as embeddings) for the backward pass.
            let mut before: Vec<(Frame, ImageEmbedding)> = Vec::new();
            for frame in sequence.frames()? {
                let frame = frame?;
                frames_seen = frame.index + 1;
                if !selected(frame.index, &args) {
                    continue;
                }
                let embedding = model.embed(&frame)?;
                if frame.index < args.frame {
                    let thumbnail = Frame {
                        image: DynamicImage::new_luma8(1, 1),
                        ..frame
                    };
                    before.push((thumbnail, embedding));
                    progress.set_message("(frames before K wait for the backward pass)");
                    continue;
                }
                let tracked = forward.follow(samus, &embedding)?;
                if frame.index == args.frame {
                    backward = Some(forward.fork());
                    progress.set_message("");
                }
                record(&frame, &tracked.prediction, tracked.step)?;
            }
            if frames_seen <= args.frame {
                bail!(
                    "--frame {}: {} has {frames_seen} frame(s), numbered from 0",
                    args.frame,
                    args.input.display()
                );
            }
            if let Some(mut backward) = backward {
                for (frame, embedding) in before.into_iter().rev() {
                    let tracked = backward.follow(samus, &embedding)?;
                    record(&frame, &tracked.prediction, tracked.step)?;
                }
            }
        }
    }
    progress.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    rows.sort_by_key(|r| r.frame);
    if rows.is_empty() {
        bail!("{}: no frame was segmented", args.input.display());
    }

    let csv_path = args.out_dir.join("areas.csv");
    outputs.bytes(&csv_path, &areas_csv(&rows)?)?;
    let chart_path = args.out_dir.join("areas.png");
    let chart = chart::render(&rows, pixel_mm.is_some())?;
    outputs.png(&DynamicImage::ImageRgb8(chart), &chart_path)?;
    let gif_path = args.out_dir.join("overlay.gif");
    let delay_ms = sequence
        .fps()
        .map_or(100.0, |fps| 1000.0 * f64::from(args.every) / fps);
    let animation = animation::render(&sequence, &rows, &masks_dir, delay_ms)?;
    outputs.bytes(&gif_path, &animation)?;

    let extreme = |pick: fn(&FrameArea, &FrameArea) -> bool| {
        rows.iter()
            .filter(|r| r.area_px > 0)
            .fold(None::<&FrameArea>, |best, r| match best {
                Some(b) if !pick(r, b) => Some(b),
                _ => Some(r),
            })
            .map(|r| Extreme {
                frame: r.frame,
                time_s: r.time_s,
                area_px: r.area_px,
                area_mm2: r.area_mm2,
            })
    };
    let largest = extreme(|a, b| a.area() > b.area());
    let smallest = extreme(|a, b| a.area() < b.area());
    let area_of = |e: &Extreme| e.area_mm2.unwrap_or(e.area_px as f64);
    let fac = match (&largest, &smallest) {
        (Some(l), Some(s)) if area_of(l) > 0.0 => Some((area_of(l) - area_of(s)) / area_of(l)),
        _ => None,
    };
    let count = |step: TrackStep| rows.iter().filter(|r| r.step == step).count();
    let summary = TrackSummary {
        input: args.input.display().to_string(),
        frames: frames_seen,
        segmented: rows.len(),
        mode: if args.auto { "auto" } else { "propagated" },
        out_dir: args.out_dir.display().to_string(),
        pixel_size_mm: pixel_mm.map(|(x, y)| [x, y]),
        redetected: count(TrackStep::Redetected),
        lost: count(TrackStep::Lost),
        largest,
        smallest,
        fractional_area_change: fac,
        frames_per_s: rows.len() as f64 / elapsed.max(1e-9),
    };
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?)?;
        return Ok(());
    }
    print_summary(&summary)
}

fn print_summary(s: &TrackSummary) -> Result<()> {
    outln!(
        "{}: {} of {} frame(s) segmented ({}), {:.1} frames/s; {} re-detected, {} lost",
        s.input,
        s.segmented,
        s.frames,
        s.mode,
        s.frames_per_s,
        s.redetected,
        s.lost
    )?;
    let area = |e: &Extreme| match e.area_mm2 {
        Some(mm2) => format!("{mm2:.1} mm² ({} px)", e.area_px),
        None => format!("{} px", e.area_px),
    };
    let at = |e: &Extreme| match e.time_s {
        Some(t) => format!("frame {} ({t:.3} s)", e.frame),
        None => format!("frame {}", e.frame),
    };
    if let (Some(l), Some(m)) = (&s.largest, &s.smallest) {
        outln!(
            "largest area:  {} at {} (end diastole for a ventricle)",
            area(l),
            at(l)
        )?;
        outln!(
            "smallest area: {} at {} (end systole for a ventricle)",
            area(m),
            at(m)
        )?;
    }
    if let Some(fac) = s.fractional_area_change {
        outln!("fractional area change: {:.1}%", fac * 100.0)?;
    }
    outln!(
        "wrote {0}/masks/, {0}/overlay.gif, {0}/areas.csv and {0}/areas.png",
        s.out_dir
    )
}

/// Whether `dir` is `folder` or inside it (compared as absolute paths; `dir` may
/// not exist yet).
fn inside(dir: &Path, folder: &Path) -> bool {
    let absolute = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let folder = absolute(folder);
    // The nearest existing ancestor of `dir`, resolved, with the rest appended.
    let mut existing = dir.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = absolute(if existing.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &existing
    });
    for name in rest.into_iter().rev() {
        resolved.push(name);
    }
    resolved.starts_with(&folder)
}

/// Whether frame `index` is segmented: frame K and every Nth from it.
fn selected(index: u32, args: &TrackArgs) -> bool {
    index.abs_diff(args.frame).is_multiple_of(args.every)
}

/// Whether the frame count is an estimate (a video's, from its duration).
fn is_estimate(sequence: &FrameSequence) -> bool {
    samus_data::frames::is_video(sequence.path())
}

fn load(args: &TrackArgs, ctx: &RunContext) -> Result<TrackModel> {
    let checkpoint = Checkpoint::read(&args.checkpoint, args.config.as_deref())?;
    if args.auto {
        let (mut model, _) = checkpoint.auto(ctx, args.apg.as_deref())?;
        model.pack_for_inference()?;
        return Ok(TrackModel::Auto(model));
    }
    let (mut model, report) = checkpoint.samus(ctx)?;
    warn_if_sam(&args.checkpoint, &report);
    drop(report);
    model.pack_for_inference()?;
    Ok(TrackModel::Prompted(model))
}

/// Writes each frame's mask as it comes.
struct MaskWriter<'a> {
    outputs: &'a Outputs,
    dir: &'a Path,
    pixel_mm: Option<(f64, f64)>,
}

impl MaskWriter<'_> {
    fn write(
        &self,
        frame: u32,
        time_s: Option<f64>,
        prediction: &Prediction,
        step: TrackStep,
    ) -> Result<FrameArea> {
        let best = prediction.best();
        self.outputs.png(
            &DynamicImage::ImageLuma8(best.image.clone()),
            &mask_path(self.dir, frame),
        )?;
        Ok(FrameArea {
            frame,
            time_s,
            area_px: best.area(),
            area_mm2: self
                .pixel_mm
                .and_then(|size| measure_mask(&best.image, size))
                .map(|m| m.area_mm2),
            predicted_iou: best.iou,
            step,
        })
    }
}

/// `DIR/frame_NNNN.png`.
pub fn mask_path(dir: &Path, frame: u32) -> PathBuf {
    dir.join(format!("frame_{frame:04}.png"))
}

/// Reads a mask written by this run back (for the overlay).
fn read_mask(dir: &Path, frame: u32) -> Result<GrayImage> {
    Ok(samus_data::io::read_image_grey8(&mask_path(dir, frame))?)
}

fn areas_csv(rows: &[FrameArea]) -> Result<Vec<u8>> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record([
        "frame",
        "time_s",
        "area_px",
        "area_mm2",
        "predicted_iou",
        "step",
    ])?;
    for r in rows {
        csv.write_record([
            r.frame.to_string(),
            r.time_s.map_or_else(String::new, |t| format!("{t:.4}")),
            r.area_px.to_string(),
            r.area_mm2.map_or_else(String::new, |a| format!("{a:.3}")),
            format!("{:.4}", r.predicted_iou),
            r.step.name().to_string(),
        ])?;
    }
    csv.into_inner().context("areas.csv")
}
