//! An f32 matrix product for inference on AVX-512 CPUs, `C += A B`, with the right
//! operand `B` (a layer's weights) packed once into the order its kernel reads.
//!
//! The `gemm` crate packs both operands on every call and reaches about 230 to
//! 280 GFLOP/s on this project's two-core machine for the ViT-B shapes, against
//! about 300 for MKL on the products with 768 outputs. Here:
//!
//! - `B` is a [`PackedRhs`]: for each block of at most [`KC_MAX`] rows of the
//!   shared dimension, panels of [`NR`] = 32 output columns stored row by row, so
//!   that the kernel streams it with two aligned vector loads per step. A layer packs
//!   its weights once and reuses them (see `samus_model::layers::Linear`).
//! - `A` (the activations) is read in place, as *segments*: the shared dimension may
//!   be split into equally long segments, each at its own offset in `A`'s rows. A
//!   linear layer has one segment; a 3x3 convolution on a padded channels-last image
//!   has nine, one per tap, each the same rows shifted (no unfolded copy).
//! - Each thread takes a range of rows of `C`; per block of the shared dimension it
//!   copies its rows of `A` into tiles of [`MR`] rows, stored column by column, and
//!   then runs the `MR x NR` register tile over every panel of `B`, a few panels at
//!   a time so that they stay in the core's L2 cache while all its row tiles pass.
//!
//! Sums run in a different order from `gemm`'s, so results differ in the last bits;
//! property tests compare with candle's product.

use std::mem::MaybeUninit;

use candle_core::Result;
use rayon::prelude::*;

use crate::cpu_kernel::assume_init;

/// Output columns of one panel of a [`PackedRhs`] (two AVX-512 vectors).
pub const NR: usize = 32;
/// Rows of `C` in one register tile: 14 x 2 accumulators, two `B` vectors and one
/// broadcast fill 31 of the 32 vector registers.
pub const MR: usize = 14;
/// The longest block of the shared dimension: a tile of `A` (`MR x KC`, 21 KiB at
/// 384) stays in the L1 cache while a block of `B` panels streams past it.
pub const KC_MAX: usize = 384;
/// Panels of `B` processed together by one thread: `KC x 256` floats (384 KiB),
/// kept in L2 while all the thread's row tiles use them.
const PANELS_PER_PASS: usize = 8;
/// How many steps ahead the register tile prefetches its `B` panel.
const PREFETCH_STEPS: usize = 8;
/// Values of `A` a task packs for one block (1 MiB): they are reused by every
/// panel of `B`, so they should stay in the core's L2 cache.
const A_TILES_BUDGET: usize = 1 << 18;
/// Row ranges per thread: more than one, so that a thread that finishes early
/// (the other core was slowed down) takes over work instead of waiting.
const TASKS_PER_THREAD: usize = 2;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// Whether this CPU runs the packed product (x86-64 with AVX-512F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One block of the shared dimension: rows `start .. start + len` of segment
/// `segment`, stored at `offset` in [`PackedRhs::data`].
#[derive(Debug, Clone, Copy)]
struct KBlock {
    segment: usize,
    /// Consecutive segments in the block (more than one only for short segments,
    /// which are then taken whole).
    segments: usize,
    start: usize,
    /// Rows taken from each segment.
    piece: usize,
    /// All the block's rows, `segments * piece`.
    len: usize,
    offset: usize,
}

impl KBlock {
    /// Segment and row within it of the block's row `kk`.
    fn source(&self, kk: usize) -> (usize, usize) {
        let piece = self.piece.max(1);
        (self.segment + kk / piece, self.start + kk % piece)
    }
}

/// The right operand `B` (`K x N`) of [`gemm_packed`], packed into panels.
#[derive(Clone)]
pub struct PackedRhs {
    k: usize,
    n: usize,
    segments: usize,
    panels: usize,
    blocks: Vec<KBlock>,
    data: Vec<f32>,
}

