//! Parity with the PyTorch reference on the tiny fixtures (`../shared/fixtures`):
//! every encoder stage, the prompt encodings, the decoder outputs and the SAM ->
//! SAMUS rel-pos conversion, at the fixture tolerances (relative error <= 1e-4,
//! mask agreement >= 99.9%).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use samus_core::fixtures::{fixtures_or_skip, relative_error, sign_agreement};
use samus_model::checkpoint::resample_rel_pos;
use samus_model::{PromptBatch, Samus, SamusConfig};

const FORWARD_TOL: f64 = 1e-4;
const MASK_AGREEMENT: f64 = 0.999;

struct Fixture {
    model: Samus,
    io: HashMap<String, Tensor>,
}

fn fixture() -> Option<Fixture> {
    let dir = fixtures_or_skip(env!("CARGO_MANIFEST_DIR"))?;
    let dir: PathBuf = dir;
    let cfg = SamusConfig::from_json_file(dir.join("samus_tiny.json")).expect("fixture config");
    let (model, report) = Samus::loader(dir.join("samus_tiny.safetensors"))
        .config(cfg.clone())
        .device(&Device::Cpu)
        .load_with_report()
        .expect("fixture weights");
    assert!(
        report.initialised.is_empty(),
        "a SAMUS checkpoint must load completely"
    );
    assert!(
        report.unused.is_empty(),
        "unused tensors: {:?}",
        report.unused
    );
    let io = candle_core::safetensors::load(dir.join("samus_tiny_io.safetensors"), &Device::Cpu)
        .expect("fixture io");
    Some(Fixture { model, io })
}

impl Fixture {
    fn get(&self, name: &str) -> &Tensor {
        self.io
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
    }

    fn check(&self, name: &str, ours: &Tensor) {
        let err = relative_error(ours, self.get(name)).unwrap();
        eprintln!("{name}: relative error {err:.2e}");
        assert!(
            err <= FORWARD_TOL,
            "{name}: relative error {err:.3e} > {FORWARD_TOL:e}"
        );
    }
}

#[test]
fn encoder_stages_and_embeddings_match() {
    let Some(f) = fixture() else { return };
    let enc = f.model.image_encoder();
    let (embeddings, trace) = enc.forward_traced(f.get("image")).unwrap();
    f.check("enc.cnn_embed", trace.cnn_embed.as_ref().unwrap());
    f.check("enc.patch_embed", trace.patch_embed.as_ref().unwrap());
    f.check("enc.input_adapter", trace.input_adapter.as_ref().unwrap());
    f.check("enc.post_pos_embed", enc.position_embedding());
    assert_eq!(trace.blocks.len(), f.model.config().depth);
    for (i, (x, cnnx)) in trace.blocks.iter().enumerate() {
        f.check(&format!("enc.block{i}.x"), x);
        f.check(&format!("enc.block{i}.cnnx"), cnnx);
    }
    f.check("image_embeddings", &embeddings);
    f.check("dense_pe", f.model.prompt_encoder().dense_pe());
}

#[test]
fn prompted_outputs_match() {
    let Some(f) = fixture() else { return };
    // Decode from the reference embeddings so that each check isolates the decoder.
    let emb = f.get("image_embeddings");
    let coords = f.get("point_coords");
    let labels = f.get("point_labels");
    let boxes = f.get("boxes");
    let mask_input = f.get("mask_input");

    let point = PromptBatch {
        points: Some((coords, labels)),
        ..Default::default()
    };
    let (sparse, _) = f.model.prompt_encoder().forward(&point, 2).unwrap();
    f.check("point.sparse", &sparse);
    let out = f.model.decode(emb, &point, false).unwrap();
    f.check("point.low_res_logits", &out.low_res_logits);
    let masks = f.model.upscale_logits(&out.low_res_logits).unwrap();
    f.check("point.masks", &masks);
    assert!(sign_agreement(&masks, f.get("point.masks")).unwrap() >= MASK_AGREEMENT);

    let bx = PromptBatch {
        boxes: Some(boxes),
        ..Default::default()
    };
    let (sparse, _) = f.model.prompt_encoder().forward(&bx, 2).unwrap();
    f.check("box.sparse", &sparse);
    let out = f.model.decode(emb, &bx, true).unwrap();
    f.check("box.low_res_logits", &out.low_res_logits);
    f.check("box.iou", &out.iou);

    let combo = PromptBatch {
        points: Some((coords, labels)),
        boxes: Some(boxes),
        masks: Some(mask_input),
    };
    let (sparse, dense) = f.model.prompt_encoder().forward(&combo, 2).unwrap();
    f.check("combo.sparse", &sparse);
    f.check("combo.dense", &dense);
    let out = f.model.decode(emb, &combo, false).unwrap();
    f.check("combo.low_res_logits", &out.low_res_logits);
    f.check("combo.iou", &out.iou);
}

