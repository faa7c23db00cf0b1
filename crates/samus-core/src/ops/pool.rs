//! 2x2 max pooling with a correct backward pass.
//!
//! candle 0.11's `max_pool2d` backward multiplies the upsampled gradient by the
//! fraction of maxima in each window instead of dividing by their count, so a window
//! with one maximum passes back a quarter of its gradient. Here the whole gradient
//! goes to the maximum, the first one in scan order when several are equal, as
//! PyTorch does. On the CPU in f32 the channels-last form is one operation with its
//! own backward; elsewhere it is a reshape and a max reduction.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

use crate::cpu_kernel::{contiguous_f32, par_filled};

/// `MaxPool2d(2)` on an NCHW tensor (odd trailing rows and columns are dropped).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return x.max_pool2d(2);
    }
    let nhwc = x.permute((0, 2, 3, 1))?;
    max_pool2x2_nhwc(&nhwc)?.permute((0, 3, 1, 2))?.contiguous()
}

/// `MaxPool2d(2)` on a channels-last `N x H x W x C` tensor (odd trailing rows and
/// columns are dropped).
pub fn max_pool2x2_nhwc(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(MaxPool2x2Nhwc);
    }
    let (n, h, w, c) = x.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    x.narrow(1, 0, 2 * oh)?
        .narrow(2, 0, 2 * ow)?
        .reshape((n, oh, 2, ow, 2, c))?
        .permute((0, 1, 3, 5, 2, 4))?
        .contiguous()?
        .reshape((n, oh, ow, c, 4))?
        .max(D::Minus1)
}

/// The maximum of one 2x2 window as PyTorch picks it: the first of equal maxima in
/// scan order (`a`, `b` on the top row, `c`, `d` below), NaN when any value is NaN.
///
/// Written without branches so that a row of windows vectorises over the channels:
/// the comparisons-and-branches form (an arg-max per window) mispredicted on every
/// other window of real feature maps and pooled the first 4 x 256 x 256 x 64 stage
/// of the CNN branch in 42 ms; this form takes a few.
#[inline(always)]
fn window_max(a: f32, b: f32, c: f32, d: f32) -> f32 {
    let mut m = a;
    m = if b > m { b } else { m };
    m = if c > m { c } else { m };
    m = if d > m { d } else { m };
    if a.is_nan() | b.is_nan() | c.is_nan() | d.is_nan() {
        f32::NAN
    } else {
        m
    }
}

/// Which of the four values of a window took its gradient in [`window_max`]: the
/// first equal to the maximum (the first NaN when it is NaN), as a one-hot mask.
#[inline(always)]
fn window_winner(a: f32, b: f32, c: f32, d: f32) -> [bool; 4] {
    let m = window_max(a, b, c, d);
    let hit = |v: f32| (v == m) | v.is_nan();
    let (ha, hb, hc) = (hit(a), hit(b), hit(c));
    [ha, hb & !ha, hc & !ha & !hb, !(ha | hb | hc)]
}

/// The two input rows under one row of windows (`W C` values each, channels last).
#[derive(Clone, Copy)]
struct WindowRows<'a> {
    top: &'a [f32],
    bottom: &'a [f32],
    c: usize,
}

impl<'a> WindowRows<'a> {
    /// The four pixels of window `ox`, `c` channels each, in scan order.
    #[inline(always)]
    fn window(self, ox: usize) -> [&'a [f32]; 4] {
        let (at, c) = (2 * self.c * ox, self.c);
        [
            &self.top[at..at + c],
            &self.top[at + c..at + 2 * c],
            &self.bottom[at..at + c],
            &self.bottom[at + c..at + 2 * c],
        ]
    }
}

/// One row of output windows from its two input rows (vectorised by `pulp`'s
/// dispatch: the channels of a window are contiguous).
struct PoolRow<'a> {
    rows: WindowRows<'a>,
    out: &'a mut [f32],
}

impl pulp::WithSimd for PoolRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for (ox, o) in self.out.chunks_exact_mut(self.rows.c).enumerate() {
            let [a, b, c, d] = self.rows.window(ox);
            for ((((o, &a), &b), &c), &d) in o.iter_mut().zip(a).zip(b).zip(c).zip(d) {
                *o = window_max(a, b, c, d);
            }
        }
    }
}