impl PackedRhs {
    /// Packs `B = W^T` for a linear layer's weight `W` (`n x k`, row-major).
    pub fn from_linear_weight(w: &[f32], n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k {
            candle_core::bail!("packed weight: {} values for {n} x {k}", w.len())
        }
        Ok(Self::pack(k, n, 1, |_, row, col| w[col * k + row]))
    }

    /// Packs the kernel of a 3x3 convolution, PyTorch's `O x C x 3 x 3` (`w`), as
    /// nine segments of `C` rows, tap-major: row `(ky 3 + kx) C + c`, column `o`.
    pub fn from_conv3x3_weight(w: &[f32], o: usize, c: usize) -> Result<Self> {
        const TAPS: usize = 9;
        if w.len() != o * c * TAPS {
            candle_core::bail!(
                "packed 3x3 kernel: {} values for {o} x {c} x 3 x 3",
                w.len()
            )
        }
        Ok(Self::pack(c * TAPS, o, TAPS, |tap, ci, col| {
            w[(col * c + ci) * TAPS + tap]
        }))
    }

    /// Packs a `k x n` operand split into `segments` equally long segments, whose
    /// value at row `row` of segment `segment`, column `col` is
    /// `value(segment, row, col)`.
    pub(crate) fn pack(
        k: usize,
        n: usize,
        segments: usize,
        value: impl Fn(usize, usize, usize) -> f32,
    ) -> Self {
        let seg_len = k / segments.max(1);
        let panels = n.div_ceil(NR);
        let mut blocks = Vec::new();
        let mut offset = 0;
        let mut push = |segment, count, start, piece| {
            let len = count * piece;
            blocks.push(KBlock {
                segment,
                segments: count,
                start,
                piece,
                len,
                offset,
            });
            offset += len * panels * NR;
        };
        if seg_len > 0 && seg_len <= KC_MAX / 2 {
            // Short segments (a convolution over few channels) are grouped whole,
            // so that the output is not revisited once per segment.
            let per_block = KC_MAX / seg_len;
            for first in (0..segments).step_by(per_block) {
                push(first, per_block.min(segments - first), 0, seg_len);
            }
        } else {
            for segment in 0..segments {
                let count = seg_len.div_ceil(KC_MAX).max(1);
                let (base, extra) = (seg_len / count, seg_len % count);
                let mut start = 0;
                for b in 0..count {
                    let piece = base + usize::from(b < extra);
                    if piece > 0 {
                        push(segment, 1, start, piece);
                    }
                    start += piece;
                }
            }
        }
        let mut data = vec![0f32; offset];
        for block in &blocks {
            let block_data = &mut data[block.offset..][..block.len * panels * NR];
            for (panel, panel_data) in block_data.chunks_exact_mut(block.len * NR).enumerate() {
                for jj in 0..NR.min(n - panel * NR) {
                    for kk in 0..block.len {
                        let (segment, row) = block.source(kk);
                        panel_data[kk * NR + jj] = value(segment, row, panel * NR + jj);
                    }
                }
            }
        }
        Self {
            k,
            n,
            segments,
            panels,
            blocks,
            data,
        }
    }

    /// The shared dimension `K`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The output columns `N`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The number of segments the shared dimension is split into (1 for a linear
    /// layer, 9 for a 3x3 kernel).
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Rows of the longest block of the shared dimension (0 when `K` is 0).
    fn longest_block(&self) -> usize {
        self.blocks.iter().map(|blk| blk.len).max().unwrap_or(0)
    }

    fn panel(&self, block: &KBlock, panel: usize) -> &[f32] {
        &self.data[block.offset + panel * block.len * NR..][..block.len * NR]
    }
}

