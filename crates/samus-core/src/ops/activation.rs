//! Activation functions.
//!
//! The exact GELU is, on the CPU in f32, one operation whose backward pass is one
//! more (candle's backward composes about ten element-wise operations, each a fresh
//! buffer the size of the input: costly on the full-resolution maps of the CNN
//! branch).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_kernel::{contiguous_f32, par_filled};

use crate::special::{erf, exp};

/// Elements per parallel task of the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// The exact GELU, `x * 0.5 * (1 + erf(x / sqrt(2)))`, as PyTorch's `nn.GELU()`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(GeluErf)
    } else {
        x.gelu_erf()
    }
}

/// GELU of one value.
#[inline(always)]
pub(crate) fn gelu_value(v: f32) -> f32 {
    (erf(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v
}

/// d GELU / dx = Phi(x) + x phi(x).
#[inline(always)]
pub(crate) fn gelu_slope(v: f32) -> f32 {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = (erf(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5;
    cdf + v * FRAC_1_SQRT_2PI * exp(-0.5 * v * v)
}

/// `dst = gelu(src)`, vectorised by `pulp` for the CPU it runs on.
struct GeluKernel<'a> {
    src: &'a [f32],
    dst: &'a mut [f32],
}

impl pulp::WithSimd for GeluKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for (o, &v) in self.dst.iter_mut().zip(self.src) {
            *o = gelu_value(v);
        }
    }
}

/// `values = gelu(values)` in place, vectorised like [`GeluKernel`]: the epilogue of
/// a matrix product whose output tile is still in the cache.
pub(crate) fn gelu_in_place(values: &mut [f32]) {
    struct InPlace<'a>(&'a mut [f32]);
    impl pulp::WithSimd for InPlace<'_> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            for v in self.0.iter_mut() {
                *v = gelu_value(*v);
            }
        }
    }
    crate::cpu::simd().dispatch(InPlace(values));
}

/// `dst = grad * gelu'(x)`, vectorised like [`GeluKernel`].
struct GeluBackwardKernel<'a> {
    x: &'a [f32],
    grad: &'a [f32],
    dst: &'a mut [f32],
}

impl pulp::WithSimd for GeluBackwardKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for ((o, &v), &g) in self.dst.iter_mut().zip(self.x).zip(self.grad) {
            *o = g * gelu_slope(v);
        }
    }
}

/// The exact GELU as one CPU operation; its backward is [`GeluErfBackward`].
#[derive(Debug, Clone, Copy)]
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "samus-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "gelu")?;
        let y = par_filled(x.len(), CHUNK, |index, dst| {
            let src = &x[index * CHUNK..][..dst.len()];
            crate::cpu::simd().dispatch(GeluKernel { src, dst });
            Ok(())
        })?;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfBackward)?,
        ))
    }
}

/// `grad * gelu'(x)` in one pass.
#[derive(Debug, Clone, Copy)]
struct GeluErfBackward;

impl CustomOp2 for GeluErfBackward {
    fn name(&self) -> &'static str {
        "samus-gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "gelu")?;
        let g = contiguous_f32(s2, l2, "gelu")?;
        if x.len() != g.len() {
            candle_core::bail!(
                "gelu backward: gradient {:?} for input {:?}",
                l2.shape(),
                l1.shape()
            )
        }
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(dst, (x, grad))| {
                crate::cpu::simd().dispatch(GeluBackwardKernel { x, grad, dst })
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
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

    #[test]
    fn fused_gelu_matches_candle_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (3, 257), &dev)?;
        let var = candle_core::Var::from_tensor(&x)?;
        let r = Tensor::randn(0f32, 1.0, (3, 257), &dev)?;
        let ours = gelu(var.as_tensor())?;
        let theirs = x.gelu_erf()?;
        let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff < 1e-6,
            "forward differs from candle's gelu_erf by {diff}"
        );
        let grad = (ours * &r)?.sum_all()?.backward()?;
        let grad = grad.get(var.as_tensor()).map(|g| g.to_vec2::<f32>());
        let Some(grad) = grad else {
            panic!("no gradient reached the input")
        };
        // Central differences in f64 of sum(r * gelu(x)).
        let xs = x.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let rs = r.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let erf = |v: f64| -> f64 {
            let t = Tensor::new(&[v], &Device::Cpu)
                .and_then(|t| t.erf())
                .and_then(|t| t.to_vec1::<f64>());
            t.map(|v| v[0]).unwrap_or(f64::NAN)
        };
        let g64 = |v: f64| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
        for (i, row) in grad?.iter().enumerate() {
            for (j, &got) in row.iter().enumerate() {
                let (v, h) = (xs[i][j], 1e-4);
                let want = rs[i][j] * (g64(v + h) - g64(v - h)) / (2.0 * h);
                assert!(
                    (got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "x = {v}: {got} vs {want}"
                );
            }
        }
        Ok(())
    }
}
