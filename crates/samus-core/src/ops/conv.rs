//! Convolutions written as matrix products, so that their backward pass is matrix
//! products too.
//!
//! candle's convolution backward goes through its transposed convolution, which is
//! slow on the CPU. Here a 3x3 "same" convolution on the CPU in f32 is nine shifted
//! products over the zero-padded input, one operation with its own backward: the
//! input's gradient is the same convolution of the output's gradient with the
//! kernel transposed and turned, the kernel's gradient nine shifted products of the
//! padded input with the gradient. Elsewhere it unfolds its input into columns
//! (`im2col`, whose backward is the matching fold, `col2im`) and multiplies them
//! with the kernel. The channels-last form ([`conv3x3_same_nhwc`]) needs no layout
//! copies at all: the CNN branch of SAMUS runs in it. Without a gradient, the
//! channels-first form ([`conv3x3_same`]) runs candle's own kernel.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use std::sync::Arc;

use crate::cpu_kernel::{contiguous_f32, cpu_f32_inference, gemm_parallelism, par_filled};
use crate::packed::{
    gemm_packed_new, gemm_packed_uninit, Epilogue, LeftOperand, PackedCache, PackedLayer,
    PackedRhs, ProductOptions,
};

/// Side of the kernels of [`conv3x3_same`] and [`conv3x3_same_nhwc`].
const KERNEL: usize = 3;
/// Number of taps of a 3x3 kernel.
const TAPS: usize = KERNEL * KERNEL;

/// Conv2d with a `O x C x 3 x 3` kernel, stride 1, padding 1, no bias, on an NCHW
/// tensor.
pub fn conv3x3_same(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !x.track_op() && !weight.track_op() {
        return x.conv2d(weight, 1, 1, 1, 1);
    }
    let nhwc = x.permute((0, 2, 3, 1))?.contiguous()?;
    conv3x3_same_nhwc(&nhwc, weight)?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

/// Conv2d with a `O x C x 3 x 3` kernel (PyTorch's layout), stride 1, padding 1, no
/// bias, on a channels-last `N x H x W x C` tensor; returns `N x H x W x O`.
///
/// The input is unfolded into `(N H W) x (9 C)` columns and multiplied with the
/// kernel rearranged to `(9 C) x O`: one matrix product forward, two backward.
pub fn conv3x3_same_nhwc(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    conv3x3_same_nhwc_cached(x, weight, None)
}

/// [`conv3x3_same_nhwc`] that, without a gradient on a CPU with a packed kernel
/// ([`PackedCache::is_active`]: AVX-512 or AVX2), packs the
/// kernel once into `cache` for the matrix product of [`crate::packed`] (nine
/// shifted segments of one product, the kernel read in its packed order).
pub fn conv3x3_same_nhwc_cached(
    x: &Tensor,
    weight: &Tensor,
    cache: Option<&PackedCache>,
) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (o, wc, kh, kw) = weight.dims4()?;
    if (wc, kh, kw) != (c, KERNEL, KERNEL) {
        candle_core::bail!(
            "conv3x3_same_nhwc: kernel {:?} does not fit channels-last input {:?}",
            weight.dims(),
            x.dims()
        )
    }
    let on_cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if on_cpu_f32 {
        let (x, weight) = (x.contiguous()?, weight.contiguous()?);
        if !x.track_op() && !weight.track_op() {
            let packed = packed_conv3x3(&weight, cache)?;
            return x.apply_op2_no_bwd(&weight, &ShiftedConv3x3 { packed });
        }
        // Training: the kernel changes at every step, so it is packed afresh.
        let packed = packed_conv3x3(&weight, Some(&PackedCache::default()))?;
        return x.apply_op2(&weight, ShiftedConv3x3 { packed });
    }
    // Column index (ky * 3 + kx) * C + c, matching the unfolding below.
    let kernel = weight.permute((0, 2, 3, 1))?.reshape((o, TAPS * c))?;
    im2col3x3_nhwc(x)?
        .matmul(&kernel.t()?)?
        .reshape((n, h, w, o))
}

/// `weight` packed for the CPU's product into `cache` (once per cache), where the
/// CPU has a packed kernel.
fn packed_conv3x3(
    weight: &Tensor,
    cache: Option<&PackedCache>,
) -> Result<Option<Arc<PackedLayer>>> {
    let (o, c, _, _) = weight.dims4()?;
    Ok(cache.filter(|cache| cache.is_active()).and_then(|cache| {
        cache.get_or_pack(|isa| {
            let data = weight.flatten_all()?.to_vec1::<f32>()?;
            Ok(PackedLayer {
                rhs: PackedRhs::from_conv3x3_weight_for(isa, &data, o, c)?,
                bias: None,
            })
        })
    }))
}