/// Where the left operand `A` (`m x K`) lies: row `i`, shared index `s seg + c` (of
/// segment `s`) is `data[start(i) + segment_offsets[s] + c]`, with
/// `start(i) = i * row_stride`, or for a `grid` `(width, padded_width)`
/// `start(i) = ((i / width) padded_width + i % width) * row_stride`: the pixels of
/// an image read inside a wider (padded) one, as a 3x3 convolution reads them.
#[derive(Debug, Clone, Copy)]
pub struct LeftOperand<'a> {
    /// The values, read in place.
    pub data: &'a [f32],
    /// Distance between consecutive rows (pixels of a grid).
    pub row_stride: usize,
    /// Start of each segment within a row (one per segment of the [`PackedRhs`]).
    pub segment_offsets: &'a [usize],
    /// Rows that are the pixels of a `width`-wide image inside one `padded_width`
    /// wide, if any.
    pub grid: Option<(usize, usize)>,
}

impl LeftOperand<'_> {
    /// Where row `i` starts in `data`.
    fn row_start(&self, i: usize) -> usize {
        match self.grid {
            Some((width, padded_width)) if width > 0 => {
                ((i / width) * padded_width + i % width) * self.row_stride
            }
            _ => i * self.row_stride,
        }
    }
}

/// What happens to each output tile once its sum is complete, while it is still in
/// the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Epilogue {
    /// Nothing: `c += a b`.
    #[default]
    None,
    /// The exact GELU: `c = gelu(c + a b)`.
    Gelu,
}

/// How [`gemm_packed`] runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProductOptions<'a> {
    /// Threads to split the rows of `c` between (rayon tasks); small products run
    /// on the calling thread whatever this says.
    pub threads: usize,
    /// `c += a b` when true; when false `c = a b + bias` (the old `c` is not read,
    /// the bias or zeros start the sums in registers).
    pub accumulate: bool,
    /// One value per output column, added when `accumulate` is false.
    pub bias: Option<&'a [f32]>,
    /// What is applied to each finished output tile.
    pub epilogue: Epilogue,
}

impl Default for ProductOptions<'_> {
    /// One thread, accumulating, no epilogue.
    fn default() -> Self {
        Self {
            threads: 1,
            accumulate: true,
            bias: None,
            epilogue: Epilogue::None,
        }
    }
}

impl<'a> ProductOptions<'a> {
    /// Accumulating on `threads` threads with `epilogue`.
    pub fn threaded(threads: usize, epilogue: Epilogue) -> Self {
        Self {
            threads,
            epilogue,
            ..Self::default()
        }
    }

    /// `c = a b + bias` (or `a b` without a bias) instead of accumulating.
    pub fn overwrite_with(self, bias: Option<&'a [f32]>) -> Self {
        Self {
            accumulate: false,
            bias,
            ..self
        }
    }
}

/// `c += a b` (or `c = a b`, see [`ProductOptions::accumulate`]) for `a` `m x K`
/// (see [`LeftOperand`]), `b` packed `K x N` and `c` `m x N` with rows `ldc` apart,
/// then the options' epilogue on every output value. Fails if the operands do not
/// fit or the CPU has no AVX-512 ([`available`]).
pub fn gemm_packed(
    m: usize,
    a: LeftOperand,
    b: &PackedRhs,
    c: &mut [f32],
    ldc: usize,
    options: ProductOptions,
) -> Result<()> {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the product writes only
    // `f32` values through this view (never an uninitialised one), so `c` stays
    // initialised; it is initialised wherever the product reads it.
    unsafe {
        let c = &mut *(c as *mut [f32] as *mut [MaybeUninit<f32>]);
        run_product(m, a, b, c, ldc, options)
    }
}

