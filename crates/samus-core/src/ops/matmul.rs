//! `a b` for batches of matrices whose right operand changes from call to call,
//! through the packed kernels of [`crate::packed`] on the CPU.
//!
//! The packed product is written for weights, packed once and reused; [`matmul`]
//! packs `b` for each call instead (a copy of `b`), which still pays where `b` is
//! small or the `gemm` crate's kernels are slow for the shape. The decoder's folded
//! attention (`samus-model`, `decoder_attention.rs`) multiplies by operands with 56
//! rows or columns: on the Ice Lake Xeon of docs/PERFORMANCE.md (2 threads)
//! `56 x 256 x 1024` took 0.54 ms with candle's product (the `gemm` crate) and
//! 0.16 ms packed, `1024 x 56 x 256` 0.36 and 0.19 ms (packing excluded;
//! `linear_rate` example).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::cpu::Isa;
use crate::cpu_kernel::{contiguous_f32, cpu_f32_inference};
use crate::packed::{
    gemm_packed, gemm_packed_uninit, Epilogue, LeftOperand, PackedRhs, ProductOptions,
};

/// `a b` for `a` `(..., M, K)` and `b` `(..., K, N)` with the same leading axes
/// (no broadcasting, as candle's `matmul`). On the CPU in f32 without gradients,
/// when the packed product is [available](crate::packed::available), each batch
/// item's `b` is packed for the call, read in place when `b` is contiguous or the
/// transposition of a contiguous tensor; otherwise candle's `matmul`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if crate::packed::available() {
        matmul_for(Isa::selected(), a, b, None)
    } else {
        composed(a, b, None)
    }
}

/// `residual + a b` ([`matmul`] with `residual` of the product's shape): the
/// packed product accumulates onto a copy of `residual` instead of a separate
/// addition over the output.
pub fn matmul_add(a: &Tensor, b: &Tensor, residual: &Tensor) -> Result<Tensor> {
    if crate::packed::available() {
        matmul_for(Isa::selected(), a, b, Some(residual))
    } else {
        composed(a, b, Some(residual))
    }
}

/// `a b`, onto `residual` if given, with candle's operations.
fn composed(a: &Tensor, b: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    let product = a.matmul(b)?;
    match residual {
        Some(r) => r + product,
        None => Ok(product),
    }
}

/// [`matmul`] (or with `residual`, [`matmul_add`]) with the packed kernels of
/// `isa` whatever [`Isa::selected`] says (how the tests run every kernel the CPU
/// has); fails if this CPU lacks `isa`. Operands that need a gradient, are not f32
/// on the CPU, or do not agree go to candle's `matmul`.
pub fn matmul_for(isa: Isa, a: &Tensor, b: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    let rank = a.rank();
    let agree = rank >= 2
        && b.rank() == rank
        && a.dims()[..rank - 2] == b.dims()[..rank - 2]
        && a.dims()[rank - 1] == b.dims()[rank - 2];
    let out_dims = agree.then(|| {
        let mut dims = a.dims().to_vec();
        dims[rank - 1] = b.dims()[rank - 1];
        dims
    });
    let residual_fits = residual.is_none_or(|r| Some(r.dims()) == out_dims.as_deref());
    if !(agree && residual_fits && cpu_f32_inference([a, b].into_iter().chain(residual))) {
        return composed(a, b, residual);
    }
    // `b` as stored: its transposition `(..., N, K)` when that is contiguous (a
    // linear layer's weight layout), else `b` itself made contiguous.
    let b_t = b.transpose(rank - 2, rank - 1)?;
    let (rhs, layout) = if b_t.is_contiguous() {
        (b_t, RhsLayout::Transposed)
    } else {
        (b.contiguous()?, RhsLayout::RowMajor)
    };
    let op = PackedMatmul { isa, layout };
    match residual {
        Some(r) => a
            .contiguous()?
            .apply_op3_no_bwd(&rhs, &r.contiguous()?, &op),
        None => a.contiguous()?.apply_op2_no_bwd(&rhs, &op),
    }
}

/// How [`PackedMatmul`]'s right operand is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RhsLayout {
    /// `(..., K, N)`, row-major.
    RowMajor,
    /// `(..., N, K)`, row-major: `b`'s transposition.
    Transposed,
}

/// The CPU operation of [`matmul`] and [`matmul_add`].
struct PackedMatmul {
    isa: Isa,
    layout: RhsLayout,
}

