//! Resizing identical to PyTorch's `F.interpolate` with `align_corners=False` and no
//! antialiasing.
//!
//! Linear and bilinear resizing are written as products with small interpolation
//! matrices, so they run on candle's matrix kernels and have a backward pass.

use candle_core::{Device, Result, Tensor};

/// The `out x in` matrix of PyTorch's linear interpolation weights
/// (`align_corners=False`): row `o` holds the weights of the input samples that
/// output sample `o` mixes.
pub fn linear_interpolation_matrix(
    in_size: usize,
    out_size: usize,
    device: &Device,
) -> Result<Tensor> {
    if in_size == 0 || out_size == 0 {
        candle_core::bail!("cannot resize from {in_size} to {out_size} samples")
    }
    let scale = in_size as f32 / out_size as f32;
    let mut weights = vec![0f32; out_size * in_size];
    for o in 0..out_size {
        let source = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (source as usize).min(in_size - 1);
        let i1 = if i0 + 1 < in_size { i0 + 1 } else { i0 };
        let lambda1 = source - i0 as f32;
        let lambda0 = 1.0 - lambda1;
        weights[o * in_size + i0] += lambda0;
        weights[o * in_size + i1] += lambda1;
    }
    Tensor::from_vec(weights, (out_size, in_size), device)
}

/// Resizes an NCHW tensor to `out_h x out_w` with bilinear interpolation, exactly as
/// `F.interpolate(x, size, mode="bilinear", align_corners=False)`.
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let dtype = x.dtype();
    let rows = linear_interpolation_matrix(h, out_h, x.device())?.to_dtype(dtype)?;
    let cols = linear_interpolation_matrix(w, out_w, x.device())?
        .to_dtype(dtype)?
        .t()?;
    // Along the width: (N*C*H, W) x (W, out_w).
    let x = x.contiguous()?.reshape((n * c * h, w))?.matmul(&cols)?;
    // Along the height: (out_h, H) x (N*C, H, out_w).
    let x = x.reshape((n * c, h, out_w))?;
    rows.unsqueeze(0)?
        .broadcast_as((n * c, out_h, h))?
        .contiguous()?
        .matmul(&x)?
        .reshape((n, c, out_h, out_w))
}

/// Resizes a tensor along axis `dim` to `size` samples with linear interpolation
/// (`F.interpolate(mode="linear", align_corners=False)` applied to that axis).
pub fn resize_linear_along(x: &Tensor, dim: usize, size: usize) -> Result<Tensor> {
    let dims = x.dims();
    if dim >= dims.len() {
        candle_core::bail!(
            "axis {dim} out of range for a tensor of rank {}",
            dims.len()
        )
    }
    if dims[dim] == size {
        return Ok(x.clone());
    }
    let weights = linear_interpolation_matrix(dims[dim], size, x.device())?.to_dtype(x.dtype())?;
    // Move the axis to the front, mix along it, and move it back.
    let moved = x.transpose(0, dim)?.contiguous()?;
    let mut moved_dims = moved.dims().to_vec();
    let rest: usize = moved_dims[1..].iter().product();
    let mixed = weights.matmul(&moved.reshape((dims[dim], rest))?)?;
    moved_dims[0] = size;
    mixed.reshape(moved_dims)?.transpose(0, dim)?.contiguous()
}

/// Indices of PyTorch's `mode="nearest"` resizing: output `o` takes input
/// `floor(o * in / out)`.
pub fn nearest_indices(in_size: usize, out_size: usize) -> Vec<u32> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|o| ((o as f32 * scale).floor() as usize).min(in_size.saturating_sub(1)) as u32)
        .collect()
}

/// Resizes an NCHW tensor to `out_h x out_w` with nearest-neighbour sampling, as
/// `F.interpolate(x, size, mode="nearest")`.
pub fn resize_nearest(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let rows = Tensor::new(nearest_indices(h, out_h), dev)?;
    let cols = Tensor::new(nearest_indices(w, out_w), dev)?;
    x.index_select(&rows, 2)?.index_select(&cols, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A direct transcription of PyTorch's CPU bilinear kernel (align_corners=False).
    fn naive_bilinear(x: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
        let src = |o: usize, inp: usize, out: usize| -> (usize, usize, f32, f32) {
            let scale = inp as f32 / out as f32;
            let s = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = s as usize;
            let step = usize::from(i0 < inp - 1);
            let l1 = s - i0 as f32;
            (i0, i0 + step, 1.0 - l1, l1)
        };
        let mut out = vec![0f32; oh * ow];
        for y in 0..oh {
            let (y0, y1, ly0, ly1) = src(y, h, oh);
            for xx in 0..ow {
                let (x0, x1, lx0, lx1) = src(xx, w, ow);
                out[y * ow + xx] = ly0 * (lx0 * x[y0 * w + x0] + lx1 * x[y0 * w + x1])
                    + ly1 * (lx0 * x[y1 * w + x0] + lx1 * x[y1 * w + x1]);
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn bilinear_matches_pytorch_kernel(
            h in 1usize..20, w in 1usize..20, oh in 1usize..40, ow in 1usize..40,
            seed in 0u64..1000,
        ) {
            let data: Vec<f32> = (0..h * w)
                .map(|i| (((i as u64 + 1) * (seed + 7) * 2654435761) % 1000) as f32 / 100.0 - 5.0)
                .collect();
            let x = Tensor::from_vec(data.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
            let got = resize_bilinear(&x, oh, ow).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = naive_bilinear(&data, h, w, oh, ow);
            for (g, e) in got.iter().zip(&want) {
                prop_assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "got {g}, want {e}");
            }
        }

        #[test]
        fn nearest_matches_floor_rule(h in 1usize..20, w in 1usize..20, oh in 1usize..40, ow in 1usize..40) {
            let data: Vec<f32> = (0..h * w).map(|i| i as f32).collect();
            let x = Tensor::from_vec(data.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
            let got = resize_nearest(&x, oh, ow).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for y in 0..oh { for xx in 0..ow {
                let sy = ((y * h) / oh).min(h - 1);
                let sx = ((xx * w) / ow).min(w - 1);
                prop_assert_eq!(got[y * ow + xx], data[sy * w + sx]);
            }}
        }

        #[test]
        fn linear_along_axis_matches_bilinear_on_one_axis(l in 1usize..30, c in 1usize..5, out in 1usize..60) {
            let data: Vec<f32> = (0..l * c).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
            let x = Tensor::from_vec(data, (l, c), &Device::Cpu).unwrap();
            let got = resize_linear_along(&x, 0, out).unwrap();
            // The same resize seen as an image of height l and width 1 per channel.
            let as_image = x.t().unwrap().reshape((1, c, l, 1)).unwrap();
            let want = resize_bilinear(&as_image, out, 1).unwrap().reshape((c, out)).unwrap().t().unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-5);
        }
    }

    #[test]
    fn bilinear_identity_and_constant() -> Result<()> {
        let x = Tensor::full(3.5f32, (2, 3, 5, 7), &Device::Cpu)?;
        let y = resize_bilinear(&x, 11, 4)?;
        let max = (y - 3.5)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(max < 1e-6);
        Ok(())
    }
}
