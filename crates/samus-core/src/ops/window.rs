//! Window partition and unpartition for windowed attention (SAM's
//! `window_partition` / `window_unpartition`).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use crate::cpu_kernel::{contiguous_f32, cpu_f32_inference, par_filled};

/// Splits a BHWC tensor into non-overlapping `window` x `window` windows, padding the
/// bottom and right with zeros so that both sides are multiples of `window`.
///
/// Returns the windows, `(B * nH * nW) x window x window x C`, and the padded size
/// `(Hp, Wp)` needed by [`window_unpartition`]. Without a gradient, on the CPU in
/// f32, it is one parallel pass (see [`window_partition_filled`]).
pub fn window_partition(x: &Tensor, window: usize) -> Result<(Tensor, (usize, usize))> {
    window_partition_filled(x, window, None)
}

/// [`window_partition`] padding with copies of `fill` (`C` values; zeros without
/// it) instead of zeros: the windows of a projected grid whose padding tokens are
/// the projection's bias. Without a gradient, on the CPU in f32, it is one parallel
/// pass that writes each window row straight from the grid; otherwise the grid is
/// padded and rearranged with (differentiable) candle operations.
pub fn window_partition_filled(
    x: &Tensor,
    window: usize,
    fill: Option<&Tensor>,
) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = x.dims4()?;
    if window == 0 {
        candle_core::bail!("window size must be positive")
    }
    if let Some(f) = fill {
        if f.elem_count() != c {
            candle_core::bail!("window fill has {} values for {c} channels", f.elem_count())
        }
    }
    let (hp, wp) = (h.div_ceil(window) * window, w.div_ceil(window) * window);
    let fast = cpu_f32_inference(std::iter::once(x).chain(fill));
    if fast {
        let op = GatherWindows { window };
        let x = x.contiguous()?;
        let windows = match fill {
            Some(f) => x.apply_op2_no_bwd(&f.flatten_all()?.contiguous()?, &op)?,
            None => x.apply_op1_no_bwd(&op)?,
        };
        return Ok((windows, (hp, wp)));
    }
    let (pad_h, pad_w) = (hp - h, wp - w);
    let padded = match fill {
        _ if pad_h == 0 && pad_w == 0 => x.clone(),
        None => x.pad_with_zeros(1, 0, pad_h)?.pad_with_zeros(2, 0, pad_w)?,
        Some(fill) => {
            let block = |rows: usize, cols: usize| {
                fill.reshape((1, 1, 1, c))?.broadcast_as((b, rows, cols, c))
            };
            let mut padded = x.clone();
            if pad_w > 0 {
                padded = Tensor::cat(&[&padded, &block(h, pad_w)?], 2)?;
            }
            if pad_h > 0 {
                padded = Tensor::cat(&[&padded, &block(pad_h, wp)?], 1)?;
            }
            padded
        }
    };
    let windows = padded
        .reshape((b, hp / window, window, wp / window, window, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b * (hp / window) * (wp / window), window, window, c))?;
    Ok((windows, (hp, wp)))
}

/// The real part of each window that [`window_partition`] makes of a `batch x H x W`
/// grid: per window, in the partition's order, how many of its rows and columns hold
/// grid tokens rather than padding (none for a zero window size).
pub fn window_extents(batch: usize, (h, w): (usize, usize), window: usize) -> Vec<(usize, usize)> {
    if window == 0 {
        return Vec::new();
    }
    let (nh, nw) = (h.div_ceil(window), w.div_ceil(window));
    (0..batch * nh * nw)
        .map(|index| {
            let (wy, wx) = ((index / nw) % nh, index % nw);
            ((h - wy * window).min(window), (w - wx * window).min(window))
        })
        .collect()
}

/// The CPU form of [`window_partition_filled`]: input `B x H x W x C` (and the
/// fill), output `(B nH nW) x window x window x C`, one task per window row.
#[derive(Debug, Clone, Copy)]
struct GatherWindows {
    window: usize,
}

impl GatherWindows {
    fn gather(
        &self,
        x: &[f32],
        layout: &Layout,
        fill: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = layout.shape().dims4()?;
        let win = self.window;
        let (nh, nw) = (h.div_ceil(win), w.div_ceil(win));
        let zeros;
        let fill = match fill {
            Some(f) if f.len() == c => f,
            Some(f) => candle_core::bail!("window fill has {} values for {c} channels", f.len()),
            None => {
                zeros = vec![0f32; c];
                &zeros
            }
        };
        let row_len = win * c;
        let out = par_filled(b * nh * nw * win * row_len, row_len, |index, dst| {
            // index = ((bi nH + wy) nW + wx) win + i
            let i = index % win;
            let wx = (index / win) % nw;
            let wy = (index / (win * nw)) % nh;
            let bi = index / (win * nw * nh);
            let y = wy * win + i;
            let x0 = wx * win;
            let real = if y < h {
                w.saturating_sub(x0).min(win)
            } else {
                0
            };
            if real > 0 {
                let start = ((bi * h + y) * w + x0) * c;
                dst[..real * c].copy_from_slice(&x[start..start + real * c]);
            }
            for pixel in dst[real * c..].chunks_exact_mut(c) {
                pixel.copy_from_slice(fill);
            }
            Ok(())
        })?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((b * nh * nw, win, win, c)),
        ))
    }
}