/// The inference form of [`conv3x3_same_nhwc`] on the CPU: nine matrix products
/// accumulated into one output, each reading the zero-padded input shifted by one
/// tap, with no unfolded copy (nine times the input) in memory.
///
/// The output is computed on rows of `W + 2` pixels, the padded width: then output
/// pixel `p` of tap `(ky, kx)` reads padded pixel `p + ky (W + 2) + kx`, a single
/// stride for the whole image, so each tap is one product of `H (W + 2) x C` by
/// `C x O`; the two extra pixels of every row are dropped at the end. The kernel is
/// read in PyTorch's `O x C x 3 x 3` layout through strides.
///
/// With a packed kernel the nine taps are the nine segments of one
/// [`gemm_packed`] product (grouped into blocks when the channels are few), read on
/// the real pixels only, straight into the output.
#[derive(Debug, Clone)]
struct ShiftedConv3x3 {
    packed: Option<Arc<PackedLayer>>,
}

impl candle_core::CustomOp2 for ShiftedConv3x3 {
    fn name(&self) -> &'static str {
        "samus-conv3x3-shifted"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_layout, "conv3x3")?;
        let w = contiguous_f32(w, w_layout, "conv3x3 kernel")?;
        let (n, h, width, c) = x_layout.shape().dims4()?;
        let (o, wc, kh, kw) = w_layout.shape().dims4()?;
        if (wc, kh, kw) != (c, KERNEL, KERNEL)
            || x.len() != n * h * width * c
            || w.len() != o * c * TAPS
        {
            candle_core::bail!(
                "conv3x3: kernel {:?} does not fit input {:?}",
                w_layout.dims(),
                x_layout.dims()
            )
        }
        let wide = width + 2;
        // One padded image plus two pixels, so that the last taps of the last row
        // (which only feed the dropped columns) stay inside the buffer.
        let padded_len = ((h + 2) * wide + 2) * c;
        if n * h * width * o == 0 || c == 0 {
            let out = vec![0f32; n * h * width * o];
            return Ok((CpuStorage::F32(out), Shape::from((n, h, width, o))));
        }
        let mut padded = vec![0f32; padded_len];
        let shifts: [usize; TAPS] =
            std::array::from_fn(|tap| ((tap / KERNEL) * wide + tap % KERNEL) * c);
        if let Some(packed) = &self.packed {
            // The h x w real pixels read inside the padded image (a grid), straight
            // into the output: no dropped columns, no copy (but for a batch).
            let options = ProductOptions::threaded(crate::cpu_kernel::threads(), Epilogue::None)
                .overwrite_with(None);
            let (image_len, out_len) = (h * width * c, h * width * o);
            let mut out = Vec::with_capacity(n * out_len);
            for (image, dst) in x
                .chunks_exact(image_len)
                .zip(out.spare_capacity_mut().chunks_exact_mut(out_len))
            {
                pad_image(image, (width, c), &mut padded);
                let left = LeftOperand {
                    data: &padded,
                    row_stride: c,
                    segment_offsets: &shifts,
                    grid: Some((width, wide)),
                };
                gemm_packed_uninit(h * width, left, &packed.rhs, dst, options)?;
            }
            // SAFETY: the loop wrote all n images' outputs (each `gemm_packed_uninit`
            // that returned writes its whole part; an error returns above).
            unsafe { out.set_len(n * out_len) };
            return Ok((CpuStorage::F32(out), Shape::from((n, h, width, o))));
        }
        let mut out = vec![0f32; n * h * width * o];
        let parallelism = gemm_parallelism(h * wide * o * c);
        let mut wide_out = vec![0f32; h * wide * o];
        for (image, out_image) in x
            .chunks_exact(h * width * c)
            .zip(out.chunks_exact_mut(h * width * o))
        {
            pad_image(image, (width, c), &mut padded);
            for (tap, &shift) in shifts.iter().enumerate() {
                // The rows read: h * wide pixels of c values from `shift`.
                if shift + h * wide * c > padded.len() {
                    candle_core::bail!("conv3x3: internal padding too small")
                }
                // SAFETY: lhs reads rows `shift + p * c .. + c` for p < h * wide, inside
                // `padded` (checked above); rhs reads `w[o * 9 c + ci * 9 + tap]` for
                // o < O, ci < c, inside `w` (its length is o * c * 9, checked above);
                // dst is the distinct buffer `wide_out` of exactly h * wide * o values.
                unsafe {
                    gemm::gemm(
                        h * wide,
                        o,
                        c,
                        wide_out.as_mut_ptr(),
                        1,
                        o as isize,
                        tap > 0,
                        padded.as_ptr().add(shift),
                        1,
                        c as isize,
                        w.as_ptr().add(tap),
                        (c * TAPS) as isize,
                        TAPS as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
            }
            for (y, out_row) in out_image.chunks_exact_mut(width * o).enumerate() {
                let start = y * wide * o;
                out_row.copy_from_slice(&wide_out[start..start + width * o]);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, h, width, o))))
    }

    /// The input's gradient is the convolution of the output's gradient with the
    /// kernel transposed and turned by 180 degrees (the same shifted products);
    /// the kernel's gradient is one product of the unfolded input with the output's
    /// gradient. Gradients that nothing needs (the image's) are not computed.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let o = weight.dim(0)?;
        let grad = grad.detach().contiguous()?;
        let d_x = if x.track_op() {
            let turned = weight
                .detach()
                .transpose(0, 1)?
                .contiguous()?
                .flip(&[2, 3])?;
            Some(conv3x3_same_nhwc_cached(
                &grad,
                &turned,
                Some(&PackedCache::default()),
            )?)
        } else {
            None
        };
        let d_weight = if weight.track_op() {
            Some(
                x.detach()
                    .apply_op2_no_bwd(&grad, &Conv3x3KernelGradient { o })?,
            )
        } else {
            None
        };
        Ok((d_x, d_weight))
    }
}

