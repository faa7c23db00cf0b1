//! The embedding API as apps use it: one model loaded once, embeddings held as values,
//! prompts decoded against them from several threads at once.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use samus_core::fixtures::fixtures_or_skip;
use samus_model::{Error, Label, PointPrompt, Prediction, Prompts, Samus, SamusConfig};

/// The tiny fixture model and the real BUSI image, or `None` (skipped).
fn fixture() -> Option<(Samus, image::DynamicImage, PathBuf)> {
    let dir = fixtures_or_skip(env!("CARGO_MANIFEST_DIR"))?;
    let model = Samus::load(dir.join("samus_tiny.safetensors")).expect("fixture weights");
    let image = image::open(dir.join("busi/benign0001.png")).expect("fixture image");
    Some((model, image, dir))
}

/// The fixture's point prompt of item 0 (the BUSI image), in its pixels.
fn fixture_point(dir: &std::path::Path) -> (f32, f32) {
    let io = candle_core::safetensors::load(dir.join("samus_tiny_io.safetensors"), &Device::Cpu)
        .expect("fixture io");
    let xy = io["point_coords"]
        .get(0)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("point_coords");
    (xy[0], xy[1])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("same shapes")
}

#[test]
fn inferred_configuration_matches_the_fixture_file() {
    let Some((model, _, dir)) = fixture() else {
        return;
    };
    let cfg = SamusConfig::from_json_file(dir.join("samus_tiny.json")).unwrap();
    assert_eq!(model.config(), &cfg);
    let (_, report) = Samus::loader(dir.join("samus_tiny.safetensors"))
        .config(cfg.clone())
        .device(&Device::Cpu)
        .load_with_report()
        .unwrap();
    assert_eq!(report.config, cfg);
    assert!(report.initialised.is_empty() && report.unused.is_empty());
}

#[test]
fn prediction_is_ready_to_use_and_refine_feeds_the_best_logits_back() {
    let Some((model, image, dir)) = fixture() else {
        return;
    };
    let (x, y) = fixture_point(&dir);
    let embedding = model.embed(&image).unwrap();
    assert_eq!(embedding.original_size(), (256, 256));
    let first = model
        .predict(&embedding, &Prompts::new().point(x, y, Label::Foreground))
        .unwrap();
    assert_eq!(first.masks().len(), 1);
    let best = first.best();
    assert_eq!(best.image.dimensions(), (256, 256));
    assert!(best.image.pixels().all(|p| p[0] == 0 || p[0] == 255));
    // The mask is the sign of the logits at the original size.
    let logits = first.best_logits().unwrap();
    let positive = logits.iter().filter(|&&v| v > 0.0).count();
    assert_eq!(best.area(), positive);
    assert_eq!(first.iou(), vec![best.iou]);
    assert_eq!(first.low_res_logits().dims(), &[1, 1, 128, 128]);
    assert_eq!(first.logits().dims(), &[1, 1, 256, 256]);

    let refined_prompts = Prompts::new().point(x, y, Label::Foreground).refine(&first);
    let mask_input = refined_prompts
        .mask_input
        .clone()
        .expect("refine sets the mask");
    assert_eq!(max_abs_diff(&mask_input, first.low_res_logits()), 0.0);
    let refined = model.predict(&embedding, &refined_prompts).unwrap();
    // The previous logits change the result.
    assert!(max_abs_diff(refined.low_res_logits(), first.low_res_logits()) > 0.0);

    // Multimask: three candidates, `best` has the highest predicted IoU.
    let multi = model
        .predict(
            &embedding,
            &Prompts::new()
                .point(x, y, Label::Foreground)
                .point(10.0, 10.0, Label::Background)
                .multimask(true),
        )
        .unwrap();
    assert_eq!(multi.masks().len(), 3);
    let top = multi.iou().into_iter().fold(f32::MIN, f32::max);
    assert_eq!(multi.best().iou, top);
    assert_eq!(multi.masks()[multi.best().index], *multi.best());
}

/// The low-resolution logits of one click decoded without the embedding's kept
/// decoder terms (the image side recomputed by `Samus::decode`).
fn decoded_afresh(
    model: &Samus,
    embedding: &samus_model::ImageEmbedding,
    (x, y): (f32, f32),
) -> Tensor {
    let size = model.config().img_size as f32;
    let (h, w) = embedding.original_size();
    let coords = Tensor::new(
        &[[[x * size / w as f32, y * size / h as f32]]],
        &Device::Cpu,
    )
    .unwrap();
    let labels = Tensor::new(&[[1f32]], &Device::Cpu).unwrap();
    let prompts = samus_model::PromptBatch {
        points: Some((&coords, &labels)),
        ..Default::default()
    };
    model
        .decode(embedding.tensor(), &prompts, false)
        .unwrap()
        .low_res_logits
}

