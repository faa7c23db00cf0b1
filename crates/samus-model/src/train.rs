//! Constructors for training and tooling: a model whose chosen tensors are
//! variables, a model built from any `VarBuilder`, and fresh random weights to save
//! as a checkpoint. Inference code never needs these: it loads with
//! [`Samus::load`](crate::Samus::load).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::LoadReport;
use crate::config::SamusConfig;
use crate::error::Result;
use crate::loader::SamusLoader;
use crate::samus::Samus;
use crate::weights::{MissingTensors, WeightStore};

pub use crate::weights::TrainablePredicate;

/// Builds the model of `cfg` from `vb`, whose names are the reference `state_dict`
/// names (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`).
pub fn build(vb: VarBuilder, cfg: &SamusConfig) -> candle_core::Result<Samus> {
    Samus::build(vb, cfg)
}

/// Loads like [`SamusLoader::load_with_report`], but the tensors named by
/// `trainable` become variables; the returned store lists them
/// ([`WeightStore::vars`]) and gives every tensor at its current value
/// ([`WeightStore::requested_tensors`]) for checkpoints.
pub fn load_trainable(
    loader: SamusLoader,
    trainable: TrainablePredicate,
) -> Result<(Samus, LoadReport, WeightStore)> {
    loader.into_parts()?.build(Some(trainable))
}

/// A model of `cfg` with every weight freshly initialised as the reference does,
/// and those weights by reference name (to save them as a checkpoint).
pub fn random_weights(
    cfg: &SamusConfig,
    seed: u64,
    device: &Device,
) -> Result<(Samus, HashMap<String, Tensor>)> {
    cfg.validate()?;
    let store = WeightStore::new(HashMap::new(), MissingTensors::Initialise { seed });
    let model = Samus::build(store.var_builder(device), cfg)?;
    Ok((model, store.requested_tensors()))
}
