//! Each format on small files made here in its public layout, and the idempotence of
//! the import.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, RgbImage};

use super::*;
use crate::check::check_dataset;
use crate::io::{read_image_grey8, read_label};

fn scan(w: u32, h: u32, seed: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([((x * 7 + y * 13 + seed * 31) % 251) as u8])
    })
}

/// A mask with the rectangle `[x0, x1) x [y0, y1)` at `value`.
fn rect(w: u32, h: u32, (x0, y0, x1, y1): (u32, u32, u32, u32), value: u8) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
            value
        } else {
            0
        }])
    })
}

fn save(path: &Path, img: &GrayImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

fn label(root: &Path, dataset: &str, name: &str) -> GrayImage {
    read_label(&root.join(dataset).join("label").join(format!("{name}.png"))).unwrap()
}

fn foreground(img: &GrayImage) -> usize {
    img.pixels().filter(|p| p[0] > 0).count()
}

fn lines(root: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(root.join("MainPatient").join(file))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let modified = e.metadata().unwrap().modified().unwrap();
                out.insert(p.clone(), (std::fs::read(&p).unwrap(), modified));
            }
        }
    }
    out
}

fn write_busi(src: &Path) {
    let d = src.join("Dataset_BUSI_with_GT");
    save(&d.join("benign/benign (1).png"), &scan(20, 16, 1));
    save(
        &d.join("benign/benign (1)_mask.png"),
        &rect(20, 16, (1, 1, 5, 5), 255),
    );
    save(
        &d.join("benign/benign (1)_mask_1.png"),
        &rect(20, 16, (10, 8, 14, 12), 255),
    );
    save(&d.join("benign/benign (12).png"), &scan(20, 16, 2));
    save(
        &d.join("benign/benign (12)_mask.png"),
        &rect(20, 16, (2, 2, 6, 6), 255),
    );
    // Colour: BUSI stores some scans as RGB.
    let rgb = RgbImage::from_fn(18, 12, |x, y| {
        image::Rgb([(x * 9) as u8, (y * 9) as u8, 40])
    });
    std::fs::create_dir_all(d.join("malignant")).unwrap();
    rgb.save(d.join("malignant/malignant (3).png")).unwrap();
    save(
        &d.join("malignant/malignant (3)_mask.png"),
        &rect(18, 12, (3, 3, 9, 9), 255),
    );
    save(&d.join("malignant/malignant (4).png"), &scan(18, 12, 3));
    save(&d.join("normal/normal (1).png"), &scan(16, 16, 4));
    save(
        &d.join("normal/normal (1)_mask.png"),
        &GrayImage::new(16, 16),
    );
    save(
        &d.join("normal/normal (9)_mask.png"),
        &GrayImage::new(16, 16),
    );
}