#[test]
fn clicks_reuse_the_image_side_of_the_decoder_only_for_their_own_model() {
    let Some((model, image, dir)) = fixture() else {
        return;
    };
    let (x, y) = fixture_point(&dir);
    let embedding = model.embed(&image).unwrap();
    let click = Prompts::new().point(x, y, Label::Foreground);
    let tensor_bytes = embedding.tensor().elem_count() * 4;
    assert_eq!(embedding.bytes(), tensor_bytes);
    // The first click computes the image side and keeps it, the next ones reuse it
    // (clones of the embedding share it): each equals a decode from scratch.
    for round in 0..3 {
        let got = model.predict(&embedding.clone(), &click).unwrap();
        let want = decoded_afresh(&model, &embedding, (x, y));
        assert!(
            max_abs_diff(got.low_res_logits(), &want) < 1e-5,
            "round {round}"
        );
    }
    // What the clicks keep is counted (the image tokens twice, keys and values).
    let (grid, width) = (model.config().grid_size(), model.config().prompt_embed_dim);
    let kept = embedding.bytes() - tensor_bytes;
    // Keys and values at the attention's internal width (downsampled by 2).
    assert_eq!(kept, grid * grid * (2 * width + 2 * (width / 2)) * 4);
    // Another model (other decoder weights) never takes this model's terms.
    let other = Samus::random(model.config(), 7, &Device::Cpu).unwrap();
    let got = other.predict(&embedding, &click).unwrap();
    let want = decoded_afresh(&other, &embedding, (x, y));
    assert!(max_abs_diff(got.low_res_logits(), &want) < 1e-5);
    assert!(
        max_abs_diff(
            got.low_res_logits(),
            model.predict(&embedding, &click).unwrap().low_res_logits()
        ) > 1e-3
    );
}

#[test]
fn one_model_many_threads_many_embeddings() {
    let Some((model, image, dir)) = fixture() else {
        return;
    };
    let (x, y) = fixture_point(&dir);
    let model = Arc::new(model);
    let flipped =
        image::DynamicImage::ImageLuma8(image::imageops::flip_horizontal(&image.to_luma8()));
    let embeddings = [model.embed(&image).unwrap(), model.embed(&flipped).unwrap()];
    let prompts: Vec<Prompts> = (0..6)
        .map(|i| {
            Prompts::new()
                .points([PointPrompt::new(
                    x + 7.0 * i as f32 - 20.0,
                    y,
                    Label::Foreground,
                )])
                .multimask(i % 2 == 1)
        })
        .collect();
    let alone: Vec<Prediction> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| model.predict(&embeddings[i % 2], p).unwrap())
        .collect();
    let threads: Vec<_> = prompts
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let model = Arc::clone(&model);
            let embedding = embeddings[i % 2].clone();
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| model.predict(&embedding, &p).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (i, handle) in threads.into_iter().enumerate() {
        for together in handle.join().expect("no thread panics") {
            assert_eq!(together.masks(), alone[i].masks(), "prompt {i}");
            assert!(max_abs_diff(together.logits(), alone[i].logits()) <= 1e-5);
        }
    }
}

#[test]
fn bad_prompts_and_foreign_embeddings_are_typed_errors() {
    let Some((model, image, _)) = fixture() else {
        return;
    };
    let embedding = model.embed(&image).unwrap();
    let err = model
        .predict(
            &embedding,
            &Prompts::new().point(300.0, 5.0, Label::Foreground),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PointOutside {
                width: 256,
                height: 256,
                ..
            }
        ),
        "{err}"
    );
    let err = model
        .predict(&embedding, &Prompts::new().bbox([50.0, 50.0, 10.0, 60.0]))
        .unwrap_err();
    assert!(matches!(err, Error::BoxOutside { .. }), "{err}");
    let wrong = Tensor::zeros((1, 1, 64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = model
        .predict(&embedding, &Prompts::new().mask_input(wrong))
        .unwrap_err();
    assert!(
        matches!(&err, Error::MaskInputShape { expected, .. } if expected == &[1, 1, 128, 128]),
        "{err}"
    );
    let foreign = samus_model::ImageEmbedding::from_tensor(
        Tensor::zeros((1, 256, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
        100,
        100,
    )
    .unwrap();
    let err = model
        .predict(&foreign, &Prompts::new().point(5.0, 5.0, Label::Foreground))
        .unwrap_err();
    assert!(matches!(err, Error::EmbeddingShape { .. }), "{err}");
    let err = model
        .embed(&image::DynamicImage::new_luma8(0, 0))
        .unwrap_err();
    assert!(matches!(err, Error::Image { path: None, .. }), "{err}");
}

#[test]
fn loading_errors_name_the_file_the_tensor_and_the_shapes() {
    let Some((_, _, dir)) = fixture() else {
        return;
    };
    let path = dir.join("samus_tiny.safetensors");
    let err = Samus::loader(&path)
        .config(SamusConfig {
            embed_dim: 64,
            num_heads: 4,
            ..SamusConfig::tiny()
        })
        .load()
        .unwrap_err();
    match &err {
        Error::TensorShape {
            path: Some(p),
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(p, &path);
            assert!(name.starts_with("image_encoder."), "{name}");
            assert_ne!(expected, found);
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    assert!(err.to_string().contains("samus_tiny.safetensors"), "{err}");

    let mut tensors = samus_model::checkpoint::read_tensors(&path).unwrap();
    tensors.remove("mask_decoder.iou_token.weight");
    let err = Samus::loader_from_tensors(tensors).load().unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { path: None, name, expected, .. }
            if name == "mask_decoder.iou_token.weight" && expected == &[1, 256]),
        "{err}"
    );

    let err = Samus::loader(dir.join("busi/benign0001.png"))
        .load()
        .unwrap_err();
    assert!(
        matches!(err, Error::Checkpoint { path: Some(_), .. }),
        "{err}"
    );
}
