//! `samus demo`: the offline walk-through writes its dataset, run folder, overlays
//! and metrics table, and ends with the way to real data.

mod common;

use common::{p, samus, stderr};

#[test]
fn demo_runs_end_to_end_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("demo");
    // A few seconds of training on a small dataset: the workflow, not the accuracy.
    let out = samus(&[
        "demo",
        "--out",
        p(&out_dir),
        "--minutes",
        "0.05",
        "--images",
        "12",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "1/4",
        "2/4",
        "3/4",
        "4/4",
        "dice",
        "images/s",
        "cargo xtask train",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
    for file in [
        "data/MainPatient/class.json",
        "run/last.safetensors",
        "run/best.safetensors",
        "run/metrics.csv",
        "run/curve.png",
    ] {
        assert!(out_dir.join(file).exists(), "{file} missing");
    }
    let overlays: Vec<_> = std::fs::read_dir(out_dir.join("overlays"))
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert!(!overlays.is_empty(), "no overlays written");
    let first = image::open(overlays[0].path()).unwrap();
    assert_eq!((first.width(), first.height()), (256, 256));
    // A second demo into the same folder is refused before any work, the first
    // demo's run left as it was.
    let metrics = std::fs::read(out_dir.join("run/metrics.csv")).unwrap();
    let again = samus(&["demo", "--out", p(&out_dir), "--minutes", "0.05"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds a demo"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(out_dir.join("run/metrics.csv")).unwrap(),
        metrics
    );
}

#[test]
fn demo_rejects_bad_values() {
    for args in [["demo", "--minutes=-1"], ["demo", "--images=2"]] {
        let out = samus(&args);
        let err = stderr(&out);
        assert!(!out.status.success() && !err.contains("panicked"), "{err}");
        let flag = args[1].split('=').next().unwrap_or_default();
        assert!(err.contains(flag), "the flag is named: {err}");
    }
}
