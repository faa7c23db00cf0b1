//! `samus metrics` on two folders of masks.

mod common;

use common::samus;

use image::{GrayImage, Luma};

fn square(x0: u32, x1: u32) -> GrayImage {
    GrayImage::from_fn(32, 32, |x, y| {
        Luma([if (x0..x1).contains(&x) && (8..24).contains(&y) {
            255
        } else {
            0
        }])
    })
}

#[test]
fn metrics_scores_folders_and_names_problems() {
    let tmp = tempfile::tempdir().unwrap();
    let (pred, gt) = (tmp.path().join("pred"), tmp.path().join("gt"));
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::create_dir_all(&gt).unwrap();
    square(8, 24).save(pred.join("same.png")).unwrap();
    square(8, 24).save(gt.join("same.png")).unwrap();
    square(8, 16).save(pred.join("half.png")).unwrap();
    square(8, 24).save(gt.join("half.png")).unwrap();
    GrayImage::new(32, 32).save(pred.join("empty.png")).unwrap();
    square(8, 24).save(gt.join("empty.png")).unwrap();
    let (p, g) = (pred.to_str().unwrap(), gt.to_str().unwrap());
    let out = samus(&["metrics", "--pred", p, "--gt", g, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let images = report["images"].as_array().unwrap();
    let by_name = |n: &str| images.iter().find(|e| e["name"] == n).unwrap().clone();
    assert!((by_name("same.png")["dice"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    // Half the square: Dice = 2 * 128 / (128 + 256).
    assert!((by_name("half.png")["dice"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-6);
    assert!(by_name("empty.png")["hd"].is_null() && by_name("empty.png")["hd95"].is_null());
    assert_eq!(report["mean"]["hd_undefined"], 1);
    assert_eq!(report["mean"]["images"], 3);

    let table = samus(&["metrics", "--pred", p, "--gt", g]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("mean of 3"));

    GrayImage::new(16, 16).save(pred.join("odd.png")).unwrap();
    let out = samus(&["metrics", "--pred", p, "--gt", g]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("odd.png has no ground truth")
    );
    GrayImage::new(16, 16).save(gt.join("odd.png")).unwrap();
    GrayImage::new(16, 8).save(pred.join("odd.png")).unwrap();
    let out = samus(&["metrics", "--pred", p, "--gt", g]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("odd.png: prediction is 16x8"),
        "{err}"
    );
}
