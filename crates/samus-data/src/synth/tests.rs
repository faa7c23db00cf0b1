//! Unit tests of the generator: determinism, label validity, overlays, difficulty
//! calibration and the written layout.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::overlays::{glyph, overlay_strings};
use super::*;

fn defaults() -> Difficulty {
    Difficulty::default()
}

#[test]
fn deterministic_images() {
    for kind in Kind::ALL {
        for seed in [1u64, 99] {
            let a = generate(kind, seed, &defaults());
            let b = generate(kind, seed, &defaults());
            assert_eq!(a.0.as_raw(), b.0.as_raw());
            assert_eq!(a.1.as_raw(), b.1.as_raw());
            assert_eq!(a.0.dimensions(), a.1.dimensions());
        }
        let c = generate(kind, 2, &defaults());
        let d = generate(kind, 3, &defaults());
        assert_ne!(c.0.as_raw(), d.0.as_raw());
    }
}

#[test]
fn labels_valid_and_nonempty() {
    for kind in Kind::ALL {
        for seed in 0..16u64 {
            let (img, lab) = generate(kind, image_seed(7, kind, seed as usize), &defaults());
            assert_eq!(img.dimensions(), lab.dimensions());
            let (w, h) = img.dimensions();
            assert!((224..=320).contains(&w) && (224..=320).contains(&h));
            let mut counts = [0usize; 256];
            for p in lab.as_raw() {
                counts[*p as usize] += 1;
            }
            for (c, &n) in counts.iter().enumerate() {
                if c >= kind.num_classes() as usize {
                    assert_eq!(n, 0, "{kind:?} seed {seed}: invalid class {c}");
                } else {
                    assert!(n > 0, "{kind:?} seed {seed}: class {c} empty");
                }
            }
            // Speckle, not flat shapes.
            let mean = img.as_raw().iter().map(|&p| p as f64).sum::<f64>() / (w * h) as f64;
            assert!(mean > 15.0 && mean < 220.0, "{kind:?} mean {mean}");
        }
    }
}

#[test]
fn echo_fan_black_outside() {
    for seed in 0..12u64 {
        let clean = generate_sample(Kind::Echo, seed, &defaults(), Some(false));
        let (w, _) = clean.image.dimensions();
        assert!(!clean.valid[0] && !clean.valid[w as usize - 1]);
        let inside = clean.valid.iter().filter(|&&v| v).count();
        assert!(inside > clean.valid.len() / 3);
        for (i, (&p, &l)) in clean
            .image
            .as_raw()
            .iter()
            .zip(clean.label.as_raw())
            .enumerate()
        {
            if !clean.valid[i] {
                assert_eq!(p, 0);
                assert_eq!(l, 0);
            }
        }
        let over = generate_sample(Kind::Echo, seed, &defaults(), Some(true));
        for (i, &p) in over.image.as_raw().iter().enumerate() {
            if !over.valid[i] && !over.overlay[i] {
                assert_eq!(p, 0);
            }
        }
    }
}

#[test]
fn overlays_never_touch_label() {
    for kind in Kind::ALL {
        for seed in 0..6u64 {
            let a = generate_sample(kind, seed, &defaults(), Some(false));
            let b = generate_sample(kind, seed, &defaults(), Some(true));
            assert_eq!(a.label.as_raw(), b.label.as_raw());
            assert!(a.overlay.iter().all(|&m| !m));
            for (i, (&pa, &pb)) in a.image.as_raw().iter().zip(b.image.as_raw()).enumerate() {
                if !b.overlay[i] {
                    assert_eq!(pa, pb);
                }
            }
        }
    }
    // Some overlays are drawn by default, but not on every image.
    let drawn = (0..40u64)
        .filter(|&s| {
            generate_sample(Kind::Breast, s, &defaults(), None)
                .overlay
                .iter()
                .any(|&m| m)
        })
        .count();
    assert!((5..=30).contains(&drawn), "{drawn} of 40 with overlays");
}