impl PackedMatmul {
    /// The product of contiguous operands, onto `residual` if given.
    fn forward(
        &self,
        (a, a_layout): (&[f32], &Layout),
        (b, b_layout): (&[f32], &Layout),
        residual: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (a_dims, b_dims) = (a_layout.dims(), b_layout.dims());
        let rank = a_dims.len();
        let (m, k) = (a_dims[rank - 2], a_dims[rank - 1]);
        let n = match self.layout {
            RhsLayout::RowMajor => b_dims[rank - 1],
            RhsLayout::Transposed => b_dims[rank - 2],
        };
        let batch: usize = a_dims[..rank - 2].iter().product();
        let len = batch * m * n;
        if a.len() != batch * m * k
            || b.len() != batch * k * n
            || residual.is_some_and(|r| r.len() != len)
        {
            candle_core::bail!("matmul: operands {a_dims:?} and {b_dims:?} do not agree")
        }
        let threads = crate::cpu_kernel::threads();
        let options = ProductOptions::threaded(threads, Epilogue::None);
        let pack = |i: usize| {
            let b_item = &b[i * k * n..][..k * n];
            match self.layout {
                RhsLayout::RowMajor => PackedRhs::from_matrix_for(self.isa, b_item, k, n),
                RhsLayout::Transposed => PackedRhs::from_linear_weight_for(self.isa, b_item, n, k),
            }
        };
        let left = |i: usize| LeftOperand {
            data: &a[i * m * k..][..m * k],
            row_stride: k,
            segment_offsets: &[0],
            grid: None,
        };
        let out = match residual {
            Some(r) => {
                let mut out = r.to_vec();
                for (i, c) in out.chunks_mut((m * n).max(1)).enumerate().take(batch) {
                    gemm_packed(m, left(i), &pack(i)?, c, n, options)?;
                }
                out
            }
            None => {
                let mut out: Vec<f32> = Vec::with_capacity(len);
                let spare = &mut out.spare_capacity_mut()[..len];
                for (i, c) in spare.chunks_mut((m * n).max(1)).enumerate().take(batch) {
                    gemm_packed_uninit(m, left(i), &pack(i)?, c, options.overwrite_with(None))?;
                }
                // SAFETY: each of the `batch` chunks of `m n` values was written in
                // full by `gemm_packed_uninit` (it returned without error); with
                // `m n = 0` there are no values.
                unsafe { out.set_len(len) };
                out
            }
        };
        let mut dims = a_dims.to_vec();
        dims[rank - 1] = n;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

impl CustomOp2 for PackedMatmul {
    fn name(&self) -> &'static str {
        "samus-packed-matmul"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(a, a_layout, "matmul left operand")?;
        let b = contiguous_f32(b, b_layout, "matmul right operand")?;
        self.forward((a, a_layout), (b, b_layout), None)
    }
}

impl CustomOp3 for PackedMatmul {
    fn name(&self) -> &'static str {
        "samus-packed-matmul-add"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
        r: &CpuStorage,
        r_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(a, a_layout, "matmul left operand")?;
        let b = contiguous_f32(b, b_layout, "matmul right operand")?;
        let r = contiguous_f32(r, r_layout, "matmul residual")?;
        self.forward((a, a_layout), (b, b_layout), Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::relative_error;
    use candle_core::Device;
    use proptest::prelude::*;

    #[test]
    fn every_supported_kernel_is_tested() {
        let names: Vec<&str> = Isa::supported().iter().map(|i| i.name()).collect();
        eprintln!(
            "packed matmul kernels tested on this CPU: {}",
            names.join(", ")
        );
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            assert!(Isa::supported().contains(&Isa::Avx2));
        }
    }

    #[test]
    fn declines_to_a_candle_error_on_operands_that_do_not_agree() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros((2, 5, 6), candle_core::DType::F32, &dev).unwrap();
        assert!(matmul(&a, &b).is_err());
        let a = Tensor::zeros((2, 3, 5), candle_core::DType::F32, &dev).unwrap();
        let r = Tensor::zeros((2, 3, 7), candle_core::DType::F32, &dev).unwrap();
        assert!(matmul_add(&a, &b, &r).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Against candle's product, for both layouts of `b`, on every kernel this
        /// CPU has (forced through the override).
        #[test]
        fn matches_candle_matmul(
            batch in 1usize..3,
            m in 1usize..80,
            k in 1usize..70,
            n in 1usize..90,
            transposed in any::<bool>(),
        ) {
            let dev = Device::Cpu;
            let a = Tensor::randn(0f32, 1.0, (batch, m, k), &dev).unwrap();
            let b = if transposed {
                Tensor::randn(0f32, 1.0, (batch, n, k), &dev).unwrap().transpose(1, 2).unwrap()
            } else {
                Tensor::randn(0f32, 1.0, (batch, k, n), &dev).unwrap()
            };
            let want = a.matmul(&b.contiguous().unwrap()).unwrap();
            let r = Tensor::randn(0f32, 1.0, want.dims(), &dev).unwrap();
            let want_added = (&r + &want).unwrap();
            let isas = Isa::supported();
            prop_assert!(isas.contains(&Isa::Scalar));
            for isa in isas {
                let got = matmul_for(isa, &a, &b, None).unwrap();
                prop_assert_eq!(got.dims(), want.dims());
                let err = relative_error(&got, &want).unwrap();
                prop_assert!(err < 1e-5, "{isa}: relative error {err}");
                let added = matmul_for(isa, &a, &b, Some(&r)).unwrap();
                let err = relative_error(&added, &want_added).unwrap();
                prop_assert!(err < 1e-5, "{isa}, onto a residual: relative error {err}");
            }
        }
    }
}
