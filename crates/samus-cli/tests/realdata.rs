//! End to end on the real BUS-BRA files: import, train a few steps, evaluate, and the
//! reports of each step.

mod common;

use common::{assert_clean_failure, p, realdata, samus, stderr};

#[test]
fn busbra_import_train_evaluate() {
    let Some(realdata) = realdata() else { return };
    let src = realdata.join("BUSBRA");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("US30K");
    let run = tmp.path().join("run");

    let out = samus(&[
        "data",
        "import",
        "busbra",
        p(&src),
        "--out",
        p(&root),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let import = &report["import"];
    assert_eq!(import["written"], 500, "{import}");
    assert_eq!(import["patients"], 271);
    assert!(import["skipped"].as_array().unwrap().is_empty(), "{import}");
    assert!(
        report["check"]["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let test_images = import["splits"]["test"].as_u64().unwrap();
    assert_eq!(
        report["check"]["datasets"]["Breast-BUSBRA"]["split_lines"]["test-Breast-BUSBRA"],
        test_images
    );

    // Twice: the text report says nothing changed and ends with the check.
    let out = samus(&["data", "import", "busbra", p(&src), "--out", p(&root)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("500 sample(s) (0 written, 500 unchanged)"),
        "{text}"
    );
    assert!(
        text.contains("271 patient(s)") && text.trim_end().ends_with("ok: no problems found"),
        "{text}"
    );

    let out = samus(&[
        "train",
        "--config",
        "tiny",
        "--data",
        p(&root),
        "--split",
        "train-Breast-BUSBRA",
        "--val-split",
        "val-Breast-BUSBRA",
        "--trainable",
        "all",
        "--batch-size",
        "4",
        "--max-steps",
        "3",
        "--augment",
        "mirror",
        "--out",
        p(&run),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("trained 3 steps"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(metrics.lines().count() >= 2, "{metrics}");

    // Scored on every test image, plainly (with the HTML report) and with the mirror
    // test-time augmentation.
    let report = tmp.path().join("report");
    let checkpoint = run.join("last.safetensors");
    for extra in [&["--report", p(&report)][..], &["--tta", "flip"]] {
        let mut args = vec![
            "eval",
            "--checkpoint",
            p(&checkpoint),
            "--data",
            p(&root),
            "--split",
            "test-Breast-BUSBRA",
            "--json",
        ];
        args.extend(extra);
        let out = samus(&args);
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
        let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(eval["overall"]["images"], test_images, "{extra:?}: {eval}");
        let dice = eval["overall"]["dice"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&dice), "{extra:?}: {eval}");
    }
    let html = std::fs::read_to_string(tmp.path().join("report/index.html")).unwrap();
    assert!(
        html.contains("Breast-BUSBRA"),
        "the report names the dataset"
    );
}

#[test]
fn import_errors_name_the_file_or_option() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("US30K");
    let import = |format: &str, src: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["data", "import", format, p(src), "--out", p(&root)];
        args.extend(extra);
        samus(&args)
    };
    assert_clean_failure(&import("busbra", tmp.path(), &[]), "Images");
    assert_clean_failure(
        &import("busi", &tmp.path().join("gone"), &[]),
        "gone: is not a folder",
    );
    assert_clean_failure(&import("busbra", tmp.path(), &["--val", "2"]), "--val: 2");
    assert_clean_failure(
        &import("busbra", tmp.path(), &["--map", "255=1"]),
        "folder format",
    );
    let folds = tmp.path().join("folds.csv");
    std::fs::write(&folds, "ID,valid_1\n").unwrap();
    if let Some(realdata) = realdata() {
        let out = import(
            "busbra",
            &realdata.join("BUSBRA"),
            &["--folds-from", p(&folds), "--fold", "3"],
        );
        assert_clean_failure(&out, "valid_3");
    }
    assert!(!root.join("Breast-BUSBRA").exists());
}
