//! `y = x W^T + b` over the last axis, with the bias added by the matrix product
//! itself on the CPU.
//!
//! candle computes a linear layer as a matrix product into a zeroed buffer, then a
//! broadcast addition into a second buffer. [`linear`] instead fills the output with
//! the bias and lets the `gemm` kernels accumulate `x W^T` onto it: one buffer and
//! one pass fewer for every projection of the encoder. It falls back to candle's
//! (differentiable) operations when a gradient is needed, on other devices and in
//! other dtypes.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use std::sync::Arc;

use crate::cpu::Isa;
use crate::cpu_kernel::{contiguous_f32, cpu_f32, cpu_f32_inference, gemm_parallelism, par_filled};
use crate::packed::{
    gemm_packed, gemm_packed_new, Epilogue, LeftOperand, PackedCache, PackedLayer, PackedRhs,
    ProductOptions,
};

/// `x W^T + b` for `x` `(..., in)`, `weight` `(out, in)` and `bias` `(out)`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    let mut out_dims = x.dims().to_vec();
    match out_dims.last_mut() {
        Some(last) if *last == in_dim => *last = out_dim,
        _ => candle_core::bail!(
            "linear layer expects {in_dim} input features, got {:?}",
            x.shape()
        ),
    }
    let rows = x.elem_count() / in_dim.max(1);
    let x2 = x.contiguous()?.reshape((rows, in_dim))?;
    let y = if cpu_f32([x, weight].into_iter().chain(bias)) {
        // One operation, with its own backward pass when training (one graph node
        // instead of the product, the bias and their views).
        let weight = weight.contiguous()?;
        let trains = [&x2, &weight].into_iter().chain(bias).any(Tensor::track_op);
        match (bias, trains) {
            (Some(b), true) => x2.apply_op3(&weight, &b.contiguous()?, FusedLinear)?,
            (Some(b), false) => x2.apply_op3_no_bwd(&weight, &b.contiguous()?, &FusedLinear)?,
            (None, true) => x2.apply_op2(&weight, FusedLinear)?,
            (None, false) => x2.apply_op2_no_bwd(&weight, &FusedLinear)?,
        }
    } else {
        let y = x2.matmul(&weight.t()?)?;
        match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        }
    };
    y.reshape(out_dims)
}

/// [`linear`] with the weight packed once into `cache` for the matrix product of
/// [`crate::packed`] (AVX-512 or AVX2 kernels, see [`PackedCache::is_active`]), when
/// no gradient is needed, on the CPU in f32, with
/// more than a few rows; otherwise exactly [`linear`].
pub fn linear_cached(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cache: &PackedCache,
) -> Result<Tensor> {
    match packed_layer(x, weight, bias, None, cache)? {
        Some(layer) => apply_packed(x, layer, Epilogue::None, None),
        None => linear(x, weight, bias),
    }
}

/// `gelu(x W^T + b)`: [`linear_cached`] with the GELU applied to each output tile
/// while it is in the cache (no separate pass over the output).
pub fn linear_gelu_cached(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cache: &PackedCache,
) -> Result<Tensor> {
    match packed_layer(x, weight, bias, None, cache)? {
        Some(layer) => apply_packed(x, layer, Epilogue::Gelu, None),
        None => crate::gelu(&linear(x, weight, bias)?),
    }
}

/// `residual + x W^T + b`: [`linear_cached`] whose product accumulates onto the
/// residual (no separate addition). `residual` has the output's shape.
pub fn linear_add_cached(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
    cache: &PackedCache,
) -> Result<Tensor> {
    match packed_layer(x, weight, bias, Some(residual), cache)? {
        Some(layer) => apply_packed(x, layer, Epilogue::None, Some(residual)),
        None => residual + linear(x, weight, bias)?,
    }
}

