//! One Adam (or AdamW) update of a parameter and its two moments: in place on the
//! CPU, composed of candle's operations elsewhere.
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
//! use candle_core::{Device, Tensor, Var};
//! use samus_core::adam::{adam_update, AdamStep};
//!
//! # fn main() -> candle_core::Result<()> {
//! let theta = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
//! let (mut m, mut v) = (theta.zeros_like()?, theta.zeros_like()?);
//! let grad = Tensor::new(&[0.5f32, 0.5], &Device::Cpu)?;
//! let step = AdamStep::new(0.1, 0.9, 0.999, 1e-8, 0.0, false, 1);
//! adam_update(&theta, &mut m, &mut v, &grad, &step)?;
//! // The first step of Adam moves each parameter by about the rate.
//! let moved = theta.to_vec1::<f32>()?;
//! assert!((moved[0] - 0.9).abs() < 1e-5 && (moved[1] + 2.1).abs() < 1e-5);
//! # Ok(())
//! # }
//! ```

use candle_core::{CpuStorage, InplaceOp3, Layout, Result, Tensor, Var};
use rayon::prelude::*;

use crate::cpu_kernel::{contiguous_f32, contiguous_f32_mut, cpu_f32};

/// Values per parallel chunk: large enough that a chunk outweighs handing it to
/// another thread, small enough that both cores share a 1 MB tensor.
const CHUNK: usize = 1 << 16;

/// The coefficients of one Adam step, shared by every parameter. Both forms use
/// them as candle's affine operations do: each turned into the tensor's type once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    beta1: f64,
    one_minus_beta1: f64,
    beta2: f64,
    one_minus_beta2: f64,
    eps: f64,
    /// `1 / sqrt(1 - beta2^t)`.
    inv_sqrt_bias2: f64,
    /// `lr / (1 - beta1^t)`.
    step_size: f64,
    /// L2 weight decay added to the gradient (Adam), 0 for none.
    l2: f64,
    /// The factor on the parameter before the update (AdamW's decoupled decay), or
    /// `None`.
    decay: Option<f64>,
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
            beta1,
            one_minus_beta1: 1.0 - beta1,
            beta2,
            one_minus_beta2: 1.0 - beta2,
            eps,
            inv_sqrt_bias2: 1.0 / bias2.sqrt(),
            step_size: lr / bias1,
            l2: if decoupled { 0.0 } else { weight_decay },
            decay: (decoupled && weight_decay != 0.0).then_some(1.0 - lr * weight_decay),
        }
    }
}

/// candle's affine operation on one value, `x * mul + add`, rounded after each
/// operation as candle does (a multiplication by a constant is one with `add` 0,
/// which turns -0 into +0).
fn affine(x: f32, mul: f32, add: f32) -> f32 {
    x * mul + add
}

/// Updates the parameter `theta` and its moments `m` and `v` from `grad`: in place
/// where all four are contiguous f32 tensors of one size on the CPU, else composed
/// of candle's operations (new moment tensors, the parameter set to its new value).
/// Both give the same values, bit for bit.
pub fn adam_update(
    theta: &Var,
    m: &mut Tensor,
    v: &mut Tensor,
    grad: &Tensor,
    step: &AdamStep,
) -> Result<()> {
    if update_in_place(theta.as_tensor(), m, v, grad, step)? {
        return Ok(());
    }
    let (new_theta, new_m, new_v) = update_composed(theta.as_tensor(), m, v, grad, step)?;
    theta.set(&new_theta.detach())?;
    *m = new_m;
    *v = new_v;
    Ok(())
}

/// The update in place; `false`, changing nothing, where it does not apply.
fn update_in_place(
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
    let pass = |pass| AdamPass { pass, step: *step };
    m.inplace_op3(grad, theta, &pass(Pass::FirstMoment))?;
    v.inplace_op3(grad, theta, &pass(Pass::SecondMoment))?;
    theta.inplace_op3(m, v, &pass(Pass::Parameter))?;
    Ok(true)
}

/// The update composed of candle's operations: the new parameter, `m` and `v`.
fn update_composed(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    s: &AdamStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let grad = if s.l2 != 0.0 {
        (grad + (theta * s.l2)?)?
    } else {
        grad.clone()
    };
    let m = ((m * s.beta1)? + (&grad * s.one_minus_beta1)?)?;
    let v = ((v * s.beta2)? + (grad.sqr()? * s.one_minus_beta2)?)?;
    let denom = ((v.sqrt()? * s.inv_sqrt_bias2)? + s.eps)?;
    let update = ((&m / denom)? * s.step_size)?;
    let decayed = match s.decay {
        Some(decay) => (theta * decay)?,
        None => theta.clone(),
    };
    Ok(((decayed - update)?, m, v))
}

/// The three in-place passes of one update, each over one tensor.
#[derive(Debug, Clone, Copy)]
enum Pass {
    /// `m <- beta1 m + (1 - beta1) g` (sources: the gradient, the parameter).
    FirstMoment,
    /// `v <- beta2 v + (1 - beta2) g^2` (sources: the gradient, the parameter).
    SecondMoment,
    /// `theta <- decay theta - step_size m / (sqrt(v) / sqrt(bias2) + eps)`
    /// (sources: the updated moments).
    Parameter,
}