impl CustomOp1 for GatherWindows {
    fn name(&self) -> &'static str {
        "samus-window-partition"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.gather(contiguous_f32(x, layout, "window partition")?, layout, None)
    }
}

impl CustomOp2 for GatherWindows {
    fn name(&self) -> &'static str {
        "samus-window-partition-filled"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        fill: &CpuStorage,
        fill_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let fill = contiguous_f32(fill, fill_layout, "window fill")?;
        self.gather(
            contiguous_f32(x, x_layout, "window partition")?,
            x_layout,
            Some(fill),
        )
    }
}

/// The CPU form of [`window_unpartition`] without a gradient: each output row of
/// `B x H x W x C` is copied from its windows in one parallel pass (no merged
/// padded grid, no crop).
#[derive(Debug, Clone, Copy)]
struct ScatterWindows {
    window: usize,
    padded: (usize, usize),
    original: (usize, usize),
}

impl CustomOp1 for ScatterWindows {
    fn name(&self) -> &'static str {
        "samus-window-unpartition"
    }

    fn cpu_fwd(&self, windows: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = contiguous_f32(windows, layout, "window unpartition")?;
        let (n, _, _, c) = layout.shape().dims4()?;
        let win = self.window;
        let (nh, nw) = (self.padded.0 / win, self.padded.1 / win);
        let (h, w) = self.original;
        let b = n / (nh * nw).max(1);
        let row_len = w * c;
        let out = par_filled(b * h * row_len, row_len, |index, dst| {
            let (bi, y) = (index / h, index % h);
            let (wy, i) = (y / win, y % win);
            for (wx, chunk) in dst.chunks_mut(win * c).enumerate() {
                let window_index = (bi * nh + wy) * nw + wx;
                let start = (window_index * win + i) * win * c;
                chunk.copy_from_slice(&data[start..start + chunk.len()]);
            }
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }
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
    if hp < h || wp < w || hp % window != 0 || wp % window != 0 {
        candle_core::bail!(
            "padded grid {hp}x{wp} does not hold {h}x{w} in {window}x{window} windows"
        )
    }
    if cpu_f32_inference([windows]) {
        let dims = windows.dims();
        if dims[1] != window || dims[2] != window {
            candle_core::bail!("windows {:?} are not {window}x{window}", dims)
        }
        let op = ScatterWindows {
            window,
            padded,
            original,
        };
        return windows.contiguous()?.apply_op1_no_bwd(&op);
    }
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

    #[test]
    fn extents_of_samus_windows() {
        // SAMUS: a 32 x 32 grid in 14 x 14 windows, padded to 42 x 42.
        let one = [
            (14, 14),
            (14, 14),
            (14, 4),
            (14, 14),
            (14, 14),
            (14, 4),
            (4, 14),
            (4, 14),
            (4, 4),
        ];
        assert_eq!(window_extents(1, (32, 32), 14), one);
        assert_eq!(window_extents(2, (32, 32), 14), [one, one].concat());
        assert_eq!(window_extents(1, (4, 6), 2), [(2, 2); 6]);
        assert!(window_extents(1, (4, 4), 0).is_empty());
    }

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
            prop_assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), data.clone());
            // The differentiable (composed) paths give the same values.
            let var = candle_core::Var::from_tensor(&x).unwrap();
            let (composed, _) = window_partition(var.as_tensor(), window).unwrap();
            prop_assert_eq!(composed.flatten_all().unwrap().to_vec1::<f32>().unwrap(), got);
            let var_windows = candle_core::Var::from_tensor(&windows).unwrap();
            let composed_back = window_unpartition(var_windows.as_tensor(), window, (hp, wp), (h, w)).unwrap();
            prop_assert_eq!(composed_back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), data);
        }

        /// Filled partition (the fused gather) against padding with the fill by
        /// concatenation and partitioning, the composed path gradients take.
        #[test]
        fn filled_partition_matches_composed(
            b in 1usize..3, h in 1usize..12, w in 1usize..12, c in 1usize..4, window in 1usize..6, with_fill: bool,
        ) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (b, h, w, c), &dev).unwrap();
            let fill = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
            let fill = with_fill.then_some(&fill);
            let (fast, padded) = window_partition_filled(&x, window, fill).unwrap();
            let var = candle_core::Var::from_tensor(&x).unwrap();
            let (slow, slow_padded) = window_partition_filled(var.as_tensor(), window, fill).unwrap();
            prop_assert_eq!(padded, slow_padded);
            prop_assert_eq!(
                fast.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                slow.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }
}