impl PackedLayer {
    /// Packs a linear layer's `out x in` weight, and its bias, for `isa`'s kernels:
    /// what [`linear_cached`] packs on first use, made ahead of time for a layer
    /// that keeps only the packed form (see [`linear_packed`]). Fails if the CPU
    /// lacks `isa`, or if the tensors are not f32 or do not agree.
    pub fn from_linear(weight: &Tensor, bias: Option<&Tensor>, isa: Isa) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let bias = bias
            .map(|b| b.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        if bias.as_ref().is_some_and(|b| b.len() != out_dim) {
            candle_core::bail!("linear: bias does not have {out_dim} values")
        }
        // Packed from the tensor's own buffer, without a copy of the weights first
        // (for a ViT-B encoder, 384 MB of fresh pages).
        let weight = weight.contiguous()?;
        let (storage, layout) = weight.storage_and_layout();
        let candle_core::Storage::Cpu(storage) = &*storage else {
            candle_core::bail!("linear: the weight to pack is not on the CPU")
        };
        let w = contiguous_f32(storage, layout, "linear weight")?;
        Ok(Self {
            rhs: PackedRhs::from_linear_weight_for(isa, w, out_dim, in_dim)?,
            bias,
        })
    }
}

/// `x W^T + b` on a layer kept only in packed form ([`PackedLayer::from_linear`]),
/// for `x` `(..., in)` on the CPU in f32 without gradient, any number of rows.
pub fn linear_packed(x: &Tensor, layer: &Arc<PackedLayer>) -> Result<Tensor> {
    check_packed_input(x, layer, None)?;
    apply_packed(x, layer.clone(), Epilogue::None, None)
}

/// `gelu(x W^T + b)` on a packed layer, as [`linear_gelu_cached`] computes it.
pub fn linear_gelu_packed(x: &Tensor, layer: &Arc<PackedLayer>) -> Result<Tensor> {
    check_packed_input(x, layer, None)?;
    apply_packed(x, layer.clone(), Epilogue::Gelu, None)
}

/// `residual + x W^T + b` on a packed layer, as [`linear_add_cached`] computes it.
pub fn linear_add_packed(
    x: &Tensor,
    layer: &Arc<PackedLayer>,
    residual: &Tensor,
) -> Result<Tensor> {
    check_packed_input(x, layer, Some(residual))?;
    apply_packed(x, layer.clone(), Epilogue::None, Some(residual))
}

/// Refuses what a packed layer cannot take: another device or dtype, a gradient
/// (the packed weights are no variable), or shapes that do not agree.
fn check_packed_input(x: &Tensor, layer: &PackedLayer, residual: Option<&Tensor>) -> Result<()> {
    let (k, n) = (layer.rhs.k(), layer.rhs.n());
    if x.dims().last() != Some(&k) {
        candle_core::bail!(
            "linear layer expects {k} input features, got {:?}",
            x.shape()
        )
    }
    let rows = x.elem_count() / k.max(1);
    if !residual_fits(residual, rows, n) {
        candle_core::bail!(
            "linear: residual {:?} is not the output's shape (rows x {n})",
            residual.map(Tensor::shape)
        )
    }
    if !cpu_f32_inference([x].into_iter().chain(residual)) {
        candle_core::bail!(
            "linear: this layer's weights are packed for CPU inference in f32; the input is \
             {:?} on {:?}{}",
            x.dtype(),
            x.device().location(),
            if x.track_op() {
                " and needs a gradient"
            } else {
                ""
            }
        )
    }
    Ok(())
}

/// The packed layer for an inference product of `x` with `weight`, or `None` when
/// the product must take [`linear`] (gradients, another device or dtype, one row,
/// no packed kernel for this CPU, a residual of another shape).
fn packed_layer(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    cache: &PackedCache,
) -> Result<Option<Arc<PackedLayer>>> {
    let (out_dim, in_dim) = weight.dims2()?;
    let rows = x.elem_count() / in_dim.max(1);
    let packable = cache.is_active()
        && rows >= PACKED_MIN_ROWS
        && residual_fits(residual, rows, out_dim)
        && x.dims().last() == Some(&in_dim)
        && cpu_f32_inference([x, weight].into_iter().chain(bias).chain(residual));
    if !packable {
        return Ok(None);
    }
    Ok(cache.get_or_pack(|isa| PackedLayer::from_linear(weight, bias, isa)))
}

