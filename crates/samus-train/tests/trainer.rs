//! The optimiser loop on synthetic data: the loss is finite and recorded, the run
//! folder holds its checkpoints, and a run stopped after one epoch and resumed gives
//! exactly the losses of an uninterrupted run.

use std::path::Path;

use candle_core::Device;
use samus_data::{DatasetOptions, Us30kSplit};
use samus_model::{Samus, SamusConfig};
use samus_train::freeze::TrainableSet;
use samus_train::model::{ModelKind, TrainModel};
use samus_train::trainer::{TrainOptions, Trainer};

fn model() -> TrainModel {
    let cfg = SamusConfig::tiny();
    let (_, tensors) = Samus::random_with_tensors(&cfg, 3, &Device::Cpu).unwrap();
    TrainModel::from_tensors(
        tensors,
        &cfg,
        ModelKind::Samus,
        TrainableSet::Reference,
        &Device::Cpu,
    )
    .unwrap()
}

fn data(root: &Path) -> (Us30kSplit, Us30kSplit) {
    samus_data::synth::write_dataset(root, 6, 21).unwrap();
    let lines: Vec<String> =
        std::fs::read_to_string(root.join("MainPatient/train-Breast-SynthBUSI.txt"))
            .unwrap()
            .lines()
            .take(4)
            .map(String::from)
            .collect();
    std::fs::write(root.join("MainPatient/mini.txt"), lines.join("\n")).unwrap();
    let train = Us30kSplit::open(root, "mini", DatasetOptions::training()).unwrap();
    let val = Us30kSplit::open(root, "val-Breast-SynthBUSI", DatasetOptions::evaluation()).unwrap();
    (train, val)
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, val) = data(&tmp.path().join("data"));
    let options = TrainOptions {
        batch_size: 2,
        epochs: 2,
        ..Default::default()
    };

    let straight_model = model();
    let straight_dir = tmp.path().join("straight");
    let mut trainer = Trainer::new(&straight_model, options.clone(), &straight_dir).unwrap();
    let mut seen = Vec::new();
    let straight = trainer
        .run(&train, Some(&val), |s| seen.push(s.loss))
        .unwrap();
    assert_eq!(straight.step, 4);
    assert_eq!(straight.losses, seen);
    assert!(straight.losses.iter().all(|l| l.is_finite()));
    assert!(straight.best_dice.is_some());
    for f in [
        "last.safetensors",
        "best.safetensors",
        "optimizer.safetensors",
        "state.json",
        "metrics.csv",
    ] {
        assert!(straight_dir.join(f).exists(), "{f}");
    }

    let resumed_dir = tmp.path().join("resumed");
    let first_model = model();
    let one_epoch = TrainOptions {
        epochs: 1,
        ..options.clone()
    };
    Trainer::new(&first_model, one_epoch, &resumed_dir)
        .unwrap()
        .run(&train, Some(&val), |_| {})
        .unwrap();
    let second_model = model();
    let mut resumed = Trainer::resume(&second_model, options, &resumed_dir).unwrap();
    assert_eq!(resumed.state().epoch, 1);
    let finished = resumed.run(&train, Some(&val), |_| {}).unwrap();
    assert_eq!(
        finished.losses, straight.losses,
        "resuming continues exactly"
    );
    let csv = std::fs::read_to_string(straight_dir.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("step,epoch,loss,lr,val_dice"));
}