/// `a b + bias` (the options' bias, then their epilogue) as a new `m x N`
/// row-major buffer: [`gemm_packed`] without accumulating, into fresh memory that
/// nobody zeroes first (the sums start from the bias in registers, so the output
/// is written once, by the task that computes it).
pub fn gemm_packed_new(
    m: usize,
    a: LeftOperand,
    b: &PackedRhs,
    options: ProductOptions,
) -> Result<Vec<f32>> {
    let options = ProductOptions {
        accumulate: false,
        ..options
    };
    let len = m * b.n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // SAFETY: nothing is read before it is written when not accumulating.
    unsafe { run_product(m, a, b, &mut out.spare_capacity_mut()[..len], b.n, options)? };
    // SAFETY: `run_product` returned without error without accumulating, so it wrote
    // every value of its `m` rows of `N` columns, `N` apart: all `m N` values.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// The body of [`gemm_packed`], on an output that may be uninitialised where it is
/// not read. On success every value of the `m` rows of `N` columns has been written.
///
/// # Safety
/// When `options.accumulate` is true, the first `(m - 1) ldc + N` values of `c` are
/// initialised (otherwise the product writes each value before reading it).
unsafe fn run_product(
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
    if !available() {
        candle_core::bail!("packed matrix product: this CPU has no AVX-512")
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
        .min((A_TILES_BUDGET / longest).max(MR))
        .div_ceil(MR)
        * MR;
    let c = &mut c[..(m - 1) * ldc + n];
    // Whole rows of `c` per task; the last task's final row is shorter.
    let chunk = rows_per_task * ldc;
    let task = |(t, c_rows): (usize, &mut [MaybeUninit<f32>])| {
        let row0 = t * rows_per_task;
        let rows = rows_per_task.min(m - row0);
        // SAFETY: the caller's guarantee for `c`, restricted to these rows.
        unsafe { rows_task(row0..row0 + rows, a, b, c_rows, ldc, (start, epilogue)) };
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
unsafe fn rows_task(
    row_range: std::ops::Range<usize>,
    a: LeftOperand,
    b: &PackedRhs,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    finish: (TileStart, Epilogue),
) {
    let rows = row_range.len();
    let tiles = rows.div_ceil(MR);
    let longest = b.longest_block();
    A_TILES.with_borrow_mut(|a_tiles| {
        // Every value read is written by `pack_left` first, so a grown buffer's
        // contents do not matter; it is kept for the thread's next product (a fresh
        // one would cost a page fault and a zeroed page per 4 KiB on every call).
        if a_tiles.len() < tiles * MR * longest {
            a_tiles.resize(tiles * MR * longest, 0.0);
        }
        // SAFETY: passed on from the caller.
        unsafe { blocks_task(row_range, a, b, c, ldc, a_tiles, finish) };
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
unsafe fn blocks_task(
    row_range: std::ops::Range<usize>,
    a: LeftOperand,
    b: &PackedRhs,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    a_tiles: &mut [f32],
    (start, epilogue): (TileStart, Epilogue),
) {
    let (row0, rows) = (row_range.start, row_range.len());
    let tiles = rows.div_ceil(MR);
    let last_block = b.blocks.len().saturating_sub(1);
    for (block_index, block) in b.blocks.iter().enumerate() {
        let a_block = &mut a_tiles[..tiles * MR * block.len];
        pack_left(a, row0, rows, block, a_block);
        for first in (0..b.panels).step_by(PANELS_PER_PASS) {
            let last = (first + PANELS_PER_PASS).min(b.panels);
            for (t, a_tile) in a_block.chunks_exact(MR * block.len).enumerate() {
                let tile_rows = MR.min(rows - t * MR);
                for panel in first..last {
                    let col0 = panel * NR;
                    let cols = NR.min(b.n - col0);
                    let c_tile = &mut c[t * MR * ldc + col0..];
                    // The extent the kernel touches: `tile_rows` rows of `cols`
                    // columns `ldc` apart. The task's rows of `c` always hold it (see
                    // `gemm_packed`); checked here because the kernel writes through
                    // a raw pointer.
                    assert!(
                        c_tile.len() >= (tile_rows - 1) * ldc + cols,
                        "packed matrix product: output tile outside its rows"
                    );
                    // SAFETY: AVX-512F was checked by `gemm_packed`; `a_tile` holds
                    // `block.len x MR` values, the panel `block.len x NR`, and
                    // `c_tile` the extent checked above. The kernel reads the tile
                    // only when it starts from the output: after block 0 wrote it,
                    // or in block 0 when the caller initialised it.
                    unsafe {
                        register_tile(
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
                    let (col0, col1) = (first * NR, (last * NR).min(b.n));
                    for r in 0..tile_rows {
                        let row = &mut c[(t * MR + r) * ldc..][col0..col1];
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
/// `MR` rows stored column by column (`tile[kk * MR + r]`), zero-filling past `rows`.
fn pack_left(a: LeftOperand, row0: usize, rows: usize, block: &KBlock, out: &mut [f32]) {
    for (t, tile) in out.chunks_exact_mut(MR * block.len).enumerate() {
        let tile_rows = MR.min(rows.saturating_sub(t * MR));
        for s in 0..block.segments {
            let offset = a.segment_offsets[block.segment + s] + block.start;
            let sources: [&[f32]; MR] = std::array::from_fn(|r| {
                if r < tile_rows {
                    &a.data[a.row_start(row0 + t * MR + r) + offset..][..block.piece]
                } else {
                    &[]
                }
            });
            let piece_tile = &mut tile[s * block.piece * MR..][..block.piece * MR];
            // Sixteen columns at a time transposed in registers, the rest one by one.
            let whole = block.piece / TRANSPOSED * TRANSPOSED;
            let (head, tail) = piece_tile.split_at_mut(whole * MR);
            for (chunk, columns) in head.chunks_exact_mut(TRANSPOSED * MR).enumerate() {
                transpose_columns(&sources, chunk * TRANSPOSED, columns);
            }
            copy_columns(&sources, whole, tail);
        }
    }
}

/// Columns that [`transpose_columns`] moves at once.
const TRANSPOSED: usize = 16;

/// `out[kk * MR + r] = sources[r][kk0 + kk]` for `kk < 16`, zero for an empty source:
/// sixteen columns of up to [`MR`] rows, transposed in AVX-512 registers when the CPU
/// has them.
fn transpose_columns(sources: &[&[f32]; MR], kk0: usize, out: &mut [f32]) {
    let fits = out.len() >= TRANSPOSED * MR
        && sources
            .iter()
            .all(|s| s.is_empty() || s.len() >= kk0 + TRANSPOSED);
    #[cfg(target_arch = "x86_64")]
    if fits && available() {
        // SAFETY: AVX-512F is available, every non-empty source holds the sixteen
        // values read and `out` the sixteen columns written (checked just above).
        unsafe { transpose16(sources, kk0, out) };
        return;
    }
    let len = out.len().min(TRANSPOSED * MR);
    copy_columns(sources, kk0, &mut out[..len]);
}

/// `out[kk * MR + r] = sources[r][kk0 + kk]` one value at a time, for as many
/// columns as `out` holds, zero where a source ends.
fn copy_columns(sources: &[&[f32]; MR], kk0: usize, out: &mut [f32]) {
    for (kk, column) in out.chunks_exact_mut(MR).enumerate() {
        for (value, source) in column.iter_mut().zip(sources) {
            *value = source.get(kk0 + kk).copied().unwrap_or(0.0);
        }
    }
}

/// The AVX-512 body of [`transpose_columns`]: a 16 x 16 transpose (rows past `MR`
/// and empty sources are zeros) in four rounds of shuffles, then each column's first
/// `MR` values stored.
///
/// # Safety
/// The CPU has AVX-512F; each non-empty source holds at least `kk0 + 16` values and
/// `out` at least `16 * MR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(sources: &[&[f32]; MR], kk0: usize, out: &mut [f32]) {
    use std::arch::x86_64::{
        __m512, _mm512_castpd_ps, _mm512_castps_pd, _mm512_loadu_ps, _mm512_mask_storeu_ps,
        _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_unpackhi_pd, _mm512_unpackhi_ps,
        _mm512_unpacklo_pd, _mm512_unpacklo_ps,
    };
    let r: [__m512; 16] = std::array::from_fn(|i| match sources.get(i) {
        Some(s) if !s.is_empty() => _mm512_loadu_ps(s.as_ptr().add(kk0)),
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

/// The portable form of the register tile (never reached: [`gemm_packed`] needs
/// AVX-512), so that the crate builds on every target.
///
/// # Safety
/// As the x86-64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn register_tile(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    TileExtent { rows, cols, start }: TileExtent,
) {
    for r in 0..rows {
        for j in 0..cols {
            let mut sum = match start {
                TileStart::Output => *c.add(r * ldc + j),
                TileStart::Bias(Some(bias)) => bias[j],
                TileStart::Bias(None) => 0.0,
            };
            for kk in 0..kc {
                sum += *a.add(kk * MR + r) * *b.add(kk * NR + j);
            }
            *c.add(r * ldc + j) = sum;
        }
    }
}

/// The part of a register tile that is real, and what its sums start from.
#[derive(Debug, Clone, Copy)]
struct TileExtent<'a> {
    rows: usize,
    cols: usize,
    start: TileStart<'a>,
}

/// What a register tile's sums start from.
#[derive(Debug, Clone, Copy)]
enum TileStart<'a> {
    /// The values already in `c`.
    Output,
    /// The bias values of the tile's columns (every row), or zeros.
    Bias(Option<&'a [f32]>),
}

impl TileStart<'_> {
    /// The start of the tile whose first column is `col0`.
    fn offset(self, col0: usize) -> Self {
        match self {
            Self::Bias(Some(b)) => Self::Bias(Some(&b[col0.min(b.len())..])),
            other => other,
        }
    }
}

/// The first `lanes` (at most 16) lanes of a vector.
fn lane_mask(lanes: usize) -> u16 {
    if lanes >= 16 {
        u16::MAX
    } else {
        (1u16 << lanes) - 1
    }
}

/// Shapes only: the packed values would fill a screen.
impl std::fmt::Debug for PackedRhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedRhs")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("segments", &self.segments)
            .field("blocks", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

/// A layer's weights in packed form, with its bias, as [`PackedCache`] keeps them.
#[derive(Clone)]
pub struct PackedLayer {
    /// The packed weights.
    pub rhs: PackedRhs,
    /// The bias, one value per output column.
    pub bias: Option<Vec<f32>>,
}

/// Shapes only, as for [`PackedRhs`].
impl std::fmt::Debug for PackedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLayer")
            .field("rhs", &self.rhs)
            .field("bias", &self.bias.as_ref().map(Vec::len))
            .finish()
    }
}

/// A layer's weights in packed form, made on the first inference call that can use
/// them and kept for the next ones (a model's weights do not change at inference).
///
/// Layers with trainable weights (candle variables) never fill it: their products
/// take the differentiable path.
#[derive(Debug, Clone, Default)]
pub struct PackedCache(std::sync::OnceLock<Option<std::sync::Arc<PackedLayer>>>);

impl PackedCache {
    /// The packed layer, packing it with `pack` on first use; `None` when packing
    /// failed (the caller then takes its unpacked path, which reports the error).
    pub fn get_or_pack(
        &self,
        pack: impl FnOnce() -> Result<PackedLayer>,
    ) -> Option<std::sync::Arc<PackedLayer>> {
        self.0
            .get_or_init(|| pack().ok().map(std::sync::Arc::new))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reproducible value in [-1, 1) for index `i` of stream `seed`.
    fn value(seed: u64, i: usize) -> f32 {
        let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^= z >> 31;
        z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 29;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn values(seed: u64, n: usize) -> Vec<f32> {
        (0..n).map(|i| value(seed, i)).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// A linear layer's product against a plain f64 sum, with row counts that
        /// leave partial register tiles, widths that leave partial panels, shared
        /// dimensions over one block, and one or two threads.
        #[test]
        fn linear_product_matches_f64(m in 1usize..60, k in 1usize..900, n in 1usize..80, threads in 1usize..3, overwrite: bool, seed in 0u64..1000) {
            prop_assume!(available());
            let (x, w, c0) = (values(seed, m * k), values(seed + 1, n * k), values(seed + 2, m * n));
            let bias = values(seed + 3, n);
            let packed = PackedRhs::from_linear_weight(&w, n, k).unwrap();
            let mut c = c0.clone();
            let left = LeftOperand { data: &x, row_stride: k, segment_offsets: &[0], grid: None };
            let mut options = ProductOptions::threaded(threads, Epilogue::None);
            if overwrite {
                options = options.overwrite_with(Some(&bias));
            }
            gemm_packed(m, left, &packed, &mut c, n, options).unwrap();
            if overwrite {
                // A new output holds the same values, whatever the old one held.
                prop_assert_eq!(&gemm_packed_new(m, left, &packed, options).unwrap(), &c);
            }
            for i in 0..m {
                for j in 0..n {
                    let start = if overwrite { bias[j] } else { c0[i * n + j] };
                    let want: f64 = start as f64
                        + (0..k).map(|kk| x[i * k + kk] as f64 * w[j * k + kk] as f64).sum::<f64>();
                    let got = c[i * n + j] as f64;
                    prop_assert!((got - want).abs() <= 1e-5 * (k as f64).sqrt() * 4.0, "({i}, {j}): {got} vs {want}");
                }
            }
        }

        /// Segments read at their own offsets (the taps of a convolution), with a
        /// row stride larger than a segment, rows on a grid or not, and the GELU
        /// epilogue.
        #[test]
        fn segmented_product_with_gelu_matches_f64(m in 1usize..40, seg in 1usize..450, segments in 1usize..4, n in 1usize..40, gridded: bool, seed in 0u64..1000) {
            prop_assume!(available());
            let k = seg * segments;
            let row_stride = k + 3;
            let offsets: Vec<usize> = (0..segments).map(|s| (segments - 1 - s) * seg + 3).collect();
            let grid = gridded.then_some((3, 5));
            let row_start = |i: usize| match grid {
                Some((w, p)) => ((i / w) * p + i % w) * row_stride,
                None => i * row_stride,
            };
            let a = values(seed, row_start(m - 1) + row_stride + 3);
            let w = values(seed + 1, n * k);
            // Column j, row s * seg + r of B is w[j * k + r * segments + s] (a conv kernel's layout).
            let packed = PackedRhs::pack(k, n, segments, |s, r, j| w[j * k + r * segments + s]);
            let mut c = vec![0f32; m * n];
            let left = LeftOperand { data: &a, row_stride, segment_offsets: &offsets, grid };
            let options = ProductOptions::threaded(2, Epilogue::Gelu);
            gemm_packed(m, left, &packed, &mut c, n, options).unwrap();
            let fresh = gemm_packed_new(m, left, &packed, options).unwrap();
            // `gemm_packed_new` never accumulates: the zeros `c` started from.
            prop_assert_eq!(&fresh, &c);
            for i in 0..m {
                for j in 0..n {
                    let mut sum = 0f64;
                    for (s, off) in offsets.iter().enumerate() {
                        for r in 0..seg {
                            sum += a[row_start(i) + off + r] as f64 * w[j * k + r * segments + s] as f64;
                        }
                    }
                    let want = sum * 0.5 * (1.0 + candle_core::cpu::erf::erf_f64(sum / std::f64::consts::SQRT_2));
                    let got = c[i * n + j] as f64;
                    prop_assert!((got - want).abs() <= 1e-5 + 4e-7 * k as f64, "({i}, {j}): {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn operands_that_do_not_fit_are_errors() {
        if !available() {
            return;
        }
        let w = values(1, 4 * 3);
        assert!(PackedRhs::from_linear_weight(&w, 4, 4).is_err());
        let packed = PackedRhs::from_linear_weight(&w, 4, 3).unwrap();
        let x = values(2, 5 * 3);
        let mut c = vec![0f32; 5 * 4];
        let short = LeftOperand {
            data: &x[..14],
            row_stride: 3,
            segment_offsets: &[0],
            grid: None,
        };
        assert!(gemm_packed(5, short, &packed, &mut c, 4, ProductOptions::default()).is_err());
        let two_segments = LeftOperand {
            data: &x,
            row_stride: 3,
            segment_offsets: &[0, 1],
            grid: None,
        };
        assert!(gemm_packed(
            5,
            two_segments,
            &packed,
            &mut c,
            4,
            ProductOptions::default()
        )
        .is_err());
        let left = LeftOperand {
            data: &x,
            row_stride: 3,
            segment_offsets: &[0],
            grid: None,
        };
        assert!(gemm_packed(5, left, &packed, &mut c[..19], 4, ProductOptions::default()).is_err());
        assert!(gemm_packed(5, left, &packed, &mut c, 4, ProductOptions::default()).is_ok());
        assert!(gemm_packed_new(5, short, &packed, ProductOptions::default()).is_err());
        assert!(gemm_packed_new(5, left, &packed, ProductOptions::default()).is_ok());
    }

    #[test]
    fn sixteen_columns_transpose_like_one_by_one() {
        let rows: Vec<Vec<f32>> = (0..MR).map(|r| values(r as u64 + 7, 40)).collect();
        for tile_rows in [MR, 9, 1] {
            let sources: [&[f32]; MR] =
                std::array::from_fn(|r| if r < tile_rows { &rows[r][..] } else { &[] });
            for kk0 in [0, 5, 24] {
                let mut out = vec![f32::NAN; TRANSPOSED * MR];
                transpose_columns(&sources, kk0, &mut out);
                for kk in 0..TRANSPOSED {
                    for r in 0..MR {
                        let want = if r < tile_rows {
                            rows[r][kk0 + kk]
                        } else {
                            0.0
                        };
                        assert_eq!(out[kk * MR + r], want, "column {kk}, row {r}, from {kk0}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_new_output_without_a_shared_dimension_is_the_bias() {
        if !available() {
            return;
        }
        let packed = PackedRhs::from_linear_weight(&[], 3, 0).unwrap();
        let left = LeftOperand {
            data: &[],
            row_stride: 0,
            segment_offsets: &[0],
            grid: None,
        };
        let bias = [1.0, -2.0, 0.5];
        let options = ProductOptions::default().overwrite_with(Some(&bias));
        let out = gemm_packed_new(2, left, &packed, options).unwrap();
        assert_eq!(out, [1.0, -2.0, 0.5, 1.0, -2.0, 0.5]);
        let none = gemm_packed_new(2, left, &packed, ProductOptions::default()).unwrap();
        assert_eq!(none, [0.0; 6]);
    }

    #[test]
    fn debug_shows_shapes_not_values() {
        let layer = PackedLayer {
            rhs: PackedRhs::from_linear_weight(&values(4, 64 * 48), 48, 64).unwrap(),
            bias: Some(values(5, 48)),
        };
        let text = format!("{layer:?}");
        assert!(text.contains("k: 64") && text.contains("n: 48"), "{text}");
        assert!(text.len() < 200, "{text}");
    }

    #[test]
    fn the_cache_packs_once() {
        let cache = PackedCache::default();
        let pack = || {
            Ok(PackedLayer {
                rhs: PackedRhs::from_linear_weight(&values(3, 6), 2, 3)?,
                bias: None,
            })
        };
        let first = cache.get_or_pack(pack).unwrap();
        let second = cache
            .get_or_pack(|| candle_core::bail!("packed again"))
            .unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &second));
    }
}
