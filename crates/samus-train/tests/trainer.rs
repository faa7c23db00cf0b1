//! The optimiser loop on synthetic data: the loss is finite and recorded, the run
//! folder holds its checkpoints, and a run stopped after one epoch and resumed gives
//! exactly the losses of an uninterrupted run.

use std::path::Path;

use candle_core::Device;
use samus_data::{DatasetOptions, Us30kSplit};
use samus_model::SamusConfig;
use samus_train::freeze::TrainableSet;
use samus_train::model::{ModelKind, TrainModel};
use samus_train::trainer::{TrainOptions, Trainer};

fn model() -> TrainModel {
    let cfg = SamusConfig::tiny();
    let (_, tensors) = samus_model::train::random_weights(&cfg, 3, &Device::Cpu).unwrap();
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
        "curve.png",
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
    assert!(csv.starts_with("step,epoch,elapsed_s,loss,lr,val_dice"));
}

#[test]
fn time_limit_stops_the_run_with_an_evaluated_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, val) = data(&tmp.path().join("data"));
    let options = TrainOptions {
        batch_size: 2,
        epochs: 5,
        time_limit: Some(std::time::Duration::from_nanos(1)),
        ..Default::default()
    };
    let m = model();
    let dir = tmp.path().join("limited");
    let state = Trainer::new(&m, options, &dir)
        .unwrap()
        .run(&train, Some(&val), |_| {})
        .unwrap();
    assert_eq!(state.step, 0, "no step fits in the limit");
    assert_eq!(state.epoch, 1, "the cut epoch is closed");
    assert!(state.best_dice.is_some(), "the stopped run is evaluated");
    assert!(dir.join("last.safetensors").exists());
    assert!(state.elapsed_s > 0.0);
}

/// The smoke test of convergence: a few dozen steps on one image lower the loss
/// clearly (the 20-minute synthetic run of docs/TRAINING.md is not a test).
#[test]
fn loss_falls_over_a_few_dozen_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    samus_data::synth::write_dataset(&root, 6, 5).unwrap();
    let first = std::fs::read_to_string(root.join("MainPatient/train-Breast-SynthBUSI.txt"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(root.join("MainPatient/one.txt"), first).unwrap();
    let train = Us30kSplit::open(&root, "one", DatasetOptions::training()).unwrap();
    let cfg = SamusConfig::tiny();
    let (_, tensors) = samus_model::train::random_weights(&cfg, 11, &Device::Cpu).unwrap();
    let m = TrainModel::from_tensors(
        tensors,
        &cfg,
        ModelKind::Samus,
        TrainableSet::All,
        &Device::Cpu,
    )
    .unwrap();
    let options = TrainOptions {
        batch_size: 1,
        epochs: 1000,
        max_steps: Some(24),
        ..Default::default()
    };
    let state = Trainer::new(&m, options, tmp.path().join("run"))
        .unwrap()
        .run(&train, None, |_| {})
        .unwrap();
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    let (head, tail) = (mean(&state.losses[..4]), mean(&state.losses[20..]));
    assert!(
        tail < 0.6 * head,
        "loss did not fall: first steps {head:.3}, last steps {tail:.3} ({:?})",
        state.losses
    );
}
