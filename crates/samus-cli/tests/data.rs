//! `samus data check` on a good and a broken dataset folder.

mod common;

use common::{fixtures, p, samus, stderr};

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

/// An HC18-like release (fetal heads: a scan, its ellipse outline, the pixel-size
/// CSV) imported, then evaluated: the import records each image's pixel size and
/// `samus eval` reports the circumference error in mm.
#[test]
fn eval_reports_the_circumference_error_where_the_import_knows_the_pixel_size() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (src, root) = (tmp.path().join("hc18"), tmp.path().join("US30K"));
    let set = src.join("training_set");
    std::fs::create_dir_all(&set).unwrap();
    let mut csv = String::from("filename,pixel size(mm),head circumference (mm)\n");
    for i in 1..=5u32 {
        let (w, h) = (96, 64);
        let scan = image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([((x * 7 + y * 5 + i) % 180) as u8])
        });
        scan.save(set.join(format!("{i:03}_HC.png"))).unwrap();
        let mut outline = image::GrayImage::new(w, h);
        imageproc::drawing::draw_hollow_ellipse_mut(
            &mut outline,
            (48, 32),
            20 + i as i32,
            14,
            image::Luma([255]),
        );
        outline
            .save(set.join(format!("{i:03}_HC_Annotation.png")))
            .unwrap();
        csv.push_str(&format!("{i:03}_HC.png,0.15,0\n"));
    }
    std::fs::write(set.join("training_set_pixel_size_and_HC.csv"), csv).unwrap();
    let import = samus(&[
        "data",
        "import",
        "hc18",
        p(&src),
        "--out",
        p(&root),
        "--val",
        "0",
        "--test",
        "0",
    ]);
    assert!(import.status.success(), "{}", stderr(&import));
    let out_csv = tmp.path().join("eval.csv");
    let eval = samus(&[
        "eval",
        "--checkpoint",
        p(&fx.join("samus_tiny.safetensors")),
        "--data",
        p(&root),
        "--split",
        "train",
        "--csv",
        p(&out_csv),
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let table = String::from_utf8_lossy(&eval.stdout);
    assert!(
        table.lines().next().unwrap().contains("hc_err_mm"),
        "{table}"
    );
    let text = std::fs::read_to_string(&out_csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "circumference_error_mm")
        .unwrap();
    let all: Vec<&str> = lines
        .find(|l| l.starts_with("all,"))
        .unwrap()
        .split(',')
        .collect();
    let images: usize = all[1].parse().unwrap();
    assert_eq!(images, 5, "{text}");
    // The untrained tiny model's masks are not heads, but they are measured in
    // the file's millimetres (an error, not an empty cell).
    let error: f64 = all[col]
        .parse()
        .unwrap_or_else(|_| panic!("no circumference error: {text}"));
    assert!(error.is_finite() && error > 0.0, "{text}");
    let measured = header.iter().position(|h| *h == "images").unwrap();
    assert_eq!(all[measured], "5");
}