/// Whether `residual` (if any) has the shape of a `rows x n` product's output.
fn residual_fits(residual: Option<&Tensor>, rows: usize, n: usize) -> bool {
    residual.is_none_or(|r| r.elem_count() == rows * n && r.dims().last() == Some(&n))
}

/// Runs the packed product on `x` (`(..., in)`), onto `residual` if given.
fn apply_packed(
    x: &Tensor,
    layer: Arc<PackedLayer>,
    epilogue: Epilogue,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (k, n) = (layer.rhs.k(), layer.rhs.n());
    let rows = x.elem_count() / k.max(1);
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    let x2 = x.contiguous()?.reshape((rows, k))?;
    let op = PackedLinear { layer, epilogue };
    let y = match residual {
        Some(r) => x2.apply_op2_no_bwd(&r.contiguous()?.reshape((rows, n))?, &op)?,
        None => x2.apply_op1_no_bwd(&op)?,
    };
    y.reshape(out_dims)
}

/// Rows per parallel task when the bias is added to a residual.
const ROWS_PER_TASK: usize = 64;

/// The CPU linear layer on a packed weight: `x`, and optionally the residual to add.
#[derive(Debug, Clone)]
struct PackedLinear {
    layer: Arc<PackedLayer>,
    epilogue: Epilogue,
}

impl PackedLinear {
    fn forward(
        &self,
        x: &[f32],
        x_layout: &Layout,
        residual: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = x_layout.shape().dims2()?;
        let (k, n) = (self.layer.rhs.k(), self.layer.rhs.n());
        if in_dim != k || residual.is_some_and(|r| r.len() != rows * n) {
            candle_core::bail!(
                "linear: x {:?}, packed weight {n} x {k} and residual of {:?} values do not agree",
                x_layout.dims(),
                residual.map(<[f32]>::len)
            )
        }
        let threads = crate::cpu_kernel::threads();
        let options = ProductOptions::threaded(threads, self.epilogue);
        let left = LeftOperand {
            data: x,
            row_stride: in_dim,
            segment_offsets: &[0],
            grid: None,
        };
        let bias = self.layer.bias.as_deref();
        let Some(residual) = residual else {
            // The sums start from the bias in registers: no pass over the output.
            let out = gemm_packed_new(rows, left, &self.layer.rhs, options.overwrite_with(bias))?;
            return Ok((CpuStorage::F32(out), Shape::from((rows, n))));
        };
        // One parallel pass writes the residual plus the bias; the product adds on.
        let task = n.max(1) * ROWS_PER_TASK;
        let mut out = par_filled(rows * n, task, |index, dst| {
            let src = &residual[index * task..][..dst.len()];
            match bias {
                Some(b) => {
                    for (dst_row, src_row) in dst.chunks_exact_mut(n).zip(src.chunks_exact(n)) {
                        for ((d, &s), &bv) in dst_row.iter_mut().zip(src_row).zip(b) {
                            *d = s + bv;
                        }
                    }
                }
                None => dst.copy_from_slice(src),
            }
            Ok(())
        })?;
        gemm_packed(rows, left, &self.layer.rhs, &mut out, n, options)?;
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }
}

impl candle_core::CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "samus-linear-packed"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(exact(x, x_layout, "linear input")?, x_layout, None)
    }
}

impl CustomOp2 for PackedLinear {
    fn name(&self) -> &'static str {
        "samus-linear-packed-residual"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        r: &CpuStorage,
        r_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x_data = exact(x, x_layout, "linear input")?;
        let r_data = exact(r, r_layout, "linear residual")?;
        self.forward(x_data, x_layout, Some(r_data))
    }
}

