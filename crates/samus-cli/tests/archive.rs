//! Archive-scale inference: `samus auto` and `samus segment --out-dir` over a folder
//! split between jobs, resumed after an interruption, with results.csv.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{assert_clean_failure, fixtures, p, samus, stderr};

/// A folder of `n` scans: the BUSI fixture image and shifted copies.
fn scans(dir: &Path, fixtures: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let base = image::open(fixtures.join("busi/benign0001.png"))
        .unwrap()
        .to_luma8();
    for i in 0..n {
        let shifted = image::GrayImage::from_fn(base.width(), base.height(), |x, y| {
            *base.get_pixel((x + 7 * i as u32) % base.width(), y)
        });
        shifted.save(dir.join(format!("scan{i:02}.png"))).unwrap();
    }
}

/// results.csv rows by their first column(s).
fn rows(path: &Path, key: usize) -> BTreeMap<String, Vec<String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| {
            let r: Vec<String> = r.unwrap().iter().map(str::to_string).collect();
            (r[..key].join("/"), r)
        })
        .collect()
}

fn auto(dir: &Path, inputs: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let (ckpt, apg) = (
        dir.join("samus_tiny.safetensors"),
        dir.join("autosamus_tiny_apg.safetensors"),
    );
    let mut args = vec![
        "auto",
        "--checkpoint",
        p(&ckpt),
        "--apg",
        p(&apg),
        "--image",
        p(inputs),
        "--out-dir",
        p(out),
    ];
    args.extend(extra);
    samus(&args)
}

