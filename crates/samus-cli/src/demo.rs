//! A generated B-mode-like ultrasound image for the demo: speckle over a bright
//! tissue background with a dark, round lesion.

use image::{GrayImage, Luma};

/// Side of the demo image.
pub const DEMO_SIZE: u32 = 256;

/// The demo image and the centre of its lesion (x, y).
pub fn demo_image(seed: u64) -> (GrayImage, (f32, f32)) {
    let centre = (DEMO_SIZE as f32 * 0.55, DEMO_SIZE as f32 * 0.45);
    let (rx, ry) = (DEMO_SIZE as f32 * 0.16, DEMO_SIZE as f32 * 0.11);
    // A small xorshift generator: the speckle only has to look random and be repeatable.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    let image = GrayImage::from_fn(DEMO_SIZE, DEMO_SIZE, |x, y| {
        let dx = (x as f32 - centre.0) / rx;
        let dy = (y as f32 - centre.1) / ry;
        let inside = dx * dx + dy * dy <= 1.0;
        let depth_gain = 1.0 - 0.4 * y as f32 / DEMO_SIZE as f32;
        let base = if inside { 35.0 } else { 150.0 * depth_gain };
        // Rayleigh-like speckle: multiplicative noise with a long tail.
        let speckle = (-2.0 * (1.0 - next()).max(1e-6).ln()).sqrt();
        Luma([(base * speckle * 0.8).clamp(0.0, 255.0) as u8])
    });
    (image, centre)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lesion_is_darker_than_tissue() {
        let (img, (cx, cy)) = demo_image(3);
        let mean = |x0: u32, y0: u32| -> f32 {
            let mut s = 0.0;
            for y in y0..y0 + 10 {
                for x in x0..x0 + 10 {
                    s += img.get_pixel(x, y)[0] as f32;
                }
            }
            s / 100.0
        };
        assert!(mean(cx as u32 - 5, cy as u32 - 5) < 0.5 * mean(10, 10));
        assert_eq!(demo_image(3).0, img);
    }
}
