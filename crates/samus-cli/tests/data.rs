//! `samus data check` on a good and a broken dataset folder.

mod common;

use common::samus;

#[test]
fn data_check_reports_counts_and_problems() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("MainPatient")).unwrap();
    std::fs::create_dir_all(root.join("Breast-X/img")).unwrap();
    std::fs::create_dir_all(root.join("Breast-X/label")).unwrap();
    std::fs::write(root.join("MainPatient/class.json"), r#"{"Breast-X": 2}"#).unwrap();
    for name in ["a", "b"] {
        image::GrayImage::new(20, 10)
            .save(root.join(format!("Breast-X/img/{name}.png")))
            .unwrap();
        image::GrayImage::new(20, 10)
            .save(root.join(format!("Breast-X/label/{name}.png")))
            .unwrap();
    }
    std::fs::write(root.join("MainPatient/train.txt"), "1/Breast-X/a\n").unwrap();
    std::fs::write(root.join("MainPatient/test.txt"), "Breast-X/b\n").unwrap();
    let dir = root.to_str().unwrap();
    let out = samus(&["data", "check", dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Breast-X")
            && stdout.contains("test 1, train 1")
            && stdout.contains("ok: no problems"),
        "{stdout}"
    );

    image::GrayImage::new(10, 10)
        .save(root.join("Breast-X/label/b.png"))
        .unwrap();
    std::fs::write(root.join("MainPatient/val.txt"), "1/Nowhere/c\n").unwrap();
    let out = samus(&["data", "check", dir, "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: 2 problem(s) found") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!samus(&["data", "check", "/nonexistent/dir"])
        .status
        .success());
}

#[test]
fn synth_then_data_check_from_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth");
    let dir = out.to_str().unwrap();
    let run = samus(&[
        "synth",
        "--out",
        dir,
        "--per-dataset",
        "5",
        "--seed",
        "3",
        "--json",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["datasets"].as_object().unwrap().len(), 3);
    let check = samus(&["data", "check", dir, "--json"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    for (_, counts) in report["datasets"].as_object().unwrap() {
        assert_eq!(counts["images"], 5);
        assert_eq!(counts["labels"], 5);
    }
    // The same seed writes the same images.
    let again = tmp.path().join("again");
    assert!(samus(&[
        "synth",
        "--out",
        again.to_str().unwrap(),
        "--per-dataset",
        "5",
        "--seed",
        "3"
    ])
    .status
    .success());
    let a = std::fs::read(out.join("Breast-SynthBUSI/img/synth_breast_0000.png")).unwrap();
    let b = std::fs::read(again.join("Breast-SynthBUSI/img/synth_breast_0000.png")).unwrap();
    assert_eq!(a, b);
    let bad = samus(&["synth", "--out", dir, "--cnr", "2,1"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("MIN <= MAX"));
}
