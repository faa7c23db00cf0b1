//! Learning-rate schedules: an optional linear warm-up, then a constant rate, the
//! reference's polynomial decay `lr * (1 - t)^0.9`, or a cosine decay
//! `lr * (1 + cos(pi t)) / 2`, where `t` in `[0, 1]` is how far the run is past its
//! warm-up. A run limited by time (`--max-minutes`) decays over its time, so that a
//! short run ends at a low rate, whichever of its limits (steps or time) comes first.

/// Exponent of the polynomial decay.
pub const POLY_POWER: f64 = 0.9;

/// The shape of the rate after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LrDecay {
    /// The base rate to the end (the reference's plain Adam run).
    #[default]
    Constant,
    /// `(1 - t)^0.9` (the reference's warm-up mode).
    Poly,
    /// `(1 + cos(pi t)) / 2`.
    Cosine,
}

/// How the learning rate changes over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Linear warm-up steps (250 in the reference's warm-up mode; 0: none).
    pub warmup: usize,
    /// The shape after the warm-up.
    pub decay: LrDecay,
    /// All steps of the run (warm-up included).
    pub total_steps: usize,
}

impl LrSchedule {
    /// The base rate at every step.
    pub const CONSTANT: Self = Self {
        warmup: 0,
        decay: LrDecay::Constant,
        total_steps: 1,
    };

    /// The rate at `step` (0-based) for base rate `base`. `time_fraction` is the
    /// share of the run's time limit already spent, when it has one: the decay
    /// follows whichever of the step count and the time is further along.
    pub fn rate(&self, base: f64, step: usize, time_fraction: Option<f64>) -> f64 {
        if step < self.warmup {
            return base * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup).max(1) as f64;
        let by_steps = (step - self.warmup) as f64 / span;
        let t = time_fraction
            .filter(|f| f.is_finite())
            .map_or(by_steps, |f| by_steps.max(f))
            .clamp(0.0, 1.0);
        match self.decay {
            LrDecay::Constant => base,
            LrDecay::Poly => base * (1.0 - t).powf(POLY_POWER),
            LrDecay::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schedule(warmup: usize, decay: LrDecay, total_steps: usize) -> LrSchedule {
        LrSchedule {
            warmup,
            decay,
            total_steps,
        }
    }

    #[test]
    fn warmup_then_poly_decay() {
        let s = schedule(4, LrDecay::Poly, 14);
        let rates: Vec<f64> = (0..14).map(|i| s.rate(1.0, i, None)).collect();
        assert_eq!(&rates[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert_eq!(rates[4], 1.0);
        assert!((rates[9] - 0.5f64.powf(0.9)).abs() < 1e-12);
        assert_eq!(LrSchedule::CONSTANT.rate(5e-4, 1000, Some(0.9)), 5e-4);
    }

    #[test]
    fn cosine_reaches_half_at_mid_run_and_zero_at_the_end() {
        let s = schedule(0, LrDecay::Cosine, 100);
        assert_eq!(s.rate(2.0, 0, None), 2.0);
        assert!((s.rate(2.0, 50, None) - 1.0).abs() < 1e-12);
        assert!(s.rate(2.0, 100, None).abs() < 1e-12);
    }

    #[test]
    fn a_time_limited_run_decays_over_its_time() {
        // 200 epochs' worth of steps, but the time limit is half spent.
        let s = schedule(10, LrDecay::Cosine, 1_000_000);
        assert!((s.rate(1.0, 500, Some(0.5)) - 0.5).abs() < 1e-12);
        assert!(s.rate(1.0, 500, Some(1.0)).abs() < 1e-12);
        // The warm-up is counted in steps whatever the time.
        assert_eq!(s.rate(1.0, 4, Some(0.9)), 0.5);
        // A time fraction behind the steps does not hold the decay back.
        let short = schedule(0, LrDecay::Poly, 10);
        assert_eq!(short.rate(1.0, 10, Some(0.1)), 0.0);
    }

    proptest! {
        #[test]
        fn rate_is_bounded_and_decays(
            warmup in 0usize..50,
            extra in 1usize..500,
            step in 0usize..600,
            cosine in any::<bool>(),
            time in proptest::option::of(0.0f64..1.5),
        ) {
            let decay = if cosine { LrDecay::Cosine } else { LrDecay::Poly };
            let s = schedule(warmup, decay, warmup + extra);
            let r = s.rate(1e-3, step, time);
            prop_assert!((0.0..=1e-3 + 1e-15).contains(&r));
            if step >= warmup {
                prop_assert!(s.rate(1e-3, step + 1, time) <= r + 1e-18);
                let later = time.map(|t| t + 0.1);
                prop_assert!(s.rate(1e-3, step, later) <= r + 1e-18);
            }
        }
    }
}
