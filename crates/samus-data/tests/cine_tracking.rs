//! The tracking rule of `samus_model::tracking` on the synthetic beating ellipse,
//! with a classical segmenter in place of trained weights (dark pixels inside the
//! prompt box, or the dark region around the seed point): propagation must keep the
//! prompt on the moving, resizing cavity (Dice >= 0.9 on every frame, the area
//! following the truth), and a collapsed answer must be re-detected.

use candle_core::{Device, Tensor};
use image::GrayImage;
use samus_data::synth::cine::{beating_ellipse, CineFrame};
use samus_model::tracking::{TrackConfig, TrackStep, Tracker};
use samus_model::{Label, Prediction, Prompts};

const DARK: u8 = 90;

/// A prediction whose one mask is `mask`, with predicted IoU `iou`.
fn prediction_of(mask: &GrayImage, iou: f32) -> Prediction {
    let (w, h) = mask.dimensions();
    let logits: Vec<f32> = mask
        .pixels()
        .map(|p| if p[0] > 0 { 8.0 } else { -8.0 })
        .collect();
    let logits = Tensor::from_vec(logits, (1, 1, h as usize, w as usize), &Device::Cpu).unwrap();
    let low = Tensor::zeros((1, 1, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    Prediction::from_logits(low, logits, &[iou]).unwrap()
}

/// Dark pixels inside the box; without a box, the dark region 4-connected to the
/// first foreground point.
fn classical(frame: &GrayImage, prompts: &Prompts) -> GrayImage {
    let (w, h) = frame.dimensions();
    let dark = |x: u32, y: u32| frame.get_pixel(x, y)[0] < DARK;
    if let Some([x0, y0, x1, y1]) = prompts.bbox {
        return GrayImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let inside = fx >= x0 && fx <= x1 && fy >= y0 && fy <= y1;
            image::Luma([if inside && dark(x, y) { 255 } else { 0 }])
        });
    }
    let mut mask = GrayImage::new(w, h);
    let Some(p) = prompts.points.iter().find(|p| p.label == Label::Foreground) else {
        return mask;
    };
    let mut stack = vec![(p.x as u32, p.y as u32)];
    while let Some((x, y)) = stack.pop() {
        if x >= w || y >= h || mask.get_pixel(x, y)[0] > 0 || !dark(x, y) {
            continue;
        }
        mask.put_pixel(x, y, image::Luma([255]));
        stack.extend([
            (x + 1, y),
            (x.wrapping_sub(1), y),
            (x, y + 1),
            (x, y.wrapping_sub(1)),
        ]);
    }
    mask
}

fn dice(a: &GrayImage, b: &GrayImage) -> f64 {
    let (mut both, mut total) = (0usize, 0usize);
    for (p, q) in a.pixels().zip(b.pixels()) {
        both += usize::from(p[0] > 0 && q[0] > 0);
        total += usize::from(p[0] > 0) + usize::from(q[0] > 0);
    }
    2.0 * both as f64 / total.max(1) as f64
}

fn area(mask: &GrayImage) -> f64 {
    mask.pixels().filter(|p| p[0] > 0).count() as f64
}

/// Tracks `frames` from a point at the cavity's centre on frame `k`, forwards then
/// backwards; each frame's Dice and (tracked area / true area).
fn track(frames: &[CineFrame], k: usize, collapse_at: Option<usize>) -> Vec<(f64, f64, TrackStep)> {
    let (w, h) = frames[0].image.dimensions();
    let (cx, cy) = frames[k].centre;
    let seed = Prompts::new().point(cx as f32, cy as f32, Label::Foreground);
    let mut forward = Tracker::new(seed, TrackConfig::default());
    let mut results = vec![None; frames.len()];
    let mut run = |tracker: &mut Tracker, i: usize| {
        let frame = &frames[i];
        let tracked = tracker
            .follow_with((w as usize, h as usize), |prompts| {
                let mask = classical(&frame.image, prompts);
                // A collapsed propagation: the answer to the propagated prompt
                // (the one with a mask input) is empty.
                if collapse_at == Some(i) && prompts.mask_input.is_some() {
                    return Ok(prediction_of(&GrayImage::new(w, h), 0.1));
                }
                Ok(prediction_of(&mask, 0.95))
            })
            .unwrap();
        let mask = &tracked.prediction.best().image;
        results[i] = Some((
            dice(mask, &frame.truth),
            area(mask) / area(&frame.truth),
            tracked.step,
        ));
    };
    run(&mut forward, k);
    let mut backward = forward.fork();
    for i in k + 1..frames.len() {
        run(&mut forward, i);
    }
    for i in (0..k).rev() {
        run(&mut backward, i);
    }
    results.into_iter().map(|r| r.unwrap()).collect()
}

#[test]
fn propagation_follows_a_moving_beating_cavity() {
    let frames = beating_ellipse(24, 160, 120, 5);
    let results = track(&frames, 8, None);
    for (i, (d, ratio, step)) in results.iter().enumerate() {
        assert!(*d >= 0.9, "frame {i}: Dice {d:.3} ({step:?})");
        assert!(
            (ratio - 1.0).abs() < 0.1,
            "frame {i}: area {ratio:.3} of the truth"
        );
        let expected = if i == 8 {
            TrackStep::Seeded
        } else {
            TrackStep::Propagated
        };
        assert_eq!(*step, expected, "frame {i}");
    }
    // The truth does move and resize: a mask that stayed put would fail.
    assert!(dice(&frames[0].truth, &frames[23].truth) < 0.8);
    let areas: Vec<f64> = frames.iter().map(|f| area(&f.truth)).collect();
    let (lo, hi) = areas
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(lo < 0.5 * hi, "the cavity beats: {lo} to {hi}");
}

#[test]
fn a_collapsed_frame_is_redetected_and_the_track_goes_on() {
    let frames = beating_ellipse(12, 160, 120, 9);
    let results = track(&frames, 0, Some(5));
    assert_eq!(results[5].2, TrackStep::Redetected);
    for (i, (d, _, _)) in results.iter().enumerate() {
        assert!(*d >= 0.9, "frame {i}: Dice {d:.3}");
    }
}