/// The kernel gradient of [`ShiftedConv3x3`] from its input `N x H x W x C` and the
/// output's gradient `N x H x W x O`: `O x C x 3 x 3`.
///
/// Tap `(ky, kx)` of the kernel gradient is `sum_p x[p + shift]^T g[p]` over the
/// pixels: with the input zero padded and the gradient laid out on rows of `W + 2`
/// pixels (the two extra ones zero), each tap is one product of the padded input
/// read from its shift (`C x H (W + 2)`) with the wide gradient, as in the forward.
/// The nine taps run in parallel. Against the unfolded `(N H W) x 9 C` copy and one
/// product it replaces, this writes no column buffer nine times the input (151 MB
/// for the second stage of the tiny CNN branch at a batch of 4).
#[derive(Debug, Clone, Copy)]
struct Conv3x3KernelGradient {
    o: usize,
}

impl candle_core::CustomOp2 for Conv3x3KernelGradient {
    fn name(&self) -> &'static str {
        "samus-conv3x3-kernel-gradient"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_layout, "conv3x3 kernel gradient")?;
        let g = contiguous_f32(g, g_layout, "conv3x3 kernel gradient")?;
        let (n, h, width, c) = x_layout.shape().dims4()?;
        let o = self.o;
        if g_layout.shape().dims() != [n, h, width, o] {
            candle_core::bail!(
                "conv3x3 kernel gradient: gradient {:?} for input {:?}",
                g_layout.dims(),
                x_layout.dims()
            )
        }
        if n * h * width * c * o == 0 {
            let out = vec![0f32; o * c * TAPS];
            return Ok((CpuStorage::F32(out), Shape::from((o, c, KERNEL, KERNEL))));
        }
        let wide = width + 2;
        let padded_len = ((h + 2) * wide + 2) * c;
        let pixels = h * wide;
        let mut padded = vec![0f32; n * padded_len];
        let mut wide_grad = vec![0f32; n * pixels * o];
        padded
            .par_chunks_mut(padded_len)
            .zip(x.par_chunks(h * width * c))
            .for_each(|(padded, image)| pad_image(image, (width, c), padded));
        wide_grad
            .par_chunks_mut(pixels * o)
            .zip(g.par_chunks(h * width * o))
            .for_each(|(dst, src)| {
                for (row, src_row) in dst
                    .chunks_exact_mut(wide * o)
                    .zip(src.chunks_exact(width * o))
                {
                    row[..width * o].copy_from_slice(src_row);
                }
            });
        let taps = (0..TAPS)
            .into_par_iter()
            .map(|tap| {
                let shift = ((tap / KERNEL) * wide + tap % KERNEL) * c;
                let mut d_tap = vec![0f32; c * o];
                for (image, grad) in padded
                    .chunks_exact(padded_len)
                    .zip(wide_grad.chunks_exact(pixels * o))
                {
                    if shift + pixels * c > image.len() {
                        candle_core::bail!("conv3x3 kernel gradient: internal padding too small")
                    }
                    // SAFETY: lhs reads `image[shift + p * c + ci]` for p < pixels,
                    // ci < c, inside `image` (checked above); rhs reads
                    // `grad[p * o + j]`, p < pixels, j < o: exactly `grad`; dst is the
                    // task's own `c x o` buffer.
                    unsafe {
                        gemm::gemm(
                            c,
                            o,
                            pixels,
                            d_tap.as_mut_ptr(),
                            1,
                            o as isize,
                            true,
                            image.as_ptr().add(shift),
                            c as isize,
                            1,
                            grad.as_ptr(),
                            1,
                            o as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
                Ok(d_tap)
            })
            .collect::<Result<Vec<_>>>()?;
        // (tap, c, o) -> PyTorch's (o, c, ky, kx).
        let mut out = vec![0f32; o * c * TAPS];
        for (tap, d_tap) in taps.iter().enumerate() {
            for (ci, row) in d_tap.chunks_exact(o.max(1)).enumerate() {
                for (oi, &v) in row.iter().enumerate() {
                    out[(oi * c + ci) * TAPS + tap] = v;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((o, c, KERNEL, KERNEL))))
    }
}

/// Copies a channels-last image (`width` pixels of `c` values per row) into the
/// inside of `padded`, whose rows are `width + 2` pixels with one pixel of zeros
/// around the image (the border is never written, so it stays zero).
fn pad_image(image: &[f32], (width, c): (usize, usize), padded: &mut [f32]) {
    let wide = width + 2;
    for (y, row) in image.chunks_exact((width * c).max(1)).enumerate() {
        let start = ((y + 1) * wide + 1) * c;
        padded[start..start + width * c].copy_from_slice(row);
    }
}

/// Unfolds the 3x3 neighbourhoods (zero padded) of a channels-last `N x H x W x C`
/// tensor into `(N H W) x (9 C)` columns, tap-major: column `(ky * 3 + kx) * C + c`
/// of row `(n, y, x)` holds `x[n, y + ky - 1, x + kx - 1, c]`.
pub fn im2col3x3_nhwc(x: &Tensor) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(Im2Col3x3);
    }
    // Elsewhere: nine shifted views of the padded input (differentiable as well).
    let padded = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut shifts = Vec::with_capacity(TAPS);
    for dy in 0..KERNEL {
        for dx in 0..KERNEL {
            shifts.push(padded.narrow(1, dy, h)?.narrow(2, dx, w)?);
        }
    }
    Tensor::stack(&shifts, 3)?.reshape((n * h * w, TAPS * c))
}

