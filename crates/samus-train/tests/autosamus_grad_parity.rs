//! AutoSAMUS gradient parity: the APG trainable set, the loss, and the gradients the
//! fixture ships (relative error <= 1e-3); the parameters the reference leaves
//! without gradient get none here either.

use candle_core::Device;
use samus_apg::AutoSamus;
use samus_core::fixtures::{fixtures_or_skip, relative_error};
use samus_model::checkpoint::read_tensors;
use samus_model::{MissingTensors, Samus, SamusConfig, WeightStore};
use samus_train::freeze::{autosamus_trainable, TrainableSet};
use samus_train::loss::{bce_dice_loss, LossWeights};

fn names(meta: &serde_json::Value, key: &str) -> Vec<String> {
    let mut v: Vec<String> = meta[key]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    v.sort();
    v
}

#[test]
fn apg_loss_and_gradients_match() {
    let Some(dir) = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let cfg = SamusConfig::from_json_file(dir.join("samus_tiny.json")).unwrap();
    let (samus, _) = Samus::loader(dir.join("samus_tiny.safetensors"))
        .config(cfg.clone())
        .device(&Device::Cpu)
        .load_with_report()
        .unwrap();
    let apg = read_tensors(dir.join("autosamus_tiny_apg.safetensors")).unwrap();
    let store = WeightStore::with_trainable(
        apg,
        MissingTensors::Error,
        autosamus_trainable(TrainableSet::Reference),
    );
    let auto = AutoSamus::new(samus, store.var_builder(&Device::Cpu)).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("autosamus_tiny.json")).unwrap())
            .unwrap();
    let mut vars: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
    vars.sort();
    assert_eq!(vars, names(&meta, "trainable"));

    let io =
        candle_core::safetensors::load(dir.join("autosamus_tiny_io.safetensors"), &Device::Cpu)
            .unwrap();
    let out = auto.forward(&io["image"]).unwrap();
    let loss = bce_dice_loss(
        &out.low_res_logits,
        &io["low_target"],
        LossWeights::default(),
    )
    .unwrap();
    let value = loss.to_scalar::<f32>().unwrap();
    let want = io["train.loss0"].to_vec1::<f32>().unwrap()[0];
    assert!(
        (value - want).abs() <= 1e-5,
        "loss {value}, reference {want}"
    );
    let grads = loss.backward().unwrap();
    let without = names(&meta, "trainable_without_gradient");
    let mut checked = 0;
    for (name, var) in store.vars() {
        let grad = grads.get(var.as_tensor());
        if without.contains(&name) {
            assert!(grad.is_none(), "{name} gets no gradient in the reference");
            continue;
        }
        let Some(reference) = io.get(&format!("grad.{name}")) else {
            continue;
        };
        let grad = grad.unwrap_or_else(|| panic!("no gradient for {name}"));
        let err = relative_error(grad, reference).unwrap();
        assert!(err <= 1e-3, "grad.{name}: relative error {err:.3e}");
        checked += 1;
    }
    let shipped = io.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, shipped, "every shipped gradient was compared");
}