#[test]
fn otsu_dice_below_half_on_defaults() {
    for kind in Kind::ALL {
        let n = 30;
        let mean = (0..n)
            .map(|i| {
                let (img, lab) = generate(kind, image_seed(11, kind, i), &defaults());
                otsu_dice(&img, &lab, 1)
            })
            .sum::<f64>()
            / n as f64;
        eprintln!("{kind:?}: mean best-Otsu Dice {mean:.3}");
        assert!(mean < 0.5, "{kind:?}: {mean}");
    }
}

#[test]
fn cnr_within_requested_range() {
    for (lo, hi) in [(0.8, 2.0), (0.5, 0.9), (1.6, 2.2)] {
        let diff = Difficulty {
            cnr_min: lo,
            cnr_max: hi,
        };
        for kind in Kind::ALL {
            let n = 12;
            let mut inside = 0;
            let mut sum = 0.0;
            for i in 0..n {
                let s = generate_sample(kind, image_seed(5, kind, i), &diff, Some(false));
                let c = measure_cnr(&s.image, &s.label, 1).unwrap_or(f64::NAN);
                sum += c;
                if c >= lo - 0.25 && c <= hi + 0.25 {
                    inside += 1;
                }
                assert!(
                    (s.cnr_target - c).abs() < 0.6,
                    "{kind:?} target {} got {c}",
                    s.cnr_target
                );
            }
            let mean = sum / n as f64;
            eprintln!("{kind:?} [{lo},{hi}]: mean CNR {mean:.2}, {inside}/{n} in range");
            assert!(inside * 10 >= n * 8, "{kind:?} [{lo},{hi}]: {inside}/{n}");
            assert!(
                mean > lo - 0.15 && mean < hi + 0.15,
                "{kind:?}: mean {mean}"
            );
        }
    }
}

#[test]
fn written_layout_is_complete() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let summary = write_dataset(root, 4, 3)?;
    assert_eq!(summary.total_images(), 12);
    let main = root.join("MainPatient");
    let class: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(main.join("class.json"))?)?;
    for kind in Kind::ALL {
        assert_eq!(class[kind.dataset_name()], u64::from(kind.num_classes()));
    }
    let read = |p: PathBuf| std::fs::read_to_string(p);
    let mut seen = std::collections::BTreeSet::new();
    for split in ["train", "val", "test"] {
        let global = read(main.join(format!("{split}.txt")))?;
        let mut per = String::new();
        for kind in Kind::ALL {
            let text = read(main.join(format!("{split}-{}.txt", kind.dataset_name())))?;
            let c = summary.datasets[kind.dataset_name()];
            let n = match split {
                "train" => c.train,
                "val" => c.val,
                _ => c.test,
            };
            assert!(n >= 1);
            let per_img = if split == "test" && kind.num_classes() == 2 {
                1
            } else {
                kind.num_classes() as usize - 1
            };
            assert_eq!(text.lines().count(), n * per_img);
            per.push_str(&text);
        }
        assert_eq!(global, per);
        for line in global.lines() {
            let parts: Vec<&str> = line.split('/').collect();
            let (ds, name) = match parts.len() {
                3 => {
                    let c: u8 = parts[0].parse().unwrap_or(0);
                    assert!(c >= 1);
                    (parts[1], parts[2])
                }
                2 => {
                    assert_eq!(split, "test");
                    (parts[0], parts[1])
                }
                _ => panic!("bad line {line}"),
            };
            let img = image::open(root.join(ds).join("img").join(format!("{name}.png")))?;
            let lab = image::open(root.join(ds).join("label").join(format!("{name}.png")))?;
            assert_eq!(img.width(), lab.width());
            assert_eq!(img.height(), lab.height());
            assert!(matches!(img, image::DynamicImage::ImageLuma8(_)));
            seen.insert((split, name.to_string()));
        }
    }
    let names: std::collections::BTreeSet<&String> = seen.iter().map(|(_, n)| n).collect();
    assert_eq!(names.len(), 12, "every image appears in exactly one split");
    assert_eq!(seen.len(), 12);
    // No temporary files left behind.
    let mut folders = vec![main.clone()];
    for kind in Kind::ALL {
        for sub in ["img", "label"] {
            folders.push(root.join(kind.dataset_name()).join(sub));
        }
    }
    for d in folders {
        for entry in std::fs::read_dir(&d)? {
            let name = entry?.file_name();
            assert!(!name.to_string_lossy().starts_with('.'), "{name:?}");
        }
    }
    // Same seed -> identical bytes.
    let dir2 = tempfile::tempdir()?;
    write_dataset(dir2.path(), 4, 3)?;
    for kind in Kind::ALL {
        for i in 0..4 {
            for sub in ["img", "label"] {
                let rel = Path::new(kind.dataset_name())
                    .join(sub)
                    .join(format!("{}.png", image_name(kind, i)));
                let a = std::fs::read(root.join(&rel))?;
                let b = std::fs::read(dir2.path().join(&rel))?;
                assert_eq!(a, b);
            }
        }
    }
    Ok(())
}

