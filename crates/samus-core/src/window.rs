//! Window partition and unpartition for windowed attention (SAM's
//! `window_partition` / `window_unpartition`).

use candle_core::{Result, Tensor};

/// Splits a BHWC tensor into non-overlapping `window` x `window` windows, padding the
/// bottom and right with zeros so that both sides are multiples of `window`.
///
/// Returns the windows, `(B * nH * nW) x window x window x C`, and the padded size
/// `(Hp, Wp)` needed by [`window_unpartition`].
pub fn window_partition(x: &Tensor, window: usize) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = x.dims4()?;
    if window == 0 {
        candle_core::bail!("window size must be positive")
    }
    let pad_h = (window - h % window) % window;
    let pad_w = (window - w % window) % window;
    let x = if pad_h > 0 || pad_w > 0 {
        x.pad_with_zeros(1, 0, pad_h)?.pad_with_zeros(2, 0, pad_w)?
    } else {
        x.clone()
    };
    let (hp, wp) = (h + pad_h, w + pad_w);
    let windows = x
        .reshape((b, hp / window, window, wp / window, window, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b * (hp / window) * (wp / window), window, window, c))?;
    Ok((windows, (hp, wp)))
}

/// Reverses [`window_partition`]: merges windows back into a BHWC tensor of the
/// padded size `padded` and crops it to `original` (H, W).
pub fn window_unpartition(
    windows: &Tensor,
    window: usize,
    padded: (usize, usize),
    original: (usize, usize),
) -> Result<Tensor> {
    let (n, _, _, c) = windows.dims4()?;
    let (hp, wp) = padded;
    let (h, w) = original;
    let per_image = (hp / window) * (wp / window);
    if per_image == 0 || n % per_image != 0 {
        candle_core::bail!("{n} windows do not tile a {hp}x{wp} grid of {window}x{window} windows")
    }
    let b = n / per_image;
    let x = windows
        .reshape((b, hp / window, wp / window, window, window, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b, hp, wp, c))?;
    if hp > h || wp > w {
        x.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous()
    } else {
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn partition_matches_naive_and_round_trips(
            b in 1usize..3, h in 1usize..12, w in 1usize..12, c in 1usize..4, window in 1usize..6,
        ) {
            let n = b * h * w * c;
            let data: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            let x = Tensor::from_vec(data.clone(), (b, h, w, c), &Device::Cpu).unwrap();
            let (windows, (hp, wp)) = window_partition(&x, window).unwrap();
            prop_assert_eq!(hp % window, 0);
            prop_assert_eq!(wp % window, 0);
            prop_assert!(hp >= h && hp < h + window && wp >= w && wp < w + window);
            let got = windows.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Naive: window index (bi, wy, wx), position (y, x) inside it.
            let (nh, nw) = (hp / window, wp / window);
            let mut want = Vec::with_capacity(got.len());
            for bi in 0..b { for wy in 0..nh { for wx in 0..nw {
                for y in 0..window { for xx in 0..window { for ci in 0..c {
                    let (gy, gx) = (wy * window + y, wx * window + xx);
                    want.push(if gy < h && gx < w { data[((bi * h + gy) * w + gx) * c + ci] } else { 0.0 });
                }}}
            }}}
            prop_assert_eq!(&got, &want);
            let back = window_unpartition(&windows, window, (hp, wp), (h, w)).unwrap();
            prop_assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), data);
        }
    }
}
