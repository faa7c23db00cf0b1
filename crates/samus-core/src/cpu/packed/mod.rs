//! An f32 matrix product for inference, `C += A B`, with the right operand `B` (a
//! layer's weights) packed once into the order its kernel reads; one blocked
//! driver (`driver`) and one microkernel per instruction set (`kernel`: AVX-512,
//! AVX2 + FMA, portable), chosen by [`crate::cpu::Isa`].
//!
//! The `gemm` crate packs both operands on every call and reaches about 230 to
//! 280 GFLOP/s on this project's two-core AVX-512 machine for the ViT-B shapes,
//! against about 300 for MKL on the products with 768 outputs. Here:
//!
//! - `B` is a [`PackedRhs`], packed for one instruction set: for each block of at
//!   most [`KC_MAX`] rows of the shared dimension, panels of the kernel's width
//!   (`NR`: 32 columns for AVX-512, 16 for AVX2, 8 portable) stored row by row, so
//!   that the kernel streams it with aligned vector loads. A layer packs its weights
//!   once and reuses them ([`PackedCache`], see `samus_model::layers::Linear`).
//! - `A` (the activations) is read in place, as *segments*: the shared dimension may
//!   be split into equally long segments, each at its own offset in `A`'s rows. A
//!   linear layer has one segment; a 3x3 convolution on a padded channels-last image
//!   has nine, one per tap, each the same rows shifted (no unfolded copy).
//! - Each thread takes a range of rows of `C`; per block of the shared dimension it
//!   copies its rows of `A` into tiles of `MR` rows, stored column by column, and
//!   then runs the `MR x NR` register tile over every panel of `B`.
//!
//! Sums run in a different order from `gemm`'s (and from one kernel to another),
//! so results differ in the last bits; property tests compare every kernel the CPU
//! has with an f64 sum.

use std::mem::MaybeUninit;

use candle_core::Result;
use rayon::prelude::*;

use crate::cpu::Isa;

mod driver;
mod kernel;

use kernel::{Avx2, Avx512, Scalar};

/// The longest block of the shared dimension: a tile of `A` (`MR x KC`, 21 KiB at
/// 384 for AVX-512's 14 rows) stays in the L1 cache while a block of `B` panels
/// streams past it.
pub const KC_MAX: usize = 384;
/// Values of one block of `B` from which packing runs on the thread pool.
const PARALLEL_PACK_MIN: usize = 1 << 16;

/// Whether the callers of the packed product ([`crate::linear`], [`crate::conv`])
/// use it rather than the `gemm` crate: when the selected kernel is a vector one
/// (AVX2 or AVX-512), or when `SAMUS_ISA=scalar` asks for the portable kernel. A
/// CPU that has neither AVX2 nor the override (aarch64, older x86-64) runs the
/// `gemm` crate's products, which bring their own NEON and SSE kernels.
pub fn available() -> bool {
    Isa::selected() != Isa::Scalar || Isa::forced() == Some(Isa::Scalar)
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
    isa: Isa,
    k: usize,
    n: usize,
    segments: usize,
    panels: usize,
    blocks: Vec<KBlock>,
    data: Vec<f32>,
}

impl PackedRhs {
    /// Packs `B = W^T` for a linear layer's weight `W` (`n x k`, row-major), for
    /// the kernels of [`Isa::selected`].
    pub fn from_linear_weight(w: &[f32], n: usize, k: usize) -> Result<Self> {
        Self::from_linear_weight_for(Isa::selected(), w, n, k)
    }

    /// [`PackedRhs::from_linear_weight`] for the kernels of `isa`; fails if this
    /// CPU does not have it.
    pub fn from_linear_weight_for(isa: Isa, w: &[f32], n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k {
            candle_core::bail!("packed weight: {} values for {n} x {k}", w.len())
        }
        Self::pack_for(isa, k, n, 1, |_, row, col| w[col * k + row])
    }

    /// Packs a row-major `k x n` matrix `B` for the kernels of `isa`; fails if this
    /// CPU does not have it.
    pub fn from_matrix_for(isa: Isa, b: &[f32], k: usize, n: usize) -> Result<Self> {
        Self::pack_from(
            isa,
            k,
            n,
            1,
            PackSource::<fn(usize, usize, usize) -> f32>::RowMajor(b),
        )
    }

    /// Packs the kernel of a 3x3 convolution, PyTorch's `O x C x 3 x 3` (`w`), as
    /// nine segments of `C` rows, tap-major: row `(ky 3 + kx) C + c`, column `o`;
    /// for the kernels of [`Isa::selected`].
    pub fn from_conv3x3_weight(w: &[f32], o: usize, c: usize) -> Result<Self> {
        Self::from_conv3x3_weight_for(Isa::selected(), w, o, c)
    }

