mod common;
#[path = "../../samus-model/tests/support/pth_writer.rs"]
mod pth_writer;

// Mutation fuzzing of every reader, through the `samus` binary (issue #21): each
// test starts from a valid file (a checkpoint, an image, a prompts file, a split,
// class.json, a run's state and optimiser files, a configuration), edits its bytes
// at random (bit flips, odd bytes, cuts, insertions, deletions, repeats, biased
// towards the head and the tail where the headers are) and runs the command that
// reads it. Whatever the bytes, the binary must either succeed (the edit was
// harmless) or fail with status 1 and one `error:` line: never a panic, a signal, a
// usage error or several lines.
//
// CI runs `SAMUS_FUZZ_CASES` cases per reader (default 16); to search longer:
//   SAMUS_FUZZ_CASES=500 cargo test --release -p samus-cli --test fuzz_readers
// A failure prints the smallest input found (proptest shrinks it) and keeps the
// file under target/fuzz-failures/.

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{fixtures, p, samus, stderr};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per reader.
fn cases() -> u32 {
    std::env::var("SAMUS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

/// Where an edit lands: in the first 64 KiB (headers, a checkpoint's JSON), in the
/// last 4 KiB (a zip's central directory) or anywhere.
#[derive(Debug, Clone, Copy)]
enum Zone {
    Head,
    Tail,
    Anywhere,
}

#[derive(Debug, Clone)]
enum Edit {
    FlipBit(Zone, Index, u8),
    SetByte(Zone, Index, u8),
    Truncate(Zone, Index),
    Insert(Zone, Index, Vec<u8>),
    Remove(Zone, Index, usize),
    Repeat(Zone, Index, usize),
}

const HEAD: usize = 64 << 10;
const TAIL: usize = 4 << 10;

impl Zone {
    /// A position in `0..=len` within the zone.
    fn position(self, at: &Index, len: usize) -> usize {
        let (start, width) = match self {
            Zone::Head => (0, len.min(HEAD)),
            Zone::Tail => (len - len.min(TAIL), len.min(TAIL)),
            Zone::Anywhere => (0, len),
        };
        start + at.index(width + 1)
    }
}

fn zone() -> impl Strategy<Value = Zone> {
    prop_oneof![3 => Just(Zone::Head), 1 => Just(Zone::Tail), 2 => Just(Zone::Anywhere)]
}

/// Bytes that readers treat specially: zero, sign bits, digits, JSON punctuation.
fn odd_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0u8),
        Just(0xff),
        Just(0x7f),
        Just(0x80),
        Just(b'9'),
        Just(b'-'),
        Just(b'"'),
        Just(b'{'),
        Just(b']'),
        Just(b','),
        Just(b'\n'),
        any::<u8>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (zone(), any::<Index>(), 0u8..8).prop_map(|(z, i, b)| Edit::FlipBit(z, i, b)),
        3 => (zone(), any::<Index>(), odd_byte()).prop_map(|(z, i, b)| Edit::SetByte(z, i, b)),
        1 => (zone(), any::<Index>()).prop_map(|(z, i)| Edit::Truncate(z, i)),
        2 => (zone(), any::<Index>(), proptest::collection::vec(odd_byte(), 1..16))
            .prop_map(|(z, i, b)| Edit::Insert(z, i, b)),
        2 => (zone(), any::<Index>(), 1usize..64).prop_map(|(z, i, n)| Edit::Remove(z, i, n)),
        1 => (zone(), any::<Index>(), 1usize..64).prop_map(|(z, i, n)| Edit::Repeat(z, i, n)),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for edit in edits {
        let len = bytes.len();
        match edit {
            Edit::FlipBit(z, at, bit) if len > 0 => {
                let i = z.position(at, len - 1);
                bytes[i] ^= 1 << bit;
            }
            Edit::SetByte(z, at, value) if len > 0 => {
                let i = z.position(at, len - 1);
                bytes[i] = *value;
            }
            Edit::Truncate(z, at) => bytes.truncate(z.position(at, len)),
            Edit::Insert(z, at, new) => {
                let i = z.position(at, len);
                bytes.splice(i..i, new.iter().copied());
            }
            Edit::Remove(z, at, n) => {
                let i = z.position(at, len);
                bytes.drain(i..(i + n).min(len));
            }
            Edit::Repeat(z, at, n) => {
                let i = z.position(at, len);
                let chunk = bytes[i..(i + n).min(len)].to_vec();
                bytes.splice(i..i, chunk);
            }
            _ => {}
        }
    }
    bytes
}