#[test]
fn busi_unites_masks_names_safely_and_imports_twice_without_change() {
    let dir = tempfile::tempdir().unwrap();
    let (src, root) = (dir.path().join("src"), dir.path().join("US30K"));
    write_busi(&src);
    let options = ImportOptions {
        val: Some(0.0),
        test: Some(0.25),
        ..Default::default()
    };
    let report = import_dataset(ImportFormat::Busi, &src, &root, &options).unwrap();
    assert_eq!(
        (report.imported(), report.written, report.negatives),
        (4, 4, 1),
        "{report:?}"
    );
    assert_eq!(report.dataset, "Breast-BUSI");
    let skipped: Vec<String> = report
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.source.display(), s.reason))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped
            .iter()
            .any(|s| s.contains("malignant (4).png") && s.contains("no mask")),
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|s| s.contains("normal (9)_mask.png") && s.contains("image")),
        "{skipped:?}"
    );
    // Both masks of benign (1), united.
    let united = label(&root, "Breast-BUSI", "benign_0001");
    assert_eq!(foreground(&united), 32);
    assert_eq!(
        (united.get_pixel(2, 2)[0], united.get_pixel(11, 9)[0]),
        (1, 1)
    );
    assert_eq!(foreground(&label(&root, "Breast-BUSI", "normal_0001")), 0);
    // Colour scans become grey, as the loader reads them.
    let grey = read_image_grey8(&root.join("Breast-BUSI/img/malignant_0003.png")).unwrap();
    let reference = crate::io::grey8_from_image(
        &image::open(src.join("Dataset_BUSI_with_GT/malignant/malignant (3).png")).unwrap(),
    );
    assert_eq!(grey, reference);
    assert_eq!(report.splits["test"], 1);
    assert_eq!(
        lines(&root, "train.txt").len() + lines(&root, "test.txt").len(),
        4
    );
    assert!(
        check_dataset(&root).is_ok(),
        "{:?}",
        check_dataset(&root).problems
    );
    let manifest = std::fs::read_to_string(root.join("Breast-BUSI/manifest.csv")).unwrap();
    assert!(
        manifest.starts_with("name,split,source,patient,class,pixel_size_mm\n"),
        "{manifest}"
    );
    assert!(manifest.contains("benign_0001,"), "{manifest}");
    assert!(
        manifest.contains("benign (1).png;Dataset_BUSI_with_GT/benign/benign (1)_mask.png;"),
        "{manifest}"
    );

    // Twice: nothing changes, not even a modification time.
    let before = snapshot(&root);
    let again = import_dataset(ImportFormat::Busi, &src, &root, &options).unwrap();
    assert_eq!((again.written, again.unchanged), (0, 4));
    assert_eq!(snapshot(&root), before);

    // --skip-empty leaves the normal scan out of the splits.
    let skip = ImportOptions {
        skip_empty: true,
        ..options.clone()
    };
    let report = import_dataset(ImportFormat::Busi, &src, &root, &skip).unwrap();
    assert_eq!((report.imported(), report.negatives), (3, 0));
    assert!(report
        .skipped
        .iter()
        .any(|s| s.reason.contains("--skip-empty")));
    let all: Vec<String> = ["train.txt", "val.txt", "test.txt"]
        .iter()
        .flat_map(|f| lines(&root, f))
        .collect();
    assert!(all.iter().all(|l| !l.contains("normal_0001")), "{all:?}");
}

#[test]
fn a_second_dataset_joins_the_root_and_keeps_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (src, root) = (dir.path().join("src"), dir.path().join("US30K"));
    write_busi(&src);
    import_dataset(ImportFormat::Busi, &src, &root, &ImportOptions::default()).unwrap();
    let busi_lines = lines(&root, "train.txt");
    let other = ImportOptions {
        dataset: Some("Breast-Mine".into()),
        ..Default::default()
    };
    import_dataset(ImportFormat::Busi, &src, &root, &other).unwrap();
    let train = lines(&root, "train.txt");
    assert!(busi_lines.iter().all(|l| train.contains(l)));
    assert_eq!(train.len(), 2 * busi_lines.len());
    let classes = crate::split::ClassMap::read(&root.join("MainPatient/class.json")).unwrap();
    assert_eq!(
        (
            classes.classes("Breast-BUSI"),
            classes.classes("Breast-Mine")
        ),
        (Some(2), Some(2))
    );
    let bad = ImportOptions {
        dataset: Some("../escape".into()),
        ..Default::default()
    };
    let err = import_dataset(ImportFormat::Busi, &src, &root, &bad)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("--dataset: `../escape`"), "{err}");
}

#[test]
fn busbra_splits_by_case() {
    let dir = tempfile::tempdir().unwrap();
    let (src, root) = (dir.path().join("BUSBRA"), dir.path().join("US30K"));
    let mut csv =
        String::from("ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX\n");
    for case in 1..=20 {
        for side in ["l", "r"] {
            let id = format!("bus_{case:04}-{side}");
            csv.push_str(&format!(
                "{id},{case},fibroadenoma,benign,4,GE,12,10,left,\"[1,1,4,4]\"\n"
            ));
            save(&src.join(format!("Images/{id}.png")), &scan(12, 10, case));
            save(
                &src.join(format!("Masks/mask_{case:04}-{side}.png")),
                &rect(12, 10, (2, 2, 6, 6), 255),
            );
        }
    }
    std::fs::write(src.join("bus_data.csv"), csv).unwrap();
    save(&src.join("Images/bus_0099-l.png"), &scan(12, 10, 9));
    let report =
        import_dataset(ImportFormat::Busbra, &src, &root, &ImportOptions::default()).unwrap();
    assert_eq!((report.imported(), report.patients), (40, Some(20)));
    assert_eq!(
        (report.splits["test"], report.splits["val"]),
        (8, 4),
        "{:?}",
        report.splits
    );
    assert!(report
        .skipped
        .iter()
        .any(|s| s.source.ends_with("bus_0099-l.png") && s.reason.contains("not listed")));
    for case in 1..=20 {
        let sides: std::collections::BTreeSet<&str> = ["train", "val", "test"]
            .into_iter()
            .filter(|s| {
                lines(&root, &format!("{s}-Breast-BUSBRA.txt"))
                    .iter()
                    .any(|l| l.contains(&format!("bus_{case:04}-")))
            })
            .collect();
        assert_eq!(sides.len(), 1, "case {case}: {sides:?}");
    }
}

