//! The reference loss on the fixture logits equals `train.loss0`.

use candle_core::Device;
use samus_core::fixtures::fixtures_or_skip;
use samus_train::loss::{bce_dice_loss, LossWeights};

#[test]
fn loss_matches_reference_loss0() {
    let Some(dir) = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let io = candle_core::safetensors::load(dir.join("samus_tiny_io.safetensors"), &Device::Cpu)
        .unwrap();
    let loss = bce_dice_loss(
        &io["point.low_res_logits"],
        &io["low_target"],
        LossWeights::default(),
    )
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    let want = io["train.loss0"].to_vec1::<f32>().unwrap()[0];
    assert!((loss - want).abs() <= 1e-5, "loss {loss}, reference {want}");
}
