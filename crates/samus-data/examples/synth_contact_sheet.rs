//! Writes a 3x2 contact sheet (3 kinds x 2 seeds; image | label) and times the generator.
//!
//! Usage: `cargo run --release -p samus-data --example synth_contact_sheet -- OUT.png [SEED_A SEED_B]`

use std::time::Instant;

use image::{GrayImage, Luma};
use samus_data::synth::{generate, image_seed, otsu_dice, Difficulty, Kind};

const CELL: u32 = 320;
const GAP: u32 = 6;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).cloned().unwrap_or_else(|| "contact.png".into());
    let seed_a: u64 = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let seed_b: u64 = args.get(3).map_or(Ok(2), |s| s.parse())?;
    let diff = Difficulty::default();
    let cols = Kind::ALL.len() as u32;
    let sheet_w = cols * (2 * CELL + GAP) + (cols - 1) * 2 * GAP;
    let sheet_h = 2 * CELL + GAP;
    let mut sheet = GrayImage::from_pixel(sheet_w, sheet_h, Luma([40]));
    for (ci, kind) in Kind::ALL.iter().enumerate() {
        for (ri, seed) in [seed_a, seed_b].iter().enumerate() {
            let (img, lab) = generate(*kind, image_seed(*seed, *kind, 0), &diff);
            let x0 = ci as u32 * (2 * CELL + 3 * GAP);
            let y0 = ri as u32 * (CELL + GAP);
            for (x, y, p) in img.enumerate_pixels() {
                sheet.put_pixel(x0 + x, y0 + y, *p);
                let l = lab.get_pixel(x, y)[0];
                sheet.put_pixel(x0 + CELL + GAP + x, y0 + y, Luma([l.saturating_mul(80)]));
            }
        }
    }
    let format = image::ImageFormat::from_path(&out)?;
    let mut encoded = Vec::new();
    sheet.write_to(&mut std::io::Cursor::new(&mut encoded), format)?;
    samus_core::atomic_write::write_atomic(std::path::Path::new(&out), &encoded)?;
    println!("wrote {out}");
    // Timing (single thread) and global-threshold Dice at default difficulty.
    for kind in Kind::ALL {
        let n = 100;
        let t0 = Instant::now();
        let mut dice = 0.0;
        for i in 0..n {
            let (img, lab) = generate(kind, image_seed(seed_a, kind, i), &diff);
            dice += otsu_dice(&img, &lab, 1);
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0 / n as f64;
        println!(
            "{:<30} {:6.2} ms/image (incl. Otsu), mean best-Otsu Dice {:.3}",
            kind.dataset_name(),
            ms,
            dice / n as f64
        );
    }
    Ok(())
}
