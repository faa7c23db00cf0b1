//! Loading and launching the kernels of `kernels/fused_attention.cu`.
//!
//! The tile sizes here mirror the constants at the top of the `.cu` file; every
//! kernel re-checks its block size and shared memory at entry and traps on a
//! mismatch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
use candle_core::{CudaDevice, Result};

/// The kernels compiled by build.rs: machine code for the compute capabilities of
/// `CUDA_COMPUTE_CAP` plus PTX for newer GPUs.
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fused_attention.fatbin"));

/// The GPU architectures in [`FATBIN`], as build.rs compiled them.
pub(crate) const ARCHS: &str = env!("SAMUS_CUDA_FATBIN_ARCHS");

/// Dynamic shared memory a kernel may use without opting in (48 KiB).
const MAX_SHARED_BYTES: usize = 48 * 1024;

/// Head-size buckets with a compiled kernel.
const BUCKETS: [usize; 4] = [16, 32, 64, 128];

const FWD_BR: usize = 64;
const DQ_BR: usize = 32;

fn fwd_bc(dmax: usize) -> usize {
    if dmax <= 64 {
        32
    } else {
        16
    }
}

fn dq_bc(dmax: usize) -> usize {
    fwd_bc(dmax)
}

fn kv_bk(dmax: usize) -> usize {
    if dmax <= 64 {
        64
    } else {
        32
    }
}

fn kv_bq(dmax: usize) -> usize {
    if dmax <= 64 {
        32
    } else {
        16
    }
}

fn fwd_smem(dmax: usize, nb: usize) -> usize {
    4 * (2 * fwd_bc(dmax) * dmax + FWD_BR * nb)
}

fn dq_smem(dmax: usize, nb: usize) -> usize {
    4 * (2 * dq_bc(dmax) * dmax + 2 * DQ_BR * nb)
}

fn kv_smem(dmax: usize, nb: usize) -> usize {
    4 * (2 * kv_bq(dmax) * dmax + dmax * (kv_bk(dmax) + 1) + kv_bq(dmax) * nb + 2 * kv_bq(dmax))
}

/// The smallest compiled head-size bucket that holds `d`.
pub(crate) fn bucket(d: usize) -> Option<usize> {
    BUCKETS.into_iter().find(|&b| d >= 1 && d <= b)
}

/// Whether all three kernels fit in shared memory for `nb = kh + kw` bias columns.
pub(crate) fn fits_shared_memory(dmax: usize, nb: usize) -> bool {
    fwd_smem(dmax, nb) <= MAX_SHARED_BYTES
        && dq_smem(dmax, nb) <= MAX_SHARED_BYTES
        && kv_smem(dmax, nb) <= MAX_SHARED_BYTES
}

/// Element types with compiled kernels.
pub(crate) trait KernelType: CudaDType + DeviceRepr + ValidAsZeroBits {
    /// The suffix of the kernel names.
    const NAME: &'static str;
    /// Whether the backward pass needs the forward output before rounding.
    const SAVES_F32_OUTPUT: bool;
}

impl KernelType for f32 {
    const NAME: &'static str = "f32";
    const SAVES_F32_OUTPUT: bool = false;
}

impl KernelType for half::bf16 {
    const NAME: &'static str = "bf16";
    const SAVES_F32_OUTPUT: bool = true;
}

/// What the forward pass keeps for the backward pass.
pub(crate) struct Saved {
    /// `(G, Nq)`: the log-sum-exp of every score row.
    pub lse: CudaSlice<f32>,
    /// `(G, Nq, d)`: the output before rounding, for bf16 (the backward's
    /// `rowsum(dO * O)` from a rounded output loses small score gradients).
    pub out_f32: Option<CudaSlice<f32>>,
}

/// A null device pointer, for an absent optional buffer.
const NULL: u64 = 0;

/// The sizes of one attention call over `g` independent sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    /// Sequences (batch x heads).
    pub g: usize,
    /// Queries per sequence.
    pub nq: usize,
    /// Keys per sequence.
    pub nk: usize,
    /// Head size.
    pub d: usize,
    /// Row stride of the extended queries: `d + kh + kw`.
    pub q_stride: usize,
    /// Rows of the relative-position key grid (0 without bias).
    pub kh: usize,
    /// Columns of the relative-position key grid (0 without bias).
    pub kw: usize,
    /// The head-size bucket.
    pub dmax: usize,
}

impl Dims {
    fn int(value: usize, what: &str) -> Result<i32> {
        i32::try_from(value).map_err(|_| {
            candle_core::Error::msg(format!("fused attention: {what} = {value} exceeds i32"))
        })
    }

    /// The integer kernel arguments `nq, nk, d, q_stride, kh, kw`.
    fn ints(&self) -> Result<[i32; 6]> {
        Ok([
            Self::int(self.nq, "query count")?,
            Self::int(self.nk, "key count")?,
            Self::int(self.d, "head size")?,
            Self::int(self.q_stride, "query row")?,
            Self::int(self.kh, "key grid height")?,
            Self::int(self.kw, "key grid width")?,
        ])
    }

