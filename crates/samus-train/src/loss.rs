//! Segmentation losses on mask logits.

use candle_core::{Result, Tensor};

/// Smoothing term of the Dice coefficient.
pub const DICE_SMOOTH: f64 = 1e-5;

/// Weights of the reference objective (SPEC section 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// Weight of the binary cross-entropy term.
    pub bce: f64,
    /// Weight of the `1 - Dice` term.
    pub dice: f64,
    /// Weight of the positive class inside the cross-entropy.
    pub pos_weight: f64,
}

impl Default for LossWeights {
    /// 0.2 BCE (pos_weight 2) + 0.8 Dice loss.
    fn default() -> Self {
        Self {
            bce: 0.2,
            dice: 0.8,
            pos_weight: 2.0,
        }
    }
}

/// `log(1 + exp(x))`, computed without overflow: `max(x, 0) + log(1 + exp(-|x|))`.
fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Mean binary cross-entropy with logits and a positive-class weight
/// (`nn.BCEWithLogitsLoss(pos_weight=w)`):
/// `w t softplus(-x) + (1 - t) softplus(x)`.
pub fn bce_with_logits(logits: &Tensor, target: &Tensor, pos_weight: f64) -> Result<Tensor> {
    let positive = (target * pos_weight)?.mul(&softplus(&logits.neg()?)?)?;
    let negative = target.affine(-1.0, 1.0)?.mul(&softplus(logits)?)?;
    (positive + negative)?.mean_all()
}

/// Dice coefficient of `sigmoid(logits)` and the target over the whole batch:
/// `(2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s)`.
pub fn soft_dice(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    let intersection = (&p * target)?.sum_all()?;
    let denominator = ((p.sqr()?.sum_all()? + target.sqr()?.sum_all()?)? + DICE_SMOOTH)?;
    ((intersection * 2.0)? + DICE_SMOOTH)?.div(&denominator)
}

/// The reference training loss: `bce * BCE + dice * (1 - Dice)`.
pub fn bce_dice_loss(logits: &Tensor, target: &Tensor, weights: LossWeights) -> Result<Tensor> {
    let bce = bce_with_logits(logits, target, weights.pos_weight)?;
    let dice_loss = soft_dice(logits, target)?.affine(-1.0, 1.0)?;
    (bce * weights.bce)? + (dice_loss * weights.dice)?
}

/// Plain soft Dice loss: `1 - Dice(sigmoid(logits), target)` over the whole batch.
pub fn dice_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    soft_dice(logits, target)?.affine(-1.0, 1.0)
}

/// Binary focal loss (Lin et al. 2017), mean over elements:
/// `-alpha_t (1 - p_t)^gamma log(p_t)` with `p_t = p` on the target and `1 - p` off it,
/// `alpha_t = alpha` on the target and `1 - alpha` off it.
pub fn focal_loss(logits: &Tensor, target: &Tensor, alpha: f64, gamma: f64) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    // -log(p_t) = t softplus(-x) + (1 - t) softplus(x), stable for large |x|.
    let off = target.affine(-1.0, 1.0)?;
    let nll = ((target * softplus(&logits.neg()?)?)? + (&off * softplus(logits)?)?)?;
    let p_t = ((target * &p)? + (&off * p.affine(-1.0, 1.0)?)?)?;
    let modulating = p_t.affine(-1.0, 1.0)?.powf(gamma)?;
    let alpha_t = ((target * alpha)? + (off * (1.0 - alpha))?)?;
    (alpha_t * modulating)?.mul(&nll)?.mean_all()
}

/// The segmentation losses a run can optimise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SegmentationLoss {
    /// The reference objective, [`bce_dice_loss`].
    BceDice(LossWeights),
    /// [`dice_loss`].
    Dice,
    /// [`focal_loss`] with `alpha` and `gamma`.
    Focal {
        /// Weight of the target class.
        alpha: f64,
        /// Focusing exponent.
        gamma: f64,
    },
}

impl Default for SegmentationLoss {
    fn default() -> Self {
        Self::BceDice(LossWeights::default())
    }
}

