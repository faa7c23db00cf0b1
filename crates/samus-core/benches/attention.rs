//! The fused CPU attention against the composed one (candle matrix products and the
//! fused softmax, heads merged afterwards), at the SAMUS ViT-B shapes: a global block
//! (1024 tokens, 12 heads x 64, decomposed relative-position bias), a windowed block
//! (9 windows of 14 x 14 tokens) and the cross-branch attention (no bias).
//!
//! `cargo bench -p samus-core --bench attention`

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use samus_core::{
    attention_merged, merge_heads, multi_head_attention, AttentionOptions, DecomposedRelPos,
};

const HEADS: usize = 12;
const HEAD_DIM: usize = 64;

/// q, k, v as the encoder makes them: strided views of one fused qkv projection.
fn qkv(batch: usize, tokens: usize) -> (Tensor, Tensor, Tensor) {
    let qkv = Tensor::randn(0f32, 1.0, (batch, tokens, 3, HEADS, HEAD_DIM), &Device::Cpu)
        .and_then(|t| t.permute((2, 0, 3, 1, 4)))
        .expect("random qkv");
    let part = |i| qkv.get(i).expect("q, k or v");
    (part(0), part(1), part(2))
}

fn rel_pos(side: usize) -> DecomposedRelPos {
    let table =
        || Tensor::randn(0f32, 0.1, (2 * side - 1, HEAD_DIM), &Device::Cpu).expect("random table");
    DecomposedRelPos::new(&table(), &table(), (side, side), (side, side)).expect("rel pos")
}

fn attention(c: &mut Criterion) {
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let options = AttentionOptions::default();
    let cases = [
        ("global_1024_rel_pos", 1, 32, true),
        ("window_9x196_rel_pos", 9, 14, true),
        ("cross_branch_1024", 1, 32, false),
    ];
    let mut group = c.benchmark_group("attention_vit_b");
    group.sample_size(10);
    for (name, batch, side, with_bias) in cases {
        let (q, k, v) = qkv(batch, side * side);
        let rel = rel_pos(side);
        let rel = with_bias.then_some(&rel);
        group.bench_function(format!("{name}/fused"), |b| {
            b.iter(|| attention_merged(&q, &k, &v, scale, rel, options).expect("fused"))
        });
        group.bench_function(format!("{name}/composed"), |b| {
            b.iter(|| {
                multi_head_attention(&q, &k, &v, scale, rel, options)
                    .and_then(|o| merge_heads(&o))
                    .expect("composed")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, attention);
criterion_main!(benches);