/// The fused CPU linear layer on `(x, weight[, bias])`, all contiguous f32.
#[derive(Debug, Clone, Copy)]
struct FusedLinear;

impl FusedLinear {
    fn forward(
        x: &[f32],
        x_layout: &Layout,
        w: &[f32],
        w_layout: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = x_layout.shape().dims2()?;
        let (out_dim, w_in) = w_layout.shape().dims2()?;
        if w_in != in_dim || bias.is_some_and(|b| b.len() != out_dim) {
            candle_core::bail!(
                "linear: x {:?}, weight {:?} and bias {:?} do not agree",
                x_layout.dims(),
                w_layout.dims(),
                bias.map(<[f32]>::len)
            )
        }
        let mut out = match bias {
            Some(b) => b.repeat(rows),
            None => vec![0f32; rows * out_dim],
        };
        if rows <= FEW_ROWS {
            few_rows_product(x, w, in_dim, &mut out);
        } else if out_dim > 0 && in_dim > 0 {
            let parallelism = gemm_parallelism(rows * out_dim * in_dim);
            // SAFETY: `x` is `rows x in_dim`, `w` is `out_dim x in_dim` (read as its
            // transpose through the strides) and `out` is `rows x out_dim`, all
            // contiguous row-major slices of exactly those lengths (checked above and
            // by `contiguous_f32`); `out` is a fresh buffer aliasing neither input.
            unsafe {
                gemm::gemm(
                    rows,
                    out_dim,
                    in_dim,
                    out.as_mut_ptr(),
                    1,
                    out_dim as isize,
                    true,
                    x.as_ptr(),
                    1,
                    in_dim as isize,
                    w.as_ptr(),
                    in_dim as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, out_dim))))
    }
}

/// Up to this many input rows (the decoder's prompt tokens) a linear layer is a dot
/// product per output value: `gemm` would first repack the whole weight matrix, which
/// costs more than the product itself when the weight is read only a few times.
const FEW_ROWS: usize = 16;

/// From this many input rows an inference product takes the packed weights (which
/// are packed once, so the repacking above does not apply), even though half of the
/// register tile's rows are then padding for the decoder's seven prompt tokens: a
/// ViT-B decoder pass took 12.7 ms instead of 13.9 with them as dot products. A
/// single row stays a dot product per output.
const PACKED_MIN_ROWS: usize = 2;

/// `out += x W^T` for `x` `rows x in_dim` with few rows: each weight row is read
/// once, against every input row.
fn few_rows_product(x: &[f32], w: &[f32], in_dim: usize, out: &mut [f32]) {
    if in_dim == 0 {
        return;
    }
    crate::cpu::simd().dispatch(FewRowsKernel { x, w, in_dim, out });
}

/// The vectorised body of [`few_rows_product`].
struct FewRowsKernel<'a> {
    x: &'a [f32],
    w: &'a [f32],
    in_dim: usize,
    out: &'a mut [f32],
}

impl pulp::WithSimd for FewRowsKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let out_dim = self.w.len() / self.in_dim;
        for (o, w_row) in self.w.chunks_exact(self.in_dim).enumerate() {
            for (r, x_row) in self.x.chunks_exact(self.in_dim).enumerate() {
                self.out[r * out_dim + o] += dot(simd, x_row, w_row);
            }
        }
    }
}

/// Independent vectors of partial sums in [`dot`], so that consecutive
/// multiply-adds do not wait on each other.
const DOT_CHAINS: usize = 4;

