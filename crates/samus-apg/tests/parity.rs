//! Parity with the PyTorch reference AutoSAMUS on the tiny fixtures: image
//! embeddings, every APG output, the logits and the masks (relative error <= 1e-4,
//! mask agreement >= 99.9%).

use candle_core::{Device, Tensor};
use samus_apg::AutoSamus;
use samus_core::fixtures::{fixtures_or_skip, relative_error, sign_agreement};
use samus_model::SamusConfig;
use std::collections::HashMap;

fn check(io: &HashMap<String, Tensor>, name: &str, ours: &Tensor) {
    let err = relative_error(ours, &io[name]).unwrap();
    eprintln!("{name}: relative error {err:.2e}");
    assert!(err <= 1e-4, "{name}: relative error {err:.3e}");
}

#[test]
fn autosamus_matches_reference() {
    let Some(dir) = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let cfg = SamusConfig::from_json_file(dir.join("samus_tiny.json")).unwrap();
    let apg = dir.join("autosamus_tiny_apg.safetensors");
    let (auto, report) = AutoSamus::loader(dir.join("samus_tiny.safetensors"))
        .apg(&apg)
        .config(cfg.clone())
        .device(&Device::Cpu)
        .load_with_report()
        .unwrap();
    assert!(report.apg_initialised.is_empty());
    assert!(report.samus.initialised.is_empty());
    let io =
        candle_core::safetensors::load(dir.join("autosamus_tiny_io.safetensors"), &Device::Cpu)
            .unwrap();
    let out = auto.forward(&io["image"]).unwrap();
    check(&io, "image_embeddings", &out.image_embeddings);
    check(
        &io,
        "apg.new_image_embeddings",
        &out.prompts.image_embeddings,
    );
    check(&io, "apg.object_token", &out.prompts.sparse);
    check(&io, "apg.output_tokens", &out.prompts.tokens);
    check(&io, "apg.dense", &out.dense);
    check(&io, "low_res_logits", &out.low_res_logits);
    check(&io, "masks", &out.masks);
    assert!(sign_agreement(&out.masks, &io["masks"]).unwrap() >= 0.999);
}

#[test]
fn one_file_and_two_files_load_the_same_model() {
    let Some(dir) = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let cfg = SamusConfig::from_json_file(dir.join("samus_tiny.json")).unwrap();
    let mut all =
        candle_core::safetensors::load(dir.join("samus_tiny.safetensors"), &Device::Cpu).unwrap();
    all.extend(
        candle_core::safetensors::load(dir.join("autosamus_tiny_apg.safetensors"), &Device::Cpu)
            .unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let combined = tmp.path().join("autosamus.safetensors");
    candle_core::safetensors::save(&all, &combined).unwrap();
    let (one, report) = AutoSamus::loader(&combined)
        .config(cfg.clone())
        .load_with_report()
        .unwrap();
    assert!(report.apg_initialised.is_empty());
    let io =
        candle_core::safetensors::load(dir.join("autosamus_tiny_io.safetensors"), &Device::Cpu)
            .unwrap();
    let emb = &io["image_embeddings"];
    let (_, _, out) = one.decode(emb).unwrap();
    check(&io, "low_res_logits", &out.low_res_logits);

    // A SAMUS checkpoint alone gets a fresh, seeded APG.
    let (fresh, report) = AutoSamus::loader(dir.join("samus_tiny.safetensors"))
        .config(cfg.clone())
        .fresh_apg(true)
        .load_with_report()
        .unwrap();
    assert!(report
        .apg_initialised
        .iter()
        .any(|n| n == "prompt_generator.object_token"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("autosamus_tiny.json")).unwrap())
            .unwrap();
    let mut trainable: Vec<String> = meta["trainable"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    trainable.sort();
    assert_eq!(
        report.apg_initialised, trainable,
        "a fresh APG is exactly the AutoSAMUS trainable set"
    );
    let (_, _, fresh_out) = fresh.decode(emb).unwrap();
    assert_eq!(fresh_out.low_res_logits.dims(), &[2, 1, 128, 128]);

    // An APG file holding other tensors is refused with its name.
    let wrong = tmp.path().join("wrong_apg.safetensors");
    let samus_only =
        candle_core::safetensors::load(dir.join("samus_tiny.safetensors"), &Device::Cpu).unwrap();
    candle_core::safetensors::save(&samus_only, &wrong).unwrap();
    let err = AutoSamus::loader(dir.join("samus_tiny.safetensors"))
        .apg(&wrong)
        .config(cfg.clone())
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wrong_apg.safetensors") && err.contains("not an APG checkpoint"),
        "{err}"
    );
}

#[test]
fn segment_on_an_embedding_matches_the_batched_forward_pass() {
    let Some(dir) = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let auto = AutoSamus::loader(dir.join("samus_tiny.safetensors"))
        .apg(dir.join("autosamus_tiny_apg.safetensors"))
        .load()
        .unwrap();
    let image = image::open(dir.join("busi/benign0001.png")).unwrap();
    let embedding = auto.embed(&image).unwrap();
    let prediction = auto.segment(&embedding).unwrap();
    assert_eq!(prediction.masks().len(), 1);
    assert_eq!(prediction.best().image.dimensions(), (256, 256));
    let io =
        candle_core::safetensors::load(dir.join("autosamus_tiny_io.safetensors"), &Device::Cpu)
            .unwrap();
    let reference = io["low_res_logits"].narrow(0, 0, 1).unwrap();
    let err = relative_error(prediction.low_res_logits(), &reference).unwrap();
    assert!(err <= 1e-4, "relative error {err:e}");
    // The same embedding serves prompted SAMUS decoding.
    let prompted = auto
        .samus()
        .predict(
            &embedding,
            &samus_model::Prompts::new().point(128.0, 128.0, samus_model::Label::Foreground),
        )
        .unwrap();
    assert_eq!(prompted.best().image.dimensions(), (256, 256));
    // A SAMUS checkpoint without APG tensors is refused unless a fresh APG is asked for.
    let err = AutoSamus::load(dir.join("samus_tiny.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("samus_tiny.safetensors") && err.contains("no auto prompt generator"),
        "{err}"
    );
}
