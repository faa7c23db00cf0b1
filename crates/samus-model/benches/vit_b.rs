//! SAMUS ViT-B on the CPU, part by part, with random weights of the right shapes:
//! the full forward (encoder + one point prompt), the image encoder, one window
//! block, one global block (with its adapters and cross-branch attention), the
//! cross-branch attention alone, the CNN branch, and the decoder on a cached embedding.
//!
//! `cargo bench -p samus-model --bench vit_b` (issue #7; `samus bench` gives the
//! same end-to-end figures from the binary).

use std::collections::HashMap;

use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use samus_model::image_encoder::{CnnEmbed, CrossBranchAttention, EncoderBlock};
use samus_model::weights::{MissingTensors, WeightStore};
use samus_model::{PromptBatch, Samus, SamusConfig};

/// Fails the benchmark run with the error instead of timing a broken forward.
fn ok<T>(r: candle_core::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("benchmark setup failed: {e}"))
}

fn vit_b(c: &mut Criterion) {
    let dev = Device::Cpu;
    let cfg = SamusConfig::vit_b();
    let model =
        ok(Samus::random(&cfg, 1, &dev).map_err(|e| candle_core::Error::Msg(e.to_string())));
    let g = cfg.grid_size();
    let image = ok(Tensor::rand(
        0f32,
        1.0,
        (1, 1, cfg.img_size, cfg.img_size),
        &dev,
    ));
    let points = ok(Tensor::new(&[[[128f32, 120.0]]], &dev));
    let labels = ok(Tensor::new(&[[1f32]], &dev));
    let prompts = PromptBatch {
        points: Some((&points, &labels)),
        ..Default::default()
    };
    let embedding = ok(model.embed_image(&image));

    // Parts loaded on their own: seeded random weights as plain tensors (no gradients).
    let store = WeightStore::new(HashMap::new(), MissingTensors::Initialise { seed: 2 });
    let vb = store.var_builder(&dev);
    let window_index = ok((0..cfg.depth)
        .find(|i| !cfg.global_attn_indexes.contains(i))
        .ok_or_else(|| candle_core::Error::Msg("no window block".into())));
    let global_index = cfg.global_attn_indexes[0];
    let window = ok(EncoderBlock::load(vb.pp("w"), &cfg, window_index));
    let global = ok(EncoderBlock::load(vb.pp("g"), &cfg, global_index));
    let cross = ok(CrossBranchAttention::load(
        vb.pp("c"),
        cfg.embed_dim,
        cfg.num_heads,
    ));
    let cnn = ok(CnnEmbed::load(vb.pp("cnn"), &cfg));
    let tokens = ok(Tensor::randn(0f32, 1.0, (1, g, g, cfg.embed_dim), &dev));
    let cnn_tokens = ok(Tensor::randn(0f32, 1.0, (1, g, g, cfg.embed_dim), &dev));
    let rgb = ok(image.repeat((1, 3, 1, 1)));

    let mut group = c.benchmark_group("samus_vit_b");
    group.sample_size(10);
    group.bench_function("full_forward", |b| {
        b.iter(|| {
            ok(model
                .embed_image(&image)
                .and_then(|e| model.decode(&e, &prompts, false)))
        })
    });
    group.bench_function("image_encoder", |b| {
        b.iter(|| ok(model.embed_image(&image)))
    });
    group.bench_function("window_block", |b| {
        b.iter(|| ok(window.forward(&tokens, &cnn_tokens)))
    });
    group.bench_function("global_block", |b| {
        b.iter(|| ok(global.forward(&tokens, &cnn_tokens)))
    });
    group.bench_function("cross_branch_attention", |b| {
        b.iter(|| ok(cross.forward(&tokens, &cnn_tokens)))
    });
    group.bench_function("cnn_branch", |b| b.iter(|| ok(cnn.forward(&rgb))));
    group.bench_function("decoder_one_prompt", |b| {
        b.iter(|| ok(model.decode(&embedding, &prompts, false)))
    });
    group.finish();
}

criterion_group!(benches, vit_b);
criterion_main!(benches);