    /// [`PackedRhs::from_conv3x3_weight`] for the kernels of `isa`; fails if this
    /// CPU does not have it.
    pub fn from_conv3x3_weight_for(isa: Isa, w: &[f32], o: usize, c: usize) -> Result<Self> {
        const TAPS: usize = 9;
        if w.len() != o * c * TAPS {
            candle_core::bail!(
                "packed 3x3 kernel: {} values for {o} x {c} x 3 x 3",
                w.len()
            )
        }
        Self::pack_for(isa, c * TAPS, o, TAPS, |tap, ci, col| {
            w[(col * c + ci) * TAPS + tap]
        })
    }

    /// Packs a `k x n` operand split into `segments` equally long segments, whose
    /// value at row `row` of segment `segment`, column `col` is
    /// `value(segment, row, col)`, into panels of the width of `isa`'s kernel;
    /// fails if this CPU does not have `isa`.
    pub(crate) fn pack_for(
        isa: Isa,
        k: usize,
        n: usize,
        segments: usize,
        value: impl Fn(usize, usize, usize) -> f32 + Sync,
    ) -> Result<Self> {
        Self::pack_from(isa, k, n, segments, PackSource::Values(value))
    }

    /// The body of [`PackedRhs::pack_for`], for either kind of source.
    fn pack_from<F: Fn(usize, usize, usize) -> f32 + Sync>(
        isa: Isa,
        k: usize,
        n: usize,
        segments: usize,
        source: PackSource<'_, F>,
    ) -> Result<Self> {
        if let PackSource::RowMajor(b) = source {
            if segments != 1 || b.len() != k * n {
                candle_core::bail!("packed matrix: {} values for {k} x {n}", b.len())
            }
        }
        if !isa.is_supported() {
            candle_core::bail!("packed matrix product: this CPU does not have {isa}")
        }
        let (_, nr) = kernel::tile_shape(isa);
        let seg_len = k / segments.max(1);
        let panels = n.div_ceil(nr);
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
            offset += len * panels * nr;
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
        // Panels in parallel: a ViT-B model packs 470 MB on its first inference,
        // which one thread took 0.3 s to do.
        for block in &blocks {
            let block_data = &mut data[block.offset..][..block.len * panels * nr];
            // Row by row of the panel, so that the writes are sequential: a ViT-B
            // model's encoder (384 MB) packed in 0.19 to 0.22 s on the two-core
            // machine of docs/PERFORMANCE.md, against 0.27 to 0.33 s column by column.
            let fill = |(panel, panel_data): (usize, &mut [f32])| {
                let columns = panel * nr..n.min(panel * nr + nr);
                for (kk, dst) in panel_data.chunks_exact_mut(nr).enumerate() {
                    let (segment, row) = block.source(kk);
                    match &source {
                        // A slice of the row, copied (the panel's last columns
                        // beyond `n` stay zero).
                        PackSource::RowMajor(b) => {
                            let src = &b[row * n + columns.start..row * n + columns.end];
                            dst[..src.len()].copy_from_slice(src);
                        }
                        PackSource::Values(value) => {
                            for (d, col) in dst.iter_mut().zip(columns.clone()) {
                                *d = value(segment, row, col);
                            }
                        }
                    }
                }
            };
            if block.len * n >= PARALLEL_PACK_MIN {
                block_data
                    .par_chunks_exact_mut(block.len * nr)
                    .enumerate()
                    .for_each(fill);
            } else {
                block_data
                    .chunks_exact_mut(block.len * nr)
                    .enumerate()
                    .for_each(fill);
            }
        }
        Ok(Self {
            isa,
            k,
            n,
            segments,
            panels,
            blocks,
            data,
        })
    }

    /// The instruction set whose kernels this operand is packed for.
    pub fn isa(&self) -> Isa {
        self.isa
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
        let (_, nr) = kernel::tile_shape(self.isa);
        &self.data[block.offset + panel * block.len * nr..][..block.len * nr]
    }
}

