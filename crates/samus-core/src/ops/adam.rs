//! One Adam (or AdamW) update of a parameter and its two moments, in place, on the
//! CPU.
//!
//! Written with candle's operations, one update is about twelve element-wise
//! passes per parameter, each allocating a new tensor, all on the calling thread
//! (samus runs candle's element-wise operations there: see `samus-cli`'s
//! `main.rs`) while the other cores wait. For the 7.4 million parameters of the
//! tiny configuration that was about 45 ms of a 1.5 s training step at batch 2
//! (`perf`, 2-core Xeon); here the two moments and the parameter are each updated
//! in place by one pass split over rayon's pool, about 13 ms, with the same f32
//! arithmetic, operation for operation, as the composed form: the results are
//! equal bit for bit (tested below).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use samus_core::adam::{adam_update, AdamStep};
//!
//! # fn main() -> candle_core::Result<()> {
//! let theta = Tensor::new(&[1.0f32, -2.0], &Device::Cpu)?;
//! let (m, v) = (theta.zeros_like()?, theta.zeros_like()?);
//! let grad = Tensor::new(&[0.5f32, 0.5], &Device::Cpu)?;
//! let step = AdamStep::new(0.1, 0.9, 0.999, 1e-8, 0.0, false, 1);
//! assert!(adam_update(&theta, &m, &v, &grad, &step)?);
//! // The first step of Adam moves each parameter by about the rate.
//! let moved = theta.to_vec1::<f32>()?;
//! assert!((moved[0] - 0.9).abs() < 1e-5 && (moved[1] + 2.1).abs() < 1e-5);
//! # Ok(())
//! # }
//! ```

use candle_core::{CpuStorage, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

use crate::cpu_kernel::{contiguous_f32, cpu_f32};

/// Values per parallel chunk: large enough that a chunk outweighs handing it to
/// another thread, small enough that both cores share a 1 MB tensor.
const CHUNK: usize = 1 << 16;

/// The coefficients of one Adam step, shared by every parameter, as the f32 values
/// that the composed form's operations use (candle turns each f64 constant of an
/// affine operation into the tensor's type).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    /// `1 / sqrt(1 - beta2^t)`.
    inv_sqrt_bias2: f32,
    /// `lr / (1 - beta1^t)`.
    step_size: f32,
    /// L2 weight decay added to the gradient (Adam), 0 for none.
    l2: f32,
    /// The factor on the parameter before the update (AdamW's decoupled decay), or
    /// `None`.
    decay: Option<f32>,
}

impl AdamStep {
    /// The coefficients of step `t` (counted from 1) with rate `lr`, decays `beta1`
    /// and `beta2`, `eps`, and `weight_decay`, decoupled (AdamW) or added to the
    /// gradient (Adam).
    pub fn new(
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
        t: i32,
    ) -> Self {
        let bias1 = 1.0 - beta1.powi(t);
        let bias2 = 1.0 - beta2.powi(t);
        Self {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: eps as f32,
            inv_sqrt_bias2: (1.0 / bias2.sqrt()) as f32,
            step_size: (lr / bias1) as f32,
            l2: if decoupled { 0.0 } else { weight_decay as f32 },
            decay: (decoupled && weight_decay != 0.0).then_some((1.0 - lr * weight_decay) as f32),
        }
    }

    /// The gradient with the L2 decay of parameter value `theta` added.
    fn gradient(&self, g: f32, theta: f32) -> f32 {
        if self.l2 == 0.0 {
            g
        } else {
            g + affine(theta, self.l2, 0.0)
        }
    }
}

/// candle's affine operation on one value, `x * mul + add`, rounded after each
/// operation as candle does (a multiplication by a constant is one with `add` 0,
/// which turns -0 into +0).
fn affine(x: f32, mul: f32, add: f32) -> f32 {
    x * mul + add
}

/// Updates `theta` and its moments `m` and `v` in place from `grad`, and returns
/// `true`; returns `false`, changing nothing, where the fused form does not apply
/// (not all four f32 on the CPU and contiguous, or of different sizes), so that the
/// caller composes the update from tensor operations instead.
pub fn adam_update(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    step: &AdamStep,
) -> Result<bool> {
    let operands = [theta, m, v, grad];
    let len = theta.elem_count();
    if !cpu_f32(operands)
        || operands
            .iter()
            .any(|t| !t.is_contiguous() || t.elem_count() != len)
    {
        return Ok(false);
    }
    m.inplace_op3(grad, theta, &Moment::First(*step))?;
    v.inplace_op3(grad, theta, &Moment::Second(*step))?;
    theta.inplace_op3(m, v, &ParameterUpdate(*step))?;
    Ok(true)
}

/// `m <- beta1 m + (1 - beta1) g` or `v <- beta2 v + (1 - beta2) g^2`, in place
/// (sources: the gradient, the parameter).
enum Moment {
    First(AdamStep),
    Second(AdamStep),
}

impl InplaceOp3 for Moment {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        g_l: &Layout,
        theta: &CpuStorage,
        theta_l: &Layout,
    ) -> Result<()> {
        let g = contiguous_f32(g, g_l, self.name())?;
        let theta = contiguous_f32(theta, theta_l, self.name())?;
        let moment = contiguous_f32_mut(dst, dst_l, self.name())?;
        moment
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(theta.par_chunks(CHUNK)))
            .for_each(|(moment, (g, theta))| match self {
                Self::First(s) => {
                    for ((m, &g), &theta) in moment.iter_mut().zip(g).zip(theta) {
                        *m = affine(*m, s.beta1, 0.0)
                            + affine(s.gradient(g, theta), s.one_minus_beta1, 0.0);
                    }
                }
                Self::Second(s) => {
                    for ((v, &g), &theta) in moment.iter_mut().zip(g).zip(theta) {
                        let g = s.gradient(g, theta);
                        *v = affine(*v, s.beta2, 0.0) + affine(g * g, s.one_minus_beta2, 0.0);
                    }
                }
            });
        Ok(())
    }
}