impl SegmentationLoss {
    /// The loss of `logits` against the 0/1 `target`.
    pub fn compute(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        match *self {
            Self::BceDice(w) => bce_dice_loss(logits, target, w),
            Self::Dice => dice_loss(logits, target),
            Self::Focal { alpha, gamma } => focal_loss(logits, target, alpha, gamma),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bce_matches_naive(values in proptest::collection::vec((-30f32..30.0, 0u8..2), 1..40)) {
            let n = values.len();
            let x: Vec<f32> = values.iter().map(|v| v.0).collect();
            let t: Vec<f32> = values.iter().map(|v| v.1 as f32).collect();
            let got = bce_with_logits(
                &Tensor::from_vec(x.clone(), n, &Device::Cpu).unwrap(),
                &Tensor::from_vec(t.clone(), n, &Device::Cpu).unwrap(),
                2.0,
            ).unwrap().to_scalar::<f32>().unwrap() as f64;
            let want: f64 = x.iter().zip(&t).map(|(&x, &t)| {
                let (x, t) = (x as f64, t as f64);
                let sig = 1.0 / (1.0 + (-x).exp());
                -(2.0 * t * sig.max(1e-300).ln() + (1.0 - t) * (1.0 - sig).max(1e-300).ln())
            }).sum::<f64>() / n as f64;
            prop_assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "got {got}, want {want}");
        }
    }

    proptest! {
        #[test]
        fn focal_matches_naive(values in proptest::collection::vec((-20f32..20.0, 0u8..2), 1..40), gamma in 0.0f64..3.0) {
            let n = values.len();
            let x: Vec<f32> = values.iter().map(|v| v.0).collect();
            let t: Vec<f32> = values.iter().map(|v| v.1 as f32).collect();
            let got = focal_loss(
                &Tensor::from_vec(x.clone(), n, &Device::Cpu).unwrap(),
                &Tensor::from_vec(t.clone(), n, &Device::Cpu).unwrap(),
                0.25,
                gamma,
            ).unwrap().to_scalar::<f32>().unwrap() as f64;
            let want: f64 = x.iter().zip(&t).map(|(&x, &t)| {
                let (x, t) = (x as f64, t as f64);
                let p = 1.0 / (1.0 + (-x).exp());
                let (pt, at) = if t == 1.0 { (p, 0.25) } else { (1.0 - p, 0.75) };
                // -log(p_t) computed stably, as softplus.
                let nll = if t == 1.0 { (-x).max(0.0) + (-x.abs()).exp().ln_1p() } else { x.max(0.0) + (-x.abs()).exp().ln_1p() };
                at * (1.0 - pt).powf(gamma) * nll
            }).sum::<f64>() / n as f64;
            prop_assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "got {got}, want {want}");
        }
    }

    #[test]
    fn dice_loss_is_zero_for_a_perfect_prediction() -> Result<()> {
        let target = Tensor::new(&[[1f32, 0.0, 1.0, 0.0]], &Device::Cpu)?;
        let logits = ((&target * 40.0)? - 20.0)?;
        let loss = SegmentationLoss::Dice
            .compute(&logits, &target)?
            .to_scalar::<f32>()?;
        assert!(loss.abs() < 1e-6, "{loss}");
        let bce = SegmentationLoss::default()
            .compute(&logits, &target)?
            .to_scalar::<f32>()?;
        assert!(bce < 1e-6, "{bce}");
        Ok(())
    }

    #[test]
    fn loss_has_gradients() -> Result<()> {
        let logits = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 1, 8, 8), &Device::Cpu)?)?;
        let target = Tensor::rand(0f32, 1.0, (2, 1, 8, 8), &Device::Cpu)?
            .ge(0.5)?
            .to_dtype(candle_core::DType::F32)?;
        let loss = bce_dice_loss(logits.as_tensor(), &target, LossWeights::default())?;
        let grads = loss.backward()?;
        let g = grads
            .get(logits.as_tensor())
            .map(|g| g.abs()?.sum_all()?.to_scalar::<f32>());
        assert!(matches!(g, Some(Ok(v)) if v > 0.0));
        Ok(())
    }
}