#[test]
fn hc18_fills_the_ellipse_and_records_the_pixel_size() {
    let dir = tempfile::tempdir().unwrap();
    let (src, root) = (dir.path().join("hc18"), dir.path().join("US30K"));
    let mut outline = GrayImage::new(60, 40);
    imageproc::drawing::draw_hollow_ellipse_mut(&mut outline, (30, 20), 20, 12, Luma([255]));
    for stem in ["001_HC", "001_2HC", "002_HC"] {
        save(
            &src.join(format!("training_set/{stem}.png")),
            &scan(60, 40, 1),
        );
        save(
            &src.join(format!("training_set/{stem}_Annotation.png")),
            &outline,
        );
    }
    save(&src.join("training_set/003_HC.png"), &scan(60, 40, 2));
    std::fs::write(
        src.join("training_set/training_set_pixel_size_and_HC.csv"),
        "filename,pixel size(mm),head circumference (mm)\n001_HC.png,0.0691358041432,44.3\n001_2HC.png,0.0691358041432,44.3\n002_HC.png,0.1,50\n",
    )
    .unwrap();
    save(&src.join("test_set/004_HC.png"), &scan(60, 40, 3));
    let report =
        import_dataset(ImportFormat::Hc18, &src, &root, &ImportOptions::default()).unwrap();
    assert_eq!((report.imported(), report.patients), (3, Some(2)));
    let filled = label(&root, "FetalHead-HC18", "0001_HC");
    assert_eq!(filled.get_pixel(30, 20)[0], 1);
    let area = foreground(&filled) as f64;
    assert!(
        (area / (std::f64::consts::PI * 20.0 * 12.0) - 1.0).abs() < 0.15,
        "{area}"
    );
    assert!(report
        .skipped
        .iter()
        .any(|s| s.source.ends_with("003_HC.png") && s.reason.contains("no outline")));
    assert!(report
        .skipped
        .iter()
        .any(|s| s.source.ends_with("test_set")));
    let manifest = std::fs::read_to_string(root.join("FetalHead-HC18/manifest.csv")).unwrap();
    assert!(manifest.contains(",001,,0.0691358041432\n"), "{manifest}");
    // Both images of fetus 001 share a split.
    let side = |name: &str| {
        ["train", "val", "test"].into_iter().find(|s| {
            lines(&root, &format!("{s}-FetalHead-HC18.txt"))
                .iter()
                .any(|l| l.ends_with(name))
        })
    };
    assert_eq!(side("0001_HC"), side("0001_2HC"));
}