/// The dot product of two equally long slices, in `simd`'s vectors.
#[inline(always)]
fn dot<S: pulp::Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (a_vecs, a_tail) = S::as_simd_f32s(a);
    let (b_vecs, b_tail) = S::as_simd_f32s(b);
    let mut chains = [simd.splat_f32s(0.0); DOT_CHAINS];
    let (a_groups, b_groups) = (
        a_vecs.chunks_exact(DOT_CHAINS),
        b_vecs.chunks_exact(DOT_CHAINS),
    );
    let rest = a_groups.remainder().iter().zip(b_groups.remainder());
    for (ga, gb) in a_groups.zip(b_groups) {
        for ((chain, &va), &vb) in chains.iter_mut().zip(ga).zip(gb) {
            *chain = simd.mul_add_e_f32s(va, vb, *chain);
        }
    }
    for (&va, &vb) in rest {
        chains[0] = simd.mul_add_e_f32s(va, vb, chains[0]);
    }
    let sum = chains
        .iter()
        .fold(simd.splat_f32s(0.0), |acc, &c| simd.add_f32s(acc, c));
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(p, q)| p * q).sum();
    simd.reduce_sum_f32s(sum) + tail
}

/// Checks that a contiguous operand holds exactly its shape's elements.
fn exact<'a>(storage: &'a CpuStorage, layout: &Layout, name: &str) -> Result<&'a [f32]> {
    let data = contiguous_f32(storage, layout, name)?;
    if data.len() != layout.shape().elem_count() {
        candle_core::bail!(
            "linear: {name} has {} elements for shape {:?}",
            data.len(),
            layout.dims()
        )
    }
    Ok(data)
}

impl CustomOp2 for FusedLinear {
    fn name(&self) -> &'static str {
        "samus-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x_data = exact(x, x_layout, "linear input")?;
        let w_data = exact(w, w_layout, "linear weight")?;
        Self::forward(x_data, x_layout, w_data, w_layout, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        linear_gradients(x, w, grad)
    }
}

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "samus-linear-bias"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x_data = exact(x, x_layout, "linear input")?;
        let w_data = exact(w, w_layout, "linear weight")?;
        let b_data = exact(b, b_layout, "linear bias")?;
        Self::forward(x_data, x_layout, w_data, w_layout, Some(b_data))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (d_x, d_w) = linear_gradients(x, w, grad)?;
        // The bias's gradient sums the rows: a product with a row of ones, which
        // runs in the matrix kernels (candle's `sum(0)` reduces along a stride).
        let d_b = if b.track_op() {
            let grad = grad.detach();
            let ones = Tensor::ones((1, grad.dim(0)?), grad.dtype(), grad.device())?;
            Some(ones.matmul(&grad.contiguous()?)?.squeeze(0)?)
        } else {
            None
        };
        Ok((d_x, d_w, d_b))
    }
}

