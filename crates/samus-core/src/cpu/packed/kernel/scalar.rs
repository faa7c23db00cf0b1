//! The portable microkernel: plain loops over fixed-size arrays, which the
//! compiler vectorises for whatever the target has (SSE2 on every x86-64, NEON on
//! aarch64). It is what CPUs without AVX2 run, and the reference the other
//! kernels are tested beside.

use crate::cpu::Isa;

use super::{Microkernel, TileExtent, TileSources, TileStart};

/// 4 x 8 register tile: 32 sums, eight 128-bit registers on SSE2 or NEON.
pub(in crate::cpu::packed) struct Scalar;

const MR: usize = 4;
const NR: usize = 8;

/// `a b + c`: fused where the target has FMA in its baseline (aarch64), two
/// operations elsewhere (`f32::mul_add` without hardware FMA is a slow library call).
#[inline(always)]
fn multiply_add(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(any(target_arch = "aarch64", target_feature = "fma"))]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(any(target_arch = "aarch64", target_feature = "fma")))]
    {
        a * b + c
    }
}

impl Microkernel for Scalar {
    const ISA: Isa = Isa::Scalar;
    const MR: usize = MR;
    const NR: usize = NR;

    unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        TileExtent { rows, cols, start }: TileExtent,
    ) {
        // SAFETY: `a` holds `kc * MR` and `b` `kc * NR` values (caller).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, kc * MR),
                std::slice::from_raw_parts(b, kc * NR),
            )
        };
        let mut acc = [[0f32; NR]; MR];
        match start {
            TileStart::Output => {
                for (r, row) in acc.iter_mut().enumerate().take(rows) {
                    for (j, v) in row.iter_mut().enumerate().take(cols) {
                        // SAFETY: inside the tile's extent, initialised (caller).
                        *v = unsafe { *c.add(r * ldc + j) };
                    }
                }
            }
            TileStart::Bias(Some(bias)) => {
                for row in &mut acc {
                    row[..cols].copy_from_slice(&bias[..cols]);
                }
            }
            TileStart::Bias(None) => {}
        }
        for (a_col, b_row) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for (row, &ar) in acc.iter_mut().zip(a_col) {
                for (v, &bv) in row.iter_mut().zip(b_row) {
                    *v = multiply_add(ar, bv, *v);
                }
            }
        }
        for (r, row) in acc.iter().enumerate().take(rows) {
            for (j, &v) in row.iter().enumerate().take(cols) {
                // SAFETY: inside the tile's extent (caller).
                unsafe { *c.add(r * ldc + j) = v };
            }
        }
    }

    const TRANSPOSED: usize = 1;

    /// None: the copy one value at a time is what the compiler would make of it.
    fn transpose(_sources: &TileSources, _kk0: usize, _out: &mut [f32]) -> bool {
        false
    }
}
