//! The AVX2 + FMA microkernel, for the x86-64 CPUs without AVX-512 (most laptops
//! and desktops): a 6 x 16 register tile (12 accumulators, two `B` vectors and one
//! broadcast fill 15 of the 16 vector registers, the shape BLIS and `gemm` use on
//! Haswell to Zen 3), and an 8 x 8 in-register transpose for packing `A`.
//!
//! AVX2 has no cheap masked loads and stores, so a partial tile (the last rows or
//! columns of `C`) runs through a full scratch tile ([`super::tile_via_scratch`]).

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use crate::cpu::Isa;

use super::{tile_via_scratch, Microkernel, TileExtent, TileSources, TileStart};

/// The AVX2 + FMA kernel.
pub(in crate::cpu::packed) struct Avx2;

const MR: usize = 6;
const NR: usize = 16;
/// How many steps ahead the register tile prefetches its `B` panel.
const PREFETCH_STEPS: usize = 8;
/// Columns that the transpose moves at once.
const TRANSPOSED: usize = 8;

impl Microkernel for Avx2 {
    const ISA: Isa = Isa::Avx2;
    const MR: usize = MR;
    const NR: usize = NR;
    const TRANSPOSED: usize = TRANSPOSED;

    unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        extent: TileExtent,
    ) {
        if extent.rows != MR || extent.cols != NR {
            // SAFETY: passed on from the caller.
            return unsafe { tile_via_scratch::<Self>(kc, a, b, c, ldc, extent) };
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are available (the driver runs this kernel only for
        // a supported `Isa`); the operands are sized as the caller promises.
        unsafe {
            full_tile(kc, a, b, c, ldc, extent.start)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the AVX2 kernel runs only where Isa::Avx2 is supported")
    }

    fn transpose(sources: &TileSources, kk0: usize, out: &mut [f32]) -> bool {
        let fits = out.len() >= TRANSPOSED * MR
            && sources[..MR]
                .iter()
                .all(|s| s.is_empty() || s.len() >= kk0 + TRANSPOSED);
        #[cfg(target_arch = "x86_64")]
        if fits {
            // SAFETY: AVX2 is available (as above); sizes checked just above.
            unsafe { transpose8(sources, kk0, out) };
            return true;
        }
        let _ = fits;
        false
    }
}

/// A full `MR x NR` tile: `c[r][j] = start + sum_kk a[kk][r] b[kk][j]`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `kc * MR` values, `b` `kc * NR`, `c` is
/// valid for `(MR - 1) * ldc + NR` values (initialised when starting from the
/// output) and a starting bias holds `NR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn full_tile(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    start: TileStart,
) {
    use std::arch::x86_64::{
        __m256, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps,
        _mm256_storeu_ps, _mm_prefetch, _MM_HINT_T0,
    };
    let mut acc0: [__m256; MR] = [_mm256_setzero_ps(); MR];
    let mut acc1: [__m256; MR] = [_mm256_setzero_ps(); MR];
    match start {
        TileStart::Output => {
            for r in 0..MR {
                let row = c.add(r * ldc);
                acc0[r] = _mm256_loadu_ps(row);
                acc1[r] = _mm256_loadu_ps(row.add(8));
            }
        }
        TileStart::Bias(Some(bias)) => {
            let (b0, b1) = (
                _mm256_loadu_ps(bias.as_ptr()),
                _mm256_loadu_ps(bias.as_ptr().add(8)),
            );
            acc0 = [b0; MR];
            acc1 = [b1; MR];
        }
        TileStart::Bias(None) => {}
    }
    for kk in 0..kc {
        let b0 = _mm256_loadu_ps(b.add(kk * NR));
        let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kk + PREFETCH_STEPS) * NR) as *const i8);
        let a_col = a.add(kk * MR);
        for r in 0..MR {
            let ar = _mm256_broadcast_ss(&*a_col.add(r));
            acc0[r] = _mm256_fmadd_ps(ar, b0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(ar, b1, acc1[r]);
        }
    }
    for r in 0..MR {
        let row = c.add(r * ldc);
        _mm256_storeu_ps(row, acc0[r]);
        _mm256_storeu_ps(row.add(8), acc1[r]);
    }
}

/// `out[kk * MR + r] = sources[r][kk0 + kk]` for 8 columns: an 8 x 8 transpose
/// (rows past `MR` and empty sources are zeros) in three rounds of shuffles, then
/// each column's first `MR` values stored.
///
/// # Safety
/// The CPU has AVX2; each non-empty source holds at least `kk0 + 8` values and
/// `out` at least `8 * MR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8(sources: &TileSources, kk0: usize, out: &mut [f32]) {
    use std::arch::x86_64::{
        __m256, _mm256_loadu_ps, _mm256_maskstore_ps, _mm256_permute2f128_ps, _mm256_set_epi32,
        _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    };
    let r: [__m256; 8] = std::array::from_fn(|i| match sources.get(i) {
        Some(s) if i < MR && !s.is_empty() => _mm256_loadu_ps(s.as_ptr().add(kk0)),
        _ => _mm256_setzero_ps(),
    });
    // Pairs of rows interleaved, then pairs of pairs: within each 128-bit lane,
    // four rows' values of one column.
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    let u: [__m256; 8] = std::array::from_fn(|i| {
        let base = i / 4 * 4;
        let (a, b) = (t[base + (i % 4) / 2], t[base + (i % 4) / 2 + 2]);
        if i % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xee>(a, b)
        }
    });
    // Rows 0-3 (low lanes) with rows 4-7 (high lanes): column j is the low halves
    // of u[j] and u[j + 4] for j < 4, the high halves for j >= 4.
    let columns: [__m256; 8] = std::array::from_fn(|j| {
        let (a, b) = (u[j % 4], u[j % 4 + 4]);
        if j < 4 {
            _mm256_permute2f128_ps::<0x20>(a, b)
        } else {
            _mm256_permute2f128_ps::<0x31>(a, b)
        }
    });
    // The first MR lanes of each column.
    let mask = _mm256_set_epi32(0, 0, -1, -1, -1, -1, -1, -1);
    for (kk, &column) in columns.iter().enumerate() {
        _mm256_maskstore_ps(out.as_mut_ptr().add(kk * MR), mask, column);
    }
}