/// `theta <- decay theta - step_size m / (sqrt(v) / sqrt(bias2) + eps)`, in place
/// (sources: the updated moments).
struct ParameterUpdate(AdamStep);

impl InplaceOp3 for ParameterUpdate {
    fn name(&self) -> &'static str {
        "adam-parameter"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<()> {
        let s = self.0;
        let m = contiguous_f32(m, m_l, self.name())?;
        let v = contiguous_f32(v, v_l, self.name())?;
        let theta = contiguous_f32_mut(dst, dst_l, self.name())?;
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(theta, (m, v))| {
                for ((theta, &m), &v) in theta.iter_mut().zip(m).zip(v) {
                    let denom = affine(affine(v.sqrt(), s.inv_sqrt_bias2, 0.0), 1.0, s.eps);
                    let update = affine(m / denom, s.step_size, 0.0);
                    let decayed = match s.decay {
                        Some(decay) => affine(*theta, decay, 0.0),
                        None => *theta,
                    };
                    *theta = decayed - update;
                }
            });
        Ok(())
    }
}

/// The f32 values of a contiguous CPU tensor being updated in place.
fn contiguous_f32_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the operands must be contiguous")))?;
    match storage {
        CpuStorage::F32(values) => Ok(&mut values[start..end]),
        _ => candle_core::bail!("{op}: the operands must be f32"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    /// The update composed of candle's operations, as `samus-train`'s optimiser
    /// wrote it before this kernel (and still does off the CPU).
    #[allow(clippy::too_many_arguments)]
    fn composed(
        theta: &Tensor,
        m: &Tensor,
        v: &Tensor,
        grad: &Tensor,
        (lr, beta1, beta2, eps): (f64, f64, f64, f64),
        weight_decay: f64,
        decoupled: bool,
        t: i32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let bias1 = 1.0 - beta1.powi(t);
        let bias2 = 1.0 - beta2.powi(t);
        let mut grad = grad.clone();
        if weight_decay != 0.0 && !decoupled {
            grad = (grad + (theta * weight_decay)?)?;
        }
        let m = ((m * beta1)? + (&grad * (1.0 - beta1))?)?;
        let v = ((v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
        let denom = ((v.sqrt()? / bias2.sqrt())? + eps)?;
        let update = ((&m / denom)? * (lr / bias1))?;
        let decayed = if weight_decay != 0.0 && decoupled {
            (theta * (1.0 - lr * weight_decay))?
        } else {
            theta.clone()
        };
        Ok(((decayed - update)?, m, v))
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_vec1::<f32>()
            .map(|v| v.into_iter().map(f32::to_bits).collect())
            .unwrap_or_default()
    }

    proptest! {
        #[test]
        fn equals_the_composed_update_bit_for_bit(
            values in proptest::collection::vec((-4f32..4.0, -1f32..1.0, -0.1f32..0.1, 0f32..0.01), 1..300),
            lr in 1e-5f64..1e-2,
            weight_decay in prop_oneof![Just(0.0f64), 1e-3f64..0.2],
            decoupled in any::<bool>(),
            t in 1i32..2000,
            // Long tensors cross the parallel chunks.
            repeat in prop_oneof![Just(1usize), Just(CHUNK / 64 + 7)],
        ) {
            let n = values.len() * repeat;
            let column = |f: fn(&(f32, f32, f32, f32)) -> f32| {
                let c: Vec<f32> = values.iter().map(f).collect::<Vec<_>>().repeat(repeat);
                Tensor::from_vec(c, n, &Device::Cpu).unwrap()
            };
            let theta = column(|v| v.0);
            let grad = column(|v| v.1);
            let m = column(|v| v.2);
            let v = column(|v| v.3);
            let hyper = (lr, 0.9, 0.999, 1e-8);
            let (want_theta, want_m, want_v) =
                composed(&theta, &m, &v, &grad, hyper, weight_decay, decoupled, t).unwrap();
            let step = AdamStep::new(lr, 0.9, 0.999, 1e-8, weight_decay, decoupled, t);
            prop_assert!(adam_update(&theta, &m, &v, &grad, &step).unwrap());
            prop_assert_eq!(bits(&theta), bits(&want_theta));
            prop_assert_eq!(bits(&m), bits(&want_m));
            prop_assert_eq!(bits(&v), bits(&want_v));
        }
    }

    #[test]
    fn declines_operands_it_cannot_update_and_leaves_them_alone() -> Result<()> {
        let theta = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
        let m = theta.zeros_like()?;
        let v = theta.zeros_like()?;
        let step = AdamStep::new(0.1, 0.9, 0.999, 1e-8, 0.0, false, 1);
        let strided = theta.t()?;
        let short = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
        let double = theta.to_dtype(candle_core::DType::F64)?;
        for grad in [&strided, &short, &double] {
            assert!(!adam_update(&theta, &m, &v, grad, &step)?);
        }
        assert_eq!(theta.to_vec2::<f32>()?, [[1.0, 2.0], [3.0, 4.0]]);
        assert_eq!(m.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
