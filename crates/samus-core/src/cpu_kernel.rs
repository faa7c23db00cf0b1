//! What the fused CPU operations of this crate share: reading an operand's data.

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
