//! The AVX-512 microkernel: a 14 x 32 register tile (28 accumulators, two `B`
//! vectors and one broadcast fill 31 of the 32 vector registers), masked loads
//! and stores for partial tiles, and a 16 x 16 in-register transpose for packing
//! `A`.

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use crate::cpu::Isa;

use super::{Microkernel, TileExtent, TileSources, TileStart};

/// The AVX-512F kernel.
pub(in crate::cpu::packed) struct Avx512;

const MR: usize = 14;
const NR: usize = 32;
/// How many steps ahead the register tile prefetches its `B` panel.
const PREFETCH_STEPS: usize = 8;
/// Columns that the transpose moves at once.
const TRANSPOSED: usize = 16;

impl Microkernel for Avx512 {
    const ISA: Isa = Isa::Avx512;
    const MR: usize = MR;
    const NR: usize = NR;

    unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        extent: TileExtent,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: passed on from the caller (AVX-512F available, operands sized).
        unsafe {
            register_tile(kc, a, b, c, ldc, extent)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (kc, a, b, c, ldc, extent);
            unreachable!("the AVX-512 kernel runs only where Isa::Avx512 is supported")
        }
    }

    const TRANSPOSED: usize = TRANSPOSED;

    fn transpose(sources: &TileSources, kk0: usize, out: &mut [f32]) -> bool {
        let fits = out.len() >= TRANSPOSED * MR
            && sources[..MR]
                .iter()
                .all(|s| s.is_empty() || s.len() >= kk0 + TRANSPOSED);
        #[cfg(target_arch = "x86_64")]
        if fits {
            // SAFETY: this kernel runs only where AVX-512F is supported (the driver
            // dispatches on a supported `Isa`); the sizes are checked just above.
            unsafe { transpose16(sources, kk0, out) };
            return true;
        }
        let _ = fits;
        false
    }
}

/// `out[kk * MR + r] = sources[r][kk0 + kk]` for 16 columns: a 16 x 16 transpose (rows past `MR`
/// and empty sources are zeros) in four rounds of shuffles, then each column's first
/// `MR` values stored.
///
/// # Safety
/// The CPU has AVX-512F; each non-empty source holds at least `kk0 + 16` values and
/// `out` at least `16 * MR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(sources: &TileSources, kk0: usize, out: &mut [f32]) {
    use std::arch::x86_64::{
        __m512, _mm512_castpd_ps, _mm512_castps_pd, _mm512_loadu_ps, _mm512_mask_storeu_ps,
        _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_unpackhi_pd, _mm512_unpackhi_ps,
        _mm512_unpacklo_pd, _mm512_unpacklo_ps,
    };
    let r: [__m512; 16] = std::array::from_fn(|i| match sources.get(i) {
        Some(s) if i < MR && !s.is_empty() => _mm512_loadu_ps(s.as_ptr().add(kk0)),
        _ => _mm512_setzero_ps(),
    });
    // 32-bit interleave of row pairs, then 64-bit interleave of pair pairs: within
    // each 128-bit lane, four rows' values of one column.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let u: [__m512; 16] = std::array::from_fn(|i| {
        // Groups of four: (t0, t2) -> lo, hi; (t1, t3) -> lo, hi.
        let base = i / 4 * 4;
        let (a, b) = (
            _mm512_castps_pd(t[base + (i % 4) / 2]),
            _mm512_castps_pd(t[base + (i % 4) / 2 + 2]),
        );
        _mm512_castpd_ps(if i % 2 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // 128-bit lanes: rows 0-3 with 4-7, 8-11 with 12-15, then the two halves.
    let v: [__m512; 16] = std::array::from_fn(|i| {
        let (base, j) = (i / 8 * 8, i % 4);
        let (a, b) = (u[base + j], u[base + j + 4]);
        if i % 8 < 4 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    let columns: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (v[i % 8], v[i % 8 + 8]);
        if i < 8 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    let mask = ((1u32 << MR) - 1) as u16;
    for (kk, &column) in columns.iter().enumerate() {
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(kk * MR), mask, column);
    }
}

/// `c[r][j] += sum_kk a[kk][r] b[kk][j]` for `r < rows`, `j < cols`, in registers.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `kc * MR` values, `b` `kc * NR`, and `c` is valid
/// for `(rows - 1) * ldc + cols` values; `rows <= MR`, `cols <= NR`; a starting bias
/// holds at least `cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn register_tile(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    TileExtent { rows, cols, start }: TileExtent,
) {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
        _mm512_set1_ps, _mm512_setzero_ps, _mm_prefetch, _MM_HINT_T0,
    };
    let mask0 = lane_mask(cols);
    let mask1 = lane_mask(cols.saturating_sub(16));
    let mut acc0 = [_mm512_setzero_ps(); MR];
    let mut acc1 = [_mm512_setzero_ps(); MR];
    match start {
        TileStart::Output => {
            for r in 0..rows {
                let row = c.add(r * ldc);
                acc0[r] = _mm512_maskz_loadu_ps(mask0, row);
                acc1[r] = _mm512_maskz_loadu_ps(mask1, row.add(16));
            }
        }
        TileStart::Bias(Some(bias)) => {
            let b0 = _mm512_maskz_loadu_ps(mask0, bias.as_ptr());
            let b1 = _mm512_maskz_loadu_ps(mask1, bias.as_ptr().wrapping_add(16));
            acc0 = [b0; MR];
            acc1 = [b1; MR];
        }
        TileStart::Bias(None) => {}
    }
    for kk in 0..kc {
        let b0: __m512 = _mm512_loadu_ps(b.add(kk * NR));
        let b1: __m512 = _mm512_loadu_ps(b.add(kk * NR + 16));
        let a_col = a.add(kk * MR);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kk + PREFETCH_STEPS) * NR) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kk + PREFETCH_STEPS) * NR + 16) as *const i8);
        for r in 0..MR {
            let ar = _mm512_set1_ps(*a_col.add(r));
            acc0[r] = _mm512_fmadd_ps(ar, b0, acc0[r]);
            acc1[r] = _mm512_fmadd_ps(ar, b1, acc1[r]);
        }
    }
    for r in 0..rows {
        let row = c.add(r * ldc);
        _mm512_mask_storeu_ps(row, mask0, acc0[r]);
        _mm512_mask_storeu_ps(row.add(16), mask1, acc1[r]);
    }
}

/// The first `lanes` (at most 16) lanes of a vector.
#[cfg(target_arch = "x86_64")]
fn lane_mask(lanes: usize) -> u16 {
    if lanes >= 16 {
        u16::MAX
    } else {
        (1u16 << lanes) - 1
    }
}
