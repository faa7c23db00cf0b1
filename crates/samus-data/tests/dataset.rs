//! `Us30kSplit` on a small US30K-layout folder made in the test: class handling, image
//! formats, prompts, seeded parallel batches, and every kind of bad data.

use std::path::Path;

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use samus_core::fixtures::fixtures_or_skip;
use samus_data::{DatasetOptions, Error, Us30kSplit};

fn write_split(root: &Path, name: &str, lines: &[&str]) {
    std::fs::write(
        root.join("MainPatient").join(format!("{name}.txt")),
        lines.join("\n"),
    )
    .unwrap();
}

/// A disc label of `value` at (cx, cy) radius r.
fn disc(w: u32, h: u32, cx: u32, cy: u32, r: u32, value: u8) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        let d2 = (x as i64 - cx as i64).pow(2) + (y as i64 - cy as i64).pow(2);
        Luma([if d2 <= (r * r) as i64 { value } else { 0 }])
    })
}

/// Breast (2 classes, labels 0/255, grey/16-bit/RGB/RGBA images) and an echo-like
/// dataset (4 classes, nested discs 1/2/3).
fn make_layout(root: &Path) {
    std::fs::create_dir_all(root.join("MainPatient")).unwrap();
    std::fs::write(
        root.join("MainPatient/class.json"),
        r#"{"Breast-Test": 2, "Echo-Test": 4}"#,
    )
    .unwrap();
    for d in ["Breast-Test", "Echo-Test"] {
        std::fs::create_dir_all(root.join(d).join("img")).unwrap();
        std::fs::create_dir_all(root.join(d).join("label")).unwrap();
    }
    let b = root.join("Breast-Test");
    GrayImage::from_fn(300, 220, |x, y| Luma([((x + y) % 200) as u8]))
        .save(b.join("img/grey.png"))
        .unwrap();
    disc(300, 220, 150, 110, 40, 255)
        .save(b.join("label/grey.png"))
        .unwrap();
    ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(256, 256, |x, _| Luma([(x * 200) as u16]))
        .save(b.join("img/deep.png"))
        .unwrap();
    disc(256, 256, 60, 70, 20, 1)
        .save(b.join("label/deep.png"))
        .unwrap();
    RgbImage::from_fn(200, 260, |x, y| Rgb([x as u8, y as u8, 40]))
        .save(b.join("img/colour.png"))
        .unwrap();
    disc(200, 260, 100, 130, 30, 255)
        .save(b.join("label/colour.png"))
        .unwrap();
    RgbaImage::from_fn(256, 256, |x, y| Rgba([x as u8, y as u8, 9, 128]))
        .save(b.join("img/alpha.png"))
        .unwrap();
    GrayImage::new(256, 256)
        .save(b.join("label/alpha.png"))
        .unwrap(); // class absent
    let e = root.join("Echo-Test");
    GrayImage::from_fn(256, 256, |x, y| Luma([((x * y) % 256) as u8]))
        .save(e.join("img/apical.png"))
        .unwrap();
    let label = GrayImage::from_fn(256, 256, |x, y| {
        let d = ((x as f32 - 128.0).powi(2) + (y as f32 - 128.0).powi(2)).sqrt();
        Luma([if d < 30.0 {
            1
        } else if d < 45.0 {
            2
        } else if d < 70.0 {
            3
        } else {
            0
        }])
    });
    label.save(e.join("label/apical.png")).unwrap();
    write_split(
        root,
        "train",
        &[
            "1/Breast-Test/grey",
            "1/Breast-Test/deep",
            "1/Breast-Test/colour",
            "1/Breast-Test/alpha",
            "1/Echo-Test/apical",
            "2/Echo-Test/apical",
            "3/Echo-Test/apical",
        ],
    );
    write_split(
        root,
        "val",
        &["1/Breast-Test/grey", "2/Echo-Test/apical", ""],
    );
    write_split(root, "test", &["Breast-Test/grey", "Breast-Test/deep"]);
}

