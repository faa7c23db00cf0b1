//! 2x2 max pooling with a correct backward pass.
//!
//! candle 0.11's `max_pool2d` backward multiplies the upsampled gradient by the
//! fraction of maxima in each window instead of dividing by their count, so a window
//! with one maximum passes back a quarter of its gradient. Here the whole gradient
//! goes to the maximum, the first one in scan order when several are equal, as
//! PyTorch does. On the CPU in f32 the channels-last form is one operation with its
//! own backward; elsewhere it is a reshape and a max reduction.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu_kernel::contiguous_f32;

/// `MaxPool2d(2)` on an NCHW tensor (odd trailing rows and columns are dropped).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return x.max_pool2d(2);
    }
    let nhwc = x.permute((0, 2, 3, 1))?;
    max_pool2x2_nhwc(&nhwc)?.permute((0, 3, 1, 2))?.contiguous()
}

/// `MaxPool2d(2)` on a channels-last `N x H x W x C` tensor (odd trailing rows and
/// columns are dropped).
pub fn max_pool2x2_nhwc(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(MaxPool2x2Nhwc);
    }
    let (n, h, w, c) = x.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    x.narrow(1, 0, 2 * oh)?
        .narrow(2, 0, 2 * ow)?
        .reshape((n, oh, 2, ow, 2, c))?
        .permute((0, 1, 3, 5, 2, 4))?
        .contiguous()?
        .reshape((n, oh, ow, c, 4))?
        .max(D::Minus1)
}

/// Offsets (in elements) of the four pixels of each window, in PyTorch's scan order.
fn window_offsets(w: usize, c: usize) -> [usize; 4] {
    [0, c, w * c, w * c + c]
}

/// Index (0..4) of the window's maximum: the first in scan order, NaN winning as in
/// PyTorch.
fn arg_max4(values: [f32; 4]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] || v.is_nan() {
            best = i;
            if v.is_nan() {
                break;
            }
        }
    }
    best
}

/// Start of window `(b, oy, ox)` in an `N x H x W x C` buffer.
fn window_start(b: usize, oy: usize, ox: usize, (h, w, c): (usize, usize, usize)) -> usize {
    ((b * h + 2 * oy) * w + 2 * ox) * c
}

/// Channels-last 2x2 max pooling as one CPU operation; its backward is
/// [`MaxPool2x2NhwcBackward`].
#[derive(Debug, Clone, Copy)]
struct MaxPool2x2Nhwc;

