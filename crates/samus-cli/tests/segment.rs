//! End-to-end tests of `samus segment`: parity with the reference through the binary,
//! any configuration of the family, and clear one-line errors.

mod common;

use common::{assert_clean_failure, fixtures, p, samus, stderr};

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use samus_core::fixtures::relative_error;
use samus_model::{Label, Prompts, Samus, SamusConfig};

#[test]
fn segment_reproduces_reference_logits() {
    let Some(dir) = fixtures() else { return };
    let io = candle_core::safetensors::load(dir.join("samus_tiny_io.safetensors"), &Device::Cpu)
        .unwrap();
    let coords = io["point_coords"]
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let logits = tmp.path().join("logits.safetensors");
    let mask = tmp.path().join("mask.png");
    let overlay = tmp.path().join("overlay.png");
    let point = format!("{},{}", coords[0], coords[1]);
    let out = samus(&[
        "segment",
        "--checkpoint",
        p(&dir.join("samus_tiny.safetensors")),
        "--image",
        p(&dir.join("busi/benign0001.png")),
        "--point",
        &point,
        "--out",
        p(&mask),
        "--overlay",
        p(&overlay),
        "--save-logits",
        p(&logits),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["width"], 256);
    assert_eq!(report["untrained"], false);
    let saved = candle_core::safetensors::load(&logits, &Device::Cpu).unwrap();
    assert_eq!(saved["low_res_logits"].dims(), &[1, 1, 128, 128]);
    assert_eq!(saved["iou"].dims(), &[1, 1]);
    let reference = io["point.low_res_logits"].narrow(0, 0, 1).unwrap();
    let err = relative_error(&saved["low_res_logits"], &reference).unwrap();
    assert!(err <= 1e-4, "relative error {err:e}");
    let mask = image::open(&mask).unwrap().to_luma8();
    assert_eq!(mask.dimensions(), (256, 256));
    assert!(mask.pixels().all(|p| p[0] == 0 || p[0] == 255));
    assert_eq!(
        image::open(&overlay).unwrap().to_rgb8().dimensions(),
        (256, 256)
    );
}

/// A family member that shares nothing with the tiny numbers.
fn other_config() -> SamusConfig {
    SamusConfig {
        embed_dim: 96,
        depth: 3,
        num_heads: 3,
        global_attn_indexes: vec![0, 2],
        ..SamusConfig::vit_b()
    }
}

fn save_random_checkpoint(cfg: &SamusConfig, path: &Path) -> Samus {
    let (model, tensors) = samus_model::train::random_weights(cfg, 11, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&tensors, path).unwrap();
    model
}

#[test]
fn segment_serves_any_configuration_of_the_family() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = other_config();
    let ckpt = tmp.path().join("other.safetensors");
    let model = save_random_checkpoint(&cfg, &ckpt);
    // A non-square RGB image, so that the prompt mapping and the resize are exercised.
    let img = image::RgbImage::from_fn(300, 200, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    let img_path = tmp.path().join("scan.png");
    img.save(&img_path).unwrap();
    let cfg_path = tmp.path().join("cfg.json");
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let logits = tmp.path().join("l.safetensors");
    let mask = tmp.path().join("m.png");
    for config_args in [vec!["--config", p(&cfg_path)], vec![]] {
        let mut args = vec![
            "segment",
            "--checkpoint",
            p(&ckpt),
            "--image",
            p(&img_path),
            "--point",
            "150,80",
            "--point",
            "20,20,0",
            "--box",
            "100,50,220,160",
            "--multimask",
            "--out",
            p(&mask),
            "--save-logits",
            p(&logits),
        ];
        args.extend(config_args);
        let out = samus(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let saved = candle_core::safetensors::load(&logits, &Device::Cpu).unwrap();
        let embedding = model
            .embed(&image::DynamicImage::ImageRgb8(img.clone()))
            .unwrap();
        let want = model
            .predict(
                &embedding,
                &Prompts::new()
                    .point(150.0, 80.0, Label::Foreground)
                    .point(20.0, 20.0, Label::Background)
                    .bbox([100.0, 50.0, 220.0, 160.0])
                    .multimask(true),
            )
            .unwrap();
        assert_eq!(saved["low_res_logits"].dims(), &[1, 3, 128, 128]);
        assert!(relative_error(&saved["low_res_logits"], want.low_res_logits()).unwrap() < 1e-6);
        assert_eq!(
            image::open(&mask).unwrap().to_luma8().dimensions(),
            (300, 200)
        );
    }
}

#[test]
fn demo_runs_without_any_files_and_says_it_is_untrained() {
    let tmp = tempfile::tempdir().unwrap();
    let mask = tmp.path().join("demo.png");
    let overlay = tmp.path().join("demo_overlay.png");
    let out = samus(&[
        "segment",
        "--demo",
        "--out",
        p(&mask),
        "--overlay",
        p(&overlay),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("UNTRAINED"));
    assert!(stderr(&out).contains("cargo xtask download"));
    assert!(mask.exists() && overlay.exists());
}

#[test]
fn missing_checkpoint_says_how_to_get_one() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("i.png");
    image::GrayImage::new(32, 32).save(&img).unwrap();
    assert_clean_failure(
        &samus(&["segment", "--image", p(&img), "--point", "1,1"]),
        "cargo xtask download",
    );
    let absent = tmp.path().join("absent.safetensors");
    assert_clean_failure(
        &samus(&[
            "segment",
            "--checkpoint",
            p(&absent),
            "--image",
            p(&img),
            "--point",
            "1,1",
        ]),
        "does not exist",
    );
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SamusConfig {
        depth: 2,
        global_attn_indexes: vec![1],
        ..other_config()
    };
    let ckpt = tmp.path().join("w.safetensors");
    save_random_checkpoint(&cfg, &ckpt);
    let img = tmp.path().join("i.png");
    image::GrayImage::new(64, 48).save(&img).unwrap();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["segment", "--checkpoint", p(&ckpt), "--image", p(&img)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>| samus(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Point outside the image.
    assert_clean_failure(&run(base(&["--point", "64,10"])), "outside the 64x48 image");
    // Corrupt image.
    let corrupt = tmp.path().join("corrupt.png");
    let mut bytes = std::fs::read(&img).unwrap();
    bytes.truncate(bytes.len() / 2);
    bytes[20] ^= 0xff;
    std::fs::write(&corrupt, &bytes).unwrap();
    let mut args = base(&["--point", "1,1"]);
    args[4] = corrupt.display().to_string();
    assert_clean_failure(&run(args), "corrupt.png");
    // Not an image at all.
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "hello").unwrap();
    let mut args = base(&["--point", "1,1"]);
    args[4] = text.display().to_string();
    assert_clean_failure(&run(args), "notes.png");
    // DICOM is named.
    let dcm = tmp.path().join("scan.dcm");
    std::fs::write(&dcm, [0u8; 200]).unwrap();
    let mut args = base(&["--point", "1,1"]);
    args[4] = dcm.display().to_string();
    assert_clean_failure(&run(args), "DICOM");
    // A config value of the wrong type.
    let bad_cfg = tmp.path().join("bad.json");
    std::fs::write(
        &bad_cfg,
        r#"{"embed_dim": 96, "depth": "two", "num_heads": 3, "global_attn_indexes": [1]}"#,
    )
    .unwrap();
    assert_clean_failure(
        &run(base(&["--point", "1,1", "--config", p(&bad_cfg)])),
        "two",
    );
    // An unknown preset.
    assert_clean_failure(
        &run(base(&["--point", "1,1", "--config", "vit_z"])),
        "vit_z",
    );
    // A checkpoint of another size than the configuration.
    assert_clean_failure(
        &run(base(&["--point", "1,1", "--config", "tiny"])),
        "image_encoder.",
    );
    // A file that is not a checkpoint, and one of an unrelated model.
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, "this is not a checkpoint at all").unwrap();
    let mut args = base(&["--point", "1,1"]);
    args[2] = junk.display().to_string();
    assert_clean_failure(&run(args), "junk.safetensors");
    let other = tmp.path().join("other.safetensors");
    let tensors: HashMap<String, Tensor> = [(
        "encoder.weight".to_string(),
        Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]
    .into();
    candle_core::safetensors::save(&tensors, &other).unwrap();
    let mut args = base(&["--point", "1,1", "--config", "tiny"]);
    args[2] = other.display().to_string();
    assert_clean_failure(&run(args), "not look like a SAM or SAMUS checkpoint");
    // No prompt.
    assert_clean_failure(&run(base(&[])), "--point");
}

#[test]
fn plain_sam_checkpoint_warns_that_samus_parts_are_untrained() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SamusConfig {
        depth: 2,
        global_attn_indexes: vec![1],
        ..other_config()
    };
    let (_, all) = samus_model::train::random_weights(&cfg, 4, &Device::Cpu).unwrap();
    let sam: HashMap<String, Tensor> = all
        .into_iter()
        .filter(|(k, _)| {
            !(k.contains("cnn_embed") || k.contains("post_pos_embed") || k.contains("Adapter"))
        })
        .collect();
    let ckpt = tmp.path().join("sam.safetensors");
    candle_core::safetensors::save(&sam, &ckpt).unwrap();
    let img = tmp.path().join("i.png");
    image::GrayImage::from_fn(64, 64, |x, _| image::Luma([(x * 4) as u8]))
        .save(&img)
        .unwrap();
    let mask = tmp.path().join("m.png");
    let out = samus(&[
        "segment",
        "--checkpoint",
        p(&ckpt),
        "--image",
        p(&img),
        "--point",
        "30,30",
        "--out",
        p(&mask),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("plain SAM checkpoint") && stderr(&out).contains("UNTRAINED"),
        "{}",
        stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["untrained"], true);
}