/// What [`PackedRhs::pack_from`] reads `B` from.
enum PackSource<'a, F> {
    /// `value(segment, row, col)`.
    Values(F),
    /// A row-major `k x n` matrix (one segment): rows copied slice by slice.
    RowMajor(&'a [f32]),
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
/// then the options' epilogue on every output value, with the kernel `b` was
/// packed for. Fails if the operands do not fit.
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
    let len = m * b.n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    gemm_packed_uninit(m, a, b, &mut out.spare_capacity_mut()[..len], options)?;
    // SAFETY: `gemm_packed_uninit` returned without error, so it wrote all `m N`
    // values.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// [`gemm_packed_new`] into memory the caller owns and has not initialised (one
/// part of a larger buffer: the images of a batch, each written where it belongs
/// instead of being copied there). Without an error, every value of the first `m x
/// N` of `c` (rows `N` apart) is written; nothing of `c` is read.
pub fn gemm_packed_uninit(
    m: usize,
    a: LeftOperand,
    b: &PackedRhs,
    c: &mut [MaybeUninit<f32>],
    options: ProductOptions,
) -> Result<()> {
    let options = ProductOptions {
        accumulate: false,
        ..options
    };
    // SAFETY: nothing is read before it is written when not accumulating (the
    // product checks that `c` holds the `m N` values).
    unsafe { run_product(m, a, b, c, b.n, options) }
}

/// The product with the kernel of `b`'s instruction set ([`driver::run_product`]).
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
    // SAFETY: passed on; `b` was packed for a supported instruction set
    // (`PackedRhs::pack_for` checks), so its kernel can run.
    unsafe {
        match b.isa {
            Isa::Avx512 => driver::run_product::<Avx512>(m, a, b, c, ldc, options),
            Isa::Avx2 => driver::run_product::<Avx2>(m, a, b, c, ldc, options),
            Isa::Scalar => driver::run_product::<Scalar>(m, a, b, c, ldc, options),
        }
    }
}

/// Shapes only: the packed values would fill a screen.
impl std::fmt::Debug for PackedRhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedRhs")
            .field("isa", &self.isa)
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

impl PackedLayer {
    /// The memory the packed weights and the bias take, in bytes.
    pub fn bytes(&self) -> usize {
        (self.rhs.data.len() + self.bias.as_ref().map_or(0, Vec::len)) * std::mem::size_of::<f32>()
    }
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
pub struct PackedCache {
    isa: Option<Isa>,
    layer: std::sync::OnceLock<Option<std::sync::Arc<PackedLayer>>>,
}

impl PackedCache {
    /// A cache that packs for `isa`'s kernels, whatever [`Isa::selected`] says and
    /// even where [`available`] is false: how tests run every operation on every
    /// kernel the CPU has. Packing fails (and the operation takes its unpacked
    /// path) if the CPU lacks `isa`.
    pub fn for_isa(isa: Isa) -> Self {
        Self {
            isa: Some(isa),
            ..Self::default()
        }
    }

    /// Whether the operations should use this cache: it names an instruction set,
    /// or the packed product is [`available`].
    pub fn is_active(&self) -> bool {
        self.isa.is_some() || available()
    }

    /// The instruction set this cache packs for.
    pub fn isa(&self) -> Isa {
        self.isa.unwrap_or_else(Isa::selected)
    }

    /// The packed layer, packing it with `pack` (given [`PackedCache::isa`]) on
    /// first use; `None` when packing failed (the caller then takes its unpacked
    /// path, which reports the error).
    pub fn get_or_pack(
        &self,
        pack: impl FnOnce(Isa) -> Result<PackedLayer>,
    ) -> Option<std::sync::Arc<PackedLayer>> {
        self.layer
            .get_or_init(|| pack(self.isa()).ok().map(std::sync::Arc::new))
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

    /// Every kernel this CPU can run: the property tests run each of them on the
    /// same inputs (never none: the portable kernel runs everywhere).
    fn kernels_under_test() -> Vec<Isa> {
        let isas = Isa::supported();
        assert!(!isas.is_empty(), "no kernel to test");
        isas
    }

    #[test]
    fn every_supported_kernel_is_tested() {
        let isas = kernels_under_test();
        let names: Vec<&str> = isas.iter().map(|i| i.name()).collect();
        eprintln!(
            "packed-product kernels tested on this CPU: {}",
            names.join(", ")
        );
        assert!(isas.contains(&Isa::Scalar));
        // A CPU that has AVX2 and FMA must test that kernel too.
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            assert!(isas.contains(&Isa::Avx2));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// A linear layer's product against a plain f64 sum, with row counts that
        /// leave partial register tiles, widths that leave partial panels, shared
        /// dimensions over one block, and one or two threads.
        #[test]
        fn linear_product_matches_f64(m in 1usize..60, k in 1usize..900, n in 1usize..80, threads in 1usize..3, overwrite: bool, seed in 0u64..1000) {
            let (x, w, c0) = (values(seed, m * k), values(seed + 1, n * k), values(seed + 2, m * n));
            let bias = values(seed + 3, n);
            for isa in kernels_under_test() {
                let packed = PackedRhs::from_linear_weight_for(isa, &w, n, k).unwrap();
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
                        prop_assert!((got - want).abs() <= 1e-5 * (k as f64).sqrt() * 4.0, "{isa} ({i}, {j}): {got} vs {want}");
                    }
                }
            }
        }

