//! What the fused CPU operations of this crate share: reading an operand's data and
//! choosing the threads of a matrix product.

use candle_core::{CpuStorage, Layout, Result};

/// The f32 data of a contiguous CPU operand of operation `op` (for error messages).
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the operands must be contiguous")))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// Below this many multiply-adds a matrix product runs on one thread: waking the
/// others costs more than it saves (the decoder's prompt-token layers).
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// The `gemm` parallelism for a product of `macs` multiply-adds: candle's thread
/// count, or one thread for small products.
pub(crate) fn gemm_parallelism(macs: usize) -> gemm::Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 && macs >= PARALLEL_MIN_MACS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}
