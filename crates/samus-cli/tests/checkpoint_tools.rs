//! `samus convert`, `samus info` and `samus completions`.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::{assert_clean_failure, fixtures, p, samus, stderr};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A SAM-style checkpoint made from the SAMUS fixture: the SAMUS-only tensors dropped.
fn sam_from_samus(samus_file: &std::path::Path, out: &std::path::Path) {
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(samus_file, &Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| {
            !(k.contains("cnn_embed") || k.contains("post_pos_embed") || k.contains("Adapter"))
        })
        .collect();
    candle_core::safetensors::save(&tensors, out).unwrap();
}

#[test]
fn convert_and_info_on_samus_and_sam_checkpoints() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let samus_file = dir.join("samus_tiny.safetensors");

    // SAMUS -> SAMUS: every tensor kept, unchanged.
    let converted = tmp.path().join("samus.safetensors");
    let out = samus(&["convert", p(&samus_file), "--out", p(&converted)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("SAMUS checkpoint"),
        "{}",
        stdout(&out)
    );
    let before = candle_core::safetensors::load(&samus_file, &Device::Cpu).unwrap();
    let after = candle_core::safetensors::load(&converted, &Device::Cpu).unwrap();
    assert_eq!(before.len(), after.len());
    for (name, t) in &before {
        let diff = (t - &after[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} changed");
    }

    // SAM -> SAMUS: the missing parts are initialised and said to be untrained.
    let sam = tmp.path().join("sam.safetensors");
    sam_from_samus(&samus_file, &sam);
    let info = samus(&["info", p(&sam), "--json"]);
    assert!(info.status.success(), "{}", stderr(&info));
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["kind"], "SAM (SAMUS parts missing)");
    assert_eq!(json["config"]["embed_dim"], 128);
    let missing = json["missing"].as_array().unwrap().len();
    assert!(
        missing > 10,
        "a SAM checkpoint lacks the SAMUS parts: {missing}"
    );
    let from_sam = tmp.path().join("from_sam.safetensors");
    let out = samus(&["convert", p(&sam), "--out", p(&from_sam)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("UNTRAINED"), "{}", stdout(&out));
    let full = candle_core::safetensors::load(&from_sam, &Device::Cpu).unwrap();
    assert_eq!(
        full.len(),
        before.len(),
        "the converted SAM checkpoint is complete"
    );

    // info on the complete checkpoint: nothing missing, the reference trainable count.
    let info = samus(&["info", p(&converted), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["kind"], "SAMUS");
    assert_eq!(json["missing"].as_array().unwrap().len(), 0);
    assert_eq!(json["unexpected"].as_array().unwrap().len(), 0);
    let fixture_meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("samus_tiny.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["trainable_reference"].as_u64().unwrap() as usize,
        fixture_meta["trainable"].as_array().unwrap().len()
    );
    let text = samus(&["info", p(&converted)]);
    assert!(
        stdout(&text).contains("embed_dim 128, depth 4"),
        "{}",
        stdout(&text)
    );
}

#[test]
fn convert_and_info_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.pth");
    assert_clean_failure(&samus(&["info", p(&missing)]), "nope.pth");
    let not_ckpt = tmp.path().join("notes.safetensors");
    std::fs::write(&not_ckpt, b"hello").unwrap();
    assert_clean_failure(&samus(&["info", p(&not_ckpt)]), "notes.safetensors");
    let out_png = tmp.path().join("out.png");
    assert_clean_failure(
        &samus(&["convert", p(&not_ckpt), "--out", p(&out_png)]),
        "safetensors",
    );
}

#[test]
fn completions_are_printed() {
    let out = samus(&["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    assert!(script.contains("samus") && script.contains("convert") && script.contains("demo"));
    assert!(!samus(&["completions", "cmd.exe"]).status.success());
}

#[test]
fn global_threads_and_device_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let mask = tmp.path().join("m.png");
    let out = samus(&["--threads", "1", "segment", "--demo", "--out", p(&mask)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = samus(&[
        "segment",
        "--demo",
        "--device",
        "cpu",
        "--threads",
        "2",
        "--out",
        p(&mask),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // GPU 99 exists nowhere: refused by a CPU build, not found by a CUDA build.
    assert_clean_failure(
        &samus(&[
            "segment",
            "--demo",
            "--device",
            "cuda:99",
            "--out",
            p(&mask),
        ]),
        "--device cuda:99",
    );
    for bad in [["--threads", "0"], ["--device", "gpu"]] {
        let out = samus(&["segment", "--demo", bad[0], bad[1]]);
        assert!(
            !out.status.success() && stderr(&out).contains(bad[0]),
            "{}",
            stderr(&out)
        );
    }
}

/// `samus bench --train`: one training step of the tiny model, its report, and the
/// batch and weights it hands a peer implementation.
#[test]
fn bench_train_times_a_step_and_writes_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, io) = (
        dir.path().join("w.safetensors"),
        dir.path().join("io.safetensors"),
    );
    let out = samus(&[
        "bench",
        "--train",
        "--random-weights",
        "--batch-size",
        "2",
        "--iters",
        "1",
        "--json",
        "--save-weights",
        weights.to_str().unwrap(),
        "--write-io",
        io.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "train_step_median_s",
        "first_loss",
        "second_loss",
        "trainable_parameters",
    ] {
        assert!(json[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {json}");
    }
    assert_eq!(json["batch_size"], 2);
    assert_eq!(
        json["config"]["embed_dim"], 128,
        "--random-weights defaults to tiny"
    );
    // One Adam update lowers the loss of the batch it was computed on.
    assert!(
        json["second_loss"].as_f64() < json["first_loss"].as_f64(),
        "{json}"
    );
    let batch = candle_core::safetensors::load(&io, &candle_core::Device::Cpu).unwrap();
    assert_eq!(batch["images"].dims(), &[2, 1, 256, 256]);
    assert_eq!(batch["low_targets"].dims(), &[2, 1, 128, 128]);
    assert_eq!(batch["point_coords"].dims(), &[2, 1, 2]);
    assert_eq!(batch["point_labels"].dims(), &[2, 1]);
    let saved = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let params: usize = saved.values().map(|t| t.elem_count()).sum();
    assert!(
        params as f64 >= json["trainable_parameters"].as_f64().unwrap(),
        "{params}"
    );
    // --batch-size belongs to --train.
    let out = samus(&["bench", "--random-weights", "--batch-size", "2"]);
    assert!(
        !out.status.success() && stderr(&out).contains("--train"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bench_reports_the_promised_json_keys() {
    let out = samus(&[
        "bench",
        "--config",
        "tiny",
        "--random-weights",
        "--iters",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "full_median_s",
        "encoder_median_s",
        "decoder_median_ms",
        "images_per_s",
        "peak_rss_mb",
        "threads",
    ] {
        assert!(json[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {json}");
    }
    let full = json["full_median_s"].as_f64().unwrap();
    assert!(full >= json["encoder_median_s"].as_f64().unwrap());
    let one = samus(&[
        "--threads",
        "1",
        "bench",
        "--config",
        "tiny",
        "--random-weights",
        "--iters",
        "1",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(json["threads"], 1, "--threads reaches the kernels");
    // The kernels' instruction set is reported, and `SAMUS_ISA` reaches them: every
    // one this CPU has, while a bad or unsupported value is refused at start.
    let bench_with = |isa: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_samus"))
            .args([
                "bench",
                "--config",
                "tiny",
                "--random-weights",
                "--iters",
                "1",
                "--json",
            ])
            .env("SAMUS_ISA", isa)
            .output()
            .unwrap()
    };
    for isa in samus_core::cpu::Isa::ALL {
        let out = bench_with(isa.name());
        if isa.is_supported() {
            assert!(out.status.success(), "{isa}: {}", stderr(&out));
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(json["isa"], isa.name());
            // The gemm crate dispatches on its own: what this build gives it,
            // whatever SAMUS_ISA says.
            assert_eq!(json["gemm_isa"], samus_core::cpu::Isa::gemm().name());
        } else {
            assert_clean_failure(&out, &format!("SAMUS_ISA={isa}: this CPU does not have it"));
        }
    }
    assert_clean_failure(
        &bench_with("avx9"),
        "SAMUS_ISA=avx9: not an instruction set",
    );
    let out = samus(&["bench"]);
    assert!(
        !out.status.success() && stderr(&out).contains("--checkpoint"),
        "{}",
        stderr(&out)
    );
}
