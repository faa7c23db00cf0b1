//! The microkernels of the packed product: one per instruction set, each a
//! register tile of `MR x NR` sums over one block of the shared dimension, and
//! optionally a faster transpose for packing `A`. The blocked driver
//! (`super::driver`) is written once and calls them through [`Microkernel`].

use crate::cpu::Isa;

mod avx2;
mod avx512;
mod scalar;

pub(super) use avx2::Avx2;
pub(super) use avx512::Avx512;
pub(super) use scalar::Scalar;

/// The most rows a register tile of any kernel has (AVX-512's 14).
pub(super) const MAX_MR: usize = 14;

/// Rows of `A` for one tile, one source slice per row (empty past the tile's
/// rows, read as zeros); only the first `MR` are used.
pub(super) type TileSources<'a> = [&'a [f32]; MAX_MR];

/// A register tile and what it needs from the packing.
pub(super) trait Microkernel {
    /// The instruction set the kernel needs.
    const ISA: Isa;
    /// Rows of `C` in one register tile.
    const MR: usize;
    /// Columns of `C` in one register tile: the width of a packed panel of `B`.
    const NR: usize;

    /// `c[r][j] = start[r][j] + sum_kk a[kk][r] b[kk][j]` for `r < rows`,
    /// `j < cols`, in registers.
    ///
    /// # Safety
    /// The CPU has the kernel's instruction set; `a` holds `kc * MR` values, `b`
    /// `kc * NR`, and `c` is valid for `(rows - 1) * ldc + cols` values (and
    /// initialised there when the tile starts from the output); `rows <= MR`,
    /// `cols <= NR`; a starting bias holds at least `cols` values.
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        extent: TileExtent,
    );

    /// Columns of `A` that [`Microkernel::transpose`] moves at once.
    const TRANSPOSED: usize;

    /// `out[kk * MR + r] = sources[r][kk0 + kk]` for `kk < TRANSPOSED`, zero for
    /// an empty source, in registers; `false` when the kernel has no such
    /// transpose or the operands do not fit it (the caller then copies one value at
    /// a time).
    fn transpose(sources: &TileSources, kk0: usize, out: &mut [f32]) -> bool;
}

/// `(MR, NR)` of the kernel of `isa`.
pub(super) fn tile_shape(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (Avx512::MR, Avx512::NR),
        Isa::Avx2 => (Avx2::MR, Avx2::NR),
        Isa::Scalar => (Scalar::MR, Scalar::NR),
    }
}

/// The part of a register tile that is real, and what its sums start from.
#[derive(Debug, Clone, Copy)]
pub(super) struct TileExtent<'a> {
    pub rows: usize,
    pub cols: usize,
    pub start: TileStart<'a>,
}

/// What a register tile's sums start from.
#[derive(Debug, Clone, Copy)]
pub(super) enum TileStart<'a> {
    /// The values already in `c`.
    Output,
    /// The bias values of the tile's columns (every row), or zeros.
    Bias(Option<&'a [f32]>),
}

impl TileStart<'_> {
    /// The start of the tile whose first column is `col0`.
    pub fn offset(self, col0: usize) -> Self {
        match self {
            Self::Bias(Some(b)) => Self::Bias(Some(&b[col0.min(b.len())..])),
            other => other,
        }
    }
}

/// Runs `K`'s tile through a full `MR x NR` scratch tile: for partial tiles of
/// kernels whose vector loads and stores cannot be masked cheaply (AVX2).
///
/// # Safety
/// As [`Microkernel::tile`], for the real extent; `K::MR * K::NR <= 16 * 16`.
pub(super) unsafe fn tile_via_scratch<K: Microkernel>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    TileExtent { rows, cols, start }: TileExtent,
) {
    let mut scratch = [0f32; 256];
    let mut bias = [0f32; 16];
    let start_full = match start {
        TileStart::Output => {
            for r in 0..rows {
                for j in 0..cols {
                    // SAFETY: inside the real extent, initialised (caller).
                    scratch[r * K::NR + j] = unsafe { *c.add(r * ldc + j) };
                }
            }
            TileStart::Output
        }
        TileStart::Bias(Some(values)) => {
            bias[..cols].copy_from_slice(&values[..cols]);
            TileStart::Bias(Some(&bias[..K::NR]))
        }
        TileStart::Bias(None) => TileStart::Bias(None),
    };
    let full = TileExtent {
        rows: K::MR,
        cols: K::NR,
        start: start_full,
    };
    // SAFETY: the scratch tile holds MR rows of NR values, NR apart.
    unsafe { K::tile(kc, a, b, scratch.as_mut_ptr(), K::NR, full) };
    for r in 0..rows {
        for j in 0..cols {
            // SAFETY: inside the real extent (caller).
            unsafe { *c.add(r * ldc + j) = scratch[r * K::NR + j] };
        }
    }
}
