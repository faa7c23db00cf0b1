//! `samus data check` on a good and a broken dataset folder.

use std::process::{Command, Output};

fn samus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_samus"))
        .args(args)
        .output()
        .expect("the samus binary runs")
}

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