/// What the binary must do with any input: succeed, or fail with status 1 and one
/// `error:` line (warnings aside).
fn clean_outcome(out: &Output) -> Result<(), String> {
    if out.status.success() {
        return Ok(());
    }
    let err = stderr(out);
    if out.status.code() != Some(1) {
        return Err(format!("exit status {:?}; stderr:\n{err}", out.status));
    }
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
    if lines.len() != 1 || !lines[0].starts_with("error: ") || err.contains("panicked") {
        return Err(format!("not one error line:\n{err}"));
    }
    Ok(())
}

/// Runs `command` on `cases()` mutations of `seed`, each written to `target` (the
/// file the command reads), and panics with the smallest failing input.
fn fuzz(reader: &str, seed: &[u8], target: &Path, command: impl Fn() -> Output) {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = proptest::collection::vec(edit(), 1..6);
    let ran = std::cell::Cell::new(0u32);
    let result = runner.run(&strategy, |edits| {
        ran.set(ran.get() + 1);
        let bytes = apply(seed, &edits);
        std::fs::write(target, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        clean_outcome(&command()).map_err(|why| {
            let kept = keep_failure(reader, target, &bytes);
            TestCaseError::fail(format!("{why}\n(input kept at {})", kept.display()))
        })
    });
    if let Err(e) = result {
        panic!("fuzzing the {reader} reader: {e}");
    }
    eprintln!(
        "fuzz {reader}: {} inputs, every one handled cleanly",
        ran.get()
    );
}

/// Copies a failing input where a developer can rerun it.
fn keep_failure(reader: &str, target: &Path, bytes: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = dir.join(format!("{reader}-{name}"));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(&path, bytes);
    path
}

fn tiny_checkpoint(fixtures: &Path) -> (PathBuf, PathBuf) {
    (
        fixtures.join("samus_tiny.safetensors"),
        fixtures.join("samus_tiny.json"),
    )
}

#[test]
fn safetensors_checkpoints() {
    let Some(fixtures) = fixtures() else { return };
    let (ckpt, _) = tiny_checkpoint(&fixtures);
    let seed = std::fs::read(ckpt).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("ck.safetensors");
    fuzz("safetensors", &seed, &target, || {
        samus(&["info", p(&target)])
    });
}

#[test]
fn pth_checkpoints() {
    let Some(fixtures) = fixtures() else { return };
    let (ckpt, _) = tiny_checkpoint(&fixtures);
    let tensors = candle_core::safetensors::load(ckpt, &candle_core::Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let seed_path = tmp.path().join("seed.pth");
    pth_writer::write_pth(&seed_path, &tensors);
    let seed = std::fs::read(&seed_path).unwrap();
    let target = tmp.path().join("ck.pth");
    fuzz("pth", &seed, &target, || samus(&["info", p(&target)]));
}

#[test]
fn model_configurations() {
    let Some(fixtures) = fixtures() else { return };
    let (ckpt, config) = tiny_checkpoint(&fixtures);
    let seed = std::fs::read(config).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("config.json");
    fuzz("config", &seed, &target, || {
        samus(&["info", p(&ckpt), "--config", p(&target)])
    });
}

/// `samus segment` on a mutated image, the tiny model and one point.
fn segment_image(ckpt: &Path, config: &Path, image: &Path, out: &Path) -> Output {
    samus(&[
        "segment",
        "--checkpoint",
        p(ckpt),
        "--config",
        p(config),
        "--image",
        p(image),
        "--point",
        "8,8",
        "--out",
        p(out),
    ])
}

#[test]
fn images_of_every_format() {
    let Some(fixtures) = fixtures() else { return };
    let (ckpt, config) = tiny_checkpoint(&fixtures);
    // A small crop of a real scan keeps each run short.
    let scan = image::open(fixtures.join("busi/benign0001.png"))
        .unwrap()
        .crop_imm(100, 100, 96, 64);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mask.png");
    for (format, ext) in [
        (image::ImageFormat::Png, "png"),
        (image::ImageFormat::Jpeg, "jpg"),
        (image::ImageFormat::Tiff, "tiff"),
        (image::ImageFormat::Bmp, "bmp"),
    ] {
        let mut seed = Vec::new();
        scan.to_rgb8()
            .write_to(&mut std::io::Cursor::new(&mut seed), format)
            .unwrap();
        let target = tmp.path().join(format!("scan.{ext}"));
        fuzz(ext, &seed, &target, || {
            segment_image(&ckpt, &config, &target, &out)
        });
    }
    // DICOM: a calibrated two-frame grey cine and an RGB image (the header's
    // lengths, sequences and pixel data all get edited).
    use samus_data::dicom::{write_dicom, DicomCalibration, DicomPixels};
    let calibrated = DicomCalibration {
        region_mm: Some((0.1, 0.1)),
        pixel_spacing_mm: Some((0.1, 0.1)),
        frame_time_ms: Some(40.0),
    };
    for (name, frames, pixels) in [
        (
            "dicom-cine",
            vec![scan.clone(), scan.fliph()],
            DicomPixels::Grey8,
        ),
        ("dicom-rgb", vec![scan.clone()], DicomPixels::Rgb8),
    ] {
        let seed_path = tmp.path().join(format!("{name}-seed.dcm"));
        write_dicom(&seed_path, &frames, pixels, &calibrated).unwrap();
        let seed = std::fs::read(&seed_path).unwrap();
        let target = tmp.path().join(format!("{name}.dcm"));
        fuzz(name, &seed, &target, || {
            segment_image(&ckpt, &config, &target, &out)
        });
    }
}

#[test]
fn masks_for_metrics() {
    let Some(fixtures) = fixtures() else { return };
    let seed = std::fs::read(fixtures.join("busi/benign0001_label.png")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (pred, gt) = (tmp.path().join("pred"), tmp.path().join("gt"));
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::create_dir_all(&gt).unwrap();
    std::fs::write(gt.join("a.png"), &seed).unwrap();
    let target = pred.join("a.png");
    fuzz("mask", &seed, &target, || {
        samus(&["metrics", "--pred", p(&pred), "--gt", p(&gt)])
    });
}

#[test]
fn prompt_files() {
    let Some(fixtures) = fixtures() else { return };
    let (ckpt, config) = tiny_checkpoint(&fixtures);
    let seed = br#"{"prompts": [
        {"name": "lesion", "class_id": 1, "points": [[140, 115], [60, 40, 0]]},
        {"name": "boxed", "class_id": 2, "box": [100, 80, 180, 150]}
    ]}"#;
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("prompts.json");
    let out = tmp.path().join("mask.png");
    let image = fixtures.join("busi/benign0001.png");
    fuzz("prompts", seed, &target, || {
        samus(&[
            "segment",
            "--checkpoint",
            p(&ckpt),
            "--config",
            p(&config),
            "--image",
            p(&image),
            "--prompts",
            p(&target),
            "--out",
            p(&out),
        ])
    });
}

/// A small synthetic dataset in the US30K layout.
fn synth(root: &Path) {
    let out = samus(&[
        "synth",
        "--out",
        p(root),
        "--per-dataset",
        "3",
        "--seed",
        "5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn split_files_and_class_maps() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("synth");
    synth(&root);
    for file in ["train-Breast-SynthBUSI.txt", "class.json"] {
        let target = root.join("MainPatient").join(file);
        let seed = std::fs::read(&target).unwrap();
        fuzz(file, &seed, &target, || samus(&["data", "check", p(&root)]));
        std::fs::write(&target, seed).unwrap();
    }
}

#[test]
fn dataset_images_and_labels() {
    let Some(fixtures) = fixtures() else { return };
    let (ckpt, config) = tiny_checkpoint(&fixtures);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("synth");
    synth(&root);
    let split =
        std::fs::read_to_string(root.join("MainPatient/test-Breast-SynthBUSI.txt")).unwrap();
    let name = split
        .lines()
        .next()
        .unwrap()
        .split_once('/')
        .unwrap()
        .1
        .to_string();
    for folder in ["img", "label"] {
        let target = root
            .join("Breast-SynthBUSI")
            .join(folder)
            .join(format!("{name}.png"));
        let seed = std::fs::read(&target).unwrap();
        fuzz(&format!("dataset {folder}"), &seed, &target, || {
            samus(&[
                "eval",
                "--checkpoint",
                p(&ckpt),
                "--config",
                p(&config),
                "--data",
                p(&root),
                "--split",
                "test-Breast-SynthBUSI",
            ])
        });
        std::fs::write(&target, seed).unwrap();
    }
}

#[test]
fn run_state_and_optimiser_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data);
    let run = tmp.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            "tiny",
            "--data",
            p(&data),
            "--split",
            "train-Breast-SynthBUSI",
            "--batch-size",
            "1",
            "--max-steps",
            "2",
        ];
        args.extend(extra);
        samus(&args)
    };
    let out = train(&["--epochs", "1", "--out", p(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seeds: Vec<(String, Vec<u8>)> = ["state.json", "optimizer.safetensors"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(run.join(f)).unwrap()))
        .collect();
    let pristine = tmp.path().join("pristine");
    copy_folder(&run, &pristine);
    for (file, seed) in &seeds {
        let target = run.join(file);
        fuzz(file, seed, &target, || {
            // Each case resumes the same one-epoch run, whatever the last one did.
            for name in ["last.safetensors", "best.safetensors", "metrics.csv"] {
                let _ = std::fs::copy(pristine.join(name), run.join(name));
            }
            let other = if file == "state.json" {
                "optimizer.safetensors"
            } else {
                "state.json"
            };
            let _ = std::fs::copy(pristine.join(other), run.join(other));
            train(&["--epochs", "2", "--resume", p(&run)])
        });
    }
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
