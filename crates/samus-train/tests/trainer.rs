//! The optimiser loop on synthetic data: the loss is finite and recorded, the run
//! folder holds its checkpoints, and a run stopped after one epoch and resumed gives
//! exactly the losses of an uninterrupted run.

mod common;

use std::path::Path;

use candle_core::Device;
use samus_data::{DatasetOptions, Us30kSplit};
use samus_model::SamusConfig;
use samus_train::freeze::TrainableSet;
use samus_train::model::{ModelKind, TrainModel};
use samus_train::trainer::{Finished, RunState, TrainOptions, Trainer};

fn model() -> TrainModel {
    common::tiny_samus(3)
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
    // A run killed in the middle of its second epoch has written rows past its
    // checkpoint; the resumed run trains those steps again, once.
    let metrics = resumed_dir.join("metrics.csv");
    let mut csv = std::fs::read_to_string(&metrics).unwrap();
    csv.push_str("3,1,9.9,0.5,0.0005,\n");
    std::fs::write(&metrics, csv).unwrap();
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
    // The step of each row, the evaluations' included.
    let step_rows = |csv: &str| -> Vec<String> {
        csv.lines()
            .skip(1)
            .filter_map(|row| row.split(',').next().map(String::from))
            .collect()
    };
    let resumed_csv = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        step_rows(&resumed_csv),
        step_rows(&csv),
        "the resumed run's metrics.csv has each step and evaluation once:\n{resumed_csv}"
    );
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

/// The first four training lines only, with one step per epoch at batch 4.
fn one_step_options(epochs: usize) -> TrainOptions {
    TrainOptions {
        batch_size: 4,
        epochs,
        ..Default::default()
    }
}

/// A run folder after one epoch of one step, with its data and model.
fn one_finished_epoch() -> (
    tempfile::TempDir,
    Us30kSplit,
    std::path::PathBuf,
    TrainModel,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (train, _) = data(&tmp.path().join("data"));
    let dir = tmp.path().join("run");
    let m = model();
    Trainer::new(&m, one_step_options(1), &dir)
        .unwrap()
        .run(&train, None, |_| {})
        .unwrap();
    (tmp, train, dir, m)
}

#[test]
fn resuming_a_finished_run_trains_nothing_and_writes_nothing() {
    let (tmp, train, dir, m) = one_finished_epoch();
    let state = std::fs::read(dir.join("state.json")).unwrap();
    let last = std::fs::read(dir.join("last.safetensors")).unwrap();
    for _ in 0..2 {
        let mut resumed = Trainer::resume(&m, one_step_options(1), &dir).unwrap();
        match resumed.run(&train, None, |_| panic!("a finished run took a step")) {
            Err(samus_train::TrainError::Finished(Finished::Epochs { done: 1 })) => {}
            other => panic!("expected Finished, got {other:?}"),
        }
        assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), state);
        assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), last);
    }
    // A run stopped by its step limit: resuming it under the same limit does not
    // close another epoch.
    let capped = TrainOptions {
        batch_size: 2,
        epochs: 5,
        max_steps: Some(1),
        ..Default::default()
    };
    let dir = tmp.path().join("capped");
    let done = Trainer::new(&m, capped.clone(), &dir)
        .unwrap()
        .run(&train, None, |_| {})
        .unwrap();
    assert_eq!((done.step, done.epoch), (1, 1));
    let state = std::fs::read(dir.join("state.json")).unwrap();
    for _ in 0..2 {
        let err = Trainer::resume(&m, capped.clone(), &dir)
            .unwrap()
            .run(&train, None, |_| {})
            .unwrap_err();
        assert!(
            matches!(
                err,
                samus_train::TrainError::Finished(Finished::Steps { done: 1 })
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("already took 1 steps"), "{err}");
    }
    assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), state);
    assert_eq!(RunState::read(&dir).unwrap().epoch, 1);
}

#[test]
fn weights_broken_by_an_update_stop_the_run_and_keep_the_last_checkpoint() {
    let (_tmp, train, dir, m) = one_finished_epoch();
    let files = ["last.safetensors", "optimizer.safetensors", "state.json"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    // Finite, so the options are valid, but every update overflows f32.
    let mut options = one_step_options(2);
    options.adam.lr = 1e300;
    let err = Trainer::resume(&m, options, &dir)
        .unwrap()
        .run(&train, None, |_| {})
        .unwrap_err();
    match &err {
        samus_train::TrainError::NonFiniteWeights {
            step: 2,
            checkpoint: Some(1),
            ..
        } => {}
        other => panic!("expected NonFiniteWeights at step 2, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("at step 2") && text.contains("the last checkpoint, from step 1, is kept"),
        "{text}"
    );
    for (f, bytes) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(dir.join(f)).unwrap(), bytes, "{f} changed");
    }
}

