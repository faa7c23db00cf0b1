//! Bad input to the inference commands: no clobbered file, no late failure, no
//! silent wrong result, no panic on a closed pipe, no hang on absurd thread counts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::{Device, Tensor};
use common::{assert_clean_failure, fixtures, p, samus, stderr};

/// The tiny fixture checkpoint and a copy of the BUSI image in a scratch folder.
struct Scene {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    checkpoint: PathBuf,
    image: PathBuf,
}

fn scene() -> Option<Scene> {
    let fixtures = fixtures()?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let image = dir.join("victim.png");
    std::fs::copy(fixtures.join("busi/benign0001.png"), &image).unwrap();
    let checkpoint = dir.join("ck.safetensors");
    std::fs::copy(fixtures.join("samus_tiny.safetensors"), &checkpoint).unwrap();
    Some(Scene {
        _tmp: tmp,
        dir,
        checkpoint,
        image,
    })
}

impl Scene {
    /// `samus segment` on the scene's checkpoint and image at a point inside it.
    fn segment(&self, extra: &[&str]) -> std::process::Output {
        self.segment_with(
            &self.checkpoint,
            &self.image,
            &["--point", "100,120"],
            extra,
        )
    }

    /// `samus segment` on any checkpoint, image and prompt.
    fn segment_with(
        &self,
        checkpoint: &Path,
        image: &Path,
        prompt: &[&str],
        extra: &[&str],
    ) -> std::process::Output {
        let mut args = vec![
            "segment",
            "--checkpoint",
            p(checkpoint),
            "--image",
            p(image),
        ];
        args.extend_from_slice(prompt);
        args.extend_from_slice(extra);
        samus(&args)
    }
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn outputs_never_replace_inputs_or_each_other() {
    let Some(s) = scene() else { return };
    let (image, checkpoint) = (bytes(&s.image), bytes(&s.checkpoint));
    assert_clean_failure(&s.segment(&["--out", p(&s.image)]), "also an input");
    let other_spelling = s.dir.join(".").join("victim.png");
    assert_clean_failure(&s.segment(&["--out", p(&other_spelling)]), "also an input");
    let onto_checkpoint = s.segment(&["--out", "m.png", "--save-logits", p(&s.checkpoint)]);
    assert_clean_failure(&onto_checkpoint, "also an input");
    let same = s.dir.join("same.png");
    assert_clean_failure(
        &s.segment(&["--out", p(&same), "--overlay", p(&same)]),
        "name the same file",
    );
    assert!(!same.exists());
    assert_eq!(bytes(&s.image), image);
    assert_eq!(bytes(&s.checkpoint), checkpoint);
}

#[test]
fn every_output_is_checked_before_the_work_starts() {
    let Some(s) = scene() else { return };
    let mask = s.dir.join("mask.png");
    let missing = s.dir.join("nodir").join("l.safetensors");
    let run = s.segment(&["--out", p(&mask), "--save-logits", p(&missing)]);
    assert_clean_failure(&run, "does not exist");
    assert!(
        !mask.exists(),
        "the mask must not be written before the failure"
    );
    assert_clean_failure(&s.segment(&["--out", p(&s.dir.join("mask.jpg"))]), "*.png");
    let protected = s.dir.join("protected.png");
    std::fs::write(&protected, b"keep me").unwrap();
    let mut perms = std::fs::metadata(&protected).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&protected, perms).unwrap();
    assert_clean_failure(&s.segment(&["--out", p(&protected)]), "write-protected");
    assert_eq!(bytes(&protected), b"keep me");
}

#[cfg(unix)]
#[test]
fn results_get_the_permissions_of_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let Some(s) = scene() else { return };
    let mask = s.dir.join("mask.png");
    let run = s.segment(&["--out", p(&mask)]);
    assert!(run.status.success(), "{}", stderr(&run));
    let mode = std::fs::metadata(&mask).unwrap().permissions().mode() & 0o777;
    // The test runs with the usual umask (022 or 002): group and others can read.
    assert_ne!(mode & 0o044, 0, "mode {mode:o}");
    assert_eq!(mode & 0o111, 0, "mode {mode:o}");
}

