//! The candle operation around the CUDA kernels: shape checks, the relative-position
//! bias terms packed next to the queries, and the backward pass.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
    D,
};

use super::kernels::{self, Dims, KernelType, Saved};
use crate::rel_pos::DecomposedRelPos;

/// The head-size bucket if the kernels can run these operands, `None` where
/// [`super::fused_attention`] falls back to `multi_head_attention` (including for
/// shapes that do not agree: the fallback reports those).
pub(crate) fn plan(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel_pos: Option<&DecomposedRelPos>,
) -> Option<usize> {
    if !q.device().is_cuda() || !k.device().same_device(q.device()) {
        return None;
    }
    if !matches!(q.dtype(), DType::F32 | DType::BF16)
        || k.dtype() != q.dtype()
        || v.dtype() != q.dtype()
    {
        return None;
    }
    let (b, h, nq, d) = q.dims4().ok()?;
    let (kb, kheads, nk, kd) = k.dims4().ok()?;
    if (kb, kheads, kd) != (b, h, d) || v.dims4().ok()? != (b, h, nk, d) {
        return None;
    }
    if b * h == 0 || nq == 0 || nk == 0 {
        return None;
    }
    if let Some(rel) = rel_pos {
        if rel.query_len() != nq || rel.key_len() != nk {
            return None;
        }
    }
    let dmax = kernels::bucket(d)?;
    // Without bias; the bias columns are checked once their count is known.
    kernels::fits_shared_memory(dmax, 0).then_some(dmax)
}

/// The fused attention on CUDA, or `None` where the kernels do not apply.
pub(crate) fn try_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    rel_pos: Option<&DecomposedRelPos>,
) -> Result<Option<Tensor>> {
    let Some(dmax) = plan(q, k, v, rel_pos) else {
        return Ok(None);
    };
    let (b, h, nq, d) = q.dims4()?;
    let nk = k.dim(2)?;
    let g = b * h;
    let q = q.reshape((g, nq, d))?;
    let k = k.reshape((g, nk, d))?.contiguous()?;
    let v = v.reshape((g, nk, d))?.contiguous()?;
    let (q_ext, kh, kw) = match rel_pos {
        Some(rel) => {
            let q = q.contiguous()?;
            let (rel_h, rel_w) = rel.bias_terms(&q)?;
            let (kh, kw) = (rel_h.dim(D::Minus1)?, rel_w.dim(D::Minus1)?);
            if !kernels::fits_shared_memory(dmax, kh + kw) {
                return Ok(None);
            }
            let rel_h = rel_h.to_dtype(q.dtype())?;
            let rel_w = rel_w.to_dtype(q.dtype())?;
            (Tensor::cat(&[&q, &rel_h, &rel_w], 2)?, kh, kw)
        }
        None => (q.contiguous()?, 0, 0),
    };
    let dims = Dims {
        g,
        nq,
        nk,
        d,
        q_stride: d + kh + kw,
        kh,
        kw,
        dmax,
    };
    let op = FusedAttention {
        dims,
        for_backward: q_ext.track_op() || k.track_op() || v.track_op(),
        scale: scale as f32,
        saved: Arc::new(Mutex::new(None)),
    };
    let out = q_ext.apply_op3(&k, &v, op)?;
    Ok(Some(out.reshape((b, h, nq, d))?))
}

/// `softmax(scale * q k^T + bias) v` over `G` sequences: arguments `q_ext`
/// `(G, Nq, d + kh + kw)` (queries, then the bias terms), `k`, `v` `(G, Nk, d)`.
struct FusedAttention {
    dims: Dims,
    /// Whether a gradient will be asked for (candle keeps the op only then).
    for_backward: bool,
    scale: f32,
    /// What the forward pass keeps for the backward pass.
    saved: Arc<Mutex<Option<Saved>>>,
}

fn contiguous_view<'a, T: KernelType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    let slice = storage.as_cuda_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("fused attention: {what} must be contiguous"),
    }
}

impl FusedAttention {
    fn check_layouts(&self, q: &Layout, k: &Layout, v: &Layout) -> Result<()> {
        let Dims {
            g,
            nq,
            nk,
            d,
            q_stride,
            ..
        } = self.dims;
        if q.shape().dims() != [g, nq, q_stride]
            || k.shape().dims() != [g, nk, d]
            || v.shape().dims() != [g, nk, d]
        {
            candle_core::bail!(
                "fused attention: operands {:?}, {:?}, {:?} do not match {:?}",
                q.shape(),
                k.shape(),
                v.shape(),
                self.dims
            )
        }
        Ok(())
    }

