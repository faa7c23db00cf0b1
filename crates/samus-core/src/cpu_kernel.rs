//! What the fused CPU operations of this crate share: reading an operand's data,
//! allocating their outputs and choosing the threads of a matrix product.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};
use rayon::prelude::*;

/// The f32 data of a contiguous CPU operand of operation `op` (for error messages).
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let (start, end) = contiguous_range(layout, op)?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// [`contiguous_f32`] of an operand that operation `op` updates in place.
pub(crate) fn contiguous_f32_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
    let (start, end) = contiguous_range(layout, op)?;
    match storage {
        CpuStorage::F32(values) => Ok(&mut values[start..end]),
        _ => candle_core::bail!("{op}: the operands must be f32"),
    }
}

/// Where a contiguous operand's values lie in its storage.
fn contiguous_range(layout: &Layout, op: &str) -> Result<(usize, usize)> {
    layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the operands must be contiguous")))
}

/// Below this many multiply-adds a matrix product runs on one thread: waking the
/// others costs more than it saves (the decoder's prompt-token layers).
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// Whether the fused CPU kernels may run on `tensors`: all on the CPU, in f32, and
/// none needing a gradient (the kernels have no backward of their own).
pub(crate) fn cpu_f32_inference<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> bool {
    tensors.into_iter().all(|t| cpu_f32_one(t) && !t.track_op())
}

/// Whether `tensors` are all f32 on the CPU (the kernels with a backward of their
/// own may then run, with or without gradients).
pub(crate) fn cpu_f32<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> bool {
    tensors.into_iter().all(cpu_f32_one)
}

fn cpu_f32_one(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Threads that a kernel's parallel split can use: those of the rayon pool it runs
/// in. (candle's `get_num_threads` asks the operating system again on every call,
/// reading `/proc` and cgroup files: a ViT-B decoder pass took 10.1 to 10.7 ms
/// without those calls, 12.0 ms with them.)
pub(crate) fn threads() -> usize {
    rayon::current_num_threads()
}

/// The `gemm` parallelism for a product of `macs` multiply-adds: the pool's thread
/// count, or one thread for small products.
pub(crate) fn gemm_parallelism(macs: usize) -> gemm::Parallelism {
    let threads = threads();
    if threads > 1 && macs >= PARALLEL_MIN_MACS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// `values` as the `f32`s they hold.
///
/// # Safety
/// Every value has been written.
pub(crate) unsafe fn assume_init(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; initialised per the caller.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Writes zeros into `part` and returns it as initialised values.
fn zeroed(part: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    part.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was written just above.
    unsafe { assume_init(part) }
}

/// A new buffer of `len` values written in parallel chunks of `chunk` values (the
/// last one shorter) by `fill(index, chunk)`.
///
/// Each chunk is zeroed by the thread that then fills it, just before, so the zeros
/// are written into that core's cache. A `vec![0.0; len]` instead costs one thread
/// a `memset` at memory speed while the other cores wait: 50 ms of a 1.3 s ViT-B
/// forward, summed over its outputs.
pub(crate) fn par_filled<F>(len: usize, chunk: usize, fill: F) -> Result<Vec<f32>>
where
    F: Fn(usize, &mut [f32]) -> Result<()> + Sync + Send,
{
    let (out, _) = par_filled_with(len, chunk, fill)?;
    Ok(out)
}

/// [`par_filled`] whose chunks also return a value each, in chunk order (the partial
/// sums of a backward pass).
pub(crate) fn par_filled_with<T, F>(len: usize, chunk: usize, fill: F) -> Result<(Vec<f32>, Vec<T>)>
where
    T: Send,
    F: Fn(usize, &mut [f32]) -> Result<T> + Sync + Send,
{
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let values = out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .map(|(index, part)| fill(index, zeroed(part)))
        .collect::<Result<Vec<T>>>()?;
    // SAFETY: the chunks cover the first `len` values and `zeroed` wrote each of
    // them (on an error or a panic this line is not reached).
    unsafe { out.set_len(len) };
    Ok((out, values))
}

/// Runs `f` on the f32 values of a CPU tensor, contiguous, without copying them
/// out of its storage (a backward pass reads its saved inputs this way).
pub(crate) fn with_f32_values<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("{op}: the tensor is not on the CPU")
    };
    f(contiguous_f32(storage, layout, op)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_filled_hands_out_every_chunk_once() {
        let out = par_filled(10, 3, |index, part| {
            assert!(part.iter().all(|&v| v == 0.0));
            for (i, v) in part.iter_mut().enumerate() {
                *v = (index * 3 + i) as f32;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(out, (0..10).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn par_filled_passes_errors_on() {
        let result = par_filled(8, 2, |index, _| {
            if index == 2 {
                candle_core::bail!("chunk {index} failed")
            }
            Ok(())
        });
        assert!(result.is_err());
        assert!(par_filled(0, 4, |_, _| Ok(())).unwrap().is_empty());
    }
}
