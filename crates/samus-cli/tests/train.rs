//! `samus train` and `samus eval` on synthetic data, and their errors.

mod common;

use common::{samus, stderr};

/// `--config tiny`, the synthetic breast training split of `data`, and the batch size.
fn tiny_training<'a>(data: &'a str, batch_size: &'a str) -> [&'a str; 8] {
    [
        "--config",
        "tiny",
        "--data",
        data,
        "--split",
        "train-Breast-SynthBUSI",
        "--batch-size",
        batch_size,
    ]
}

#[test]
fn train_then_resume_then_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    assert!(
        samus(&["synth", "--out", d, "--per-dataset", "4", "--seed", "9"])
            .status
            .success()
    );
    let common = tiny_training(d, "2");
    let mut args = vec!["train"];
    args.extend(common);
    args.extend(["--epochs", "1", "--loss", "focal", "--out", r]);
    let out = samus(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("trained 1 steps (1 epochs)"));
    // Resume into a second epoch.
    let mut args = vec!["train"];
    args.extend(common);
    args.extend(["--epochs", "2", "--resume", r]);
    let out = samus(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("trained 2 steps (2 epochs)"));
    let ckpt = run.join("last.safetensors");
    let csv = tmp.path().join("eval.csv");
    let out = samus(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data",
        d,
        "--split",
        "test-Breast-SynthBUSI",
        "--json",
        "--csv",
        csv.to_str().unwrap(),
        "--report",
        tmp.path().join("report").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let html = std::fs::read_to_string(tmp.path().join("report/index.html")).unwrap();
    for needle in [
        "<table>",
        "Breast-SynthBUSI/1",
        "Best cases",
        "Worst cases",
        "cases/best_0.png",
    ] {
        assert!(html.contains(needle), "`{needle}` missing from the report");
    }
    let case = image::open(tmp.path().join("report/cases/worst_0.png")).unwrap();
    assert_eq!(case.width(), 256);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["overall"]["images"], 1);
    assert!(report["images_per_s"].as_f64().unwrap() > 0.0);
    let table = std::fs::read_to_string(&csv).unwrap();
    assert!(
        table.starts_with("dataset,images,dice") && table.contains("\nall,1,"),
        "{table}"
    );
}

#[test]
fn train_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    assert!(samus(&["synth", "--out", d, "--per-dataset", "3"])
        .status
        .success());
    let out = samus(&["train", "--config", "tiny", "--data", d, "--split", "nope"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("nope.txt") && !err.contains("panicked"),
        "{err}"
    );
    let out = samus(&["train", "--data", d]);
    assert!(
        !out.status.success() && stderr(&out).contains("--config"),
        "{}",
        stderr(&out)
    );
    let out = samus(&[
        "train",
        "--config",
        "tiny",
        "--data",
        d,
        "--batch-size",
        "0",
    ]);
    assert!(
        !out.status.success() && stderr(&out).contains("--batch-size"),
        "{}",
        stderr(&out)
    );
}

/// `--schedule cosine` decays the rate of `metrics.csv` from the base rate over the
/// run's steps, and `--augment` takes each preset.
#[test]
fn cosine_schedule_decays_over_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    assert!(
        samus(&["synth", "--out", d, "--per-dataset", "4", "--seed", "3"])
            .status
            .success()
    );
    for (augment, schedule) in [
        ("light", "cosine"),
        ("off", "cosine"),
        ("reference", "constant"),
    ] {
        let run = tmp.path().join(format!("run-{augment}"));
        let mut args = vec!["train"];
        args.extend(tiny_training(d, "1"));
        args.extend([
            "--max-steps",
            "4",
            "--lr",
            "1e-3",
            "--schedule",
            schedule,
            "--augment",
            augment,
            "--out",
            run.to_str().unwrap(),
        ]);
        let out = samus(&args);
        assert!(out.status.success(), "{augment}: {}", stderr(&out));
        let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        let rates: Vec<f64> = csv
            .lines()
            .skip(1)
            .filter_map(|row| row.split(',').nth(4)?.parse().ok())
            .collect();
        assert_eq!(rates.len(), 4, "{csv}");
        for (step, rate) in rates.iter().enumerate() {
            let expected = match schedule {
                "cosine" => 1e-3 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / 4.0).cos()),
                _ => 1e-3,
            };
            assert!(
                (rate - expected).abs() < 1e-9,
                "{augment} step {step}: {rate} vs {expected}"
            );
        }
    }
}
