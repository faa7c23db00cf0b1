mod common;

// Bad input to `samus synth`, `data check`, `train`, `eval` and `demo` (issue #21):
// every one is a one-line error naming the flag, file or value, found before any
// long work, and nothing is changed.

use std::path::Path;

use common::{assert_clean_failure, fixtures, p, samus, stderr};

/// A small synthetic dataset (3 images per kind: one each for train, val, test).
fn synth(root: &Path) {
    let out = samus(&[
        "synth",
        "--out",
        p(root),
        "--per-dataset",
        "3",
        "--seed",
        "5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn synth_refuses_counts_that_overflow_or_leave_a_split_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth");
    for n in ["18446744073709551615", "1000000000", "100001"] {
        let run = samus(&["synth", "--out", p(&out), "--per-dataset", n]);
        assert_clean_failure(&run, "--per-dataset");
        assert!(stderr(&run).contains("100000"), "{}", stderr(&run));
    }
    for n in ["0", "1", "2"] {
        let run = samus(&["synth", "--out", p(&out), "--per-dataset", n]);
        assert_clean_failure(&run, "--per-dataset");
        assert!(stderr(&run).contains("at least 3"), "{}", stderr(&run));
    }
    assert!(!out.exists(), "a refused count writes nothing");
    // The smallest count accepted gives splits that `data check` accepts.
    synth(&out);
    let check = samus(&["data", "check", p(&out)]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        stderr(&check)
    );
}

#[test]
fn data_check_reports_class_ids_outside_the_dataset_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("synth");
    synth(&root);
    let split = root.join("MainPatient/train-Breast-SynthBUSI.txt");
    let mut text = std::fs::read_to_string(&split).unwrap();
    let first = text.lines().next().unwrap().to_string();
    let name = first.strip_prefix("1/").unwrap();
    let good_lines = text.lines().count();
    text.push_str(&format!("9/{name}\n0/{name}\n"));
    std::fs::write(&split, text).unwrap();
    let out = samus(&["data", "check", p(&root)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    for (line, id) in [(good_lines + 1, 9), (good_lines + 2, 0)] {
        let needle = format!(
            "train-Breast-SynthBUSI.txt:{line}: class id {id} is not a foreground class of `Breast-SynthBUSI` (it has 2 classes)"
        );
        assert!(stdout.contains(&needle), "`{needle}` missing:\n{stdout}");
    }
    assert_clean_failure(&out, "2 problem(s)");
}

#[test]
fn train_refuses_bad_numbers_at_parse_time() {
    let tmp = tempfile::tempdir().unwrap();
    let d = p(tmp.path());
    for (flag, value) in [
        ("--lr", "NaN"),
        ("--lr", "inf"),
        ("--lr", "-1"),
        ("--lr", "0"),
        ("--lr", "2"),
        ("--grad-clip", "-1"),
        ("--grad-clip", "0"),
        ("--grad-clip", "NaN"),
        ("--ema", "1"),
        ("--ema", "0"),
        ("--ema", "NaN"),
        ("--epochs", "0"),
        ("--max-steps", "0"),
        ("--eval-every", "0"),
        ("--batch-size", "0"),
        ("--batch-size", "4097"),
        ("--batch-size", "18446744073709551615"),
        ("--warmup", "18446744073709551615"),
        ("--cache-mb", "18446744073709551615"),
        ("--max-minutes", "NaN"),
    ] {
        let arg = format!("{flag}={value}");
        let out = samus(&["train", "--config", "tiny", "--data", d, &arg]);
        assert_clean_failure(&out, flag);
        assert!(
            stderr(&out).contains(value),
            "{flag} {value}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn eval_refuses_bad_batch_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = p(tmp.path());
    for value in ["0", "4097"] {
        let out = samus(&[
            "eval",
            "--checkpoint",
            "x.safetensors",
            "--data",
            d,
            "--batch-size",
            value,
        ]);
        assert_clean_failure(&out, "--batch-size");
    }
}

#[test]
fn output_paths_are_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    // train --out onto a file: the run folder cannot be made there.
    let out = samus(&[
        "train",
        "--config",
        "tiny",
        "--data",
        p(&tmp.path().join("no-data")),
        "--out",
        p(&file),
    ]);
    assert_clean_failure(&out, "--out");
    let err = stderr(&out);
    assert!(
        err.contains("must be a folder (the run folder)") && !err.contains("os error 17"),
        "{err}"
    );
    // Under a file, or a folder that a file blocks.
    let below = file.join("run");
    for args in [
        vec!["synth", "--out", p(&file)],
        vec!["synth", "--out", p(&below)],
        vec!["demo", "--out", p(&file)],
    ] {
        assert_clean_failure(&samus(&args), "--out");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
    // eval: the CSV's folder must exist, the CSV must not be an input, checked
    // before the split is read (here there is none: the error would name it).
    let ckpt = tmp.path().join("model.safetensors");
    std::fs::write(&ckpt, b"checked later").unwrap();
    let nodir = tmp.path().join("nodir/x.csv");
    let no_data = tmp.path().join("no-data");
    let no_data = p(&no_data);
    let out = samus(&[
        "eval",
        "--checkpoint",
        p(&ckpt),
        "--data",
        no_data,
        "--csv",
        p(&nodir),
    ]);
    assert_clean_failure(&out, "--csv");
    let err = stderr(&out);
    assert!(
        err.contains("does not exist") && !err.contains(".samus-"),
        "{err}"
    );
    let out = samus(&[
        "eval",
        "--checkpoint",
        p(&ckpt),
        "--data",
        no_data,
        "--csv",
        p(&ckpt),
    ]);
    assert_clean_failure(&out, "--csv");
    assert_eq!(std::fs::read(&ckpt).unwrap(), b"checked later");
    let out = samus(&[
        "eval",
        "--checkpoint",
        p(&ckpt),
        "--data",
        no_data,
        "--report",
        p(&file),
    ]);
    assert_clean_failure(&out, "--report");
}

#[test]
fn eval_of_autosamus_needs_a_generator_in_the_checkpoint() {
    let Some(fixtures) = fixtures() else { return };
    let ckpt = fixtures.join("samus_tiny.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data);
    let out = samus(&[
        "eval",
        "--checkpoint",
        p(&ckpt),
        "--model",
        "autosamus",
        "--data",
        p(&data),
        "--split",
        "test-Breast-SynthBUSI",
    ]);
    assert_clean_failure(&out, "holds no auto prompt generator");
    assert!(stderr(&out).contains("samus_tiny.safetensors"));
}

#[test]
fn resume_continues_quietly_and_a_finished_run_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data);
    let run = tmp.path().join("run");
    let common = [
        "--data",
        p(&data),
        "--split",
        "train-Breast-SynthBUSI",
        "--batch-size",
        "1",
    ];
    let train = |extra: &[&str]| {
        let mut args = vec!["train"];
        args.extend(common);
        args.extend(extra);
        samus(&args)
    };
    let out = train(&["--config", "tiny", "--epochs", "1", "--out", p(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Resuming needs no --config (the run's checkpoint says it) and does not claim
    // to start from random weights.
    let out = train(&["--epochs", "2", "--resume", p(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("random weights"), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(2 epochs)"));
    let state = std::fs::read(run.join("state.json")).unwrap();
    let state_of_run = state.clone();
    let last = std::fs::read(run.join("last.safetensors")).unwrap();
    for _ in 0..2 {
        let out = train(&["--config", "tiny", "--epochs", "2", "--resume", p(&run)]);
        assert_clean_failure(
            &out,
            "already finished 2 epochs; raise --epochs to continue",
        );
        assert!(stderr(&out).contains(p(&run)), "{}", stderr(&out));
        assert_eq!(std::fs::read(run.join("state.json")).unwrap(), state);
        assert_eq!(std::fs::read(run.join("last.safetensors")).unwrap(), last);
    }
    // A run stopped by --max-steps: resuming it under the same cap used to close
    // one more (empty) epoch each time.
    let capped = tmp.path().join("capped");
    let cap = ["--config", "tiny", "--epochs", "5", "--max-steps", "1"];
    let out = train(&[&cap[..], &["--out", p(&capped)]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let state = std::fs::read(capped.join("state.json")).unwrap();
    for _ in 0..2 {
        let out = train(&[&cap[..], &["--resume", p(&capped)]].concat());
        assert_clean_failure(&out, "already took 1 steps; raise --max-steps to continue");
        assert_eq!(std::fs::read(capped.join("state.json")).unwrap(), state);
    }
    // A folder that is not a run.
    let out = train(&["--config", "tiny", "--resume", p(&data)]);
    assert_clean_failure(&out, "state.json");
    // A fresh run onto a folder that holds one: refused before any work, the old
    // run's files untouched (it used to append to the old metrics.csv).
    let metrics = std::fs::read(run.join("metrics.csv")).unwrap();
    let out = train(&["--config", "tiny", "--epochs", "1", "--out", p(&run)]);
    assert_clean_failure(
        &out,
        "already holds a training run (state.json, metrics.csv",
    );
    assert!(
        stderr(&out).contains(&format!("--resume {}", p(&run))),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(run.join("metrics.csv")).unwrap(), metrics);
    assert_eq!(std::fs::read(run.join("state.json")).unwrap(), state_of_run);
}