#[test]
fn unwritable_output_is_an_error_naming_the_folder() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"a file, not a folder")?;
    let err = match write_dataset(&blocked, 1, 0) {
        Ok(_) => return Err("writing under a file succeeded".into()),
        Err(err) => err,
    };
    assert!(matches!(err, crate::Error::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("blocked"), "{err}");
    Ok(())
}

#[test]
fn absurd_image_counts_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth");
    for n in [usize::MAX, 1_000_000_000, MAX_PER_DATASET + 1] {
        match write_dataset(&out, n, 0) {
            Err(crate::Error::TooManyImages { requested, max }) => {
                assert_eq!((requested, max), (n, MAX_PER_DATASET));
            }
            other => panic!("{n} images per kind: {other:?}"),
        }
    }
    assert!(!out.exists(), "nothing is written for a refused count");
    let err = write_dataset(&out, usize::MAX, 0).unwrap_err().to_string();
    assert!(err.contains("at most 100000"), "{err}");
}

#[test]
fn otsu_on_bimodal_image() {
    let mut img = GrayImage::new(20, 10);
    let mut lab = GrayImage::new(20, 10);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let dark = x < 5;
        p[0] = if dark { 20 + (y as u8) } else { 200 };
        lab.put_pixel(x, y, Luma([u8::from(dark)]));
    }
    let t = otsu_threshold(&img);
    assert!(t > 29 && t <= 200, "t = {t}");
    assert!((otsu_dice(&img, &lab, 1) - 1.0).abs() < 1e-12);
}

#[test]
fn glyphs_cover_overlay_strings() {
    let mut rng = StdRng::seed_from_u64(1);
    for kind in Kind::ALL {
        for _ in 0..50 {
            for s in overlay_strings(kind, &mut rng) {
                assert!(s.chars().all(|c| glyph(c).is_some()), "{s}");
            }
        }
    }
}

proptest::proptest! {
    #[test]
    fn split_counts_consistent(n in 0usize..500) {
        let c = split_counts(n);
        proptest::prop_assert_eq!(c.total(), n);
        if n >= 3 {
            proptest::prop_assert!(c.train >= 1 && c.val >= 1 && c.test >= 1);
            proptest::prop_assert!(c.train >= c.val && c.train >= c.test);
        }
    }

    #[test]
    fn image_seeds_differ(seed in proptest::prelude::any::<u64>(), i in 0usize..10_000) {
        proptest::prop_assert_ne!(image_seed(seed, Kind::Breast, i), image_seed(seed, Kind::Breast, i + 1));
        proptest::prop_assert_ne!(image_seed(seed, Kind::Breast, i), image_seed(seed, Kind::Echo, i));
    }
}
