//! The mirror test-time augmentation: the mirrored batch moves every click with its
//! pixel, and the averaged prediction of a mirrored batch is the mirror image of the
//! averaged prediction.

mod common;

use candle_core::{Device, Tensor};
use samus_data::{DatasetOptions, Us30kSplit};
use samus_train::model::{BatchTensors, TestTimeAugmentation};

/// Four synthetic training images with their fixed evaluation clicks.
fn batch(root: &std::path::Path) -> BatchTensors {
    samus_data::synth::write_dataset(root, 8, 5).unwrap();
    let split =
        Us30kSplit::open(root, "train-Breast-SynthBUSI", DatasetOptions::evaluation()).unwrap();
    let samples = split.batches(4, 0).next().unwrap().unwrap().samples;
    assert!(samples.len() >= 2, "{} samples", samples.len());
    BatchTensors::new(&samples, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn a_mirrored_batch_moves_each_click_with_its_pixel() {
    let dir = tempfile::tempdir().unwrap();
    let batch = batch(dir.path());
    let mirrored = batch.mirrored().unwrap();
    let (b, side) = (batch.images.dim(0).unwrap(), batch.images.dim(3).unwrap());
    let (images, flipped) = (values(&batch.images), values(&mirrored.images));
    let (points, moved) = (values(&batch.points), values(&mirrored.points));
    let (low, low_flipped) = (values(&batch.low_targets), values(&mirrored.low_targets));
    let low_side = batch.low_targets.dim(3).unwrap();
    for i in 0..b {
        let at = |data: &[f32], side: usize, x: usize, y: usize| data[(i * side + y) * side + x];
        for y in 0..side {
            for x in 0..side {
                assert_eq!(at(&images, side, x, y), at(&flipped, side, side - 1 - x, y));
            }
        }
        for y in 0..low_side {
            for x in 0..low_side {
                let (left, right) = (
                    at(&low, low_side, x, y),
                    at(&low_flipped, low_side, low_side - 1 - x, y),
                );
                assert_eq!(left, right);
            }
        }
        let (x, y) = (points[2 * i] as usize, points[2 * i + 1] as usize);
        let (mx, my) = (moved[2 * i] as usize, moved[2 * i + 1] as usize);
        assert_eq!((mx, my), (side - 1 - x, y), "sample {i}");
        assert_eq!(at(&images, side, x, y), at(&flipped, side, mx, my));
    }
    assert_eq!(values(&mirrored.labels), values(&batch.labels));
    let twice = mirrored.mirrored().unwrap();
    assert_eq!(values(&twice.images), images);
    assert_eq!(values(&twice.points), points);
}

#[test]
fn the_mirror_averaged_prediction_of_a_mirrored_batch_is_its_mirror_image() {
    let dir = tempfile::tempdir().unwrap();
    let batch = batch(dir.path());
    let model = common::tiny_samus(11);
    let averaged = model
        .predict_masks_with(&batch, TestTimeAugmentation::HorizontalFlip)
        .unwrap();
    let of_mirrored = model
        .predict_masks_with(
            &batch.mirrored().unwrap(),
            TestTimeAugmentation::HorizontalFlip,
        )
        .unwrap();
    let plain = model.predict_masks(&batch).unwrap();
    let side = batch.images.dim(3).unwrap();
    let mirror = |mask: &[bool]| -> Vec<bool> {
        (0..side * side)
            .map(|i| mask[(i / side) * side + side - 1 - i % side])
            .collect()
    };
    for (i, (a, m)) in averaged.iter().zip(&of_mirrored).enumerate() {
        let set = a.iter().filter(|&&v| v).count();
        assert!(0 < set && set < a.len(), "sample {i}: {set} pixels set");
        assert_eq!(&mirror(a), m, "sample {i}");
    }
    // The average is not the plain prediction: the mirrored pass changed pixels.
    assert_ne!(averaged, plain);
}
