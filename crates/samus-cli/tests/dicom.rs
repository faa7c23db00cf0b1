//! DICOM through the binary: a real point-of-care DICOM segments to the same mask
//! as its pixels saved as PNG, `samus serve` offers DICOM files, and bad DICOM files
//! end in one clear error line.

mod common;

use common::server::Server;
use common::{assert_clean_failure, fixtures, p, realdata, samus, stderr};
use image::DynamicImage;
use samus_data::dicom::{write_dicom, DicomCalibration, DicomFile, DicomPixels};

/// The first Sonoque DICOM of the real data.
fn pocus_dicom(real: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(real.join("POCUS"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .expect("a DICOM in POCUS")
}

#[test]
fn a_dicom_segments_like_its_pixels_as_png() {
    let Some(fx) = fixtures() else { return };
    let Some(real) = realdata() else { return };
    let dcm = pocus_dicom(&real);
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("same_pixels.png");
    DicomFile::open(&dcm)
        .unwrap()
        .frame(0)
        .unwrap()
        .save(&png)
        .unwrap();
    let ck = fx.join("samus_tiny.safetensors");
    let segment = |image: &std::path::Path, out: &std::path::Path| {
        let report = segment_json(&ck, image, out, &[]);
        assert_eq!(
            (report["width"].as_u64(), report["height"].as_u64()),
            (Some(2083), Some(1455))
        );
        image::open(out).unwrap().to_luma8()
    };
    let from_dicom = segment(&dcm, &tmp.path().join("dicom_mask.png"));
    let from_png = segment(&png, &tmp.path().join("png_mask.png"));
    assert!(
        from_dicom == from_png,
        "the DICOM's mask differs from its PNG's"
    );
}

#[test]
fn serve_offers_dicom_files() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let scans = tmp.path().join("scans");
    std::fs::create_dir_all(&scans).unwrap();
    let frame = image::open(fx.join("raw_image_300x220.png")).unwrap();
    let frames = vec![frame.clone(), DynamicImage::ImageLuma8(frame.to_luma8())];
    write_dicom(
        &scans.join("cine.dcm"),
        &frames,
        DicomPixels::Grey8,
        &DicomCalibration::default(),
    )
    .unwrap();
    let server = Server::start(&[
        "--checkpoint",
        p(&fx.join("samus_tiny.safetensors")),
        "--images",
        p(&scans),
    ]);
    let (_, list) = server.send("GET", "/api/images", None);
    assert_eq!(list[0]["name"], "cine.dcm", "{list}");
    assert_eq!(
        (list[0]["width"].as_u64(), list[0]["height"].as_u64()),
        (Some(300), Some(220))
    );
    let (code, answer) = server.send(
        "POST",
        "/api/images/0/predict",
        Some(&serde_json::json!({"points": [[150, 110, 1]]})),
    );
    assert_eq!(code, 200, "{answer}");
    let (code, png) = server.get_bytes("/api/images/0/image");
    assert_eq!(code, 200);
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 300);
}

#[test]
fn bad_dicom_files_fail_in_one_line() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.dcm");
    let frame = image::open(fx.join("raw_image_300x220.png")).unwrap();
    write_dicom(
        &good,
        &[frame],
        DicomPixels::Grey8,
        &DicomCalibration::default(),
    )
    .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = tmp.path().join("cut.dcm");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let no_pixels = tmp.path().join("no_pixels.dcm");
    let at = bytes
        .windows(4)
        .rposition(|w| w == [0xe0, 0x7f, 0x10, 0x00])
        .unwrap();
    std::fs::write(&no_pixels, &bytes[..at]).unwrap();
    let ck = fx.join("samus_tiny.safetensors");
    for (file, cause) in [(&cut, "cut.dcm"), (&no_pixels, "no pixel data")] {
        let out = samus(&[
            "segment",
            "--checkpoint",
            p(&ck),
            "--image",
            p(file),
            "--point",
            "5,5",
            "--out",
            p(&tmp.path().join("m.png")),
        ]);
        assert_clean_failure(&out, cause);
    }
}

/// `samus segment --json` on `image` with one point: the report.
fn segment_json(
    ck: &std::path::Path,
    image: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "segment",
        "--checkpoint",
        p(ck),
        "--image",
        p(image),
        "--point",
        "1040,700",
        "--box",
        "600,300,1500,1100",
        "--out",
        p(out),
        "--json",
    ];
    args.extend_from_slice(extra);
    let run = samus(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    serde_json::from_slice(&run.stdout).unwrap()
}