#[test]
fn tn3k_keeps_its_test_set_and_reads_jpeg_masks() {
    let dir = tempfile::tempdir().unwrap();
    let (src, root) = (dir.path().join("tn3k"), dir.path().join("US30K"));
    for (folder, n) in [("trainval", 6), ("test", 2)] {
        for i in 0..n {
            let img = scan(24, 24, i);
            std::fs::create_dir_all(src.join(format!("{folder}-image"))).unwrap();
            std::fs::create_dir_all(src.join(format!("{folder}-mask"))).unwrap();
            img.save(src.join(format!("{folder}-image/{i:04}.jpg")))
                .unwrap();
            rect(24, 24, (4, 4, 16, 16), 255)
                .save(src.join(format!("{folder}-mask/{i:04}.jpg")))
                .unwrap();
        }
    }
    let report =
        import_dataset(ImportFormat::Tn3k, &src, &root, &ImportOptions::default()).unwrap();
    assert_eq!(report.imported(), 8);
    assert_eq!(report.splits["test"], 2, "{:?}", report.splits);
    assert_eq!(
        lines(&root, "test-ThyroidNodule-TN3K.txt"),
        [
            "ThyroidNodule-TN3K/test-0000",
            "ThyroidNodule-TN3K/test-0001"
        ]
    );
    // JPEG ringing around the square does not leak into the label.
    assert_eq!(foreground(&label(&root, "ThyroidNodule-TN3K", "0003")), 144);
    // The release's index-based folds file fixes train and validation.
    let folds = src.join("tn3k-trainval-fold0.json");
    std::fs::write(&folds, r#"{"train": [0, 1, 2, 3], "val": [4, 5]}"#).unwrap();
    let options = ImportOptions {
        folds_from: Some(folds),
        ..Default::default()
    };
    let report = import_dataset(ImportFormat::Tn3k, &src, &root, &options).unwrap();
    assert_eq!(
        report.splits,
        BTreeMap::from([("train".into(), 4), ("val".into(), 2), ("test".into(), 2)])
    );
    assert_eq!(
        lines(&root, "val-ThyroidNodule-TN3K.txt"),
        ["1/ThyroidNodule-TN3K/0004", "1/ThyroidNodule-TN3K/0005"]
    );
}

#[test]
fn tg3k_and_udiat_pair_their_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("US30K");
    let tg3k = dir.path().join("tg3k");
    for i in [1, 2, 10] {
        save(
            &tg3k
                .join(format!("thyroid-image/{i:04}.jpg"))
                .with_extension("png"),
            &scan(16, 16, i),
        );
        save(
            &tg3k.join(format!("thyroid-mask/{i:04}.png")),
            &rect(16, 16, (2, 2, 8, 8), 255),
        );
    }
    let folds = tg3k.join("tg3k-trainval.json");
    std::fs::write(&folds, r#"{"train": [0, 2], "val": [1]}"#).unwrap();
    let options = ImportOptions {
        folds_from: Some(folds),
        ..Default::default()
    };
    let report = import_dataset(ImportFormat::Tg3k, &tg3k, &root, &options).unwrap();
    assert_eq!(
        report.splits,
        BTreeMap::from([("train".into(), 2), ("val".into(), 1), ("test".into(), 0)])
    );
    assert_eq!(
        lines(&root, "val-Thyroid-TG3K.txt"),
        ["1/Thyroid-TG3K/0002"]
    );

    let udiat = dir.path().join("BUS");
    for i in 1..=5 {
        save(
            &udiat.join(format!("original/{i:06}.png")),
            &scan(16, 16, i),
        );
        save(
            &udiat.join(format!("GT/{i:06}.png")),
            &rect(16, 16, (1, 1, 3, 3), 255),
        );
    }
    let report = import_dataset(
        ImportFormat::Udiat,
        dir.path(),
        &root,
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!(
        (report.dataset.as_str(), report.imported()),
        ("Breast-UDIAT", 5)
    );
    assert!(
        check_dataset(&root).is_ok(),
        "{:?}",
        check_dataset(&root).problems
    );
}

#[test]
fn ddti_fills_its_polygons_and_groups_by_case() {
    let dir = tempfile::tempdir().unwrap();
    let (src, root) = (dir.path().join("ddti"), dir.path().join("US30K"));
    let points = r#"[{"points": [{"x": 4, "y": 4}, {"x": 20, "y": 4}, {"x": 20, "y": 14}, {"x": 4, "y": 14}], "annotation": {}, "regionType": "freehand"}]"#;
    for case in 1..=3 {
        let marks: String = (1..=2)
            .map(|m| format!("<mark><image>{m}</image><svg>{points}</svg></mark>"))
            .collect();
        std::fs::write(
            src.join(format!("{case}.xml")).tap_dir(),
            format!("<?xml version=\"1.0\"?><case><number>{case}</number><age>50</age><sex>F</sex><tirads>4a</tirads>{marks}</case>"),
        )
        .unwrap();
        for m in 1..=2 {
            scan(30, 20, case)
                .save(src.join(format!("{case}_{m}.jpg")))
                .unwrap();
        }
    }
    std::fs::write(src.join("4.xml"), "<case><number>4</number>").unwrap();
    let report =
        import_dataset(ImportFormat::Ddti, &src, &root, &ImportOptions::default()).unwrap();
    assert_eq!((report.imported(), report.patients), (6, Some(3)));
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.source.ends_with("4.xml") && s.reason.contains("not XML")),
        "{:?}",
        report.skipped
    );
    let filled = label(&root, "ThyroidNodule-DDTI", "0001_0002");
    assert_eq!(filled.get_pixel(10, 10)[0], 1);
    assert_eq!(filled.get_pixel(25, 18)[0], 0);
    let manifest = std::fs::read_to_string(root.join("ThyroidNodule-DDTI/manifest.csv")).unwrap();
    assert!(
        manifest.contains(",0001,4a,\n") || manifest.contains(",1,4a,\n"),
        "{manifest}"
    );
}

