//! Metrics against `metrics_cases.json`: Dice, IoU, accuracy, sensitivity,
//! specificity, HD and HD95 (null when a mask is empty).

use samus_core::fixtures::fixtures_or_skip;
use samus_train::metrics::mask_metrics;

#[test]
fn metrics_match_reference_cases() {
    let Some(dir) = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics_cases.json")).unwrap())
            .unwrap();
    let cases = cases.as_array().unwrap();
    assert!(!cases.is_empty());
    let mask = |v: &serde_json::Value| -> (Vec<bool>, usize, usize) {
        let rows = v.as_array().unwrap();
        let w = rows[0].as_array().unwrap().len();
        let flat: Vec<bool> = rows
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() > 0.5)
            })
            .collect();
        (flat, w, rows.len())
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
    for (i, case) in cases.iter().enumerate() {
        let (pred, w, h) = mask(&case["pred"]);
        let (gt, _, _) = mask(&case["gt"]);
        let m = mask_metrics(&pred, &gt, w, h);
        for (name, ours) in [
            ("dice", m.dice),
            ("iou", m.iou),
            ("acc", m.acc),
            ("se", m.se),
            ("sp", m.sp),
        ] {
            let want = case[name].as_f64().unwrap();
            assert!(close(ours, want), "case {i} {name}: {ours} vs {want}");
        }
        for (name, ours) in [("hd", m.hd), ("hd95", m.hd95)] {
            match case[name].as_f64() {
                None => assert_eq!(ours, None, "case {i} {name} is undefined"),
                Some(want) => assert!(
                    ours.is_some_and(|o| close(o, want)),
                    "case {i} {name}: {ours:?} vs {want}"
                ),
            }
        }
    }
}