#[test]
fn auto_splits_a_folder_between_jobs_and_resumes() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (inputs, out) = (tmp.path().join("in"), tmp.path().join("out"));
    scans(&inputs, &dir, 5);
    // Two jobs share the folder: every image once, each job its own table.
    for k in ["0", "1"] {
        let o = auto(&dir, &inputs, &out, &["--num-parts", "2", "--part-id", k]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let part0 = rows(&out.join("results-part0-of-2.csv"), 1);
    let part1 = rows(&out.join("results-part1-of-2.csv"), 1);
    assert_eq!(
        part0.keys().collect::<Vec<_>>(),
        ["scan00", "scan02", "scan04"]
    );
    assert_eq!(part1.keys().collect::<Vec<_>>(), ["scan01", "scan03"]);
    let header = std::fs::read_to_string(out.join("results-part0-of-2.csv")).unwrap();
    assert!(header.starts_with(
        "name,image,area,mean_probability,predicted_iou,area_mm2,equivalent_diameter_mm,perimeter_mm,ellipse_circumference_mm,seconds\n"
    ));
    for row in part0.values().chain(part1.values()) {
        let area: u64 = row[2].parse().unwrap();
        let mask = image::open(out.join(format!("{}_mask.png", row[0])))
            .unwrap()
            .to_luma8();
        assert_eq!(area, mask.pixels().filter(|p| p[0] > 0).count() as u64);
        let iou: f64 = row[4].parse().unwrap();
        assert!(iou.is_finite() && row[9].parse::<f64>().unwrap() > 0.0);
    }

    // One job, resumed: an interrupted run left scan01's mask out; only it is redone.
    let single = tmp.path().join("single");
    let o = auto(&dir, &inputs, &single, &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = rows(&single.join("results.csv"), 1);
    assert_eq!(before.len(), 5);
    std::fs::remove_file(single.join("scan01_mask.png")).unwrap();
    let o = auto(&dir, &inputs, &single, &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["skipped"], 4);
    assert_eq!(report["images"].as_array().unwrap().len(), 1);
    assert!(report["images"][0]["image"]
        .as_str()
        .unwrap()
        .ends_with("scan01.png"));
    let after = rows(&single.join("results.csv"), 1);
    assert_eq!(after.len(), 5);
    assert_eq!(
        after["scan00"], before["scan00"],
        "a skipped image keeps its row"
    );
    // Everything done: nothing is loaded; --overwrite redoes all.
    let o = auto(&dir, &inputs, &single, &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to do"));
    let o = auto(&dir, &inputs, &single, &["--overwrite", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            report["skipped"].as_u64(),
            report["images"].as_array().unwrap().len()
        ),
        (Some(0), 5)
    );
    // A broken scan is passed over and named; the rest of the folder is done.
    let broken = tmp.path().join("broken");
    scans(&broken, &dir, 2);
    std::fs::write(broken.join("scan00.png"), b"not a png").unwrap();
    let o = auto(&dir, &broken, &tmp.path().join("bout"), &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("scan00.png") && err.contains("1 image(s) could not be read"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        rows(&tmp.path().join("bout/results.csv"), 1)
            .keys()
            .collect::<Vec<_>>(),
        ["scan01"]
    );
    // Logits need every image.
    std::fs::remove_file(single.join("scan02_mask.png")).unwrap();
    let logits = tmp.path().join("l.safetensors");
    assert_clean_failure(
        &auto(&dir, &inputs, &single, &["--save-logits", p(&logits)]),
        "--save-logits needs every image",
    );
    assert_clean_failure(
        &auto(
            &dir,
            &inputs,
            &single,
            &["--num-parts", "3", "--part-id", "3"],
        ),
        "--part-id 3",
    );
}

#[test]
fn segment_runs_a_folder_with_shared_or_per_image_prompts() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (inputs, out) = (tmp.path().join("in"), tmp.path().join("out"));
    scans(&inputs, &dir, 3);
    let shared = tmp.path().join("prompts.json");
    std::fs::write(
        &shared,
        r#"[{"name": "lesion", "class_id": 1, "points": [[150, 100]]}, {"name": "box", "box": [60, 40, 220, 160]}]"#,
    )
    .unwrap();
    let ckpt = dir.join("samus_tiny.safetensors");
    let segment = |prompts: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "segment",
            "--checkpoint",
            p(&ckpt),
            "--image",
            p(&inputs),
            "--prompts",
            p(prompts),
            "--out-dir",
            p(out),
        ];
        args.extend(extra);
        samus(&args)
    };
    let o = segment(&shared, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = rows(&out.join("results.csv"), 2);
    assert_eq!(table.len(), 6, "{table:?}");
    for name in ["scan00", "scan01", "scan02"] {
        for entry in ["lesion", "box"] {
            assert!(out.join(format!("{name}_{entry}.png")).is_file());
            assert!(table.contains_key(&format!("{name}/{entry}")));
        }
        assert!(out.join(format!("{name}_labels.png")).is_file());
    }
    // The same image and prompt give the same mask as one `samus segment` call.
    let single = tmp.path().join("single.png");
    let o = samus(&[
        "segment",
        "--checkpoint",
        p(&dir.join("samus_tiny.safetensors")),
        "--image",
        p(&inputs.join("scan01.png")),
        "--point",
        "150,100",
        "--out",
        p(&single),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        image::open(&single).unwrap().to_luma8(),
        image::open(out.join("scan01_lesion.png"))
            .unwrap()
            .to_luma8()
    );

    // Per-image prompt files: an image without one is left out, with a warning.
    let per_image = tmp.path().join("prompts");
    std::fs::create_dir_all(&per_image).unwrap();
    std::fs::copy(&shared, per_image.join("scan00.json")).unwrap();
    std::fs::copy(&shared, per_image.join("scan02.json")).unwrap();
    let out2 = tmp.path().join("out2");
    let o = segment(&per_image, &out2, &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 image(s) have no <stem>.json"),
        "{}",
        stderr(&o)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            report["images"].as_u64(),
            report["without_prompts"].as_u64()
        ),
        (Some(2), Some(1))
    );
    // Resumed: nothing left.
    let o = segment(&per_image, &out2, &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to do"));

    assert_clean_failure(
        &segment(&shared, &out, &["--overlay", "x.png"]),
        "--overlay is for one image",
    );
    let o = samus(&[
        "segment",
        "--checkpoint",
        p(&dir.join("samus_tiny.safetensors")),
        "--image",
        p(&inputs.join("scan01.png")),
        "--point",
        "1,1",
        "--num-parts",
        "2",
    ]);
    assert_clean_failure(&o, "add --out-dir");
}