/// The gradient of one row of windows into one of its two input rows (`dst`, the
/// whole row: columns past the last window get zeros).
struct PoolRowBackward<'a> {
    rows: WindowRows<'a>,
    grad: &'a [f32],
    dst: &'a mut [f32],
    /// Whether `dst` is the bottom row of the windows (else the top one).
    bottom_row: bool,
}

impl pulp::WithSimd for PoolRowBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let c = self.rows.c;
        let windows = self.grad.len() / c.max(1);
        self.dst[2 * windows * c..].fill(0.0);
        let first = if self.bottom_row { 2 } else { 0 };
        for (ox, g) in self.grad.chunks_exact(c).enumerate() {
            let [a, b, cc, d] = self.rows.window(ox);
            let (left, right) = self.dst[2 * ox * c..][..2 * c].split_at_mut(c);
            for ch in 0..c {
                let won = window_winner(a[ch], b[ch], cc[ch], d[ch]);
                left[ch] = if won[first] { g[ch] } else { 0.0 };
                right[ch] = if won[first + 1] { g[ch] } else { 0.0 };
            }
        }
    }
}

/// Channels-last 2x2 max pooling as one CPU operation; its backward is
/// [`MaxPool2x2NhwcBackward`].
#[derive(Debug, Clone, Copy)]
struct MaxPool2x2Nhwc;

impl CustomOp1 for MaxPool2x2Nhwc {
    fn name(&self) -> &'static str {
        "samus-max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "max pool")?;
        let (n, h, w, c) = layout.shape().dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        let row = w * c;
        // One chunk per output row: its two input rows are rows 2 oy and 2 oy + 1
        // of its image.
        let out = par_filled(n * oh * ow * c, ow * c, |index, out| {
            let (b, oy) = (index / oh.max(1), index % oh.max(1));
            let top = &x[(b * h + 2 * oy) * row..][..row];
            let bottom = &x[(b * h + 2 * oy + 1) * row..][..row];
            crate::cpu::simd().dispatch(PoolRow {
                rows: WindowRows { top, bottom, c },
                out,
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPool2x2NhwcBackward,
        )?))
    }
}

/// Sends each window's gradient to the pixel that won the forward pass.
#[derive(Debug, Clone, Copy)]
struct MaxPool2x2NhwcBackward;

