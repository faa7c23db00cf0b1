//! End-to-end tests of `samus auto`: parity with the reference AutoSAMUS through the
//! binary, batches of many images, and clear errors.

mod common;

use common::{assert_clean_failure, fixtures, p, samus, stderr};

use candle_core::Device;
use samus_core::fixtures::relative_error;

#[test]
fn auto_reproduces_reference_logits_on_busi() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let logits = tmp.path().join("auto.safetensors");
    let out = samus(&[
        "auto",
        "--checkpoint",
        p(&dir.join("samus_tiny.safetensors")),
        "--apg",
        p(&dir.join("autosamus_tiny_apg.safetensors")),
        "--image",
        p(&dir.join("busi/benign0001.png")),
        "--out-dir",
        p(tmp.path()),
        "--overlay",
        "--save-logits",
        p(&logits),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &report["images"][0];
    assert!(
        first["area"].as_u64().is_some() && first["mean_foreground_probability"].as_f64().is_some()
    );
    assert!(tmp.path().join("benign0001_mask.png").exists());
    assert!(tmp.path().join("benign0001_overlay.png").exists());
    let saved = candle_core::safetensors::load(&logits, &Device::Cpu).unwrap();
    assert_eq!(saved["low_res_logits"].dims(), &[1, 1, 128, 128]);
    assert_eq!(saved["iou"].dims(), &[1, 1]);
    let io =
        candle_core::safetensors::load(dir.join("autosamus_tiny_io.safetensors"), &Device::Cpu)
            .unwrap();
    let reference = io["low_res_logits"].narrow(0, 0, 1).unwrap();
    let err = relative_error(&saved["low_res_logits"], &reference).unwrap();
    assert!(err <= 1e-4, "relative error {err:e}");
}

#[test]
fn auto_batches_folders_and_globs() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("in");
    let more = tmp.path().join("more");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::create_dir_all(&more).unwrap();
    std::fs::copy(dir.join("busi/benign0001.png"), inputs.join("a_busi.png")).unwrap();
    image::GrayImage::from_fn(300, 220, |x, y| image::Luma([((x + 2 * y) % 256) as u8]))
        .save(inputs.join("b_wide.png"))
        .unwrap();
    image::RgbImage::from_fn(180, 240, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    })
    .save(more.join("c_rgb.png"))
    .unwrap();
    std::fs::write(inputs.join("notes.txt"), "not an image").unwrap();
    let out_dir = tmp.path().join("out");
    let logits = tmp.path().join("all.safetensors");
    let glob = format!("{}/*.png", more.display());
    let out = samus(&[
        "auto",
        "--checkpoint",
        p(&dir.join("samus_tiny.safetensors")),
        "--apg",
        p(&dir.join("autosamus_tiny_apg.safetensors")),
        "--image",
        p(&inputs),
        "--image",
        &glob,
        "--out-dir",
        p(&out_dir),
        "--batch-size",
        "2",
        "--save-logits",
        p(&logits),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("mean foreground probability"))
            .count(),
        3,
        "{stdout}"
    );
    for (name, size) in [
        ("a_busi", (256, 256)),
        ("b_wide", (300, 220)),
        ("c_rgb", (180, 240)),
    ] {
        let mask = image::open(out_dir.join(format!("{name}_mask.png")))
            .unwrap()
            .to_luma8();
        assert_eq!(mask.dimensions(), size, "{name}");
    }
    // The image processed in a batch of two gets the same logits as the reference.
    let saved = candle_core::safetensors::load(&logits, &Device::Cpu).unwrap();
    assert_eq!(saved["low_res_logits"].dims(), &[3, 1, 128, 128]);
    let io =
        candle_core::safetensors::load(dir.join("autosamus_tiny_io.safetensors"), &Device::Cpu)
            .unwrap();
    let err = relative_error(
        &saved["low_res_logits"].narrow(0, 0, 1).unwrap(),
        &io["low_res_logits"].narrow(0, 0, 1).unwrap(),
    )
    .unwrap();
    assert!(err <= 1e-4, "relative error {err:e}");
}

#[test]
fn auto_errors_are_one_clear_line() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = dir.join("samus_tiny.safetensors");
    let apg = dir.join("autosamus_tiny_apg.safetensors");
    let busi = dir.join("busi/benign0001.png");
    assert_clean_failure(
        &samus(&["auto", "--checkpoint", p(&ckpt), "--image", p(&busi)]),
        "--apg",
    );
    assert_clean_failure(
        &samus(&["auto", "--image", p(&busi)]),
        "cargo xtask download",
    );
    // `samus auto` with the fixture model and APG on `images`.
    let auto_on = |apg_file: &std::path::Path, images: &[&std::path::Path]| {
        let mut args = vec!["auto", "--checkpoint", p(&ckpt), "--apg", p(apg_file)];
        for image in images {
            args.extend(["--image", p(image)]);
        }
        samus(&args)
    };
    let absent = tmp.path().join("absent.png");
    assert_clean_failure(&auto_on(&apg, &[&absent]), "absent.png");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_clean_failure(&auto_on(&apg, &[&empty]), "no images found");
    let twin = tmp.path().join("twin");
    std::fs::create_dir_all(&twin).unwrap();
    std::fs::copy(&busi, twin.join("benign0001.png")).unwrap();
    assert_clean_failure(&auto_on(&apg, &[&busi, &twin]), "same mask");
    assert_clean_failure(&auto_on(&ckpt, &[&busi]), "not an APG checkpoint");
}