    fn grid(&self, rows: usize, per_block: usize) -> Result<u32> {
        let blocks = self
            .g
            .checked_mul(rows.div_ceil(per_block))
            .filter(|&b| b <= i32::MAX as usize)
            .ok_or_else(|| {
                candle_core::Error::msg(format!(
                    "fused attention: too many blocks for {} sequences of {rows} rows",
                    self.g
                ))
            })?;
        Ok(blocks as u32)
    }
}

/// The attention module of `dev`, loaded once per device.
fn module(dev: &CudaDevice) -> Result<Arc<CudaModule>> {
    static MODULES: OnceLock<Mutex<HashMap<DeviceId, Arc<CudaModule>>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::msg("fused attention: module cache lock poisoned"))?;
    if let Some(module) = modules.get(&dev.id()) {
        return Ok(module.clone());
    }
    let module = dev
        .cuda_stream()
        .context()
        .load_module(Ptx::from_binary(FATBIN.to_vec()))
        .w()
        .map_err(|e| {
            e.context(format!(
                "loading the samus-core attention kernels (built for {ARCHS}; rebuild with \
                 SAMUS_CUDA_CAPS or CUDA_COMPUTE_CAP set to this GPU's compute capability if it is older)"
            ))
        })?;
    modules.insert(dev.id(), module.clone());
    Ok(module)
}

fn function(dev: &CudaDevice, kind: &str, name: &str, dmax: usize) -> Result<CudaFunction> {
    let full = format!("samus_attn_{kind}_{name}_d{dmax}");
    module(dev)?
        .load_function(&full)
        .w()
        .map_err(|e| e.context(format!("loading kernel {full}")))
}

fn config(blocks: u32, threads: usize, shared: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: shared as u32,
    }
}

/// Runs the forward kernel: the attention output `(G, Nq, d)` and what the backward
/// pass needs (the unrounded bf16 output only with `for_backward`).
pub(crate) fn forward<T: KernelType>(
    dev: &CudaDevice,
    dims: &Dims,
    scale: f32,
    q: &CudaView<'_, T>,
    k: &CudaView<'_, T>,
    v: &CudaView<'_, T>,
    for_backward: bool,
) -> Result<(CudaSlice<T>, Saved)> {
    let [nq, nk, d, q_stride, kh, kw] = dims.ints()?;
    let nb = dims.kh + dims.kw;
    let shared = fwd_smem(dims.dmax, nb);
    let shared_arg = Dims::int(shared, "shared memory")?;
    let blocks = dims.grid(dims.nq, FWD_BR)?;
    let func = function(dev, "fwd", T::NAME, dims.dmax)?;
    let mut out = dev.alloc_zeros::<T>(dims.g * dims.nq * dims.d)?;
    let mut lse = dev.alloc_zeros::<f32>(dims.g * dims.nq)?;
    let mut out_f32 = if T::SAVES_F32_OUTPUT && for_backward {
        Some(dev.alloc_zeros::<f32>(dims.g * dims.nq * dims.d)?)
    } else {
        None
    };
    let stream = dev.cuda_stream();
    let mut launch = stream.launch_builder(&func);
    launch.arg(q);
    launch.arg(k);
    launch.arg(v);
    launch.arg(&mut out);
    launch.arg(&mut lse);
    match out_f32.as_mut() {
        Some(buffer) => launch.arg(buffer),
        None => launch.arg(&NULL),
    };
    for value in [&nq, &nk, &d, &q_stride, &kh, &kw] {
        launch.arg(value);
    }
    launch.arg(&scale);
    launch.arg(&shared_arg);
    // SAFETY: the argument list matches the kernel's signature; every buffer has the
    // size the kernel indexes (checked shapes, contiguous views).
    unsafe { launch.launch(config(blocks, FWD_BR, shared)) }
        .w()
        .map_err(|e| e.context("launching the fused attention forward kernel"))?;
    drop(launch);
    Ok((out, Saved { lse, out_f32 }))
}

/// The gradients of one attention call.
pub(crate) struct Gradients<T> {
    /// `(G, Nq, q_stride)`: the query gradient, then the bias-term gradients.
    pub dq: CudaSlice<T>,
    /// `(G, Nk, d)`
    pub dk: CudaSlice<T>,
    /// `(G, Nk, d)`
    pub dv: CudaSlice<T>,
}

