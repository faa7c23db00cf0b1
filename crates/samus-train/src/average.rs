//! An exponential moving average of the trainable weights (Polyak averaging): a
//! shadow copy that follows the weights after every optimiser step,
//! `shadow = d * shadow + (1 - d) * weight`, and that is evaluated and kept as the
//! best checkpoint instead of the weights themselves. With small batches the weights
//! jitter from step to step; the average smooths that out without changing how the
//! run trains.
//!
//! The decay ramps up over the first updates, `d_t = min(decay, (1 + t) / (10 + t))`,
//! so that the average forgets the random initial weights quickly (as TensorFlow's
//! `ExponentialMovingAverage` with `num_updates` does).

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var};

/// The moving average of a model's trainable tensors.
#[derive(Debug)]
pub struct WeightAverage {
    decay: f64,
    updates: u64,
    /// `(name, average)` in the order of the variables it follows.
    shadows: Vec<(String, Tensor)>,
}

/// The weights a [`WeightAverage::swap_in`] replaced, for [`WeightAverage::restore`].
#[derive(Debug)]
#[must_use = "the trained weights stay replaced by their average until restored"]
pub struct SwappedOut(Vec<Tensor>);

impl WeightAverage {
    /// An average of `vars` that starts at their current values, after `updates`
    /// updates (0 for a new run).
    pub fn new(vars: &[(String, Var)], decay: f64, updates: u64) -> Result<Self> {
        let shadows = vars
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            decay,
            updates,
            shadows,
        })
    }

    /// The average saved by [`WeightAverage::tensors`], continued for `vars`
    /// (`updates`: the updates it had seen). A tensor missing from `saved`, or of
    /// another shape, is named in the error.
    pub fn from_saved(
        vars: &[(String, Var)],
        saved: &HashMap<String, Tensor>,
        decay: f64,
        updates: u64,
    ) -> std::result::Result<Self, String> {
        let mut shadows = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let t = saved.get(name).ok_or_else(|| format!("lacks `{name}`"))?;
            if t.dims() != var.as_tensor().dims() {
                return Err(format!(
                    "`{name}` has shape {:?}, the model's is {:?}",
                    t.dims(),
                    var.as_tensor().dims()
                ));
            }
            let t = t
                .to_dtype(var.as_tensor().dtype())
                .and_then(|t| t.to_device(var.as_tensor().device()))
                .map_err(|e| format!("`{name}`: {e}"))?;
            shadows.push((name.clone(), t));
        }
        Ok(Self {
            decay,
            updates,
            shadows,
        })
    }

    /// The decay the next update uses.
    pub fn next_decay(&self) -> f64 {
        let t = self.updates as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// Updates seen so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Moves the average towards the current values of `vars` (the variables it was
    /// made for, in the same order).
    ///
    /// The weights are detached first: an operation on a variable records its
    /// inputs for the backward pass, so each new average would hold the one before
    /// it, and the run would keep every average it ever computed.
    pub fn update(&mut self, vars: &[(String, Var)]) -> Result<()> {
        let d = self.next_decay();
        for ((_, shadow), (_, var)) in self.shadows.iter_mut().zip(vars) {
            let weight = var.as_tensor().detach();
            *shadow = (shadow.affine(d, 0.0)? + weight.affine(1.0 - d, 0.0)?)?;
        }
        self.updates += 1;
        Ok(())
    }

    /// The averaged tensors by name (for `average.safetensors`).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.shadows.iter().cloned().collect()
    }

    /// Puts the average into `vars` and hands back the weights it replaced.
    pub fn swap_in(&self, vars: &[(String, Var)]) -> Result<SwappedOut> {
        let mut saved = Vec::with_capacity(vars.len());
        for ((_, shadow), (_, var)) in self.shadows.iter().zip(vars) {
            saved.push(var.as_tensor().detach().copy()?);
            var.set(shadow)?;
        }
        Ok(SwappedOut(saved))
    }

    /// Puts back the weights that [`WeightAverage::swap_in`] replaced.
    pub fn restore(vars: &[(String, Var)], swapped: SwappedOut) -> Result<()> {
        for (t, (_, var)) in swapped.0.iter().zip(vars) {
            var.set(t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(values: &[f32]) -> (String, Var) {
        let v = Var::from_slice(values, values.len(), &Device::Cpu).unwrap();
        ("w".to_string(), v)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_vec1().unwrap()
    }

    #[test]
    fn average_follows_the_weights_with_the_ramped_decay() {
        let vars = vec![var(&[0.0, 4.0])];
        let mut avg = WeightAverage::new(&vars, 0.9, 0).unwrap();
        // First decay: min(0.9, 1/10) = 0.1.
        vars[0]
            .1
            .set(&Tensor::new(&[10f32, 4.0], &Device::Cpu).unwrap())
            .unwrap();
        avg.update(&vars).unwrap();
        let a = values(&avg.tensors()["w"]);
        assert!(
            (a[0] - 9.0).abs() < 1e-5 && (a[1] - 4.0).abs() < 1e-5,
            "{a:?}"
        );
        // Late updates use the configured decay.
        let late = WeightAverage::new(&vars, 0.9, 1000).unwrap();
        assert_eq!(late.next_decay(), 0.9);
        assert_eq!(avg.updates(), 1);
    }

    #[test]
    fn average_holds_no_graph_of_earlier_averages() {
        let vars = vec![var(&[1.0, 2.0])];
        let mut avg = WeightAverage::new(&vars, 0.99, 0).unwrap();
        for _ in 0..3 {
            avg.update(&vars).unwrap();
        }
        for (name, t) in avg.tensors() {
            assert!(
                !t.track_op(),
                "`{name}` records the operations that made it"
            );
        }
        let swapped = avg.swap_in(&vars).unwrap();
        assert!(swapped.0.iter().all(|t| !t.track_op()));
        WeightAverage::restore(&vars, swapped).unwrap();
    }

    #[test]
    fn swap_in_and_restore_exchange_the_weights() {
        let vars = vec![var(&[1.0, 2.0])];
        let avg = WeightAverage::new(&vars, 0.99, 0).unwrap();
        vars[0]
            .1
            .set(&Tensor::new(&[5f32, 6.0], &Device::Cpu).unwrap())
            .unwrap();
        let out = avg.swap_in(&vars).unwrap();
        assert_eq!(values(vars[0].1.as_tensor()), [1.0, 2.0]);
        WeightAverage::restore(&vars, out).unwrap();
        assert_eq!(values(vars[0].1.as_tensor()), [5.0, 6.0]);
    }

    #[test]
    fn saved_average_is_checked_against_the_model() {
        let vars = vec![var(&[1.0, 2.0])];
        let avg = WeightAverage::new(&vars, 0.99, 3).unwrap();
        let back = WeightAverage::from_saved(&vars, &avg.tensors(), 0.99, 3).unwrap();
        assert_eq!(values(&back.tensors()["w"]), [1.0, 2.0]);
        let err = WeightAverage::from_saved(&vars, &HashMap::new(), 0.99, 3).unwrap_err();
        assert!(err.contains("`w`"), "{err}");
        let other = vec![var(&[1.0, 2.0, 3.0])];
        let err = WeightAverage::from_saved(&other, &avg.tensors(), 0.99, 3).unwrap_err();
        assert!(err.contains("shape"), "{err}");
    }
}