/// The input and weight gradients of `y = x W^T` for `x` `rows x in`: `dy W` and
/// `dy^T x`, each only where it is needed.
fn linear_gradients(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let grad = grad.detach().contiguous()?;
    let d_x = if x.track_op() {
        Some(grad.matmul(&w.detach())?)
    } else {
        None
    };
    let d_w = if w.track_op() {
        Some(grad.t()?.matmul(&x.detach())?)
    } else {
        None
    };
    Ok((d_x, d_w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    fn composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let (out_dim, in_dim) = w.dims2().unwrap();
        let mut dims = x.dims().to_vec();
        *dims.last_mut().unwrap() = out_dim;
        let rows = x.elem_count() / in_dim;
        let y = x
            .reshape((rows, in_dim))
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap();
        let y = match b {
            Some(b) => y.broadcast_add(b).unwrap(),
            None => y,
        };
        y.reshape(dims).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The few-rows path (dot products, no `gemm`) against candle's product, with
        /// widths that exercise both the vector blocks and the tail of each dot.
        #[test]
        fn few_rows_match_composed(rows in 1usize..=FEW_ROWS, in_dim in 1usize..300, out_dim in 1usize..40, with_bias: bool) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (rows, in_dim), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out_dim, &dev).unwrap();
            let b = with_bias.then_some(&b);
            let got = linear(&x, &w, b).unwrap();
            let want = composed(&x, &w, b);
            let diff = (&got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-3, "max difference {diff}");
        }

        #[test]
        fn fused_matches_composed(batch in 1usize..4, rows in 1usize..40, in_dim in 1usize..70, out_dim in 1usize..70, with_bias: bool, seed in 0u64..1000) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (batch, rows, in_dim), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out_dim, &dev).unwrap();
            let _ = seed;
            let b = with_bias.then_some(&b);
            let got = linear(&x, &w, b).unwrap();
            let want = composed(&x, &w, b);
            prop_assert_eq!(got.dims(), want.dims());
            let diff = (&got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "max difference {diff}");
        }
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// The packed-weight layers (plain, with GELU, onto a residual) against
        /// candle's composed operations, called twice so that the second call reads
        /// the cached packing.
        #[test]
        fn cached_layers_match_composed(batch in 1usize..3, rows in 17usize..60, in_dim in 1usize..500, out_dim in 1usize..70, with_bias: bool) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (batch, rows, in_dim), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out_dim, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (batch, rows, out_dim), &dev).unwrap();
            let b = with_bias.then_some(&b);
            let want = composed(&x, &w, b);
            let tolerance = 1e-4 * (in_dim as f32).sqrt();
            // Every kernel this CPU has, each through its own cache.
            for isa in crate::cpu::Isa::supported() {
                let cache = PackedCache::for_isa(isa);
                for _ in 0..2 {
                    let plain = linear_cached(&x, &w, b, &cache).unwrap();
                    prop_assert_eq!(plain.dims(), want.dims());
                    prop_assert!(max_difference(&plain, &want) < tolerance, "{isa}");
                    let gelu = linear_gelu_cached(&x, &w, b, &cache).unwrap();
                    prop_assert!(max_difference(&gelu, &crate::gelu(&want).unwrap()) < tolerance, "{isa}");
                    let added = linear_add_cached(&x, &w, b, &r, &cache).unwrap();
                    prop_assert!(max_difference(&added, &(&r + &want).unwrap()) < tolerance, "{isa}");
                }
                // The packed path ran (the layer was packed for this kernel).
                let layer = cache.get_or_pack(|_| candle_core::bail!("not packed"));
                prop_assert_eq!(layer.map(|l| l.rhs.isa()), Some(isa));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Layers kept only in packed form against candle's composed operations,
        /// from one row (which the cached path leaves to dot products) up, on every
        /// kernel this CPU has.
        #[test]
        fn packed_only_layers_match_composed(rows in 1usize..40, in_dim in 1usize..400, out_dim in 1usize..70, with_bias: bool) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (1, rows, in_dim), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out_dim, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (1, rows, out_dim), &dev).unwrap();
            let b = with_bias.then_some(&b);
            let want = composed(&x, &w, b);
            let tolerance = 1e-4 * (in_dim as f32).sqrt();
            for isa in crate::cpu::Isa::supported() {
                let layer = Arc::new(PackedLayer::from_linear(&w, b, isa).unwrap());
                prop_assert_eq!(layer.rhs.isa(), isa);
                let plain = linear_packed(&x, &layer).unwrap();
                prop_assert_eq!(plain.dims(), want.dims());
                prop_assert!(max_difference(&plain, &want) < tolerance, "{isa}");
                let gelu = linear_gelu_packed(&x, &layer).unwrap();
                prop_assert!(max_difference(&gelu, &crate::gelu(&want).unwrap()) < tolerance, "{isa}");
                let added = linear_add_packed(&x, &layer, &r).unwrap();
                prop_assert!(max_difference(&added, &(&r + &want).unwrap()) < tolerance, "{isa}");
            }
        }
    }

    #[test]
    fn packed_only_layers_refuse_what_they_cannot_compute() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let layer = Arc::new(PackedLayer::from_linear(&w, None, crate::cpu::Isa::Scalar).unwrap());
        let wide = Tensor::zeros((2, 5), candle_core::DType::F32, &dev).unwrap();
        let err = linear_packed(&wide, &layer).unwrap_err().to_string();
        assert!(err.contains("expects 4 input features"), "{err}");
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        let residual = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        let err = linear_add_packed(&x, &layer, &residual)
            .unwrap_err()
            .to_string();
        assert!(err.contains("residual"), "{err}");
        let var = Var::from_tensor(&x).unwrap();
        let err = linear_packed(var.as_tensor(), &layer)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a gradient"), "{err}");
        let half = x.to_dtype(candle_core::DType::F16).unwrap();
        let err = linear_gelu_packed(&half, &layer).unwrap_err().to_string();
        assert!(err.contains("packed for CPU inference in f32"), "{err}");
    }

    #[test]
    fn cached_layers_with_variables_keep_their_gradients() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap()).unwrap();
        let x = Tensor::randn(0f32, 1.0, (32, 4), &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (32, 3), &dev).unwrap();
        let cache = PackedCache::default();
        for y in [
            linear_cached(&x, w.as_tensor(), None, &cache).unwrap(),
            linear_gelu_cached(&x, w.as_tensor(), None, &cache).unwrap(),
            linear_add_cached(&x, w.as_tensor(), None, &r, &cache).unwrap(),
        ] {
            let grads = y.sum_all().unwrap().backward().unwrap();
            assert!(grads.get(w.as_tensor()).is_some());
        }
        // Nothing was packed for the variable.
        assert!(cache
            .get_or_pack(|_| candle_core::bail!("not packed before"))
            .is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The fused layer's backward (input, weight, bias; few and many rows; with
        /// the input or the weight alone trainable) equals candle's on the composed
        /// product.
        #[test]
        fn fused_gradients_match_composed(rows in 1usize..70, in_dim in 1usize..40, out_dim in 1usize..40, with_bias: bool, trainable in 0usize..3) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (2, rows, in_dim), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out_dim, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (2, rows, out_dim), &dev).unwrap();
            let run = |fused: bool| {
                let (xv, wv, bv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
                // 0: everything trainable; 1: only the input; 2: only the weight.
                let xt = if trainable == 2 { x.clone() } else { xv.as_tensor().clone() };
                let wt = if trainable == 1 { w.clone() } else { wv.as_tensor().clone() };
                let bias = with_bias.then(|| if trainable == 0 { bv.as_tensor().clone() } else { b.clone() });
                let y = if fused { linear(&xt, &wt, bias.as_ref()).unwrap() } else { composed(&xt, &wt, bias.as_ref()) };
                let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let grad = |v: &Var| grads.get(v.as_tensor()).cloned();
                (y, [grad(&xv), grad(&wv), grad(&bv)])
            };
            let (y1, g1) = run(true);
            let (y2, g2) = run(false);
            let max = |t: Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(max((y1 - y2).unwrap()) < 1e-4);
            for (name, (a, b)) in ["x", "weight", "bias"].iter().zip(g1.into_iter().zip(g2)) {
                prop_assert_eq!(a.is_some(), b.is_some(), "{} gradient present on one side only", name);
                if let (Some(a), Some(b)) = (a, b) {
                    let d = max((a - b).unwrap());
                    prop_assert!(d < 1e-3, "{} gradient differs by {}", name, d);
                }
            }
        }
    }

    #[test]
    fn gradients_flow_through_the_composed_path() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap()).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 4), &dev).unwrap();
        let y = linear(&x, w.as_tensor(), None).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(w.as_tensor()).is_some());
    }

    #[test]
    fn a_wrong_input_width_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 5), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 4), candle_core::DType::F32, &dev).unwrap();
        assert!(linear(&x, &w, None).is_err());
    }
}