trait TapDir {
    fn tap_dir(self) -> Self;
}

impl TapDir for PathBuf {
    /// Creates the file's folder.
    fn tap_dir(self) -> Self {
        std::fs::create_dir_all(self.parent().unwrap()).unwrap();
        self
    }
}

#[test]
fn camus_reads_nifti_and_metaimage_with_four_classes() {
    use super::volume::tests::{write_mhd_u8, write_nifti_u8};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("US30K");
    let (w, h) = (12u32, 10u32);
    let image: Vec<u8> = (0..w * h).map(|i| (i * 3) as u8).collect();
    let gt: Vec<u8> = (0..w * h).map(|i| ((i % w) / 3) as u8).collect();
    for (release, folder) in [("nifti", "database_nifti"), ("mhd", "training")] {
        let src = dir.path().join(release);
        for p in 1..=2 {
            let pdir = src.join(folder).join(format!("patient{p:04}"));
            std::fs::create_dir_all(&pdir).unwrap();
            for view in ["2CH", "4CH"] {
                for phase in ["ED", "ES"] {
                    let base = pdir.join(format!("patient{p:04}_{view}_{phase}"));
                    if release == "nifti" {
                        write_nifti_u8(
                            &base.with_extension("nii.gz"),
                            w as u16,
                            h as u16,
                            &image,
                            0.154,
                        );
                        if !(p == 2 && view == "4CH" && phase == "ES") {
                            write_nifti_u8(
                                &PathBuf::from(format!("{}_gt.nii.gz", base.display())),
                                w as u16,
                                h as u16,
                                &gt,
                                0.154,
                            );
                        }
                    } else {
                        write_mhd_u8(&base.with_extension("mhd"), w, h, &image, 0.154);
                        write_mhd_u8(
                            &PathBuf::from(format!("{}_gt.mhd", base.display())),
                            w,
                            h,
                            &gt,
                            0.154,
                        );
                    }
                }
            }
        }
        let options = ImportOptions {
            dataset: Some(format!("Echo-{release}")),
            ..Default::default()
        };
        let report = import_dataset(ImportFormat::Camus, &src, &root, &options).unwrap();
        let expected = if release == "nifti" { 7 } else { 8 };
        assert_eq!(
            (report.imported(), report.classes, report.patients),
            (expected, 4, Some(2)),
            "{release}: {report:?}"
        );
        let name = format!("Echo-{release}");
        let l = label(&root, &name, "patient0001_2CH_ED");
        assert_eq!(l.as_raw(), &gt, "{release}");
        // One line per class for train/val and test alike.
        let all: Vec<String> = ["train", "val", "test"]
            .iter()
            .flat_map(|s| lines(&root, &format!("{s}-{name}.txt")))
            .collect();
        assert_eq!(all.len(), 3 * expected);
        assert!(
            std::fs::read_to_string(root.join(&name).join("manifest.csv"))
                .unwrap()
                .contains(",2CH ED,0.154")
        );
    }
    assert!(
        check_dataset(&root).is_ok(),
        "{:?}",
        check_dataset(&root).problems
    );
}