impl CustomOp2 for MaxPool2x2NhwcBackward {
    fn name(&self) -> &'static str {
        "samus-max-pool-2x2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "max pool")?;
        let g = contiguous_f32(s2, l2, "max pool")?;
        let (n, h, w, c) = l1.shape().dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        if l2.shape().dims() != [n, oh, ow, c] {
            candle_core::bail!(
                "max pool backward: gradient {:?} for input {:?}",
                l2.shape(),
                l1.shape()
            )
        }
        let row = w * c;
        // One chunk per input row; rows below the last window (an odd height) get
        // zeros.
        let dx = par_filled(x.len(), row.max(1), |index, dst| {
            let (b, y) = (index / h, index % h);
            let oy = y / 2;
            if oy >= oh || c == 0 {
                dst.fill(0.0);
                return Ok(());
            }
            let top = (b * h + 2 * oy) * row;
            crate::cpu::simd().dispatch(PoolRowBackward {
                rows: WindowRows {
                    top: &x[top..][..row],
                    bottom: &x[top + row..][..row],
                    c,
                },
                grad: &g[(b * oh + oy) * ow * c..][..ow * c],
                dst,
                bottom_row: y % 2 == 1,
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Forward equals candle's kernel; the gradient of `sum(w * pool(x))` equals
        /// central finite differences.
        #[test]
        fn gradient_matches_finite_differences(n in 1usize..3, c in 1usize..3, h in 2usize..7, w in 2usize..7, seed in 0u64..1000) {
            let len = n * c * h * w;
            // Distinct values (a permutation scaled), so that every window has one maximum.
            let mut values: Vec<f64> = (0..len).map(|i| ((i as u64 * 7919 + seed * 104_729) % len as u64) as f64 * 0.37 - 3.0).collect();
            values.dedup();
            prop_assume!(values.len() == len);
            let dev = Device::Cpu;
            let x = Tensor::from_vec(values.clone(), (n, c, h, w), &dev).unwrap();
            let (oh, ow) = (h / 2, w / 2);
            let weights = Tensor::from_vec((0..n * c * oh * ow).map(|i| 0.5 + i as f64 * 0.25).collect::<Vec<_>>(), (n, c, oh, ow), &dev).unwrap();
            let plain = x.max_pool2d(2).unwrap();
            let var = Var::from_tensor(&x).unwrap();
            let pooled = max_pool2x2(var.as_tensor()).unwrap();
            let diff = (&pooled - &plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            prop_assert_eq!(diff, 0.0);
            let loss = (pooled * &weights).unwrap().sum_all().unwrap();
            let grad = loss.backward().unwrap().get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            // The fused f32 operation: the same maxima and the same gradient.
            let var32 = Var::from_tensor(&x.to_dtype(DType::F32).unwrap()).unwrap();
            let pooled32 = max_pool2x2(var32.as_tensor()).unwrap();
            let plain32 = plain.to_dtype(DType::F32).unwrap();
            let diff32 = (&pooled32 - &plain32).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert_eq!(diff32, 0.0);
            let loss32 = (pooled32 * weights.to_dtype(DType::F32).unwrap()).unwrap().sum_all().unwrap();
            let grad32 = loss32.backward().unwrap().get(var32.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in grad32.iter().zip(&grad) {
                prop_assert_eq!(*a as f64, *b);
            }
            let objective = |v: &[f64]| -> f64 {
                let t = Tensor::from_vec(v.to_vec(), (n, c, h, w), &dev).unwrap();
                (t.max_pool2d(2).unwrap() * &weights).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
            };
            let eps = 1e-3; // well below the 0.37 gap between distinct values
            for i in 0..len {
                let mut up = values.clone();
                up[i] += eps;
                let mut down = values.clone();
                down[i] -= eps;
                let numeric = (objective(&up) - objective(&down)) / (2.0 * eps);
                prop_assert!((grad[i] - numeric).abs() < 1e-6, "element {i}: analytic {}, numeric {numeric}", grad[i]);
            }
        }
    }

    /// The arg-max of a window as PyTorch defines it, written plainly: the first
    /// maximum in scan order, a NaN winning.
    fn arg_max4(values: [f32; 4]) -> usize {
        let mut best = 0;
        for (i, &v) in values.iter().enumerate().skip(1) {
            if values[best].is_nan() {
                break;
            }
            if v > values[best] || v.is_nan() {
                best = i;
            }
        }
        best
    }

    /// A SIMD level this CPU has, to run a `pulp` kernel with.
    #[derive(Clone, Copy)]
    enum Level {
        Scalar,
        #[cfg(target_arch = "x86_64")]
        Avx2(pulp::x86::V3),
        #[cfg(target_arch = "x86_64")]
        Avx512(pulp::x86::V4),
    }

    impl Level {
        /// Scalar code always, then AVX2 and AVX-512 where this CPU has them.
        fn available() -> Vec<Level> {
            #[allow(unused_mut)]
            let mut levels = vec![Level::Scalar];
            #[cfg(target_arch = "x86_64")]
            {
                levels.extend(pulp::x86::V3::try_new().map(Level::Avx2));
                levels.extend(pulp::x86::V4::try_new().map(Level::Avx512));
            }
            levels
        }

        fn name(self) -> &'static str {
            match self {
                Level::Scalar => "scalar",
                #[cfg(target_arch = "x86_64")]
                Level::Avx2(_) => "avx2",
                #[cfg(target_arch = "x86_64")]
                Level::Avx512(_) => "avx512",
            }
        }

        fn run<K: pulp::WithSimd>(self, kernel: K) -> K::Output {
            match self {
                Level::Scalar => kernel.with_simd(pulp::Scalar::new()),
                #[cfg(target_arch = "x86_64")]
                Level::Avx2(simd) => simd.vectorize(|| kernel.with_simd(simd)),
                #[cfg(target_arch = "x86_64")]
                Level::Avx512(simd) => simd.vectorize(|| kernel.with_simd(simd)),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Many ties, signed zeros and NaNs: both row kernels, on every SIMD level,
        /// equal the plain arg-max definition bit for bit.
        #[test]
        fn row_kernels_equal_the_plain_arg_max(
            windows in 1usize..5,
            c in 1usize..40,
            extra in 0usize..2,
            picks in proptest::collection::vec(0u8..6, 4 * 5 * 40 + 2 * 40),
            grads in proptest::collection::vec(-4i8..4, 5 * 40),
        ) {
            let w = 2 * windows + extra;
            let value = |i: usize| match picks[i] {
                0 => 0.0,
                1 => -0.0,
                2 => 1.0,
                3 => -1.0,
                4 => 2.0,
                _ => f32::NAN,
            };
            let top: Vec<f32> = (0..w * c).map(value).collect();
            let bottom: Vec<f32> = (0..w * c).map(|i| value(w * c + i)).collect();
            let grad: Vec<f32> = (0..windows * c).map(|i| f32::from(grads[i]) + 0.5).collect();
            let mut want_out = vec![0f32; windows * c];
            let mut want_top = vec![0f32; w * c];
            let mut want_bottom = vec![0f32; w * c];
            for ox in 0..windows {
                for ch in 0..c {
                    let at = 2 * ox * c + ch;
                    let values = [top[at], top[at + c], bottom[at], bottom[at + c]];
                    let best = arg_max4(values);
                    want_out[ox * c + ch] = values[best];
                    let g = grad[ox * c + ch];
                    match best {
                        0 => want_top[at] = g,
                        1 => want_top[at + c] = g,
                        2 => want_bottom[at] = g,
                        _ => want_bottom[at + c] = g,
                    }
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() }).collect::<Vec<_>>();
            for level in Level::available() {
                let mut out = vec![7.0; windows * c];
                level.run(PoolRow { rows: WindowRows { top: &top, bottom: &bottom, c }, out: &mut out });
                prop_assert_eq!(bits(&out), bits(&want_out), "forward, {}", level.name());
                for (bottom_row, want) in [(false, &want_top), (true, &want_bottom)] {
                    let mut dst = vec![7.0; w * c];
                    level.run(PoolRowBackward { rows: WindowRows { top: &top, bottom: &bottom, c }, grad: &grad, dst: &mut dst, bottom_row });
                    prop_assert_eq!(bits(&dst), bits(want), "backward, bottom row {}, {}", bottom_row, level.name());
                }
            }
        }
    }

    #[test]
    fn every_simd_level_of_this_cpu_is_run() {
        let levels = Level::available();
        let names: Vec<_> = levels.iter().map(|l| l.name()).collect();
        println!(
            "max pool row kernels tested on this CPU: {}",
            names.join(", ")
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            names.contains(&"avx2"),
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        );
        for level in levels {
            let mut out = [0.0];
            level.run(PoolRow {
                rows: WindowRows {
                    top: &[1.0, 2.0],
                    bottom: &[3.0, 4.0],
                    c: 1,
                },
                out: &mut out,
            });
            assert_eq!(out, [4.0], "{}", level.name());
        }
    }

    #[test]
    fn odd_sizes_and_batches_pool_and_pass_back_per_image() -> Result<()> {
        // Odd height and width: the last row and column of each image are dropped,
        // and get zero gradient; images never mix.
        let dev = Device::Cpu;
        let (n, h, w, c) = (3, 5, 5, 2);
        let values: Vec<f32> = (0..n * h * w * c)
            .map(|i| ((i * 37) % 101) as f32)
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(values.clone(), (n, h, w, c), &dev)?)?;
        let pooled = max_pool2x2_nhwc(x.as_tensor())?;
        let plain = x
            .as_tensor()
            .permute((0, 3, 1, 2))?
            .max_pool2d(2)?
            .permute((0, 2, 3, 1))?;
        let diff = (&pooled - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let grads = pooled.sum_all()?.backward()?;
        let dx = grads
            .get(x.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>())
            .transpose()?
            .unwrap_or_default();
        assert_eq!(dx.len(), values.len());
        for b in 0..n {
            let image = &dx[b * h * w * c..(b + 1) * h * w * c];
            // One gradient of 1 per window and channel: 2 x 2 windows, 2 channels.
            assert_eq!(image.iter().sum::<f32>(), 8.0, "image {b}");
            for x in 0..w {
                for ch in 0..c {
                    assert_eq!(image[((h - 1) * w + x) * c + ch], 0.0);
                    assert_eq!(image[(x * w + (w - 1)) * c + ch], 0.0);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn ties_send_the_gradient_to_the_first_maximum() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::ones((1, 2, 2, 1), DType::F32, &dev)?)?;
        let grad = max_pool2x2_nhwc(x.as_tensor())?.sum_all()?.backward()?;
        let got = grad
            .get(x.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>());
        assert_eq!(got.transpose()?, Some(vec![1.0, 0.0, 0.0, 0.0]));
        Ok(())
    }
}