    fn forward_typed<T: KernelType>(
        &self,
        q: (&CudaStorage, &Layout),
        k: (&CudaStorage, &Layout),
        v: (&CudaStorage, &Layout),
    ) -> Result<(CudaSlice<T>, Saved)> {
        let dev = q.0.device();
        let qv = contiguous_view::<T>(q.0, q.1, "queries")?;
        let kv = contiguous_view::<T>(k.0, k.1, "keys")?;
        let vv = contiguous_view::<T>(v.0, v.1, "values")?;
        kernels::forward(
            dev,
            &self.dims,
            self.scale,
            &qv,
            &kv,
            &vv,
            self.for_backward,
        )
    }

    fn save(&self, state: Saved) -> Result<()> {
        let mut saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::msg("fused attention: saved state lock poisoned"))?;
        *saved = Some(state);
        Ok(())
    }

    fn backward_typed<T: KernelType>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (os, ol) = out.storage_and_layout();
        let (ds, dl) = dout.storage_and_layout();
        let (
            Storage::Cuda(qs),
            Storage::Cuda(ks),
            Storage::Cuda(vs),
            Storage::Cuda(os),
            Storage::Cuda(ds),
        ) = (&*qs, &*ks, &*vs, &*os, &*ds)
        else {
            candle_core::bail!("fused attention backward: all tensors must be on the CUDA device")
        };
        let dev: &CudaDevice = qs.device();
        let qv = contiguous_view::<T>(qs, ql, "queries")?;
        let kv = contiguous_view::<T>(ks, kl, "keys")?;
        let vv = contiguous_view::<T>(vs, vl, "values")?;
        let ov = contiguous_view::<T>(os, ol, "output")?;
        let dv = contiguous_view::<T>(ds, dl, "output gradient")?;

        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::msg("fused attention: saved state lock poisoned"))?;
        let recomputed;
        let state = match saved.as_ref() {
            Some(state) => state,
            None => {
                recomputed = kernels::forward(dev, &self.dims, self.scale, &qv, &kv, &vv, true)?.1;
                &recomputed
            }
        };
        let grads = kernels::backward(dev, &self.dims, self.scale, &qv, &kv, &vv, &ov, &dv, state)?;
        let Dims {
            g,
            nq,
            nk,
            d,
            q_stride,
            ..
        } = self.dims;
        let wrap = |slice: CudaSlice<T>, shape: (usize, usize, usize)| {
            Tensor::from_storage(
                Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone())),
                shape,
                BackpropOp::none(),
                false,
            )
        };
        Ok((
            wrap(grads.dq, (g, nq, q_stride)),
            wrap(grads.dk, (g, nk, d)),
            wrap(grads.dv, (g, nk, d)),
        ))
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "samus-fused-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "samus-fused-attention runs on CUDA devices only; \
             samus_core::cuda_attention::fused_attention uses multi_head_attention elsewhere"
        )
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.check_layouts(l1, l2, l3)?;
        let shape = Shape::from((self.dims.g, self.dims.nq, self.dims.d));
        let dev = s1.device().clone();
        let slice = match (&s1.slice, &s2.slice, &s3.slice) {
            (CudaStorageSlice::F32(_), CudaStorageSlice::F32(_), CudaStorageSlice::F32(_)) => {
                let (out, saved) = self.forward_typed::<f32>((s1, l1), (s2, l2), (s3, l3))?;
                self.save(saved)?;
                CudaStorageSlice::F32(out)
            }
            (CudaStorageSlice::BF16(_), CudaStorageSlice::BF16(_), CudaStorageSlice::BF16(_)) => {
                let (out, saved) =
                    self.forward_typed::<half::bf16>((s1, l1), (s2, l2), (s3, l3))?;
                self.save(saved)?;
                CudaStorageSlice::BF16(out)
            }
            _ => candle_core::bail!(
                "fused attention supports f32 and bf16 operands of one dtype, got {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((CudaStorage { slice, device: dev }, shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let q = q.contiguous()?;
        let k = k.contiguous()?;
        let v = v.contiguous()?;
        let out = out.contiguous()?;
        let dout = dout.contiguous()?.to_dtype(q.dtype())?;
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => self.backward_typed::<f32>(&q, &k, &v, &out, &dout)?,
            DType::BF16 => self.backward_typed::<half::bf16>(&q, &k, &v, &out, &dout)?,
            dtype => candle_core::bail!("fused attention backward: unsupported dtype {dtype:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