#[test]
fn folder_follows_its_templates_and_value_map() {
    let dir = tempfile::tempdir().unwrap();
    let (src, root) = (dir.path().join("mine"), dir.path().join("US30K"));
    for i in 0..4 {
        save(&src.join(format!("scans/case {i}.png")), &scan(10, 10, i));
        let mut seg = rect(10, 10, (0, 0, 5, 10), 255);
        seg.put_pixel(9, 9, Luma([128]));
        save(&src.join(format!("masks/case {i}_seg.png")), &seg);
    }
    save(&src.join("scans/orphan.png"), &scan(10, 10, 9));
    let layout = FolderLayout {
        images: "scans/*.png".into(),
        masks: "masks/{stem}_seg.png".into(),
        map: BTreeMap::from([(255, 1), (128, 2)]),
        classes: 3,
    };
    let options = ImportOptions {
        dataset: Some("Liver-Mine".into()),
        folder: Some(layout.clone()),
        ..Default::default()
    };
    let report = import_dataset(ImportFormat::Folder, &src, &root, &options).unwrap();
    assert_eq!(report.imported(), 4);
    let l = label(&root, "Liver-Mine", "case_0000");
    assert_eq!(
        (
            l.get_pixel(0, 0)[0],
            l.get_pixel(9, 9)[0],
            l.get_pixel(7, 0)[0]
        ),
        (1, 2, 0)
    );
    assert!(report
        .skipped
        .iter()
        .any(|s| s.source.ends_with("orphan.png")));
    // A value the map does not name is reported with the file and the value.
    let partial = FolderLayout {
        map: BTreeMap::from([(255, 1)]),
        ..layout.clone()
    };
    let options = ImportOptions {
        folder: Some(partial),
        ..options
    };
    let report = import_dataset(ImportFormat::Folder, &src, &root, &options);
    let err = report.unwrap_err().to_string();
    assert!(err.contains("no sample could be imported"), "{err}");
    let missing_stem = FolderLayout {
        masks: "masks/seg.png".into(),
        ..layout
    };
    let err = import_dataset(
        ImportFormat::Folder,
        &src,
        &root,
        &ImportOptions {
            folder: Some(missing_stem),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("--masks:") && err.contains("{stem}"),
        "{err}"
    );
}

#[test]
fn unmapped_values_are_reported_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let (src, root) = (dir.path().join("mine"), dir.path().join("US30K"));
    save(&src.join("a.png"), &scan(8, 8, 1));
    save(&src.join("a_mask.png"), &rect(8, 8, (0, 0, 4, 4), 255));
    save(&src.join("b.png"), &scan(8, 8, 2));
    save(&src.join("b_mask.png"), &rect(8, 8, (0, 0, 4, 4), 77));
    let layout = FolderLayout {
        images: "[ab].png".into(),
        masks: "{stem}_mask.png".into(),
        map: BTreeMap::from([(255, 1)]),
        classes: 2,
    };
    let report = import_dataset(
        ImportFormat::Folder,
        &src,
        &root,
        &ImportOptions {
            folder: Some(layout),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.imported(), 1);
    let reason = &report
        .skipped
        .iter()
        .find(|s| s.source.ends_with("b.png"))
        .unwrap()
        .reason;
    assert!(
        reason.contains("b_mask.png") && reason.contains("value 77"),
        "{reason}"
    );
}

#[test]
fn options_out_of_range_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("US30K");
    let cases = [
        (
            ImportOptions {
                val: Some(1.5),
                ..Default::default()
            },
            "--val: 1.5",
        ),
        (
            ImportOptions {
                val: Some(0.6),
                test: Some(0.5),
                ..Default::default()
            },
            "--val/--test",
        ),
        (
            ImportOptions {
                fold: Some(2),
                ..Default::default()
            },
            "--fold: needs --folds-from",
        ),
    ];
    for (options, message) in cases {
        let err = import_dataset(ImportFormat::Busi, dir.path(), &root, &options)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(message), "{err}");
    }
    let err = import_dataset(
        ImportFormat::Busbra,
        &dir.path().join("nope"),
        &root,
        &ImportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nope: is not a folder"), "{err}");
    let err = import_dataset(
        ImportFormat::Busbra,
        dir.path(),
        &root,
        &ImportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("Images") && err.contains("is not a folder"),
        "{err}"
    );
    assert!(!root.exists());
}

