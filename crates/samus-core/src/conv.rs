//! 3x3 "same" convolution written as shifted copies and one matrix product when a
//! gradient is needed.
//!
//! candle's convolution backward goes through its transposed convolution, which is
//! slow on the CPU; as an unfolding (nine shifted views of the padded input) and a
//! matrix product, the backward pass is matrix products too. Without a gradient,
//! candle's own kernel runs.

use candle_core::{Result, Tensor};

/// Conv2d with a `O x C x 3 x 3` kernel, stride 1, padding 1, no bias, on an NCHW
/// tensor.
pub fn conv3x3_same(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !x.track_op() && !weight.track_op() {
        return x.conv2d(weight, 1, 1, 1, 1);
    }
    let (n, c, h, w) = x.dims4()?;
    let (o, wc, kh, kw) = weight.dims4()?;
    if (wc, kh, kw) != (c, 3, 3) {
        candle_core::bail!(
            "conv3x3_same: kernel {:?} does not fit input {:?}",
            weight.dims(),
            x.dims()
        )
    }
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mut shifts = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            shifts.push(padded.narrow(2, dy, h)?.narrow(3, dx, w)?);
        }
    }
    // (N, C, 9, H, W): column index c * 9 + ky * 3 + kx, as the kernel is laid out.
    let columns = Tensor::stack(&shifts, 2)?.reshape((n, c * 9, h * w))?;
    weight
        .reshape((o, c * 9))?
        .broadcast_matmul(&columns)?
        .reshape((n, o, h, w))
}

/// Conv2d with a `O x C x 1 x 1` kernel (no bias): a matrix product over the channels.
pub fn conv1x1(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !x.track_op() && !weight.track_op() {
        return x.conv2d(weight, 0, 1, 1, 1);
    }
    let (n, c, h, w) = x.dims4()?;
    let (o, wc, _, _) = weight.dims4()?;
    if wc != c {
        candle_core::bail!(
            "conv1x1: kernel {:?} does not fit input {:?}",
            weight.dims(),
            x.dims()
        )
    }
    weight
        .reshape((o, c))?
        .broadcast_matmul(&x.contiguous()?.reshape((n, c, h * w))?)?
        .reshape((n, o, h, w))
}

/// ConvTranspose2d with a `C x O x 2 x 2` kernel and stride 2 (plus a bias of `O`):
/// every input pixel writes its own 2 x 2 output block, so it is one matrix product
/// and a rearrangement.
pub fn conv_transpose2x2(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (wc, o, kh, kw) = weight.dims4()?;
    if (wc, kh, kw) != (c, 2, 2) {
        candle_core::bail!(
            "conv_transpose2x2: kernel {:?} does not fit input {:?}",
            weight.dims(),
            x.dims()
        )
    }
    // (O * 4, C) x (N, C, H * W) -> (N, O, 2, 2, H, W) -> (N, O, H, 2, W, 2).
    let blocks = weight
        .reshape((c, o * 4))?
        .t()?
        .broadcast_matmul(&x.contiguous()?.reshape((n, c, h * w))?)?
        .reshape((n, o, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((n, o, 2 * h, 2 * w))?;
    match bias {
        Some(b) => blocks.broadcast_add(&b.reshape((1, o, 1, 1))?),
        None => Ok(blocks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn transposed_2x2_and_pointwise_match_candle(n in 1usize..3, c in 1usize..4, o in 1usize..4, h in 1usize..6, w in 1usize..6) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (c, o, 2, 2), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
            let ours = conv_transpose2x2(&x, &k, Some(&b)).unwrap();
            let theirs = x.conv_transpose2d(&k, 0, 0, 2, 1).unwrap().broadcast_add(&b.reshape((1, o, 1, 1)).unwrap()).unwrap();
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "transposed differs by {diff}");
            let k1 = Tensor::randn(0f32, 1.0, (o, c, 1, 1), &dev).unwrap();
            let xv = Var::from_tensor(&x).unwrap();
            let ours = conv1x1(xv.as_tensor(), &k1).unwrap();
            let theirs = x.conv2d(&k1, 0, 1, 1, 1).unwrap();
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "pointwise differs by {diff}");
        }

        #[test]
        fn matches_candle_forward_and_backward(n in 1usize..3, c in 1usize..4, o in 1usize..4, h in 1usize..9, w in 1usize..9) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (o, c, 3, 3), &dev).unwrap();
            let (xv, kv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&k).unwrap());
            let ours = conv3x3_same(xv.as_tensor(), kv.as_tensor()).unwrap();
            let theirs = x.conv2d(&k, 1, 1, 1, 1).unwrap();
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "forward differs by {diff}");
            // Gradients of sum(ours * r) against candle's conv backward.
            let r = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let (xv2, kv2) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&k).unwrap());
            let g2 = (xv2.as_tensor().conv2d(kv2.as_tensor(), 1, 1, 1, 1).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (a, b) in [(g1.get(xv.as_tensor()), g2.get(xv2.as_tensor())), (g1.get(kv.as_tensor()), g2.get(kv2.as_tensor()))] {
                let d = (a.unwrap() - b.unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                prop_assert!(d < 1e-3, "gradient differs by {d}");
            }
        }
    }
}
