//! The APG's attention weights: "softmax-one".

use candle_core::{Result, Tensor, D};

/// Softmax-one over the last axis, as the reference computes it:
/// `e = exp(s - max(s)); p = e / (1 + sum(e))`.
///
/// Unlike a softmax, the weights may sum to less than one, which lets a query attend
/// to nothing. The maximum is subtracted before the `1 +`, exactly as in the
/// reference, so the result is not invariant to shifting the scores.
pub fn softmax_one(scores: &Tensor) -> Result<Tensor> {
    let max = scores.max_keepdim(D::Minus1)?;
    let e = scores.broadcast_sub(&max)?.exp()?;
    let denominator = (e.sum_keepdim(D::Minus1)? + 1.0)?;
    e.broadcast_div(&denominator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_definition(rows in 1usize..4, values in proptest::collection::vec(-20f32..20.0, 1..12)) {
            let n = values.len();
            let data: Vec<f32> = (0..rows).flat_map(|r| values.iter().map(move |v| v + r as f32)).collect();
            let x = Tensor::from_vec(data.clone(), (rows, n), &Device::Cpu).unwrap();
            let got = softmax_one(&x).unwrap().to_vec2::<f32>().unwrap();
            for r in 0..rows {
                let row = &data[r * n..(r + 1) * n];
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f64> = row.iter().map(|v| ((v - max) as f64).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (g, ei) in got[r].iter().zip(&e) {
                    prop_assert!((*g as f64 - ei / (1.0 + sum)).abs() < 1e-6);
                }
                prop_assert!(got[r].iter().sum::<f32>() < 1.0);
            }
        }
    }
}
