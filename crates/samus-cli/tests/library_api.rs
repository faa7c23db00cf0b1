//! An application built on `samus-model` alone, with the names of its embedding API,
//! gets exactly the mask that `samus segment` writes for the same point.

mod common;

use candle_core::Device;
use common::{fixtures, p, samus, stderr};
use samus_model::{Label, Prompts, Samus};

#[test]
fn the_library_and_samus_segment_write_the_same_mask() {
    let Some(dir) = fixtures() else {
        return;
    };
    let checkpoint = dir.join("samus_tiny.safetensors");
    let image_path = dir.join("busi/benign0001.png");
    let io = candle_core::safetensors::load(dir.join("samus_tiny_io.safetensors"), &Device::Cpu)
        .unwrap();
    let xy = io["point_coords"]
        .get(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (x, y) = (xy[0], xy[1]);

    // The application: load once, embed once, predict twice (the second refined).
    let model = Samus::load(&checkpoint).unwrap();
    let embedding = model.embed(&image::open(&image_path).unwrap()).unwrap();
    let prediction = model
        .predict(&embedding, &Prompts::new().point(x, y, Label::Foreground))
        .unwrap();
    let best = prediction.best();
    let again = model
        .predict(
            &embedding,
            &Prompts::new()
                .point(x, y, Label::Foreground)
                .refine(&prediction),
        )
        .unwrap();
    assert_eq!(again.best().image.dimensions(), best.image.dimensions());

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mask.png");
    let run = samus(&[
        "segment",
        "--checkpoint",
        p(&checkpoint),
        "--image",
        p(&image_path),
        "--point",
        &format!("{x},{y}"),
        "--out",
        p(&out),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let written = image::open(&out).unwrap().to_luma8();
    assert!(best.area() > 0, "the fixture point segments something");
    assert_eq!(written, best.image, "pixel-identical masks");
}
