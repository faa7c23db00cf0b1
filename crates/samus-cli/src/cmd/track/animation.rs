//! `overlay.gif`: every segmented frame with its mask tinted and outlined, and its
//! frame number and area in the corner. The frames are read a second time (a video
//! is decoded again rather than held in memory) and scaled to at most
//! [`MAX_WIDTH`] pixels wide, so the file stays small enough to share.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use image::codecs::gif::{GifEncoder, Repeat};
use image::imageops::FilterType;
use image::{Delay, DynamicImage};
use samus_data::frames::FrameSequence;

use super::{read_mask, FrameArea};
use crate::support::images::overlay;

/// The widest frame of the animation.
pub const MAX_WIDTH: u32 = 480;
/// GIF colour quantisation speed (1 best, 30 fastest): 10 is the encoder's advice
/// for a good result at a reasonable cost.
const QUANTISATION_SPEED: i32 = 10;

/// The GIF bytes: the frames of `rows` in order, `delay_ms` apart.
pub fn render(
    sequence: &FrameSequence,
    rows: &[FrameArea],
    masks_dir: &Path,
    delay_ms: f64,
) -> Result<Vec<u8>> {
    let by_frame: HashMap<u32, &FrameArea> = rows.iter().map(|r| (r.frame, r)).collect();
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, QUANTISATION_SPEED);
        encoder
            .set_repeat(Repeat::Infinite)
            .context("overlay.gif: cannot set it to loop")?;
        let delay = Delay::from_numer_denom_ms(delay_ms.clamp(20.0, 10_000.0).round() as u32, 1);
        for frame in sequence.frames()? {
            let frame = frame?;
            let Some(row) = by_frame.get(&frame.index) else {
                continue;
            };
            let mask = read_mask(masks_dir, frame.index)?;
            let caption = match row.area_mm2 {
                // The embedded font is ASCII only.
                Some(mm2) => format!("frame {}  {mm2:.1} mm^2", frame.index),
                None => format!("frame {}  {} px", frame.index, row.area_px),
            };
            let drawn =
                DynamicImage::ImageRgb8(overlay(&frame.image, &mask, &[], None, Some(&caption)));
            let small = if drawn.width() > MAX_WIDTH {
                let h = (u64::from(drawn.height()) * u64::from(MAX_WIDTH)
                    / u64::from(drawn.width()))
                .max(1) as u32;
                drawn.resize_exact(MAX_WIDTH, h, FilterType::Triangle)
            } else {
                drawn
            };
            encoder
                .encode_frame(image::Frame::from_parts(small.to_rgba8(), 0, 0, delay))
                .with_context(|| format!("overlay.gif: cannot encode frame {}", frame.index))?;
        }
    }
    Ok(bytes)
}
