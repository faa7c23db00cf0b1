//! The blocked driver of the packed product, written once for every kernel: rows
//! of `C` split between threads, each thread's rows of `A` packed into tiles per
//! block of the shared dimension, and the kernel's register tile run over every
//! panel of `B`, a few panels at a time so that they stay in the core's L2 cache
//! while all the thread's row tiles pass.

use std::mem::MaybeUninit;

use candle_core::Result;
use rayon::prelude::*;

use super::kernel::{Microkernel, TileExtent, TileSources, TileStart};
use super::{Epilogue, KBlock, LeftOperand, PackedRhs, ProductOptions};
use crate::cpu_kernel::assume_init;

/// Columns of `B` processed together by one thread (panels of the kernel's
/// width): `KC x 256` floats (384 KiB at the longest block), kept in L2 while all
/// the thread's row tiles use them.
const PASS_COLUMNS: usize = 256;
/// Values of `A` a task packs for one block (1 MiB): they are reused by every
/// panel of `B`, so they should stay in the core's L2 cache.
const A_TILES_BUDGET: usize = 1 << 18;
/// Row ranges per thread: more than one, so that a thread that finishes early
/// (the other core was slowed down) takes over work instead of waiting.
const TASKS_PER_THREAD: usize = 2;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// The body of [`gemm_packed`], on an output that may be uninitialised where it is
/// not read. On success every value of the `m` rows of `N` columns has been written.
///
/// # Safety
/// When `options.accumulate` is true, the first `(m - 1) ldc + N` values of `c` are
/// initialised (otherwise the product writes each value before reading it).
pub(super) unsafe fn run_product<K: Microkernel>(
    m: usize,
    a: LeftOperand,
    b: &PackedRhs,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    options: ProductOptions,
) -> Result<()> {
    let ProductOptions {
        threads,
        accumulate,
        bias,
        epilogue,
    } = options;
    let bias = if accumulate { None } else { bias };
    if bias.is_some_and(|bias| bias.len() != b.n) {
        candle_core::bail!(
            "packed matrix product: bias of {} values for {} columns",
            bias.map_or(0, <[f32]>::len),
            b.n
        )
    }
    let n = b.n;
    let seg_len = b.k / b.segments.max(1);
    if b.isa != K::ISA {
        candle_core::bail!(
            "packed matrix product: operand packed for {}, kernel for {}",
            b.isa,
            K::ISA
        )
    }
    if a.grid
        .is_some_and(|(width, padded)| width == 0 || padded < width)
    {
        candle_core::bail!(
            "packed matrix product: grid {:?} is not an image in a wider one",
            a.grid
        )
    }
    if a.segment_offsets.len() != b.segments {
        candle_core::bail!(
            "packed matrix product: {} segment offsets for {} segments",
            a.segment_offsets.len(),
            b.segments
        )
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if b.blocks.is_empty() {
        // K = 0: nothing to add, but the epilogue still applies.
        if c.len() < (m - 1) * ldc + n {
            candle_core::bail!(
                "packed matrix product: output of {} values for {m} x {n}, ldc {ldc}",
                c.len()
            )
        }
        for i in 0..m {
            let row = &mut c[i * ldc..][..n];
            match (accumulate, bias) {
                (true, _) => {}
                (false, Some(b)) => {
                    for (v, &bv) in row.iter_mut().zip(b) {
                        v.write(bv);
                    }
                }
                (false, None) => row.fill(MaybeUninit::new(0.0)),
            }
            if epilogue == Epilogue::Gelu {
                // SAFETY: the row was written just above, or (accumulating) was
                // initialised by the caller.
                crate::activation::gelu_in_place(unsafe { assume_init(row) });
            }
        }
        return Ok(());
    }
    let a_needed = a
        .segment_offsets
        .iter()
        .map(|off| a.row_start(m - 1) + off + seg_len)
        .max()
        .unwrap_or(0);
    if a.data.len() < a_needed || ldc < n || c.len() < (m - 1) * ldc + n {
        candle_core::bail!(
            "packed matrix product: operands too short (a {} < {a_needed} or c {} for {m} x {n}, ldc {ldc})",
            a.data.len(),
            c.len()
        )
    }
    let start = if accumulate {
        TileStart::Output
    } else {
        TileStart::Bias(bias)
    };
    let threads = if m * n * b.k < PARALLEL_MIN_MACS {
        1
    } else {
        threads.max(1)
    };
    // Rows per task: a share of the threads' work, and few enough that the task's
    // tiles of `A` for one block stay within the core's L2 cache.
    let longest = b.longest_block().max(1);
    let rows_per_task = m
        .div_ceil(threads * TASKS_PER_THREAD)
        .min((A_TILES_BUDGET / longest).max(K::MR))
        .div_ceil(K::MR)
        * K::MR;
    let c = &mut c[..(m - 1) * ldc + n];
    // Whole rows of `c` per task; the last task's final row is shorter.
    let chunk = rows_per_task * ldc;
    let task = |(t, c_rows): (usize, &mut [MaybeUninit<f32>])| {
        let row0 = t * rows_per_task;
        let rows = rows_per_task.min(m - row0);
        // SAFETY: the caller's guarantee for `c`, restricted to these rows.
        unsafe { rows_task::<K>(row0..row0 + rows, a, b, c_rows, ldc, (start, epilogue)) };
    };
    if threads == 1 {
        c.chunks_mut(chunk).enumerate().for_each(task);
    } else {
        c.par_chunks_mut(chunk).enumerate().for_each(task);
    }
    Ok(())
}

/// Rows `row0 .. row0 + rows` of the product, into `c` (which starts at `row0`).
///
/// # Safety
/// As [`run_product`]: `c` is initialised if `finish.0` is [`TileStart::Output`].
unsafe fn rows_task<K: Microkernel>(
    row_range: std::ops::Range<usize>,
    a: LeftOperand,
    b: &PackedRhs,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    finish: (TileStart, Epilogue),
) {
    let rows = row_range.len();
    let tiles = rows.div_ceil(K::MR);
    let longest = b.longest_block();
    A_TILES.with_borrow_mut(|a_tiles| {
        // Every value read is written by `pack_left` first, so a grown buffer's
        // contents do not matter; it is kept for the thread's next product (a fresh
        // one would cost a page fault and a zeroed page per 4 KiB on every call).
        if a_tiles.len() < tiles * K::MR * longest {
            a_tiles.resize(tiles * K::MR * longest, 0.0);
        }
        // SAFETY: passed on from the caller.
        unsafe { blocks_task::<K>(row_range, a, b, c, ldc, a_tiles, finish) };
    });
}

thread_local! {
    /// Each thread's tiles of `A`, reused from product to product.
    static A_TILES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The body of [`rows_task`], with the thread's `A` tile buffer.
///
/// Block 0 writes every value of the task's rows of `c` (`N` columns) before any
/// later block or the epilogue reads it; with [`TileStart::Output`] block 0 reads
/// them too.
///
/// # Safety
/// As [`rows_task`].
unsafe fn blocks_task<K: Microkernel>(
    row_range: std::ops::Range<usize>,
    a: LeftOperand,
    b: &PackedRhs,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    a_tiles: &mut [f32],
    (start, epilogue): (TileStart, Epilogue),
) {
    let (row0, rows) = (row_range.start, row_range.len());
    let tiles = rows.div_ceil(K::MR);
    let last_block = b.blocks.len().saturating_sub(1);
    let panels_per_pass = (PASS_COLUMNS / K::NR).max(1);
    for (block_index, block) in b.blocks.iter().enumerate() {
        let a_block = &mut a_tiles[..tiles * K::MR * block.len];
        pack_left::<K>(a, row0, rows, block, a_block);
        for first in (0..b.panels).step_by(panels_per_pass) {
            let last = (first + panels_per_pass).min(b.panels);
            for (t, a_tile) in a_block.chunks_exact(K::MR * block.len).enumerate() {
                let tile_rows = K::MR.min(rows - t * K::MR);
                for panel in first..last {
                    let col0 = panel * K::NR;
                    let cols = K::NR.min(b.n - col0);
                    let c_tile = &mut c[t * K::MR * ldc + col0..];
                    // The extent the kernel touches: `tile_rows` rows of `cols`
                    // columns `ldc` apart. The task's rows of `c` always hold it (see
                    // `gemm_packed`); checked here because the kernel writes through
                    // a raw pointer.
                    assert!(
                        c_tile.len() >= (tile_rows - 1) * ldc + cols,
                        "packed matrix product: output tile outside its rows"
                    );
                    // SAFETY: the kernel's instruction set is supported (the
                    // operand was packed for it, which needs it); `a_tile` holds
                    // `block.len x MR` values, the panel `block.len x NR`, and
                    // `c_tile` the extent checked above. The kernel reads the tile
                    // only when it starts from the output: after block 0 wrote it,
                    // or in block 0 when the caller initialised it.
                    unsafe {
                        K::tile(
                            block.len,
                            a_tile.as_ptr(),
                            b.panel(block, panel).as_ptr(),
                            c_tile.as_mut_ptr().cast::<f32>(),
                            ldc,
                            TileExtent {
                                rows: tile_rows,
                                cols,
                                start: if block_index == 0 {
                                    start.offset(col0)
                                } else {
                                    TileStart::Output
                                },
                            },
                        );
                    }
                }
                if epilogue == Epilogue::Gelu && block_index == last_block {
                    // The tile's rows of this pass's columns, still in the cache.
                    let (col0, col1) = (first * K::NR, (last * K::NR).min(b.n));
                    for r in 0..tile_rows {
                        let row = &mut c[(t * K::MR + r) * ldc..][col0..col1];
                        // SAFETY: block 0 wrote these values (every row of the tile,
                        // every column of the pass's panels).
                        crate::activation::gelu_in_place(unsafe { assume_init(row) });
                    }
                }
            }
        }
    }
}

/// Copies rows `row0 .. row0 + rows` of `a`, shared indices of `block`, into tiles of
/// `K::MR` rows stored column by column (`tile[kk * MR + r]`), zero-filling past `rows`.
fn pack_left<K: Microkernel>(
    a: LeftOperand,
    row0: usize,
    rows: usize,
    block: &KBlock,
    out: &mut [f32],
) {
    for (t, tile) in out.chunks_exact_mut(K::MR * block.len).enumerate() {
        let tile_rows = K::MR.min(rows.saturating_sub(t * K::MR));
        for s in 0..block.segments {
            let offset = a.segment_offsets[block.segment + s] + block.start;
            let sources: TileSources = std::array::from_fn(|r| {
                if r < tile_rows {
                    &a.data[a.row_start(row0 + t * K::MR + r) + offset..][..block.piece]
                } else {
                    &[]
                }
            });
            let piece_tile = &mut tile[s * block.piece * K::MR..][..block.piece * K::MR];
            // The kernel's transpose where it has one, the rest one by one.
            let width = K::TRANSPOSED.max(1);
            let whole = if width > 1 {
                block.piece / width * width
            } else {
                0
            };
            let (head, tail) = piece_tile.split_at_mut(whole * K::MR);
            for (chunk, columns) in head.chunks_exact_mut(width * K::MR).enumerate() {
                if !K::transpose(&sources, chunk * width, columns) {
                    copy_columns::<K>(&sources, chunk * width, columns);
                }
            }
            copy_columns::<K>(&sources, whole, tail);
        }
    }
}

/// `out[kk * MR + r] = sources[r][kk0 + kk]` one value at a time, for as many
/// columns as `out` holds, zero where a source ends.
pub(super) fn copy_columns<K: Microkernel>(sources: &TileSources, kk0: usize, out: &mut [f32]) {
    for (kk, column) in out.chunks_exact_mut(K::MR).enumerate() {
        for (value, source) in column.iter_mut().zip(sources) {
            *value = source.get(kk0 + kk).copied().unwrap_or(0.0);
        }
    }
}