#[test]
fn measurements_come_in_millimetres_where_the_pixel_size_is_known() {
    let Some(fx) = fixtures() else { return };
    let Some(real) = realdata() else { return };
    let dcm = pocus_dicom(&real);
    let tmp = tempfile::tempdir().unwrap();
    let ck = fx.join("samus_tiny.safetensors");
    let out = tmp.path().join("m.png");
    // The DICOM's ultrasound region calibrates it: 0.0291 mm per pixel.
    let report = segment_json(&ck, &dcm, &out, &[]);
    assert_eq!(
        report["pixel_size_source"], "DICOM ultrasound region",
        "{report}"
    );
    let size = report["pixel_size_mm"][0].as_f64().unwrap();
    assert!((size - 0.0291).abs() < 1e-9, "{report}");
    let mask = &report["masks"][0];
    let area = mask["area"].as_f64().unwrap();
    assert!(area > 0.0, "the box gives a mask: {report}");
    let mm2 = mask["measurements"]["area_mm2"].as_f64().unwrap();
    assert!((mm2 - area * size * size).abs() <= 1e-6 * mm2, "{report}");
    // --pixel-size on the same pixels as PNG; without it, no measurements.
    let png = tmp.path().join("same.png");
    DicomFile::open(&dcm)
        .unwrap()
        .frame(0)
        .unwrap()
        .save(&png)
        .unwrap();
    let report = segment_json(&ck, &png, &out, &["--pixel-size", "0.5,0.25"]);
    assert_eq!(report["pixel_size_mm"], serde_json::json!([0.5, 0.25]));
    let mask = &report["masks"][0];
    let mm2 = mask["measurements"]["area_mm2"].as_f64().unwrap();
    assert!(
        (mm2 - mask["area"].as_f64().unwrap() * 0.125).abs() < 1e-9,
        "{report}"
    );
    assert!(
        mask["measurements"]["ellipse_circumference_mm"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let report = segment_json(&ck, &png, &out, &[]);
    assert!(report.get("pixel_size_mm").is_none(), "{report}");
    assert!(report["masks"][0].get("measurements").is_none(), "{report}");
}

/// The rows of a results table by name, with its header.
fn results_table(path: &std::path::Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

#[test]
fn auto_and_folder_results_add_millimetres() {
    let Some(fx) = fixtures() else { return };
    let Some(real) = realdata() else { return };
    let dcm = pocus_dicom(&real);
    let tmp = tempfile::tempdir().unwrap();
    let ck = fx.join("samus_tiny.safetensors");
    let apg = fx.join("autosamus_tiny_apg.safetensors");
    // A folder with the DICOM (calibrated by its region) and a PNG (not calibrated).
    let scans = tmp.path().join("scans");
    std::fs::create_dir_all(&scans).unwrap();
    std::fs::copy(&dcm, scans.join("a.dcm")).unwrap();
    image::GrayImage::from_fn(120, 90, |x, y| image::Luma([((x * 3 + y) % 200) as u8]))
        .save(scans.join("b.png"))
        .unwrap();
    let mm_of = |header: &[String], row: &[String]| -> Vec<String> {
        ["area", "area_mm2", "ellipse_circumference_mm"]
            .iter()
            .map(|c| row[header.iter().position(|h| h == c).unwrap()].clone())
            .collect()
    };
    // `samus auto` on the folder into `name`, with `extra` arguments.
    let auto = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec!["auto", "--checkpoint", p(&ck), "--apg", p(&apg)];
        args.extend(["--image", p(&scans), "--out-dir", p(&out)]);
        args.extend_from_slice(extra);
        let run = samus(&args);
        assert!(run.status.success(), "{}", stderr(&run));
        (out, run)
    };
    let (out, run) = auto("auto", &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let (header, rows) = results_table(&out.join("results.csv"));
    assert_eq!(
        &header[5..9],
        [
            "area_mm2",
            "equivalent_diameter_mm",
            "perimeter_mm",
            "ellipse_circumference_mm"
        ]
    );
    let dicom_row = mm_of(&header, &rows[0]);
    let area: f64 = dicom_row[0].parse().unwrap();
    let mm2: f64 = dicom_row[1].parse().unwrap();
    assert!(
        area > 0.0 && (mm2 - area * 0.0291 * 0.0291).abs() <= 1e-3 + 1e-6 * mm2,
        "{dicom_row:?}"
    );
    assert!(dicom_row[2].parse::<f64>().unwrap() > 0.0);
    assert_eq!(mm_of(&header, &rows[1])[1], "", "the PNG has no pixel size");
    assert!(
        report["images"][0]["measurements"]["area_mm2"].is_f64(),
        "{report}"
    );
    assert!(
        report["images"][1].get("measurements").is_none(),
        "{report}"
    );
    // --pixel-size measures every image (it wins over a file's own).
    let (out, _) = auto("auto_px", &["--pixel-size", "0.1"]);
    let (header, rows) = results_table(&out.join("results.csv"));
    let png_row = mm_of(&header, &rows[1]);
    let (area, mm2): (f64, f64) = (png_row[0].parse().unwrap(), png_row[1].parse().unwrap());
    assert!((mm2 - area * 0.01).abs() <= 1e-3, "{png_row:?}");

    // segment's folder mode: the same columns, each entry measured.
    let prompts = tmp.path().join("prompts.json");
    std::fs::write(&prompts, r#"[{"name": "box", "box": [10, 10, 80, 70]}]"#).unwrap();
    let out = tmp.path().join("seg");
    let run = samus(&[
        "segment",
        "--checkpoint",
        p(&ck),
        "--image",
        p(&scans),
        "--prompts",
        p(&prompts),
        "--out-dir",
        p(&out),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let (header, rows) = results_table(&out.join("results.csv"));
    assert_eq!(header.last().map(String::as_str), Some("seconds"));
    let dicom_row = mm_of(&header, &rows[0]);
    let (area, mm2): (f64, f64) = (dicom_row[0].parse().unwrap(), dicom_row[1].parse().unwrap());
    assert!(
        (mm2 - area * 0.0291 * 0.0291).abs() <= 1e-3 + 1e-6 * mm2,
        "{dicom_row:?}"
    );
    assert_eq!(mm_of(&header, &rows[1])[1], "");
}