#[test]
fn samples_have_the_reference_shapes_targets_and_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    make_layout(tmp.path());
    let val = Us30kSplit::open(tmp.path(), "val", DatasetOptions::evaluation()).unwrap();
    assert_eq!(val.len(), 2);
    let s = val.get(0).unwrap();
    assert_eq!(
        (s.image.len(), s.mask.len(), s.low_mask.len()),
        (256 * 256, 256 * 256, 128 * 128)
    );
    assert!(s.image.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(
        s.mask.iter().all(|&m| m <= 1) && s.mask.contains(&1),
        "255 labels of a 2-class set count as 1"
    );
    assert_eq!(s.click.label, 1);
    assert_eq!(s.mask[(s.click.y * 256 + s.click.x) as usize], 1);
    assert!(s.bbox[0] <= s.click.x as i64 && s.click.x as i64 <= s.bbox[2]);
    assert_eq!(
        (s.dataset.as_str(), s.class_id, s.name.as_str()),
        ("Breast-Test", 1, "grey")
    );
    // 4-class set: the target is the myocardium ring only.
    let s = val.get(1).unwrap();
    assert_eq!(s.class_id, 2);
    assert_eq!(s.mask[128 * 256 + 128], 0, "the LV is not class 2");
    assert_eq!(s.mask[128 * 256 + 128 + 38], 1, "the ring is class 2");

    let train = Us30kSplit::open(tmp.path(), "train", DatasetOptions::training()).unwrap();
    for i in 0..train.len() {
        let s = train.get(i).unwrap();
        assert!(s.mask.iter().all(|&m| m <= 1));
        let on_target = s.mask[(s.click.y * 256 + s.click.x) as usize] == 1;
        assert_eq!(on_target, s.click.label == 1, "sample {i}");
        if s.name == "alpha" {
            assert_eq!(
                (s.click.label, s.bbox),
                (0, [-1, -1, 256, 256]),
                "class absent"
            );
        }
    }
    let test = Us30kSplit::open(tmp.path(), "test", DatasetOptions::evaluation()).unwrap();
    assert_eq!(test.get(1).unwrap().class_id, 1);
}

#[test]
fn batches_are_seeded_shuffled_parallel_and_complete() {
    let tmp = tempfile::tempdir().unwrap();
    make_layout(tmp.path());
    let train = Us30kSplit::open(tmp.path(), "train", DatasetOptions::training()).unwrap();
    let names = |epoch: u64| -> Vec<(String, u8, Vec<f32>)> {
        train
            .batches(3, epoch)
            .flat_map(|b| b.unwrap().samples)
            .map(|s| (s.name, s.class_id, s.image))
            .collect()
    };
    let a = names(0);
    assert_eq!(a.len(), train.len());
    assert_eq!(a, names(0), "same seed and epoch, same batches");
    let b = names(1);
    assert_ne!(
        a.iter().map(|x| (&x.0, x.1)).collect::<Vec<_>>(),
        b.iter().map(|x| (&x.0, x.1)).collect::<Vec<_>>(),
        "epochs reshuffle"
    );
    // A sample decoded inside a parallel batch equals the same sample read alone.
    let first = train.batches(7, 3).next().unwrap().unwrap();
    for s in &first.samples {
        let i = train
            .entries()
            .iter()
            .position(|(_, e)| e.name == s.name && e.class_id == Some(u32::from(s.class_id)))
            .unwrap();
        assert_eq!(train.get_in_epoch(i, 3).unwrap().image, s.image);
    }
}

#[test]
fn bad_data_is_named_and_can_be_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    make_layout(root);
    let b = root.join("Breast-Test");
    std::fs::write(b.join("img/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    disc(10, 10, 5, 5, 2, 1)
        .save(b.join("label/broken.png"))
        .unwrap();
    GrayImage::new(100, 80).save(b.join("img/odd.png")).unwrap();
    GrayImage::new(80, 100)
        .save(b.join("label/odd.png"))
        .unwrap();
    write_split(
        root,
        "bad",
        &[
            "1/Breast-Test/grey",
            "1/Breast-Test/missing",
            "1/Breast-Test/broken",
            "1/Breast-Test/odd",
        ],
    );
    let split = Us30kSplit::open(root, "bad", DatasetOptions::evaluation()).unwrap();
    let err = split.get(1).unwrap_err().to_string();
    assert!(
        err.contains("bad.txt:2") && err.contains("missing.png does not exist"),
        "{err}"
    );
    let err = split.get(2).unwrap_err().to_string();
    assert!(
        err.contains("bad.txt:3") && err.contains("broken.png is not a readable image"),
        "{err}"
    );
    let err = split.get(3).unwrap_err().to_string();
    assert!(
        err.contains("bad.txt:4") && err.contains("100x80") && err.contains("80x100"),
        "{err}"
    );
    assert!(
        split.batches(2, 0).any(|b| b.is_err()),
        "without skip_bad a bad sample fails the batch"
    );
    let skipping = Us30kSplit::open(
        root,
        "bad",
        DatasetOptions {
            skip_bad: true,
            ..DatasetOptions::evaluation()
        },
    )
    .unwrap();
    let (mut kept, mut skipped) = (0, 0);
    for batch in skipping.batches(2, 0) {
        let batch = batch.unwrap();
        kept += batch.samples.len();
        skipped += batch.skipped.len();
    }
    assert_eq!((kept, skipped), (1, 3));

    write_split(
        root,
        "unknown",
        &["1/Breast-Test/grey", "1/Thyroid-Nowhere/a"],
    );
    let err = Us30kSplit::open(root, "unknown", DatasetOptions::evaluation())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown.txt:2") && err.contains("Thyroid-Nowhere"),
        "{err}"
    );
    write_split(root, "badclass", &["4/Echo-Test/apical"]);
    let err = Us30kSplit::open(root, "badclass", DatasetOptions::evaluation())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("badclass.txt:1") && err.contains("class id 4"),
        "{err}"
    );
    write_split(root, "empty", &["", "  "]);
    assert!(matches!(
        Us30kSplit::open(root, "empty", DatasetOptions::evaluation()),
        Err(Error::EmptySplit { .. })
    ));
    let err = Us30kSplit::open(root, "absent", DatasetOptions::evaluation())
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.txt"), "{err}");
}

