//! `exp` and `erf` for f32 written so that the compiler vectorises them: no
//! branches, no calls into libm, only multiplies, fused multiply-adds (`mul_add`,
//! one instruction in the kernels, which `pulp` compiles with FMA enabled) and bit
//! operations.
//!
//! The scalar library functions (`expf`, `erff`) cost tens of cycles each and
//! cannot be vectorised; the element-wise kernels of this crate (GELU forward and
//! backward, softmax) call these inside loops that `pulp` compiles for the widest
//! SIMD instruction set the CPU has (chosen at run time); the loop bodies must call
//! them directly (not through a closure or `Fn` parameter), so that they are inlined.
//!
//! Accuracy, checked by the tests against f64: [`exp`] within 2 ulp (relative error
//! below 3e-7); [`erf`] within 4e-7 absolute (worst 3.5e-7 on a 20-million-point grid
//! over -6..6, checked by a test; a Taylor series near 0, Abramowitz
//! and Stegun 7.1.26 elsewhere, the approximation of PyTorch's vectorised CPU `erf`).

/// Below this, `exp` is 0 (the result would be subnormal).
const EXP_MIN: f32 = -87.336_54;
/// Above this, `exp` overflows to infinity.
const EXP_MAX: f32 = 88.722_83;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x for f32, vectorisable; 0 below -87.34, infinity above 88.72, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let (er, n) = reduced_exp(x.clamp(EXP_MIN, EXP_MAX));
    // 2^n in two factors, so that n = 128 (x near EXP_MAX) does not overflow the
    // exponent field.
    let (n1, n2) = (n >> 1, n - (n >> 1));
    let scaled = er * pow2(n1) * pow2(n2);
    let scaled = if x > EXP_MAX { f32::INFINITY } else { scaled };
    let scaled = if x < EXP_MIN { 0.0 } else { scaled };
    if x.is_nan() {
        x
    } else {
        scaled
    }
}

/// e^x for `x <= 0`, as a softmax needs it after subtracting the row maximum: the
/// same polynomial as [`exp`] with one power of two and no overflow case (positive
/// inputs are taken as 0); 0 below -87.34, NaN for NaN.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let clamped = if x > EXP_MIN { x } else { EXP_MIN };
    let clamped = if clamped < 0.0 { clamped } else { 0.0 };
    // n in -126..=0: a single power of two.
    let (er, n) = reduced_exp(clamped);
    let scaled = er * pow2(n);
    let scaled = if x < EXP_MIN { 0.0 } else { scaled };
    if x.is_nan() {
        x
    } else {
        scaled
    }
}

/// `(e^r, n)` with `x = n ln2 + r`, `|r| <= ln2 / 2`, for `x` already clamped to
/// `EXP_MIN..=EXP_MAX`; then `e^x = e^r 2^n`.
#[inline(always)]
fn reduced_exp(clamped: f32) -> (f32, i32) {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = clamped.mul_add(std::f32::consts::LOG2_E, ROUND_MAGIC);
    let n = t - ROUND_MAGIC;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, clamped));
    // Minimax polynomial for e^r on [-ln2/2, ln2/2] (Cephes `expf`), in fused
    // multiply-adds.
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let er = (p * r).mul_add(r, r) + 1.0;
    // The integer n from the bits of t = n + ROUND_MAGIC (exact, since |n| < 2^22):
    // a bit cast and an integer subtraction, which vectorise where `as i32` (a
    // saturating conversion) does not.
    (er, t.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32)
}

/// 2^n for `n` in -126..=127, built from its bits.
#[inline(always)]
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// Below this |x|, [`erf`] uses its Taylor series (relative accuracy near 0).
const ERF_SERIES_LIMIT: f32 = 0.5;

/// erf(x) for f32, vectorisable, within 4e-7 absolute: the Taylor series up to
/// x^11 below |x| = 0.5, Abramowitz and Stegun 7.1.26 above.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / P.mul_add(a, 1.0);
    let poly = A5
        .mul_add(t, A4)
        .mul_add(t, A3)
        .mul_add(t, A2)
        .mul_add(t, A1)
        * t;
    let tail = (-poly).mul_add(exp(-a * a), 1.0).copysign(x);
    // 2/sqrt(pi) * sum (-1)^k x^(2k+1) / (k! (2k+1)), k = 0..5.
    const S0: f32 = std::f32::consts::FRAC_2_SQRT_PI;
    const S1: f32 = -0.376_126_4;
    const S2: f32 = 0.112_837_92;
    const S3: f32 = -0.026_866_17;
    const S4: f32 = 0.005_223_977_6;
    const S5: f32 = -8.548_327e-4;
    let z = x * x;
    let series = x * S5
        .mul_add(z, S4)
        .mul_add(z, S3)
        .mul_add(z, S2)
        .mul_add(z, S1)
        .mul_add(z, S0);
    if a < ERF_SERIES_LIMIT {
        series
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The absolute error [`erf`] stays within (the documentation's figure).
    const ERF_BOUND: f64 = 4e-7;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    proptest! {
        #[test]
        fn exp_is_within_two_ulp(x in -87.3f32..88.7) {
            let want = (x as f64).exp() as f32;
            prop_assert!(ulps(exp(x), want) <= 2, "exp({x}) = {} want {want}", exp(x));
        }

        #[test]
        fn exp_nonpositive_equals_exp(x in -90f32..0.0) {
            prop_assert_eq!(exp_nonpositive(x).to_bits(), exp(x).to_bits(), "x = {}", x);
        }

        #[test]
        fn erf_is_within_four_ten_millionths(x in -6f32..6.0) {
            let want = libm_erf(x as f64);
            prop_assert!((erf(x) as f64 - want).abs() < ERF_BOUND, "erf({x}) = {} want {want}", erf(x));
        }
    }

    #[test]
    fn erf_worst_case_on_a_fine_grid() {
        // Every 6e-7 from -6 to 6 (20 million points): the bound the documentation
        // states holds everywhere on it, not only at random points.
        let (mut worst, mut at) = (0f64, 0f32);
        let n = 20_000_000u32;
        for i in 0..=n {
            let x = -6.0 + 12.0 * (f64::from(i) / f64::from(n));
            let x = x as f32;
            let e = (erf(x) as f64 - libm_erf(x as f64)).abs();
            if e > worst {
                (worst, at) = (e, x);
            }
        }
        println!("erf: worst absolute error {worst:.3e} at {at}");
        assert!(worst < ERF_BOUND, "erf({at}) is off by {worst:e}");
    }

    /// erf in f64 from candle (libm), the reference for the approximation.
    fn libm_erf(x: f64) -> f64 {
        candle_core::cpu::erf::erf_f64(x)
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.7).is_finite());
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }
}
