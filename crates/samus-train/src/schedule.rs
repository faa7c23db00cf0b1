//! Learning-rate schedules: constant, or linear warm-up then polynomial decay
//! `lr * (1 - t / T)^0.9` as in the reference recipe.

/// Exponent of the polynomial decay.
pub const POLY_POWER: f64 = 0.9;

/// How the learning rate changes over the optimiser steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// The base rate at every step (the reference's plain Adam run).
    Constant,
    /// Linear warm-up over `warmup` steps, then `(1 - t / total)^0.9` decay, where `t`
    /// counts the steps after the warm-up and `total` the steps after it in the run.
    WarmupPoly {
        /// Warm-up steps (250 in the reference).
        warmup: usize,
        /// All steps of the run.
        total: usize,
    },
}

impl LrSchedule {
    /// The learning rate at `step` (0-based) for base rate `base`.
    pub fn rate(&self, base: f64, step: usize) -> f64 {
        match *self {
            Self::Constant => base,
            Self::WarmupPoly { warmup, total } => {
                if step < warmup {
                    base * (step + 1) as f64 / warmup as f64
                } else {
                    let span = total.saturating_sub(warmup).max(1) as f64;
                    let t = (step - warmup) as f64;
                    base * (1.0 - t / span).max(0.0).powf(POLY_POWER)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn warmup_then_decay() {
        let s = LrSchedule::WarmupPoly {
            warmup: 4,
            total: 14,
        };
        let rates: Vec<f64> = (0..14).map(|i| s.rate(1.0, i)).collect();
        assert_eq!(&rates[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert_eq!(rates[4], 1.0);
        assert!((rates[9] - 0.5f64.powf(0.9)).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant.rate(5e-4, 1000), 5e-4);
    }

    proptest! {
        #[test]
        fn rate_is_bounded_and_decays(warmup in 0usize..50, extra in 1usize..500, step in 0usize..600) {
            let s = LrSchedule::WarmupPoly { warmup, total: warmup + extra };
            let r = s.rate(1e-3, step);
            prop_assert!((0.0..=1e-3 + 1e-15).contains(&r));
            if step >= warmup {
                prop_assert!(s.rate(1e-3, step + 1) <= r + 1e-18);
            }
        }
    }
}