#[test]
fn full_forward_matches_end_to_end() {
    let Some(f) = fixture() else { return };
    let point = PromptBatch {
        points: Some((f.get("point_coords"), f.get("point_labels"))),
        ..Default::default()
    };
    let out = f.model.forward(f.get("image"), &point, false).unwrap();
    f.check("point.low_res_logits", &out.low_res_logits);
    f.check("point.masks", &out.masks);
    assert!(sign_agreement(&out.masks, f.get("point.masks")).unwrap() >= MASK_AGREEMENT);
}

/// The model as `Samus::load` gives it to apps, its encoder's weights packed ahead
/// of time with the unpacked copies dropped: the same numbers as the reference,
/// and the same bits as the model that packs on first use.
#[test]
fn packed_model_matches_the_reference() {
    let Some(f) = fixture() else { return };
    let dir = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")).expect("fixtures");
    let cfg = f.model.config().clone();
    let mut packed = Samus::loader(dir.join("samus_tiny.safetensors"))
        .config(cfg)
        .load()
        .expect("fixture weights");
    // `load` packed every encoder linear layer already where a packed kernel runs.
    let again = packed.pack_for_inference().unwrap();
    assert_eq!(again.layers, 0, "load left layers unpacked");
    let mut lazy = f.model.clone();
    let first = lazy.pack_for_inference().unwrap();
    eprintln!(
        "packed {} layers ({} bytes) with the {} kernel",
        first.layers,
        first.bytes,
        samus_core::cpu::Isa::selected()
    );
    if samus_core::packed::available() {
        assert!(first.layers > 0, "nothing was packed");
    } else {
        assert_eq!(first.layers, 0);
    }
    let point = PromptBatch {
        points: Some((f.get("point_coords"), f.get("point_labels"))),
        ..Default::default()
    };
    let out = packed.forward(f.get("image"), &point, false).unwrap();
    f.check("point.low_res_logits", &out.low_res_logits);
    f.check("point.masks", &out.masks);
    let unpacked = f.model.forward(f.get("image"), &point, false).unwrap();
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        values(&out.low_res_logits) == values(&unpacked.low_res_logits),
        "packing ahead of time changed the logits"
    );
}

#[test]
fn sam_rel_pos_conversion_matches() {
    let Some(f) = fixture() else { return };
    let converted = resample_rel_pos(f.get("convert.sam_rel_pos"), 63).unwrap();
    f.check("convert.samus_rel_pos", &converted);
}

/// The forward-pass parity tests again under every kernel this CPU has: each in a
/// child run of this test binary with `SAMUS_ISA` set (the kernels' instruction set
/// is chosen once per process), so that AVX-512, AVX2 and the portable kernel are
/// each held to the reference's numbers on a machine that has them.
#[test]
fn parity_holds_on_every_kernel() {
    use samus_core::cpu::{isa::OVERRIDE_VAR, Isa};
    if std::env::var_os(OVERRIDE_VAR).is_some() || fixture().is_none() {
        return; // a child run, or no fixtures (already reported as skipped)
    }
    let tests = [
        "encoder_stages_and_embeddings_match",
        "prompted_outputs_match",
        "full_forward_matches_end_to_end",
        "packed_model_matches_the_reference",
    ];
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut covered = Vec::new();
    for isa in Isa::supported() {
        let out = std::process::Command::new(&exe)
            .args(tests)
            .args(["--exact", "--test-threads", "1"])
            .env(OVERRIDE_VAR, isa.name())
            .output()
            .expect("the test binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "parity fails with {OVERRIDE_VAR}={isa}:\n{text}"
        );
        assert!(
            text.contains(&format!("{} passed", tests.len())),
            "{isa}: not every parity test ran:\n{text}"
        );
        covered.push(isa.name());
    }
    assert!(!covered.is_empty());
    eprintln!("parity checked with the kernels: {}", covered.join(", "));
}
