//! Loading 1000 synthetic training samples (PNG decoding, augmentation, prompts) with
//! the parallel batch iterator, against the same work on one thread, and the parallel
//! iterator once the decoded images are cached (every epoch after the first of a
//! training run: only the augmentation and the prompts are left), and that cached
//! work on one thread.
//!
//! `cargo bench -p samus-data --bench loading`

use criterion::{criterion_group, criterion_main, Criterion};
use samus_data::{DatasetOptions, Us30kSplit};

const SAMPLES: usize = 1000;
const BATCH: usize = 50;

fn load(split: &Us30kSplit, epoch: u64) -> usize {
    let mut n = 0;
    for batch in split.batches(BATCH, epoch) {
        n += batch.map(|b| b.samples.len()).unwrap_or(0);
        if n >= SAMPLES {
            break;
        }
    }
    n
}

fn loading(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary folder");
    // 400 images per kind: 280 + 280 + 3 x 280 training lines, more than SAMPLES.
    samus_data::synth::write_dataset(dir.path(), 400, 5).expect("synthetic dataset");
    let uncached = DatasetOptions {
        cache_bytes: 0,
        ..DatasetOptions::training()
    };
    let split = Us30kSplit::open(dir.path(), "train", uncached).expect("train split");
    let cached =
        Us30kSplit::open(dir.path(), "train", DatasetOptions::training()).expect("train split");
    load(&cached, 0); // the first epoch fills the cache
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    let mut group = c.benchmark_group("load_1000_augmented");
    group.sample_size(10);
    group.bench_function("parallel", |b| b.iter(|| load(&split, 0)));
    group.bench_function("single_thread", |b| {
        b.iter(|| single.install(|| load(&split, 0)))
    });
    group.bench_function("parallel_cached", |b| b.iter(|| load(&cached, 1)));
    // The augmentation and prompt work alone on one thread: with two cores the cached
    // parallel loader can at best halve it, which bounds its speed-up over
    // `single_thread` (see docs/PERFORMANCE.md).
    group.bench_function("single_thread_cached", |b| {
        b.iter(|| single.install(|| load(&cached, 1)))
    });
    group.finish();
}

criterion_group!(benches, loading);
criterion_main!(benches);