        /// Segments read at their own offsets (the taps of a convolution), with a
        /// row stride larger than a segment, rows on a grid or not, and the GELU
        /// epilogue.
        #[test]
        fn segmented_product_with_gelu_matches_f64(m in 1usize..40, seg in 1usize..450, segments in 1usize..4, n in 1usize..40, gridded: bool, seed in 0u64..1000) {
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
            for isa in kernels_under_test() {
                // Column j, row s * seg + r of B is w[j * k + r * segments + s] (a conv kernel's layout).
                let packed = PackedRhs::pack_for(isa, k, n, segments, |s, r, j| w[j * k + r * segments + s]).unwrap();
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
                        prop_assert!((got - want).abs() <= 1e-5 + 4e-7 * k as f64, "{isa} ({i}, {j}): {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn operands_that_do_not_fit_are_errors() {
        for isa in kernels_under_test() {
            operands_that_do_not_fit_are_errors_on(isa);
        }
        // An operand packed for an instruction set the CPU lacks cannot be made.
        for isa in Isa::ALL.into_iter().filter(|i| !i.is_supported()) {
            assert!(PackedRhs::from_linear_weight_for(isa, &values(1, 12), 4, 3).is_err());
        }
    }

    fn operands_that_do_not_fit_are_errors_on(isa: Isa) {
        let w = values(1, 4 * 3);
        assert!(PackedRhs::from_linear_weight_for(isa, &w, 4, 4).is_err());
        let packed = PackedRhs::from_linear_weight_for(isa, &w, 4, 3).unwrap();
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
        let mut spare: Vec<f32> = Vec::with_capacity(5 * 4);
        let uninit = &mut spare.spare_capacity_mut()[..5 * 4];
        let options = ProductOptions::default();
        assert!(gemm_packed_uninit(5, left, &packed, &mut uninit[..19], options).is_err());
        assert!(gemm_packed_uninit(5, short, &packed, uninit, options).is_err());
        assert!(gemm_packed_uninit(5, left, &packed, uninit, options).is_ok());
    }

    /// Each kernel's in-register transpose against the copy one value at a time.
    fn transpose_like_one_by_one<K: kernel::Microkernel>() {
        let rows: Vec<Vec<f32>> = (0..K::MR).map(|r| values(r as u64 + 7, 40)).collect();
        for tile_rows in [K::MR, K::MR / 2 + 1, 1] {
            let sources: kernel::TileSources =
                std::array::from_fn(|r| if r < tile_rows { &rows[r][..] } else { &[] });
            for kk0 in [0, 5, 24] {
                let mut fast = vec![f32::NAN; K::TRANSPOSED * K::MR];
                let mut slow = fast.clone();
                let transposed = K::transpose(&sources, kk0, &mut fast);
                assert_eq!(transposed, K::TRANSPOSED > 1, "{}", K::ISA);
                driver::copy_columns::<K>(&sources, kk0, &mut slow);
                if transposed {
                    assert_eq!(fast, slow, "{}: {tile_rows} rows from {kk0}", K::ISA);
                }
                for (kk, column) in slow.chunks_exact(K::MR).enumerate() {
                    for (r, &v) in column.iter().enumerate() {
                        let want = if r < tile_rows {
                            rows[r][kk0 + kk]
                        } else {
                            0.0
                        };
                        assert_eq!(v, want);
                    }
                }
            }
        }
    }

    #[test]
    fn kernel_transposes_match_the_copy() {
        for isa in kernels_under_test() {
            match isa {
                Isa::Avx512 => transpose_like_one_by_one::<Avx512>(),
                Isa::Avx2 => transpose_like_one_by_one::<Avx2>(),
                Isa::Scalar => transpose_like_one_by_one::<Scalar>(),
            }
        }
    }

    #[test]
    fn a_new_output_without_a_shared_dimension_is_the_bias() {
        for isa in kernels_under_test() {
            let packed = PackedRhs::from_linear_weight_for(isa, &[], 3, 0).unwrap();
            bias_only_on(&packed);
        }
    }

    fn bias_only_on(packed: &PackedRhs) {
        let left = LeftOperand {
            data: &[],
            row_stride: 0,
            segment_offsets: &[0],
            grid: None,
        };
        let bias = [1.0, -2.0, 0.5];
        let options = ProductOptions::default().overwrite_with(Some(&bias));
        let out = gemm_packed_new(2, left, packed, options).unwrap();
        assert_eq!(out, [1.0, -2.0, 0.5, 1.0, -2.0, 0.5]);
        let none = gemm_packed_new(2, left, packed, ProductOptions::default()).unwrap();
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
        let pack = |_| {
            Ok(PackedLayer {
                rhs: PackedRhs::from_linear_weight(&values(3, 6), 2, 3)?,
                bias: None,
            })
        };
        let first = cache.get_or_pack(pack).unwrap();
        let second = cache
            .get_or_pack(|_| candle_core::bail!("packed again"))
            .unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &second));
    }
}