#[test]
fn options_that_cannot_train_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model();
    let base = TrainOptions::default();
    let mut cases: Vec<(TrainOptions, &str)> = vec![
        (
            TrainOptions {
                batch_size: 0,
                ..base.clone()
            },
            "batch size",
        ),
        (
            TrainOptions {
                epochs: 0,
                ..base.clone()
            },
            "0 epochs",
        ),
        (
            TrainOptions {
                max_steps: Some(0),
                ..base.clone()
            },
            "0 steps",
        ),
        (
            TrainOptions {
                grad_clip: Some(-1.0),
                ..base.clone()
            },
            "gradient clip -1",
        ),
        (
            TrainOptions {
                grad_clip: Some(f64::INFINITY),
                ..base.clone()
            },
            "gradient clip inf",
        ),
        (
            TrainOptions {
                weight_average: Some(1.0),
                ..base.clone()
            },
            "weight-average decay 1",
        ),
        (
            TrainOptions {
                weight_average: Some(0.0),
                ..base.clone()
            },
            "weight-average decay 0",
        ),
    ];
    for lr in [f64::NAN, -1.0, 0.0, f64::INFINITY] {
        let mut o = base.clone();
        o.adam.lr = lr;
        cases.push((o, "learning rate"));
    }
    let mut o = base.clone();
    o.adam.weight_decay = f64::NAN;
    cases.push((o, "weight decay NaN"));
    for (options, needle) in cases {
        let err = Trainer::new(&m, options.clone(), tmp.path().join("run")).unwrap_err();
        assert!(
            matches!(err, samus_train::TrainError::Options(_)) && err.to_string().contains(needle),
            "{options:?}: {err}"
        );
    }
}

#[test]
fn a_fresh_run_refuses_a_folder_that_holds_a_run() {
    let (_tmp, _train, dir, m) = one_finished_epoch();
    let metrics = std::fs::read(dir.join("metrics.csv")).unwrap();
    match Trainer::new(&m, one_step_options(1), &dir) {
        Err(samus_train::TrainError::RunExists { files, .. }) => {
            assert_eq!(
                &files[..3],
                ["state.json", "metrics.csv", "last.safetensors"]
            );
        }
        other => panic!("expected RunExists, got {other:?}"),
    }
    assert_eq!(std::fs::read(dir.join("metrics.csv")).unwrap(), metrics);
    // The same folder resumes.
    assert!(Trainer::resume(&m, one_step_options(2), &dir).is_ok());
}

/// Every tensor of a safetensors file, flattened, by name.
fn tensor_values(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    samus_model::checkpoint::read_tensors(path)
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn weight_average_is_kept_beside_the_weights_without_changing_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, val) = data(&tmp.path().join("data"));
    let plain = TrainOptions {
        batch_size: 2,
        epochs: 2,
        ..Default::default()
    };
    let averaged = TrainOptions {
        weight_average: Some(0.9),
        ..plain.clone()
    };
    let plain_dir = tmp.path().join("plain");
    let plain_state = Trainer::new(&model(), plain, &plain_dir)
        .unwrap()
        .run(&train, Some(&val), |_| {})
        .unwrap();
    let dir = tmp.path().join("averaged");
    let state = Trainer::new(&model(), averaged.clone(), &dir)
        .unwrap()
        .run(&train, Some(&val), |_| {})
        .unwrap();

    // The average follows the run without changing it: the same losses, the same
    // weights at the end, and the weights evaluate as in the plain run.
    assert_eq!(state.losses, plain_state.losses);
    assert_eq!(
        tensor_values(&dir.join("last.safetensors")),
        tensor_values(&plain_dir.join("last.safetensors"))
    );
    assert_eq!(state.best_raw_dice, plain_state.best_dice);
    assert_eq!(state.average_updates, 4);
    assert!(plain_state.best_raw_dice.is_none());
    assert!(!plain_dir.join("average.safetensors").exists());

    // The best checkpoint holds averaged weights, not the trained ones.
    let best = tensor_values(&dir.join("best.safetensors"));
    let best_raw = tensor_values(&dir.join("best_raw.safetensors"));
    let average = tensor_values(&dir.join("average.safetensors"));
    assert_eq!(best.len(), best_raw.len(), "both are whole checkpoints");
    assert!(
        average.len() < best.len(),
        "the average holds the trainable tensors"
    );
    assert!(
        average.keys().any(|name| best[name] != best_raw[name]),
        "the averaged checkpoint differs from the weights"
    );
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let evaluations: Vec<&str> = csv.lines().filter(|l| l.contains(",,,")).collect();
    assert_eq!(evaluations.len(), 2, "{csv}");
    for row in evaluations {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(
            fields.len(),
            7,
            "average and weights are both evaluated: {row}"
        );
        assert!(fields[5].parse::<f64>().is_ok() && fields[6].parse::<f64>().is_ok());
    }

    // Stopped after one epoch and resumed, the average continues exactly.
    let resumed_dir = tmp.path().join("resumed");
    let one_epoch = TrainOptions {
        epochs: 1,
        ..averaged.clone()
    };
    Trainer::new(&model(), one_epoch, &resumed_dir)
        .unwrap()
        .run(&train, Some(&val), |_| {})
        .unwrap();
    let resumed_model = model();
    let resumed = Trainer::resume(&resumed_model, averaged, &resumed_dir)
        .unwrap()
        .run(&train, Some(&val), |_| {})
        .unwrap();
    assert_eq!(resumed.losses, state.losses);
    assert_eq!(resumed.average_updates, state.average_updates);
    assert_eq!(resumed.best_dice, state.best_dice);
    assert_eq!(
        tensor_values(&resumed_dir.join("average.safetensors")),
        average
    );
}