/// Source row/column of tap `k` (0, 1, 2) for output position `p`, if inside `0..len`.
fn tap_source(p: usize, k: usize, len: usize) -> Option<usize> {
    (p + k).checked_sub(1).filter(|&s| s < len)
}

/// The unfolding of [`im2col3x3_nhwc`] as one CPU operation; its backward is
/// [`Col2Im3x3`].
#[derive(Debug, Clone, Copy)]
struct Im2Col3x3;

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "samus-im2col-3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "im2col")?;
        let (n, h, w, c) = layout.shape().dims4()?;
        let mut cols = vec![0f32; n * h * w * TAPS * c];
        if !cols.is_empty() {
            cols.par_chunks_mut(w * TAPS * c)
                .enumerate()
                .for_each(|(row, out)| {
                    let (b, y) = (row / h, row % h);
                    for xo in 0..w {
                        for ky in 0..KERNEL {
                            let Some(sy) = tap_source(y, ky, h) else {
                                continue;
                            };
                            for kx in 0..KERNEL {
                                let Some(sx) = tap_source(xo, kx, w) else {
                                    continue;
                                };
                                let src = ((b * h + sy) * w + sx) * c;
                                let dst = (xo * TAPS + ky * KERNEL + kx) * c;
                                out[dst..dst + c].copy_from_slice(&x[src..src + c]);
                            }
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(cols), Shape::from((n * h * w, TAPS * c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, h, w, c) = arg.dims4()?;
        let fold = Col2Im3x3 { n, h, w, c };
        Ok(Some(grad.contiguous()?.apply_op1(fold)?))
    }
}

/// The adjoint of [`Im2Col3x3`]: sums every column entry back onto the input pixel
/// it was copied from.
#[derive(Debug, Clone, Copy)]
struct Col2Im3x3 {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
}

impl CustomOp1 for Col2Im3x3 {
    fn name(&self) -> &'static str {
        "samus-col2im-3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(storage, layout, "col2im")?;
        let Self { n, h, w, c } = *self;
        if layout.shape().dims() != [n * h * w, TAPS * c] {
            candle_core::bail!(
                "col2im: columns {:?} do not unfold a {n}x{h}x{w}x{c} tensor",
                layout.shape()
            )
        }
        let mut x = vec![0f32; n * h * w * c];
        if !x.is_empty() {
            x.par_chunks_mut(w * c).enumerate().for_each(|(row, out)| {
                let (b, y) = (row / h, row % h);
                for xo in 0..w {
                    let dst = &mut out[xo * c..(xo + 1) * c];
                    // Pixel (y, x) was copied by tap (ky, kx) of output (y + 1 - ky, x + 1 - kx).
                    for ky in 0..KERNEL {
                        let Some(oy) = (y + 1).checked_sub(ky).filter(|&v| v < h) else {
                            continue;
                        };
                        for kx in 0..KERNEL {
                            let Some(ox) = (xo + 1).checked_sub(kx).filter(|&v| v < w) else {
                                continue;
                            };
                            let src = (((b * h + oy) * w + ox) * TAPS + ky * KERNEL + kx) * c;
                            for (d, s) in dst.iter_mut().zip(&cols[src..src + c]) {
                                *d += s;
                            }
                        }
                    }
                }
            });
        }
        Ok((CpuStorage::F32(x), Shape::from((n, h, w, c))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Im2Col3x3)?))
    }
}

/// Conv2d with no padding whose square kernel `O x C x K x K` is a whole number `m`
/// of strides (`K = m * stride`, SAM's 16x16 patch kernel at a stride of 8) on an
/// NCHW input whose sides are whole strides, as one unfolding and one matrix
/// product: returns the channels-last `N x G x G x O`, `G = side / stride - m + 1`.
///
/// Every operation is a candle one, so both sides are differentiable; the weight's
/// gradient is one matrix product. candle's convolution backward computes the
/// input's gradient through its transposed convolution even when the input needs
/// none (the image): a tiny SAMUS patch embedding took 0.10 s of backward for a
/// batch of 4 through it, against 5 ms in PyTorch.
pub fn conv_whole_strides_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (o, wc, kh, kw) = weight.dims4()?;
    let whole = |len: usize| stride > 0 && len.is_multiple_of(stride) && len >= kh;
    if wc != c || kh != kw || !whole(kh) || !whole(h) || h != w {
        candle_core::bail!(
            "conv_whole_strides_nhwc: kernel {:?} at stride {stride} does not fit input {:?}",
            weight.dims(),
            x.dims()
        )
    }
    let (m, blocks) = (kh / stride, h / stride);
    let g = blocks - m + 1;
    // Input as blocks of stride x stride pixels: (n, c, by, iy, bx, ix); output
    // (gy, gx) reads blocks gy..gy + m and gx..gx + m.
    let grid = x.reshape((n, c, blocks, stride, blocks, stride))?;
    let mut taps = Vec::with_capacity(m * m);
    for dy in 0..m {
        for dx in 0..m {
            taps.push(grid.narrow(2, dy, g)?.narrow(4, dx, g)?);
        }
    }
    // (dy, dx, n, c, gy, iy, gx, ix) -> (n, gy, gx, c, dy, iy, dx, ix): columns in
    // the kernel's own (c, ky, kx) order, ky = dy * stride + iy.
    let columns = Tensor::stack(&taps, 0)?
        .reshape(vec![m, m, n, c, g, stride, g, stride])?
        .permute(vec![2, 4, 6, 3, 0, 5, 1, 7])?
        .contiguous()?
        .reshape((n * g * g, c * kh * kw))?;
    let y = columns.matmul(&weight.reshape((o, c * kh * kw))?.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    y.reshape((n, g, g, o))
}

/// Conv2d with a `O x C x 1 x 1` kernel (no bias): a matrix product over the channels.
pub fn conv1x1(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !x.track_op() && !weight.track_op() {
        return x.conv2d(weight, 0, 1, 1, 1);
    }
    let (n, c, h, w) = x.dims4()?;
    let (o, wc, _, _) = weight.dims4()?;
    if wc != c {
        candle_core::bail!(
            "conv1x1: kernel {:?} does not fit input {:?}",
            weight.dims(),
            x.dims()
        )
    }
    weight
        .reshape((o, c))?
        .broadcast_matmul(&x.contiguous()?.reshape((n, c, h * w))?)?
        .reshape((n, o, h, w))
}

/// The output channels `O` of a transposed-convolution kernel `C x O x 2 x 2` for an
/// input `x` of `c` channels, or an error of operation `op` naming both shapes.
fn transposed_2x2_outputs(op: &str, x: &Tensor, c: usize, weight: &Tensor) -> Result<usize> {
    let (wc, o, kh, kw) = weight.dims4()?;
    if (wc, kh, kw) != (c, 2, 2) {
        candle_core::bail!(
            "{op}: kernel {:?} does not fit input {:?}",
            weight.dims(),
            x.dims()
        )
    }
    Ok(o)
}

/// ConvTranspose2d with a `C x O x 2 x 2` kernel and stride 2 (plus a bias of `O`):
/// every input pixel writes its own 2 x 2 output block, so it is one matrix product
/// and a rearrangement.
pub fn conv_transpose2x2(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let o = transposed_2x2_outputs("conv_transpose2x2", x, c, weight)?;
    // (O * 4, C) x (N, C, H * W) -> (N, O, 2, 2, H, W) -> (N, O, H, 2, W, 2).
    let blocks = weight
        .reshape((c, o * 4))?
        .t()?
        .broadcast_matmul(&x.contiguous()?.reshape((n, c, h * w))?)?
        .reshape((n, o, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((n, o, 2 * h, 2 * w))?;
    match bias {
        Some(b) => blocks.broadcast_add(&b.reshape((1, o, 1, 1))?),
        None => Ok(blocks),
    }
}

/// [`conv_transpose2x2`] on channels-last tensors: `x` `N x H x W x C`, `weight`
/// `C x O x 2 x 2` (PyTorch's layout) and a bias of `O`; returns `N x 2H x 2W x O`.
///
/// It is one linear layer to the four output pixels of each input pixel,
/// `(N H W) x (2 2 O)`, and one copy that interleaves them: each input pixel's output
/// row of two pixels is `2 O` contiguous values, so the copy moves whole blocks
/// (the NCHW form moves single values). Differentiable: composed of candle operations
/// and [`linear`](crate::linear::linear).
pub fn conv_transpose2x2_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let o = transposed_2x2_outputs("conv_transpose2x2_nhwc", x, c, weight)?;
    // Rows of the linear weight are the output values of one input pixel, ordered
    // (kernel row, kernel column, output channel).
    let kernel = weight.permute((2, 3, 1, 0))?.reshape((4 * o, c))?;
    let bias = bias.map(|b| b.repeat(4)).transpose()?;
    crate::linear::linear(x, &kernel, bias.as_ref())?
        .reshape((n, h, w, 2, 2 * o))?
        .transpose(2, 3)?
        .contiguous()?
        .reshape((n, 2 * h, 2 * w, o))
}

/// [`conv_transpose2x2_nhwc`] followed by `epilogue` that, without a gradient on a
/// CPU with a packed kernel (AVX-512 or AVX2), packs the kernel (and the bias repeated for the four taps) once
/// into `cache`: one packed product over the pixels, the epilogue applied to each
/// output tile in the cache, then one parallel pass that writes every 2 x 2 block
/// into its place (instead of the kernel rearranged on every call, an unpacked
/// product and a transposing copy).
pub fn conv_transpose2x2_nhwc_cached(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cache: &PackedCache,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let o = transposed_2x2_outputs("conv_transpose2x2_nhwc", x, c, weight)?;
    let packable = cache.is_active() && cpu_f32_inference([x, weight].into_iter().chain(bias));
    let packed = packable
        .then(|| {
            cache.get_or_pack(|isa| {
                // Column (ky * 2 + kx) * O + o of the product.
                let kernel = weight.permute((2, 3, 1, 0))?.reshape((4 * o, c))?;
                Ok(PackedLayer {
                    rhs: PackedRhs::from_linear_weight_for(
                        isa,
                        &kernel.flatten_all()?.to_vec1::<f32>()?,
                        4 * o,
                        c,
                    )?,
                    bias: bias.map(|b| b.repeat(4)?.to_vec1::<f32>()).transpose()?,
                })
            })
        })
        .flatten();
    let Some(layer) = packed.filter(|_| n * h * w * o > 0) else {
        let y = conv_transpose2x2_nhwc(x, weight, bias)?;
        return match epilogue {
            Epilogue::None => Ok(y),
            Epilogue::Gelu => crate::activation::gelu(&y),
        };
    };
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("conv_transpose2x2_nhwc: the input is not on the CPU")
    };
    let data = contiguous_f32(storage, layout, "conv_transpose2x2_nhwc")?;
    let options = ProductOptions::threaded(crate::cpu_kernel::threads(), epilogue)
        .overwrite_with(layer.bias.as_deref());
    let left = LeftOperand {
        data,
        row_stride: c,
        segment_offsets: &[0],
        grid: None,
    };
    // Pixel (y, x) gives 4 O values, (ky, kx, o): output row 2 y + ky takes the
    // 2 O values of ky from each pixel of input row y, in order.
    let blocks = gemm_packed_new(n * h * w, left, &layer.rhs, options)?;
    let row_len = 2 * w * o;
    let out = par_filled(n * 2 * h * row_len, row_len, |index, row| {
        let (image_row, ky) = (index / 2, index % 2);
        let pixels = &blocks[image_row * w * 4 * o..][..w * 4 * o];
        for (dst, pixel) in row.chunks_exact_mut(2 * o).zip(pixels.chunks_exact(4 * o)) {
            dst.copy_from_slice(&pixel[ky * 2 * o..][..2 * o]);
        }
        Ok(())
    })?;
    Tensor::from_vec(out, (n, 2 * h, 2 * w, o), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn shifted_conv_matches_unfolded(n in 1usize..3, c in 1usize..9, o in 1usize..9, h in 1usize..9, w in 1usize..9) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (n, h, w, c), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (o, c, 3, 3), &dev).unwrap();
            let fast = conv3x3_same_nhwc(&x, &k).unwrap();
            let kernel = k.permute((0, 2, 3, 1)).unwrap().reshape((o, 9 * c)).unwrap();
            let unfolded = im2col3x3_nhwc(&x).unwrap().matmul(&kernel.t().unwrap()).unwrap().reshape((n, h, w, o)).unwrap();
            let diff = (fast - unfolded).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "max difference {diff}");
        }

        /// The packed transposed convolution, with and without its GELU, against the
        /// composed one; twice, the second time with the cached packing.
        #[test]
        fn packed_transposed_conv_matches_composed(n in 1usize..3, c in 1usize..70, o in 1usize..40, h in 1usize..6, w in 1usize..6, with_bias: bool, gelu: bool) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (n, h, w, c), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (c, o, 2, 2), &dev).unwrap();
            let b = with_bias.then(|| Tensor::randn(0f32, 1.0, o, &dev).unwrap());
            let mut want = conv_transpose2x2_nhwc(&x, &k, b.as_ref()).unwrap();
            let epilogue = if gelu {
                want = crate::activation::gelu(&want).unwrap();
                Epilogue::Gelu
            } else {
                Epilogue::None
            };
            for isa in crate::cpu::Isa::supported() {
                let cache = PackedCache::for_isa(isa);
                for _ in 0..2 {
                    let got = conv_transpose2x2_nhwc_cached(&x, &k, b.as_ref(), &cache, epilogue).unwrap();
                    prop_assert_eq!(got.dims(), want.dims());
                    let diff = (&got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                    prop_assert!(diff < 1e-4, "{isa}: max difference {diff}");
                }
                let layer = cache.get_or_pack(|_| candle_core::bail!("not packed"));
                prop_assert_eq!(layer.map(|l| l.rhs.isa()), Some(isa));
            }
        }

        /// The packed-kernel form (nine segments of one product), for channel counts
        /// that take it, against the unfolded product; twice, the second time with
        /// the cached packing.
        #[test]
        fn packed_conv_matches_unfolded(n in 1usize..3, c in 1usize..300, o in 1usize..40, h in 1usize..7, w in 1usize..7) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (n, h, w, c), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (o, c, 3, 3), &dev).unwrap();
            let kernel = k.permute((0, 2, 3, 1)).unwrap().reshape((o, 9 * c)).unwrap();
            let unfolded = im2col3x3_nhwc(&x).unwrap().matmul(&kernel.t().unwrap()).unwrap().reshape((n, h, w, o)).unwrap();
            for isa in crate::cpu::Isa::supported() {
                let cache = PackedCache::for_isa(isa);
                for _ in 0..2 {
                    let fast = conv3x3_same_nhwc_cached(&x, &k, Some(&cache)).unwrap();
                    let diff = (fast - &unfolded).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                    prop_assert!(diff < 1e-3, "{isa}: max difference {diff}");
                }
                let layer = cache.get_or_pack(|_| candle_core::bail!("not packed"));
                prop_assert_eq!(layer.map(|l| l.rhs.isa()), Some(isa));
            }
        }

        #[test]
        fn transposed_2x2_and_pointwise_match_candle(n in 1usize..3, c in 1usize..4, o in 1usize..4, h in 1usize..6, w in 1usize..6) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (c, o, 2, 2), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
            let ours = conv_transpose2x2(&x, &k, Some(&b)).unwrap();
            let theirs = x.conv_transpose2d(&k, 0, 0, 2, 1).unwrap().broadcast_add(&b.reshape((1, o, 1, 1)).unwrap()).unwrap();
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "transposed differs by {diff}");
            let k1 = Tensor::randn(0f32, 1.0, (o, c, 1, 1), &dev).unwrap();
            let xv = Var::from_tensor(&x).unwrap();
            let ours = conv1x1(xv.as_tensor(), &k1).unwrap();
            let theirs = x.conv2d(&k1, 0, 1, 1, 1).unwrap();
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "pointwise differs by {diff}");
        }

        #[test]
        fn matches_candle_forward_and_backward(n in 1usize..3, c in 1usize..4, o in 1usize..4, h in 1usize..9, w in 1usize..9) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (o, c, 3, 3), &dev).unwrap();
            let (xv, kv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&k).unwrap());
            let ours = conv3x3_same(xv.as_tensor(), kv.as_tensor()).unwrap();
            let theirs = x.conv2d(&k, 1, 1, 1, 1).unwrap();
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "forward differs by {diff}");
            // Gradients of sum(ours * r) against candle's conv backward.
            let r = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let (xv2, kv2) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&k).unwrap());
            let g2 = (xv2.as_tensor().conv2d(kv2.as_tensor(), 1, 1, 1, 1).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (a, b) in [(g1.get(xv.as_tensor()), g2.get(xv2.as_tensor())), (g1.get(kv.as_tensor()), g2.get(kv2.as_tensor()))] {
                let d = (a.unwrap() - b.unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                prop_assert!(d < 1e-3, "gradient differs by {d}");
            }
        }
    }

    /// Training on an image with no rows: empty output, a zero kernel gradient, no
    /// panic in the shifted products.
    #[test]
    fn an_empty_image_trains_to_zero_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::zeros((1, 0, 3, 2), DType::F32, &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&Tensor::ones((4, 2, 3, 3), DType::F32, &dev).unwrap()).unwrap();
        let y = conv3x3_same_nhwc(x.as_tensor(), k.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[1, 0, 3, 4]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let dk = grads.get(k.as_tensor()).unwrap();
        assert_eq!(dk.dims(), &[4, 2, 3, 3]);
        assert_eq!(
            dk.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// The channels-last form equals candle's NCHW convolution, forward and
        /// backward, also for odd sizes and a single pixel.
        #[test]
        fn channels_last_matches_candle(n in 1usize..3, c in 1usize..5, o in 1usize..4, h in 1usize..8, w in 1usize..8) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (o, c, 3, 3), &dev).unwrap();
            let nhwc = Var::from_tensor(&x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()).unwrap();
            let kv = Var::from_tensor(&k).unwrap();
            let ours = conv3x3_same_nhwc(nhwc.as_tensor(), kv.as_tensor()).unwrap();
            let theirs = x.conv2d(&k, 1, 1, 1, 1).unwrap().permute((0, 2, 3, 1)).unwrap();
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "forward differs by {diff}");
            let r = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let (xv2, kv2) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&k).unwrap());
            let out2 = xv2.as_tensor().conv2d(kv2.as_tensor(), 1, 1, 1, 1).unwrap().permute((0, 2, 3, 1)).unwrap();
            let g2 = (out2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gx2 = g2.get(xv2.as_tensor()).unwrap().permute((0, 2, 3, 1)).unwrap();
            for (a, b) in [(g1.get(nhwc.as_tensor()).unwrap().clone(), gx2), (g1.get(kv.as_tensor()).unwrap().clone(), g2.get(kv2.as_tensor()).unwrap().clone())] {
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                prop_assert!(d < 1e-3, "gradient differs by {d}");
            }
        }

        /// The unfolded strided convolution equals candle's, forward and backward
        /// (input, weight and bias), for kernels of one to three strides.
        #[test]
        fn whole_strides_conv_matches_candle(n in 1usize..3, c in 1usize..4, o in 1usize..5, stride in 1usize..5, m in 1usize..4, g in 1usize..5, with_bias: bool) {
            let dev = Device::Cpu;
            let (k, side) = (m * stride, (g + m - 1) * stride);
            let x = Tensor::randn(0f32, 1.0, (n, c, side, side), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (o, c, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
            let vars = || (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
            let (x1, w1, b1) = vars();
            let ours = conv_whole_strides_nhwc(x1.as_tensor(), w1.as_tensor(), with_bias.then_some(b1.as_tensor()), stride).unwrap();
            let (x2, w2, b2) = vars();
            let mut theirs = x2.as_tensor().conv2d(w2.as_tensor(), 0, stride, 1, 1).unwrap();
            if with_bias {
                theirs = theirs.broadcast_add(&b2.as_tensor().reshape((1, o, 1, 1)).unwrap()).unwrap();
            }
            let theirs = theirs.permute((0, 2, 3, 1)).unwrap();
            prop_assert_eq!(ours.dims(), &[n, g, g, o]);
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "forward differs by {diff}");
            let r = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let mut pairs = vec![(x1, x2), (w1, w2)];
            if with_bias {
                pairs.push((b1, b2));
            }
            for (a, b) in pairs {
                let d = (g1.get(a.as_tensor()).unwrap() - g2.get(b.as_tensor()).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                prop_assert!(d < 1e-3, "gradient differs by {d}");
            }
        }

        /// The channels-last transposed convolution equals the NCHW one, forward and
        /// backward (through the weight and the bias too).
        #[test]
        fn transposed_channels_last_matches_nchw(n in 1usize..3, c in 1usize..6, o in 1usize..5, h in 1usize..6, w in 1usize..6, with_bias: bool) {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (c, o, 2, 2), &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, o, &dev).unwrap()).unwrap();
            let bias = with_bias.then_some(b.as_tensor());
            let nhwc = Var::from_tensor(&x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()).unwrap();
            let ours = conv_transpose2x2_nhwc(nhwc.as_tensor(), k.as_tensor(), bias).unwrap();
            let xv = Var::from_tensor(&x).unwrap();
            let theirs = conv_transpose2x2(xv.as_tensor(), k.as_tensor(), bias).unwrap().permute((0, 2, 3, 1)).unwrap();
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff < 1e-4, "forward differs by {diff}");
            let r = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gx2 = g2.get(xv.as_tensor()).unwrap().permute((0, 2, 3, 1)).unwrap();
            let mut pairs = vec![(g1.get(nhwc.as_tensor()).unwrap().clone(), gx2), (g1.get(k.as_tensor()).unwrap().clone(), g2.get(k.as_tensor()).unwrap().clone())];
            if with_bias {
                pairs.push((g1.get(b.as_tensor()).unwrap().clone(), g2.get(b.as_tensor()).unwrap().clone()));
            }
            for (a, b) in pairs {
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                prop_assert!(d < 1e-3, "gradient differs by {d}");
            }
        }

        /// The f64 fallback (composed of candle operations) unfolds like the fused one.
        #[test]
        fn fallback_unfolding_equals_the_fused_one(n in 1usize..3, c in 1usize..4, h in 1usize..6, w in 1usize..6) {
            let x = Tensor::randn(0f32, 1.0, (n, h, w, c), &Device::Cpu).unwrap();
            let fused = im2col3x3_nhwc(&x).unwrap();
            let composed = im2col3x3_nhwc(&x.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
            let diff = (fused.to_dtype(candle_core::DType::F64).unwrap() - composed).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            prop_assert_eq!(diff, 0.0);
        }
    }
}
