//! Adam and AdamW as PyTorch computes them, with a state that can be saved and
//! restored (candle-nn's AdamW keeps its moments private, so a resumed run could not
//! continue it exactly).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use samus_core::adam::{adam_update, AdamStep};

/// Hyper-parameters of [`Adam`] (defaults: the reference's plain Adam).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (changed per step by the schedule).
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW) instead of L2 added to the gradient (Adam).
    pub decoupled: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }
}

impl AdamConfig {
    /// The reference's AdamW for the warm-up/poly schedule (weight decay 0.1).
    pub fn adamw() -> Self {
        Self {
            weight_decay: 0.1,
            decoupled: true,
            ..Self::default()
        }
    }
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// Adam / AdamW over named variables.
#[derive(Debug)]
pub struct Adam {
    slots: Vec<Slot>,
    step: u64,
    /// The hyper-parameters; `lr` may be changed between steps.
    pub config: AdamConfig,
}

impl Adam {
    /// An optimiser for `vars`, with zero moments.
    pub fn new(vars: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                // Two tensors, not one shared: the moments are updated in place.
                Ok(Slot {
                    name,
                    m: var.as_tensor().zeros_like()?,
                    v: var.as_tensor().zeros_like()?,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            step: 0,
            config,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Applies one update from `grads`; variables without a gradient are left alone
    /// (their moments do not move), as in PyTorch.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let step = AdamStep::new(
            c.lr,
            c.beta1,
            c.beta2,
            c.eps,
            c.weight_decay,
            c.decoupled,
            self.step as i32,
        );
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // In place on the CPU, composed of candle's operations elsewhere.
            adam_update(&slot.var, &mut slot.m, &mut slot.v, grad, &step)?;
        }
        Ok(())
    }

    /// Computes the gradients of `loss` and steps.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        self.step(&loss.backward()?)
    }

    /// The state as named tensors (`m.<name>`, `v.<name>`, `step`), for a checkpoint.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::with_capacity(2 * self.slots.len() + 1);
        for s in &self.slots {
            // Copies: the moments are updated in place by the next step.
            out.insert(format!("m.{}", s.name), s.m.copy()?);
            out.insert(format!("v.{}", s.name), s.v.copy()?);
        }
        let device = self
            .slots
            .first()
            .map(|s| s.m.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.insert("step".into(), Tensor::new(&[self.step as f64], &device)?);
        Ok(out)
    }

    /// Restores a state written by [`Adam::state`]; every moment must be present with
    /// its variable's shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for s in &mut self.slots {
            for (prefix, target) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{prefix}.{}", s.name);
                let t = state.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimiser state lacks `{key}`"))
                })?;
                if t.dims() != s.var.as_tensor().dims() {
                    return Err(candle_core::Error::Msg(format!(
                        "optimiser state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        s.var.as_tensor().dims()
                    )));
                }
                *target = t
                    .to_dtype(s.var.as_tensor().dtype())?
                    .to_device(s.var.as_tensor().device())?
                    // Its own storage: the moments are updated in place.
                    .copy()?;
            }
        }
        let step = state
            .get("step")
            .ok_or_else(|| candle_core::Error::Msg("optimiser state lacks `step`".into()))?;
        self.step = step
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?
            .first()
            .copied()
            .unwrap_or(0.0) as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};

    fn quadratic(var: &Var) -> Result<Tensor> {
        let target = Tensor::new(&[1.0f32, -2.0, 3.0], &Device::Cpu)?;
        (var.as_tensor() - target)?.sqr()?.sum_all()
    }

    #[test]
    fn matches_candle_adamw_and_resumes_exactly() -> Result<()> {
        let start = Tensor::new(&[0.5f32, 0.5, 0.5], &Device::Cpu)?;
        for (decay, decoupled) in [(0.0, true), (0.1, true)] {
            let ours = Var::from_tensor(&start)?;
            let theirs = Var::from_tensor(&start)?;
            let cfg = AdamConfig {
                lr: 0.05,
                weight_decay: decay,
                decoupled,
                ..Default::default()
            };
            let mut a = Adam::new(vec![("w".into(), ours.clone())], cfg)?;
            let params = ParamsAdamW {
                lr: 0.05,
                weight_decay: decay,
                ..Default::default()
            };
            let mut b = AdamW::new(vec![theirs.clone()], params)?;
            for _ in 0..5 {
                a.backward_step(&quadratic(&ours)?)?;
                b.backward_step(&quadratic(&theirs)?)?;
            }
            let diff = (ours.as_tensor() - theirs.as_tensor())?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-6, "decay {decay}: {diff}");
        }
        // Interrupt after 3 steps, restore into a fresh optimiser, continue: same result.
        let straight = Var::from_tensor(&start)?;
        let mut a = Adam::new(
            vec![("w".into(), straight.clone())],
            AdamConfig {
                lr: 0.05,
                ..Default::default()
            },
        )?;
        for _ in 0..6 {
            a.backward_step(&quadratic(&straight)?)?;
        }
        let resumed = Var::from_tensor(&start)?;
        let mut first = Adam::new(
            vec![("w".into(), resumed.clone())],
            AdamConfig {
                lr: 0.05,
                ..Default::default()
            },
        )?;
        for _ in 0..3 {
            first.backward_step(&quadratic(&resumed)?)?;
        }
        let state = first.state()?;
        let mut second = Adam::new(
            vec![("w".into(), resumed.clone())],
            AdamConfig {
                lr: 0.05,
                ..Default::default()
            },
        )?;
        second.load_state(&state)?;
        assert_eq!(second.steps(), 3);
        for _ in 0..3 {
            second.backward_step(&quadratic(&resumed)?)?;
        }
        assert_eq!(
            straight.as_tensor().to_vec1::<f32>()?,
            resumed.as_tensor().to_vec1::<f32>()?
        );
        let mut bad = HashMap::new();
        bad.insert(
            "m.w".to_string(),
            Tensor::zeros(2, DType::F32, &Device::Cpu)?,
        );
        assert!(second
            .load_state(&bad)
            .unwrap_err()
            .to_string()
            .contains("m.w"));
        Ok(())
    }

    #[test]
    fn a_saved_state_is_not_moved_by_later_steps() -> Result<()> {
        // The moments are updated in place: the state handed out, and the one
        // loaded, must be copies.
        let w = Var::from_tensor(&Tensor::new(&[0.5f32, 0.5, 0.5], &Device::Cpu)?)?;
        let mut adam = Adam::new(vec![("w".into(), w.clone())], AdamConfig::default())?;
        adam.backward_step(&quadratic(&w)?)?;
        let state = adam.state()?;
        let saved = state["m.w"].to_vec1::<f32>()?;
        let mut other = Adam::new(vec![("w".into(), w.clone())], AdamConfig::default())?;
        other.load_state(&state)?;
        adam.backward_step(&quadratic(&w)?)?;
        other.backward_step(&quadratic(&w)?)?;
        assert_eq!(state["m.w"].to_vec1::<f32>()?, saved);
        assert_ne!(adam.state()?["m.w"].to_vec1::<f32>()?, saved);
        Ok(())
    }
}
