//! 2x2 max pooling with a correct backward pass.
//!
//! candle 0.11's `max_pool2d` backward multiplies the upsampled gradient by the
//! fraction of maxima in each window instead of dividing by their count, so a window
//! with one maximum passes back a quarter of its gradient. When a gradient is needed,
//! [`max_pool2x2`] is therefore written as a reshape and a max reduction, whose
//! backward sends the whole gradient to the maximum (as PyTorch does for a unique
//! maximum).

use candle_core::{Result, Tensor, D};

/// `MaxPool2d(2)` on an NCHW tensor (odd trailing rows and columns are dropped).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return x.max_pool2d(2);
    }
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    let x = if h % 2 != 0 || w % 2 != 0 {
        x.narrow(2, 0, 2 * oh)?.narrow(3, 0, 2 * ow)?
    } else {
        x.clone()
    };
    x.reshape((n, c, oh, 2, ow, 2))?
        .permute((0, 1, 2, 4, 3, 5))?
        .contiguous()?
        .reshape((n, c, oh, ow, 4))?
        .max(D::Minus1)
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
}
