//! Layer normalisation: over the last axis ([`LayerNorm`]) and over the channel axis
//! of an NCHW tensor ([`LayerNorm2d`]).
//!
//! The normalisation is composed of elementary candle operations, so gradients flow
//! through it (candle's fused kernel has no backward pass).

use candle_core::{Result, Tensor, D};

/// Layer normalisation over the last axis with an affine weight and bias
/// (PyTorch's `nn.LayerNorm(dim, eps)`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Wraps a weight and bias of shape `(C,)`.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// The per-channel scale.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The per-channel shift.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Normalises `x` over its last axis.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm_last_dim(x, &self.weight, &self.bias, self.eps)
    }
}

/// Layer normalisation over the channel axis of an NCHW tensor (SAM's `LayerNorm2d`):
/// mean and biased variance over C, then per-channel weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm2d {
    inner: LayerNorm,
}

impl LayerNorm2d {
    /// Wraps a weight and bias of shape `(C,)`.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self {
            inner: LayerNorm::new(weight, bias, eps),
        }
    }

    /// Normalises an NCHW tensor over C; returns a contiguous NCHW tensor.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let nhwc = x.permute((0, 2, 3, 1))?;
        self.forward_nhwc(&nhwc)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    /// Normalises an NHWC tensor over its last axis (the same operation, for callers
    /// that keep the channels last).
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last axis.
///
/// The mean and the biased variance are computed in two passes, as PyTorch does;
/// candle's fused kernel derives the variance from `E[x^2] - E[x]^2`, which loses
/// precision when the mean is large next to the spread.
pub fn layer_norm_last_dim(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    fn naive(x: &[f32], c: usize, w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(c) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
            for (i, &v) in row.iter().enumerate() {
                out.push(
                    ((v as f64 - mean) / (var + eps).sqrt() * w[i] as f64 + b[i] as f64) as f32,
                );
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn layer_norm_2d_matches_naive(n in 1usize..3, c in 1usize..9, h in 1usize..5, w in 1usize..5, seed in 0u32..100) {
            let len = n * c * h * w;
            let data: Vec<f32> = (0..len).map(|i| (((i as u32 + 3) * (seed + 11) * 7919) % 997) as f32 / 97.0 - 5.0).collect();
            let weight: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.1 - 0.3).collect();
            let dev = Device::Cpu;
            let x = Tensor::from_vec(data.clone(), (n, c, h, w), &dev).unwrap();
            let ln = LayerNorm2d::new(Tensor::new(&weight[..], &dev).unwrap(), Tensor::new(&bias[..], &dev).unwrap(), 1e-6);
            let got = ln.forward(&x).unwrap().permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let nhwc = x.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = naive(&nhwc, c, &weight, &bias, 1e-6);
            for (g, e) in got.iter().zip(&want) {
                prop_assert!((g - e).abs() < 1e-4, "got {g}, want {e}");
            }
        }
    }

    #[test]
    fn gradient_flows_through_layer_norm() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 4, 16), &dev)?)?;
        let w = Tensor::randn(1f32, 0.5, 16, &dev)?;
        let b = Tensor::randn(0f32, 0.5, 16, &dev)?;
        let y = layer_norm_last_dim(x.as_tensor(), &w, &b, 1e-5)?;
        let grads = (y.sqr()?.sum_all()?).backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn large_mean_keeps_precision() -> Result<()> {
        // Two channels 1000 and 1000.01: E[x^2] - E[x]^2 in f32 would lose them.
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1000.0f32, 1000.01]], &dev)?;
        let ones = Tensor::ones(2, candle_core::DType::F32, &dev)?;
        let zeros = Tensor::zeros(2, candle_core::DType::F32, &dev)?;
        let y = layer_norm_last_dim(&x, &ones, &zeros, 1e-6)?.to_vec2::<f32>()?;
        let want = 0.005 / (0.005f64 * 0.005 + 1e-6).sqrt();
        assert!((y[0][1] as f64 - want).abs() < 2e-2, "{:?} vs {want}", y);
        Ok(())
    }
}
