//! `samus segment --prompts FILE.json`: one mask per entry from one encoding, a label
//! map from the class ids, and clear errors for bad files.

mod common;

use common::{assert_clean_failure, p, samus, stderr};

#[test]
fn several_prompt_sets_give_the_same_masks_as_single_calls_and_a_label_map() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("structures.json");
    std::fs::write(
        &prompts,
        r#"[{"name": "lesion", "class_id": 1, "points": [[140, 115]]},
            {"name": "tissue", "class_id": 2, "points": [[40, 200], [140, 115, 0]]},
            {"name": "boxed", "box": [100, 80, 180, 150]}]"#,
    )
    .unwrap();
    let out = tmp.path().join("scan.png");
    let overlay = tmp.path().join("overlay.png");
    let run = samus(&[
        "segment",
        "--demo",
        "--prompts",
        p(&prompts),
        "--out",
        p(&out),
        "--overlay",
        p(&overlay),
        "--json",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["entries"].as_array().unwrap().len(), 3);
    assert!(overlay.exists());

    // Each entry's mask equals a separate single-prompt run.
    let single = tmp.path().join("single.png");
    let one = samus(&[
        "segment",
        "--demo",
        "--point",
        "140,115",
        "--out",
        p(&single),
    ]);
    assert!(one.status.success(), "{}", stderr(&one));
    let from_file = image::open(tmp.path().join("scan_lesion.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(from_file, image::open(&single).unwrap().to_luma8());
    let boxed = samus(&[
        "segment",
        "--demo",
        "--box",
        "100,80,180,150",
        "--out",
        p(&single),
    ]);
    assert!(boxed.status.success(), "{}", stderr(&boxed));
    let from_file = image::open(tmp.path().join("scan_boxed.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(from_file, image::open(&single).unwrap().to_luma8());

    // The label map: class ids only where that entry's mask is set.
    let labels = image::open(tmp.path().join("scan_labels.png"))
        .unwrap()
        .to_luma8();
    let lesion = image::open(tmp.path().join("scan_lesion.png"))
        .unwrap()
        .to_luma8();
    let tissue = image::open(tmp.path().join("scan_tissue.png"))
        .unwrap()
        .to_luma8();
    for ((l, a), b) in labels.pixels().zip(lesion.pixels()).zip(tissue.pixels()) {
        match l[0] {
            0 => assert!(a[0] == 0 && b[0] == 0, "unlabelled pixel inside a mask"),
            1 => assert!(a[0] > 0),
            2 => assert!(b[0] > 0),
            other => panic!("label {other} was not asked for"),
        }
    }
    assert_eq!(
        report["label_map"].as_str().unwrap(),
        p(&tmp.path().join("scan_labels.png"))
    );
}

#[test]
fn bad_prompt_files_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"[{"name": "lv", "class_id": 1}]"#).unwrap();
    assert_clean_failure(
        &samus(&["segment", "--demo", "--prompts", p(&bad)]),
        "bad.json",
    );
    let out = samus(&["segment", "--demo", "--prompts", p(&bad)]);
    assert!(stderr(&out).contains("entry 0 (`lv`)"), "{}", stderr(&out));
    let outside = tmp.path().join("outside.json");
    std::fs::write(&outside, r#"[{"name": "far", "points": [[9000, 10]]}]"#).unwrap();
    let out = samus(&["segment", "--demo", "--prompts", p(&outside)]);
    assert_clean_failure(&out, "far");
    let missing = tmp.path().join("nope.json");
    assert_clean_failure(
        &samus(&["segment", "--demo", "--prompts", p(&missing)]),
        "nope.json",
    );
}