#[test]
fn negative_coordinates_reach_the_prompt_check() {
    let Some(s) = scene() else { return };
    let out = s.dir.join("m.png");
    let run = s.segment_with(
        &s.checkpoint,
        &s.image,
        &["--point", "-5,50"],
        &["--out", p(&out)],
    );
    assert_clean_failure(&run, "point (-5, 50) lies outside the 256x256 image");
    let prompt = ["--box", "-50,-50,1000,1000"];
    let run = s.segment_with(&s.checkpoint, &s.image, &prompt, &["--out", p(&out)]);
    assert_clean_failure(&run, "is not a box inside the 256x256 image");
}

#[test]
fn non_finite_weights_are_refused_and_reported() {
    let Some(s) = scene() else { return };
    let mut tensors = candle_core::safetensors::load(&s.checkpoint, &Device::Cpu).unwrap();
    let name = "mask_decoder.iou_prediction_head.layers.0.weight";
    let t = &tensors[name];
    let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values[0] = f32::NAN;
    let shape = t.dims().to_vec();
    tensors.insert(
        name.to_string(),
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap(),
    );
    let damaged = s.dir.join("damaged.safetensors");
    candle_core::safetensors::save(&tensors, &damaged).unwrap();
    let out = s.dir.join("m.png");
    let run = s.segment_with(
        &damaged,
        &s.image,
        &["--point", "100,120"],
        &["--out", p(&out)],
    );
    assert_clean_failure(&run, name);
    let info = samus(&["info", p(&damaged)]);
    assert!(info.status.success(), "{}", stderr(&info));
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("non-finite") && l.contains(name)),
        "{text}"
    );
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let Some(s) = scene() else { return };
    for args in [vec!["info", p(&s.checkpoint)], vec!["completions", "bash"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_samus"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the program writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn absurd_thread_counts_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let start = std::time::Instant::now();
    let run = samus(&["--threads", "4000", "segment", "--demo", "--out", p(&out)]);
    assert_clean_failure(&run, "--threads 4000: at most");
    assert!(start.elapsed().as_secs() < 30);
    assert!(!out.exists());
}

/// A PNG whose header claims `width x height`, with only the start of its pixel
/// data (a real one of that size would take minutes to write).
fn png_header(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [ihdr, b"IDAT\x78\x9c".to_vec(), b"IEND".to_vec()] {
        png.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

#[test]
fn huge_images_are_refused_by_their_size() {
    let Some(s) = scene() else { return };
    let huge = s.dir.join("huge.png");
    std::fs::write(&huge, png_header(40_000, 40_000)).unwrap();
    let out = s.dir.join("m.png");
    let run = s.segment_with(
        &s.checkpoint,
        &huge,
        &["--point", "10,10"],
        &["--out", p(&out)],
    );
    let needle = "40000x40000 (1600 megapixels); the limit is 100 megapixels";
    assert_clean_failure(&run, needle);
    // The same budget for masks (`metrics`) and for a dataset's images (`eval`).
    let masks = s.dir.join("masks");
    std::fs::create_dir(&masks).unwrap();
    std::fs::copy(&huge, masks.join("a.png")).unwrap();
    let run = samus(&["metrics", "--pred", p(&masks), "--gt", p(&masks)]);
    assert_clean_failure(&run, needle);
    let data = s.dir.join("synth");
    let synth = samus(&["synth", "--out", p(&data), "--per-dataset", "3"]);
    assert!(synth.status.success(), "{}", stderr(&synth));
    let split =
        std::fs::read_to_string(data.join("MainPatient/test-Breast-SynthBUSI.txt")).unwrap();
    let name = split.lines().next().unwrap().split_once('/').unwrap().1;
    std::fs::copy(&huge, data.join(format!("Breast-SynthBUSI/img/{name}.png"))).unwrap();
    let run = samus(&[
        "eval",
        "--checkpoint",
        p(&s.checkpoint),
        "--data",
        p(&data),
        "--split",
        "test-Breast-SynthBUSI",
    ]);
    assert_clean_failure(&run, needle);
}