impl CustomOp1 for MaxPool2x2Nhwc {
    fn name(&self) -> &'static str {
        "samus-max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "max pool")?;
        let (n, h, w, c) = layout.shape().dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        let offsets = window_offsets(w, c);
        let mut out = vec![0f32; n * oh * ow * c];
        if !out.is_empty() {
            out.par_chunks_mut(ow * c).enumerate().for_each(|(row, o)| {
                let (b, oy) = (row / oh, row % oh);
                for ox in 0..ow {
                    let start = window_start(b, oy, ox, (h, w, c));
                    for ch in 0..c {
                        let values = offsets.map(|d| x[start + d + ch]);
                        o[ox * c + ch] = values[arg_max4(values)];
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPool2x2NhwcBackward,
        )?))
    }
}

/// Sends each window's gradient to the pixel that won the forward pass.
#[derive(Debug, Clone, Copy)]
struct MaxPool2x2NhwcBackward;

impl CustomOp2 for MaxPool2x2NhwcBackward {
    fn name(&self) -> &'static str {
        "samus-max-pool-2x2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "max pool")?;
        let g = contiguous_f32(s2, l2, "max pool")?;
        let (n, h, w, c) = l1.shape().dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        if l2.shape().dims() != [n, oh, ow, c] {
            candle_core::bail!(
                "max pool backward: gradient {:?} for input {:?}",
                l2.shape(),
                l1.shape()
            )
        }
        let offsets = window_offsets(w, c);
        let mut dx = vec![0f32; x.len()];
        if oh > 0 && ow > 0 && c > 0 {
            dx.par_chunks_mut(h * w * c)
                .enumerate()
                .for_each(|(b, image)| {
                    // Each chunk is two input rows: the rows of one row of windows.
                    image
                        .par_chunks_mut(2 * w * c)
                        .take(oh)
                        .enumerate()
                        .for_each(|(oy, d)| {
                            let row_start = window_start(b, oy, 0, (h, w, c));
                            for ox in 0..ow {
                                let start = window_start(b, oy, ox, (h, w, c));
                                for ch in 0..c {
                                    let values = offsets.map(|o| x[start + o + ch]);
                                    let won = offsets[arg_max4(values)];
                                    d[start - row_start + won + ch] =
                                        g[((b * oh + oy) * ow + ox) * c + ch];
                                }
                            }
                        });
                });
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Forward equals candle's kernel; the gradient of `sum(w * pool(x))` equals
        /// central finite differences.
        #[test]
        fn gradient_matches_finite_differences(n in 1usize..3, c in 1usize..3, h in 2usize..7, w in 2usize..7, seed in 0u64..1000) {
            let len = n * c * h * w;
            // Distinct values (a permutation scaled), so that every window has one maximum.
            let mut values: Vec<f64> = (0..len).map(|i| ((i as u64 * 7919 + seed * 104_729) % len as u64) as f64 * 0.37 - 3.0).collect();
            values.dedup();
            prop_assume!(values.len() == len);
            let dev = Device::Cpu;
            let x = Tensor::from_vec(values.clone(), (n, c, h, w), &dev).unwrap();
            let (oh, ow) = (h / 2, w / 2);
            let weights = Tensor::from_vec((0..n * c * oh * ow).map(|i| 0.5 + i as f64 * 0.25).collect::<Vec<_>>(), (n, c, oh, ow), &dev).unwrap();
            let plain = x.max_pool2d(2).unwrap();
            let var = Var::from_tensor(&x).unwrap();
            let pooled = max_pool2x2(var.as_tensor()).unwrap();
            let diff = (&pooled - &plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            prop_assert_eq!(diff, 0.0);
            let loss = (pooled * &weights).unwrap().sum_all().unwrap();
            let grad = loss.backward().unwrap().get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            // The fused f32 operation: the same maxima and the same gradient.
            let var32 = Var::from_tensor(&x.to_dtype(DType::F32).unwrap()).unwrap();
            let pooled32 = max_pool2x2(var32.as_tensor()).unwrap();
            let plain32 = plain.to_dtype(DType::F32).unwrap();
            let diff32 = (&pooled32 - &plain32).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert_eq!(diff32, 0.0);
            let loss32 = (pooled32 * weights.to_dtype(DType::F32).unwrap()).unwrap().sum_all().unwrap();
            let grad32 = loss32.backward().unwrap().get(var32.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in grad32.iter().zip(&grad) {
                prop_assert_eq!(*a as f64, *b);
            }
            let objective = |v: &[f64]| -> f64 {
                let t = Tensor::from_vec(v.to_vec(), (n, c, h, w), &dev).unwrap();
                (t.max_pool2d(2).unwrap() * &weights).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
            };
            let eps = 1e-3; // well below the 0.37 gap between distinct values
            for i in 0..len {
                let mut up = values.clone();
                up[i] += eps;
                let mut down = values.clone();
                down[i] -= eps;
                let numeric = (objective(&up) - objective(&down)) / (2.0 * eps);
                prop_assert!((grad[i] - numeric).abs() < 1e-6, "element {i}: analytic {}, numeric {numeric}", grad[i]);
            }
        }
    }

    #[test]
    fn ties_send_the_gradient_to_the_first_maximum() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::ones((1, 2, 2, 1), DType::F32, &dev)?)?;
        let grad = max_pool2x2_nhwc(x.as_tensor())?.sum_all()?.backward()?;
        let got = grad
            .get(x.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>());
        assert_eq!(got.transpose()?, Some(vec![1.0, 0.0, 0.0, 0.0]));
        Ok(())
    }
}
