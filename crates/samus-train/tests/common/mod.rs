//! What several test files build: a tiny SAMUS with random weights.

use candle_core::Device;
use samus_model::SamusConfig;
use samus_train::freeze::TrainableSet;
use samus_train::model::{ModelKind, TrainModel};

/// The tiny configuration's SAMUS with the random weights of `seed`, reference
/// trainable set, on the CPU.
pub fn tiny_samus(seed: u64) -> TrainModel {
    let cfg = SamusConfig::tiny();
    let (_, tensors) = samus_model::train::random_weights(&cfg, seed, &Device::Cpu).unwrap();
    TrainModel::from_tensors(
        tensors,
        &cfg,
        ModelKind::Samus,
        TrainableSet::Reference,
        &Device::Cpu,
    )
    .unwrap()
}