#[test]
fn real_busi_sample_reads_with_its_lesion() {
    let Some(dir) = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("MainPatient")).unwrap();
    std::fs::create_dir_all(root.join("Breast-BUSI/img")).unwrap();
    std::fs::create_dir_all(root.join("Breast-BUSI/label")).unwrap();
    std::fs::write(root.join("MainPatient/class.json"), r#"{"Breast-BUSI": 2}"#).unwrap();
    std::fs::copy(
        dir.join("busi/benign0001.png"),
        root.join("Breast-BUSI/img/benign0001.png"),
    )
    .unwrap();
    std::fs::copy(
        dir.join("busi/benign0001_label.png"),
        root.join("Breast-BUSI/label/benign0001.png"),
    )
    .unwrap();
    write_split(root, "test-Breast-BUSI", &["Breast-BUSI/benign0001"]);
    let split = Us30kSplit::open(root, "test-Breast-BUSI", DatasetOptions::evaluation()).unwrap();
    let s = split.get(0).unwrap();
    let area = s.mask.iter().filter(|&&m| m == 1).count();
    assert!(area > 100 && area < 256 * 256 / 2, "lesion area {area}");
    // The lesion is darker than the image on average (hypo-echoic).
    let mean = |sel: u8| {
        let v: Vec<f32> = s
            .image
            .iter()
            .zip(&s.mask)
            .filter(|(_, m)| **m == sel)
            .map(|(v, _)| *v)
            .collect();
        v.iter().sum::<f32>() / v.len() as f32
    };
    assert!(mean(1) < mean(0));
    assert_eq!(s.mask[(s.click.y * 256 + s.click.x) as usize], 1);
}

#[test]
fn synthetic_dataset_loads_with_augmentation_in_batches() {
    let tmp = tempfile::tempdir().unwrap();
    samus_data::synth::write_dataset(tmp.path(), 6, 11).unwrap();
    let train = Us30kSplit::open(tmp.path(), "train", DatasetOptions::training()).unwrap();
    let mut seen = 0;
    for batch in train.batches(4, 0) {
        let batch = batch.unwrap();
        assert!(batch.skipped.is_empty());
        for s in &batch.samples {
            assert_eq!(s.image.len(), 256 * 256);
            let on_target = s.mask[(s.click.y * 256 + s.click.x) as usize] == 1;
            assert_eq!(on_target, s.click.label == 1);
        }
        seen += batch.samples.len();
    }
    assert_eq!(seen, train.len());
    let val = Us30kSplit::open(
        tmp.path(),
        "val-Echocardiography-SynthCAMUS",
        DatasetOptions::evaluation(),
    )
    .unwrap();
    let classes: std::collections::BTreeSet<u8> = (0..val.len())
        .map(|i| val.get(i).unwrap().class_id)
        .collect();
    assert_eq!(classes.into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[test]
fn decoded_cache_gives_the_same_samples_and_keeps_to_its_budget() {
    let tmp = tempfile::tempdir().unwrap();
    samus_data::synth::write_dataset(tmp.path(), 8, 3).unwrap();
    let split = "train-Breast-SynthBUSI";
    let cached = Us30kSplit::open(tmp.path(), split, DatasetOptions::training()).unwrap();
    let plain = Us30kSplit::open(
        tmp.path(),
        split,
        DatasetOptions {
            cache_bytes: 0,
            ..DatasetOptions::training()
        },
    )
    .unwrap();
    for epoch in 0..2 {
        for i in 0..cached.len() {
            let (a, b) = (
                cached.get_in_epoch(i, epoch).unwrap(),
                plain.get_in_epoch(i, epoch).unwrap(),
            );
            assert_eq!(
                (a.image, a.mask, a.click),
                (b.image, b.mask, b.click),
                "sample {i}"
            );
        }
    }
    assert!(cached.cached_bytes() > 0);
    assert_eq!(plain.cached_bytes(), 0);
    // A budget smaller than one pair caches nothing.
    let tiny = Us30kSplit::open(
        tmp.path(),
        "val-Breast-SynthBUSI",
        DatasetOptions {
            cache_bytes: 10,
            ..DatasetOptions::training()
        },
    )
    .unwrap();
    assert!(tiny.get(0).is_ok());
    assert_eq!(tiny.cached_bytes(), 0);
    // Once cached, the files are no longer read: delete them and load again.
    for entry in std::fs::read_dir(tmp.path().join("Breast-SynthBUSI/img")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    assert!(cached.get_in_epoch(0, 5).is_ok(), "served from the cache");
    assert!(
        plain.get_in_epoch(0, 5).is_err(),
        "without a cache the file is needed"
    );
}
