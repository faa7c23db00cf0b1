//! `samus track` end to end: a multi-frame DICOM and an MP4 made here from the
//! synthetic beating ellipse, a folder of frames and a real handheld clip go
//! through the tiny model with one mask per segmented frame, areas.csv (with
//! times and mm² where the file is calibrated), the chart and the animated
//! overlay; the prompted frame's mask is exactly `samus segment`'s; bad video and
//! a missing ffmpeg fail in one line naming the file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_clean_failure, fixtures, p, realdata, samus, stderr};
use image::DynamicImage;
use samus_data::dicom::{write_dicom, DicomCalibration, DicomPixels};
use samus_data::synth::cine::beating_ellipse;
use serde_json::Value;

/// Whether ffmpeg runs here; in CI it must (`.ci/run` installs it).
fn have_ffmpeg() -> bool {
    let found = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "ffmpeg is not on PATH in CI: .ci/run installs it"
        );
        println!("skipped: no ffmpeg (install Debian's ffmpeg)");
    }
    found
}

fn csv_rows(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("areas.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("frame,time_s,area_px,area_mm2,predicted_iou,step")
    );
    lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn gif_frames(dir: &Path) -> usize {
    use image::AnimationDecoder;
    let file = std::io::BufReader::new(std::fs::File::open(dir.join("overlay.gif")).unwrap());
    image::codecs::gif::GifDecoder::new(file)
        .unwrap()
        .into_frames()
        .count()
}

fn masks(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("masks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn track(args: &[&str]) -> Value {
    let out = samus(&[&["track", "--json"], args].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_multi_frame_dicom_is_tracked_frame_by_frame_in_millimetres() {
    let Some(fx) = fixtures() else { return };
    let ck = fx.join("samus_tiny.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let frames = beating_ellipse(8, 96, 72, 1);
    let images: Vec<DynamicImage> = frames
        .iter()
        .map(|f| DynamicImage::ImageLuma8(f.image.clone()))
        .collect();
    let dcm = tmp.path().join("loop.dcm");
    let calibration = DicomCalibration {
        region_mm: Some((0.2, 0.2)),
        frame_time_ms: Some(40.0),
        ..Default::default()
    };
    write_dicom(&dcm, &images, DicomPixels::Grey8, &calibration).unwrap();
    let (cx, cy) = frames[3].centre;
    let point = format!("{cx:.0},{cy:.0}");
    let out = tmp.path().join("track");
    let summary = track(&[
        "--checkpoint",
        p(&ck),
        "--input",
        p(&dcm),
        "--frame",
        "3",
        "--point",
        &point,
        "--out-dir",
        p(&out),
    ]);
    assert_eq!(
        (summary["frames"].as_u64(), summary["segmented"].as_u64()),
        (Some(8), Some(8))
    );
    assert_eq!(summary["pixel_size_mm"], serde_json::json!([0.2, 0.2]));
    let expected: Vec<String> = (0..8).map(|i| format!("frame_{i:04}.png")).collect();
    assert_eq!(masks(&out), expected);
    let rows = csv_rows(&out);
    assert_eq!(rows.len(), 8);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i.to_string());
        let t: f64 = row[1].parse().unwrap();
        assert!((t - 0.04 * i as f64).abs() < 1e-6, "frame {i} at {t} s");
        // area in mm² = pixels x 0.04 mm².
        let (px, mm2): (f64, f64) = (row[2].parse().unwrap(), row[3].parse().unwrap());
        assert!(
            (mm2 - px * 0.04).abs() < 1e-3 * px.max(1.0),
            "frame {i}: {px} px, {mm2} mm²"
        );
    }
    assert_eq!(rows[3][5], "seeded");
    assert_eq!(gif_frames(&out), 8);
    let chart = image::open(out.join("areas.png")).unwrap();
    assert_eq!((chart.width(), chart.height()), (900, 420));
    assert!(summary["largest"]["frame"].is_u64() && summary["smallest"]["frame"].is_u64());

    // The prompted frame's mask is what `samus segment` gives for that frame and
    // point (one point: the best of three candidates).
    let png = tmp.path().join("frame3.png");
    images[3].save(&png).unwrap();
    let mask = tmp.path().join("frame3_mask.png");
    let seg = samus(&[
        "segment",
        "--checkpoint",
        p(&ck),
        "--image",
        p(&png),
        "--point",
        &point,
        "--multimask",
        "--out",
        p(&mask),
    ]);
    assert!(seg.status.success(), "{}", stderr(&seg));
    let tracked = image::open(out.join("masks/frame_0003.png"))
        .unwrap()
        .to_luma8();
    assert!(
        tracked == image::open(&mask).unwrap().to_luma8(),
        "frame 3 differs from samus segment"
    );

    // A frame the file does not have.
    let again = tmp.path().join("again");
    let bad = samus(&[
        "track",
        "--checkpoint",
        p(&ck),
        "--input",
        p(&dcm),
        "--frame",
        "8",
        "--point",
        &point,
        "--out-dir",
        p(&again),
    ]);
    assert_clean_failure(&bad, "--frame 8");
}

#[test]
fn videos_and_frame_folders_are_tracked() {
    let Some(fx) = fixtures() else { return };
    if !have_ffmpeg() {
        return;
    }
    let ck = fx.join("samus_tiny.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("frames");
    std::fs::create_dir_all(&folder).unwrap();
    let frames = beating_ellipse(10, 96, 72, 2);
    for (i, f) in frames.iter().enumerate() {
        f.image.save(folder.join(format!("f{i:02}.png"))).unwrap();
    }
    let mp4 = tmp.path().join("loop.mp4");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-framerate", "10", "-i"])
        .arg(folder.join("f%02d.png"))
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&mp4)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (cx, cy) = frames[0].centre;
    let point = format!("{cx:.0},{cy:.0}");

    // The MP4, every second frame: frames 0, 2, ..., 8 at 10 frames/s.
    let out = tmp.path().join("video");
    let summary = track(&[
        "--checkpoint",
        p(&ck),
        "--input",
        p(&mp4),
        "--point",
        &point,
        "--every",
        "2",
        "--out-dir",
        p(&out),
    ]);
    assert_eq!(
        (summary["frames"].as_u64(), summary["segmented"].as_u64()),
        (Some(10), Some(5))
    );
    let expected: Vec<String> = (0..5).map(|i| format!("frame_{:04}.png", 2 * i)).collect();
    assert_eq!(masks(&out), expected);
    let rows = csv_rows(&out);
    assert_eq!(rows[2][1], "0.4000", "frame 4 at 0.4 s");
    assert_eq!(rows[0][3], "", "no pixel size: no mm²");
    assert_eq!(gif_frames(&out), 5);

    // The folder of PNGs, with AutoSAMUS on every frame.
    let apg = fx.join("autosamus_tiny_apg.safetensors");
    let auto = tmp.path().join("auto");
    let summary = track(&[
        "--checkpoint",
        p(&ck),
        "--apg",
        p(&apg),
        "--input",
        p(&folder),
        "--auto",
        "--out-dir",
        p(&auto),
    ]);
    assert_eq!(
        (summary["segmented"].as_u64(), summary["mode"].as_str()),
        (Some(10), Some("auto"))
    );
    assert_eq!(masks(&auto).len(), 10);
}

#[test]
fn a_real_handheld_clip_is_tracked() {
    let Some(fx) = fixtures() else { return };
    let Some(real) = realdata() else { return };
    if !have_ffmpeg() {
        return;
    }
    let clip = real.join("POCUS/clarius-ocular-short.mp4");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip");
    let summary = track(&[
        "--checkpoint",
        p(&fx.join("samus_tiny.safetensors")),
        "--input",
        p(&clip),
        "--frame",
        "20",
        "--point",
        "640,480",
        "--every",
        "10",
        "--out-dir",
        p(&out),
    ]);
    // 50 frames of 1280x960 at 25 frames/s: frames 0, 10, ..., 40.
    assert_eq!(
        (summary["frames"].as_u64(), summary["segmented"].as_u64()),
        (Some(50), Some(5))
    );
    let mask = image::open(out.join("masks/frame_0040.png")).unwrap();
    assert_eq!((mask.width(), mask.height()), (1280, 960));
    assert_eq!(csv_rows(&out)[4][1], "1.6000");
    let first = image::open(out.join("overlay.gif")).unwrap();
    assert_eq!(first.width(), 480, "the animation is scaled down");
}

#[test]
fn bad_videos_and_a_missing_ffmpeg_fail_in_one_line() {
    let Some(fx) = fixtures() else { return };
    let ck = fx.join("samus_tiny.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.mp4");
    std::fs::write(&junk, b"not a video at all").unwrap();
    let out_dir = tmp.path().join("out");
    let args = |input: &PathBuf| -> Vec<String> {
        [
            "track",
            "--checkpoint",
            p(&ck),
            "--input",
            p(input),
            "--point",
            "5,5",
            "--out-dir",
            p(&out_dir),
        ]
        .map(str::to_string)
        .to_vec()
    };
    let run = |args: &[String], ffmpeg: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_samus"));
        command.args(args);
        if let Some(program) = ffmpeg {
            command.env("SAMUS_FFMPEG", program);
        }
        command.output().unwrap()
    };
    let missing = run(&args(&junk), Some("/nonexistent/ffmpeg"));
    assert_clean_failure(&missing, "junk.mp4");
    assert!(
        stderr(&missing).contains("apt install ffmpeg"),
        "{}",
        stderr(&missing)
    );
    if have_ffmpeg() {
        let unreadable = run(&args(&junk), None);
        assert_clean_failure(&unreadable, "junk.mp4");
        assert!(
            stderr(&unreadable).contains("ffmpeg cannot"),
            "{}",
            stderr(&unreadable)
        );
    }
    // The track cannot go inside the folder whose images are its frames.
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    image::GrayImage::new(8, 8)
        .save(frames.join("f1.png"))
        .unwrap();
    let inside = samus(&[
        "track",
        "--checkpoint",
        p(&ck),
        "--input",
        p(&frames),
        "--point",
        "2,2",
        "--out-dir",
        p(&frames.join("out")),
    ]);
    assert_clean_failure(&inside, "inside the --input folder");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_clean_failure(&run(&args(&empty), None), "without images");
    let no_prompt = samus(&[
        "track",
        "--checkpoint",
        p(&ck),
        "--input",
        p(&junk),
        "--out-dir",
        p(&out_dir),
    ]);
    assert_clean_failure(&no_prompt, "--auto");
    assert!(!out_dir.exists(), "nothing written on failure");
}
