//! The validation transform against the reference (`transform_val_io.safetensors`):
//! image within 1/255 mean absolute error, masks, fixed click and box exact.

use candle_core::Device;
use image::GrayImage;
use samus_core::fixtures::fixtures_or_skip;
use samus_data::io::{read_image_grey8, read_label};
use samus_data::prompt::{fixed_box, fixed_click};
use samus_data::transform::validation_transform;

#[test]
fn validation_transform_matches_reference() {
    let Some(dir) = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let io = candle_core::safetensors::load(dir.join("transform_val_io.safetensors"), &Device::Cpu)
        .unwrap();
    let image = read_image_grey8(&dir.join("raw_image_300x220.png")).unwrap();
    let label = read_label(&dir.join("raw_label_300x220.png")).unwrap();
    assert_eq!(image.dimensions(), (300, 220));
    let out = validation_transform(&image, &label);

    let want = io["image"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mae = out
        .image
        .as_raw()
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() as f64)
        .sum::<f64>()
        / want.len() as f64;
    eprintln!(
        "image mean absolute error {mae:.2e} (limit {:.2e})",
        1.0 / 255.0
    );
    assert!(mae <= 1.0 / 255.0, "image mean absolute error {mae}");

    // 2-class target: label values above 1 count as 1, target = label == 1.
    let binary = |l: &GrayImage| {
        l.pixels()
            .map(|p| i64::from(p[0].min(1)))
            .collect::<Vec<i64>>()
    };
    let mask = io["mask"].flatten_all().unwrap().to_vec1::<i64>().unwrap();
    let low = io["low_mask"]
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    assert_eq!(binary(&out.label), mask);
    assert_eq!(binary(&out.low_label), low);

    let target =
        GrayImage::from_raw(256, 256, out.label.pixels().map(|p| p[0].min(1)).collect()).unwrap();
    let click = fixed_click(&target, 1).unwrap();
    let want_click = io["fixed_click"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(
        (click.x as f32, click.y as f32, click.label),
        (want_click[0], want_click[1], 1)
    );
    let bbox = fixed_box(&target, 1).map(|v| v as f32);
    assert_eq!(bbox.to_vec(), io["fixed_bbox"].to_vec1::<f32>().unwrap());
}