/// Runs the two backward kernels (queries, then keys and values).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: KernelType>(
    dev: &CudaDevice,
    dims: &Dims,
    scale: f32,
    q: &CudaView<'_, T>,
    k: &CudaView<'_, T>,
    v: &CudaView<'_, T>,
    out: &CudaView<'_, T>,
    dout: &CudaView<'_, T>,
    saved: &Saved,
) -> Result<Gradients<T>> {
    let [nq, nk, d, q_stride, kh, kw] = dims.ints()?;
    let nb = dims.kh + dims.kw;
    let stream = dev.cuda_stream();

    let mut delta = dev.alloc_zeros::<f32>(dims.g * dims.nq)?;
    let mut dq = dev.alloc_zeros::<T>(dims.g * dims.nq * dims.q_stride)?;
    {
        let shared = dq_smem(dims.dmax, nb);
        let shared_arg = Dims::int(shared, "shared memory")?;
        let blocks = dims.grid(dims.nq, DQ_BR)?;
        let func = function(dev, "dq", T::NAME, dims.dmax)?;
        let mut launch = stream.launch_builder(&func);
        launch.arg(q);
        launch.arg(k);
        launch.arg(v);
        launch.arg(out);
        match saved.out_f32.as_ref() {
            Some(buffer) => launch.arg(buffer),
            None => launch.arg(&NULL),
        };
        launch.arg(dout);
        launch.arg(&saved.lse);
        launch.arg(&mut delta);
        launch.arg(&mut dq);
        for value in [&nq, &nk, &d, &q_stride, &kh, &kw] {
            launch.arg(value);
        }
        launch.arg(&scale);
        launch.arg(&shared_arg);
        // SAFETY: as in `forward`.
        unsafe { launch.launch(config(blocks, DQ_BR, shared)) }
            .w()
            .map_err(|e| e.context("launching the fused attention dq kernel"))?;
    }

    let mut dk = dev.alloc_zeros::<T>(dims.g * dims.nk * dims.d)?;
    let mut dv = dev.alloc_zeros::<T>(dims.g * dims.nk * dims.d)?;
    {
        let shared = kv_smem(dims.dmax, nb);
        let shared_arg = Dims::int(shared, "shared memory")?;
        let threads = kv_bk(dims.dmax);
        let blocks = dims.grid(dims.nk, threads)?;
        let func = function(dev, "dkv", T::NAME, dims.dmax)?;
        let mut launch = stream.launch_builder(&func);
        launch.arg(q);
        launch.arg(k);
        launch.arg(v);
        launch.arg(dout);
        launch.arg(&saved.lse);
        launch.arg(&delta);
        launch.arg(&mut dk);
        launch.arg(&mut dv);
        for value in [&nq, &nk, &d, &q_stride, &kh, &kw] {
            launch.arg(value);
        }
        launch.arg(&scale);
        launch.arg(&shared_arg);
        // SAFETY: as in `forward`.
        unsafe { launch.launch(config(blocks, threads, shared)) }
            .w()
            .map_err(|e| e.context("launching the fused attention dk/dv kernel"))?;
    }
    Ok(Gradients { dq, dk, dv })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_heads_up_to_128() {
        assert_eq!(bucket(0), None);
        assert_eq!(bucket(1), Some(16));
        assert_eq!(bucket(16), Some(16));
        assert_eq!(bucket(17), Some(32));
        assert_eq!(bucket(64), Some(64));
        assert_eq!(bucket(100), Some(128));
        assert_eq!(bucket(129), None);
    }

    /// The tile sizes and shared-memory formulas here are those of the `.cu` file.
    #[test]
    fn tiles_mirror_the_kernel_source() {
        let source = include_str!("../../../kernels/fused_attention.cu");
        for line in [
            "constexpr int FWD_BR = 64;",
            "constexpr int DQ_BR = 32;",
            "fwd_bc(int dmax) { return dmax <= 64 ? 32 : 16; }",
            "dq_bc(int dmax) { return dmax <= 64 ? 32 : 16; }",
            "kv_bk(int dmax) { return dmax <= 64 ? 64 : 32; }",
            "kv_bq(int dmax) { return dmax <= 64 ? 32 : 16; }",
            "return 2 * fwd_bc(dmax) * dmax + FWD_BR * nb;",
            "return 2 * dq_bc(dmax) * dmax + 2 * DQ_BR * nb;",
            "return 2 * kv_bq(dmax) * dmax + dmax * (kv_bk(dmax) + 1) + kv_bq(dmax) * nb + 2 * kv_bq(dmax);",
        ] {
            assert!(source.contains(line), "the kernel source no longer says `{line}`");
        }
        assert_eq!((FWD_BR, DQ_BR), (64, 32));
        assert_eq!(
            (fwd_bc(64), fwd_bc(128), dq_bc(64), dq_bc(128)),
            (32, 16, 32, 16)
        );
        assert_eq!(
            (kv_bk(64), kv_bk(128), kv_bq(64), kv_bq(128)),
            (64, 32, 32, 16)
        );
        assert_eq!(fwd_smem(64, 10), 4 * (2 * 32 * 64 + 64 * 10));
        assert_eq!(dq_smem(64, 10), 4 * (2 * 32 * 64 + 2 * 32 * 10));
        assert_eq!(kv_smem(64, 10), 4 * (2 * 32 * 64 + 64 * 65 + 32 * 10 + 64));
    }

    #[test]
    fn samus_shapes_fit_shared_memory() {
        // ViT-B global blocks: 64 x 64 heads on a 32 x 32 grid; windows of 14 x 14.
        assert!(fits_shared_memory(64, 32 + 32));
        assert!(fits_shared_memory(64, 14 + 14));
        assert!(fits_shared_memory(128, 32 + 32));
        assert!(fits_shared_memory(64, 120));
        assert!(!fits_shared_memory(64, 128));
    }
}