/// The real BUS-BRA files: 500 images of 271 cases, split by case; the release's
/// folds; twice without change.
#[test]
fn busbra_real_release() {
    let Some(realdata) = samus_core::fixtures::realdata_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let src = realdata.join("BUSBRA");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("US30K");
    let report =
        import_dataset(ImportFormat::Busbra, &src, &root, &ImportOptions::default()).unwrap();
    assert_eq!(
        (report.imported(), report.patients, report.negatives),
        (500, Some(271), 0),
        "{:?}",
        report.skipped
    );
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert!(
        (95..=105).contains(&report.splits["test"]),
        "{:?}",
        report.splits
    );
    let check = check_dataset(&root);
    assert!(check.is_ok(), "{:?}", check.problems);
    // Label and image sizes match the source; values are 0/1.
    let l = label(&root, "Breast-BUSBRA", "bus_0001-l");
    let source_mask = read_image_grey8(&src.join("Masks/mask_0001-l.png")).unwrap();
    assert_eq!(l.dimensions(), source_mask.dimensions());
    assert_eq!(
        foreground(&l),
        source_mask.pixels().filter(|p| p[0] >= 128).count()
    );
    let before = snapshot(&root);
    assert_eq!(
        import_dataset(ImportFormat::Busbra, &src, &root, &ImportOptions::default())
            .unwrap()
            .written,
        0
    );
    assert_eq!(snapshot(&root), before);

    let folds = ImportOptions {
        folds_from: Some(src.join("5-fold-cv.csv")),
        fold: Some(1),
        ..Default::default()
    };
    let report = import_dataset(ImportFormat::Busbra, &src, &root, &folds).unwrap();
    assert_eq!(report.splits["test"], 98, "{:?}", report.splits);
    assert!(report.unknown_in_folds.is_empty());
    // Fold 1's test images are exactly the rows with NaN in valid_1.
    let text = std::fs::read_to_string(src.join("5-fold-cv.csv")).unwrap();
    let expected: std::collections::BTreeSet<String> = text
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(3) == Some("NaN"))
        .map(|l| format!("Breast-BUSBRA/{}", l.split(',').next().unwrap()))
        .collect();
    let test: std::collections::BTreeSet<String> =
        lines(&root, "test-Breast-BUSBRA.txt").into_iter().collect();
    assert_eq!(test, expected);
}

#[test]
fn a_folder_of_dicom_scans_records_their_pixel_size() {
    use crate::dicom::{write_dicom, DicomCalibration, DicomPixels};
    let dir = tempfile::tempdir().unwrap();
    let (src, root) = (dir.path().join("src"), dir.path().join("US30K"));
    std::fs::create_dir_all(src.join("scans")).unwrap();
    for (i, mm) in [(1, Some(0.2)), (2, None)] {
        let calibration = DicomCalibration {
            region_mm: mm.map(|v| (v, v)),
            ..Default::default()
        };
        write_dicom(
            &src.join(format!("scans/s{i}.dcm")),
            &[image::DynamicImage::ImageLuma8(scan(20, 16, i))],
            DicomPixels::Grey8,
            &calibration,
        )
        .unwrap();
        let mut mask = GrayImage::new(20, 16);
        mask.put_pixel(5, 5, Luma([255]));
        save(&src.join(format!("masks/s{i}.png")), &mask);
    }
    let options = ImportOptions {
        dataset: Some("Breast-Dicom".into()),
        folder: Some(FolderLayout {
            images: "scans/*.dcm".into(),
            masks: "masks/{stem}.png".into(),
            map: BTreeMap::new(),
            classes: 2,
        }),
        ..Default::default()
    };
    let report = import_dataset(ImportFormat::Folder, &src, &root, &options).unwrap();
    assert_eq!(report.imported(), 2);
    let manifest = std::fs::read_to_string(root.join("Breast-Dicom/manifest.csv")).unwrap();
    let sizes: Vec<&str> = manifest
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap_or_default())
        .collect();
    assert_eq!(sizes, ["0.2", ""], "{manifest}");
}
