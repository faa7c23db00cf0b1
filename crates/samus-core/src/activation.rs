//! Activation functions.

use candle_core::{Result, Tensor};

/// The exact GELU, `x * 0.5 * (1 + erf(x / sqrt(2)))`, as PyTorch's `nn.GELU()`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gelu_matches_erf_definition() -> Result<()> {
        let values = [-3.0f32, -1.0, -0.25, 0.0, 0.5, 2.0, 4.0];
        let x = Tensor::new(&values[..], &Device::Cpu)?;
        let y = gelu(&x)?.to_vec1::<f32>()?;
        // erf values from a table, so the test does not reuse the implementation.
        let erf = |v: f64| -> f64 {
            // Abramowitz-Stegun 7.1.26 is too coarse; use a series for |v| < 3.
            let mut sum = 0.0;
            let mut term = v;
            let mut n = 0.0;
            while term.abs() > 1e-17 && n < 200.0 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -v * v / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        for (v, got) in values.iter().zip(y) {
            let v = *v as f64;
            let want = v * 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2));
            assert!(
                (got as f64 - want).abs() < 1e-6,
                "gelu({v}) = {got}, want {want}"
            );
        }
        Ok(())
    }
}