/// One [`Pass`] of a step, as candle's in-place operation.
struct AdamPass {
    pass: Pass,
    step: AdamStep,
}

impl InplaceOp3 for AdamPass {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        a: &CpuStorage,
        a_l: &Layout,
        b: &CpuStorage,
        b_l: &Layout,
    ) -> Result<()> {
        let a = contiguous_f32(a, a_l, self.name())?;
        let b = contiguous_f32(b, b_l, self.name())?;
        let dst = contiguous_f32_mut(dst, dst_l, self.name())?;
        let s = self.step;
        let l2 = s.l2 as f32;
        let gradient = move |g: f32, theta: f32| {
            if l2 == 0.0 {
                g
            } else {
                g + affine(theta, l2, 0.0)
            }
        };
        match self.pass {
            Pass::FirstMoment => {
                let (beta, rest) = (s.beta1 as f32, s.one_minus_beta1 as f32);
                update_each(dst, a, b, |m, g, theta| {
                    *m = affine(*m, beta, 0.0) + affine(gradient(g, theta), rest, 0.0);
                });
            }
            Pass::SecondMoment => {
                let (beta, rest) = (s.beta2 as f32, s.one_minus_beta2 as f32);
                update_each(dst, a, b, |v, g, theta| {
                    let g = gradient(g, theta);
                    *v = affine(*v, beta, 0.0) + affine(g * g, rest, 0.0);
                });
            }
            Pass::Parameter => {
                let (inv_sqrt_bias2, eps) = (s.inv_sqrt_bias2 as f32, s.eps as f32);
                let (step_size, decay) = (s.step_size as f32, s.decay.map(|d| d as f32));
                update_each(dst, a, b, |theta, m, v| {
                    let denom = affine(affine(v.sqrt(), inv_sqrt_bias2, 0.0), 1.0, eps);
                    let update = affine(m / denom, step_size, 0.0);
                    let decayed = match decay {
                        Some(decay) => affine(*theta, decay, 0.0),
                        None => *theta,
                    };
                    *theta = decayed - update;
                });
            }
        }
        Ok(())
    }
}

/// `update(dst[i], a[i], b[i])` for every `i`, in parallel chunks.
fn update_each(dst: &mut [f32], a: &[f32], b: &[f32], update: impl Fn(&mut f32, f32, f32) + Sync) {
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(dst, (a, b))| {
            for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
                update(d, a, b);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use proptest::prelude::*;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_vec1::<f32>()
            .map(|v| v.into_iter().map(f32::to_bits).collect())
            .unwrap_or_default()
    }

    proptest! {
        #[test]
        fn in_place_equals_the_composed_update_bit_for_bit(
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
            let step = AdamStep::new(lr, 0.9, 0.999, 1e-8, weight_decay, decoupled, t);
            let (want_theta, want_m, want_v) = update_composed(&theta, &m, &v, &grad, &step).unwrap();
            prop_assert!(update_in_place(&theta, &m, &v, &grad, &step).unwrap());
            prop_assert_eq!(bits(&theta), bits(&want_theta));
            prop_assert_eq!(bits(&m), bits(&want_m));
            prop_assert_eq!(bits(&v), bits(&want_v));
        }
    }

    #[test]
    fn declines_operands_it_cannot_update_in_place_and_leaves_them_alone() -> Result<()> {
        let theta = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
        let m = theta.zeros_like()?;
        let v = theta.zeros_like()?;
        let step = AdamStep::new(0.1, 0.9, 0.999, 1e-8, 0.0, false, 1);
        let strided = theta.t()?;
        let short = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
        let double = theta.to_dtype(DType::F64)?;
        for grad in [&strided, &short, &double] {
            assert!(!update_in_place(&theta, &m, &v, grad, &step)?);
        }
        assert_eq!(theta.to_vec2::<f32>()?, [[1.0, 2.0], [3.0, 4.0]]);
        assert_eq!(m.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn composes_the_update_where_it_cannot_run_in_place() -> Result<()> {
        // f64 operands take the composed form (as other devices do): the same
        // first step as the in-place one, up to f64 rounding.
        let step = AdamStep::new(0.1, 0.9, 0.999, 1e-8, 0.0, false, 1);
        let grad = Tensor::new(&[0.5f32, -0.25], &Device::Cpu)?;
        let mut moved = Vec::new();
        for dtype in [DType::F32, DType::F64] {
            let theta =
                Var::from_tensor(&Tensor::new(&[1f32, -2.0], &Device::Cpu)?.to_dtype(dtype)?)?;
            let (mut m, mut v) = (theta.zeros_like()?, theta.zeros_like()?);
            adam_update(&theta, &mut m, &mut v, &grad.to_dtype(dtype)?, &step)?;
            assert!(m.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? != 0.0);
            moved.push(theta.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        for (f32_value, f64_value) in moved[0].iter().zip(&moved[1]) {
            assert!((f32_value - f64_value).abs() < 1e-5, "{moved:?}");
        }
        assert!((moved[1][0] - 0.9).abs() < 1e-6 && (moved[1][1] + 1.9).abs() < 1e-6);
        Ok(())
    }
}
