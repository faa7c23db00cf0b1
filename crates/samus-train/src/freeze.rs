//! Which parameters train: chosen from the model's structure, not from block numbers.

use samus_model::weights::TrainablePredicate;
use samus_model::SamusConfig;

/// A named set of trainable parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainableSet {
    /// The reference recipe: for SAMUS the CNN branch, the position adapter, every
    /// adapter and the global blocks' relative-position tables; for AutoSAMUS the
    /// prompt generator and the dense feature adapter.
    Reference,
    /// Every parameter.
    All,
}

/// Parts of the SAMUS image encoder that exist only in SAMUS and always train.
const SAMUS_ENCODER_PARTS: [&str; 3] = ["cnn_embed.", "post_pos_embed.", "input_Adapter."];
/// Parts of a global block that train: its adapters and relative-position tables.
const GLOBAL_BLOCK_PARTS: [&str; 4] = [
    "Space_Adapter.",
    "MLP_Adapter.",
    "refine_Adapter.",
    "attn.rel_pos_",
];

/// Whether `name` is in the reference SAMUS trainable set of a model of `cfg`.
pub fn is_samus_trainable(cfg: &SamusConfig, name: &str) -> bool {
    let Some(rest) = name.strip_prefix("image_encoder.") else {
        return false;
    };
    if SAMUS_ENCODER_PARTS.iter().any(|p| rest.starts_with(p)) {
        return true;
    }
    let Some(block) = rest.strip_prefix("blocks.") else {
        return false;
    };
    let Some((index, part)) = block.split_once('.') else {
        return false;
    };
    index.parse::<usize>().is_ok_and(|i| cfg.is_global(i))
        && GLOBAL_BLOCK_PARTS.iter().any(|p| part.starts_with(p))
}

/// Whether `name` is in the AutoSAMUS trainable set (the APG).
pub fn is_autosamus_trainable(name: &str) -> bool {
    name.starts_with("prompt_generator.") || name.starts_with("feature_adapter.")
}

/// The predicate a `WeightStore` uses to hand out SAMUS's trainable parameters.
pub fn samus_trainable(cfg: &SamusConfig, set: TrainableSet) -> TrainablePredicate {
    let cfg = cfg.clone();
    match set {
        TrainableSet::Reference => Box::new(move |name| is_samus_trainable(&cfg, name)),
        TrainableSet::All => Box::new(|_| true),
    }
}

/// The predicate for AutoSAMUS (the APG; or everything with [`TrainableSet::All`]).
pub fn autosamus_trainable(set: TrainableSet) -> TrainablePredicate {
    match set {
        TrainableSet::Reference => Box::new(is_autosamus_trainable),
        TrainableSet::All => Box::new(|_| true),
    }
}
