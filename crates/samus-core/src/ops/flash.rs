//! Fused multi-head attention for CPU inference.
//!
//! [`attention_merged`] computes `softmax(scale q k^T + bias) v` for every head and
//! returns the heads already merged, `(B, Nq, H * Dh)`, the layout the output
//! projection reads. On the CPU in f32, when no input needs a gradient, it runs one
//! fused operation ([`FusedAttention`]):
//!
//! - queries, keys and values are read in place through their strides (the views
//!   that split a fused `qkv` projection into heads cost no copy);
//! - the work is split into blocks of whole rows of one batch item's query grid,
//!   about [`QUERY_BLOCK`] queries, all heads, run in parallel; a block's scores
//!   (`QUERY_BLOCK x Nk`) stay in the cache, never in a full `Nq x Nk` matrix per
//!   head; a block gathers its queries, so it can skip some ([`attention_merged_in`]:
//!   the padding tokens of a window);
//! - SAM's decomposed relative-position bias is computed and added inside the block,
//!   and the softmax is normalised after the product with the values;
//! - the two matrix products use the `gemm` crate's kernels (AVX-512 where the CPU
//!   has it); each query's output is scaled into its row of the merged output.
//!
//! Otherwise (gradients, another device or dtype) it runs
//! [`crate::cuda_attention::fused_attention`]: the fused CUDA kernels on a GPU with
//! the `cuda` feature, else [`crate::attention::multi_head_attention`]; both are
//! differentiable.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::attention::{merge_heads, AttentionOptions};
use crate::cpu_kernel::{cpu_f32_inference, par_filled};
use crate::rel_pos::DecomposedRelPos;
use crate::softmax::{exp_shifted_sum, row_max};

/// Queries per parallel task: their scores against 1024 keys take 1 MiB, which stay
/// in a core's L2 cache (2 MiB here). The `gemm` crate packs a head's keys and values
/// again for every block, so fewer, larger blocks pack less (256 against 128: about
/// 20 ms less per ViT-B image in an in-process A/B).
pub const QUERY_BLOCK: usize = 256;

/// Multi-head attention with the heads merged: `q` `(B, H, Nq, Dh)`, `k` and `v`
/// `(B, H, Nk, Dh)` (any strides) give `(B, Nq, H * Dh)`; the same numbers as
/// `merge_heads(multi_head_attention(q, k, v, scale, rel_pos, options))`.
pub fn attention_merged(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    rel_pos: Option<&DecomposedRelPos>,
    options: AttentionOptions,
) -> Result<Tensor> {
    attention_of_queries(q, k, v, scale, rel_pos, None, options)
}

/// [`attention_merged`] for padded windows, where only part of each batch item's
/// query grid is needed: item `i` needs the queries in the first `extents[i].0`
/// rows and `extents[i].1` columns of the bias's query grid (the real tokens of a
/// window, see [`crate::window::window_extents`]).
///
/// The output rows of the other queries are unspecified: the fused CPU path skips
/// those queries and leaves zeros (42% of the work of SAMUS's windowed attention,
/// whose 32 x 32 grid is padded to 42 x 42), the other paths compute them.
pub fn attention_merged_in(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    rel_pos: &DecomposedRelPos,
    extents: &[(usize, usize)],
    options: AttentionOptions,
) -> Result<Tensor> {
    attention_of_queries(q, k, v, scale, Some(rel_pos), Some(extents), options)
}

/// The body of [`attention_merged`] and [`attention_merged_in`]: the fused operation
/// when nothing needs a gradient on the CPU in f32, with the query extents if given.
fn attention_of_queries(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    rel_pos: Option<&DecomposedRelPos>,
    extents: Option<&[(usize, usize)]>,
    options: AttentionOptions,
) -> Result<Tensor> {
    let fusable = cpu_f32_inference([q, k, v]) && rel_pos.is_none_or(|r| !r.tracks_gradient());
    if !fusable {
        // On a CUDA device (feature `cuda`) the fused GPU kernels, with their own
        // backward; otherwise the composed, differentiable path.
        return merge_heads(&crate::cuda_attention::fused_attention(
            q, k, v, scale, rel_pos, options,
        )?);
    }
    let op = FusedAttention {
        extents: extents.map(<[_]>::to_vec),
        ..FusedAttention::new(scale, rel_pos)?
    };
    unit_stride_rows(q)?.apply_op3_no_bwd(&unit_stride_rows(k)?, &unit_stride_rows(v)?, &op)
}

/// `t` itself when its last axis is contiguous, else a contiguous copy.
fn unit_stride_rows(t: &Tensor) -> Result<Tensor> {
    if t.layout().stride().last() == Some(&1) {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// The relative-position tables on the host: `rh` `(qh, kh, Dh)`, `rw` `(qw, kw,
/// Dh)`.
#[derive(Debug, Clone)]
struct HostRelPos {
    rh: Vec<f32>,
    rw: Vec<f32>,
    q_size: (usize, usize),
    k_size: (usize, usize),
}

/// The fused attention of [`attention_merged`] as a candle operation on `(q, k, v)`.
#[derive(Debug, Clone)]
pub struct FusedAttention {
    scale: f32,
    rel_pos: Option<HostRelPos>,
    /// Per batch item, the rows and columns of the query grid to compute (all of
    /// it when `None`; see [`attention_merged_in`]).
    extents: Option<Vec<(usize, usize)>>,
}

impl FusedAttention {
    /// An operation with the softmax scale and, optionally, the decomposed bias.
    pub fn new(scale: f64, rel_pos: Option<&DecomposedRelPos>) -> Result<Self> {
        let rel_pos = match rel_pos {
            None => None,
            Some(r) => {
                let (rh, rw) = r.tables();
                Some(HostRelPos {
                    rh: rh.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
                    rw: rw.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
                    q_size: r.query_grid(),
                    k_size: r.key_grid(),
                })
            }
        };
        Ok(Self {
            scale: scale as f32,
            rel_pos,
            extents: None,
        })
    }
}

/// An operand `(B, H, N, Dh)` with unit stride along `Dh`, read in place.
#[derive(Debug, Clone, Copy)]
struct HeadsView<'a> {
    data: &'a [f32],
    offset: usize,
    batch_stride: usize,
    head_stride: usize,
    row_stride: usize,
    dims: [usize; 4],
}

impl<'a> HeadsView<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, name: &str) -> Result<Self> {
        let data = storage.as_slice::<f32>()?;
        let dims: [usize; 4] = layout
            .dims()
            .try_into()
            .map_err(|_| candle_core::Error::Msg(format!("fused attention: {name} must be 4-d")))?;
        let stride = layout.stride();
        if stride[3] != 1 && dims[3] > 1 {
            candle_core::bail!("fused attention: {name} needs unit stride along Dh")
        }
        let view = Self {
            data,
            offset: layout.start_offset(),
            batch_stride: stride[0],
            head_stride: stride[1],
            row_stride: stride[2],
            dims,
        };
        // The last element any index can reach must lie in the storage.
        if dims.iter().all(|&d| d > 0) {
            let last = view.offset
                + (dims[0] - 1) * view.batch_stride
                + (dims[1] - 1) * view.head_stride
                + (dims[2] - 1) * view.row_stride
                + dims[3]
                - 1;
            if last >= data.len() {
                candle_core::bail!("fused attention: {name} reaches past its storage")
            }
        }
        Ok(view)
    }

    /// Row `i` of head `h` of batch item `b`.
    fn row(&self, b: usize, h: usize, i: usize) -> &'a [f32] {
        let start =
            self.offset + b * self.batch_stride + h * self.head_stride + i * self.row_stride;
        &self.data[start..start + self.dims[3]]
    }

    /// Rows `rows` of head `h` of batch item `b`, as a matrix view.
    fn rows(&self, b: usize, h: usize, first: usize, count: usize) -> MatRef<'a> {
        MatRef {
            data: self.data,
            offset: self.offset
                + b * self.batch_stride
                + h * self.head_stride
                + first * self.row_stride,
            rows: count,
            cols: self.dims[3],
            row_stride: self.row_stride,
            col_stride: 1,
        }
    }
}

/// A read-only strided matrix inside a slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) offset: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
    pub(crate) col_stride: usize,
}

impl MatRef<'_> {
    /// The same elements read as the transposed matrix.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// One past the largest index the view reads (its offset when empty).
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            self.offset
        } else {
            self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// `dst[offset..]` viewed as a `rows x cols` matrix with the given row stride
/// (unit column stride).
pub(crate) struct MatMut<'a> {
    pub(crate) data: &'a mut [f32],
    pub(crate) offset: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
}

/// `dst = alpha * lhs rhs` on one thread with the `gemm` crate's kernels.
pub(crate) fn matmul(dst: MatMut<'_>, lhs: MatRef<'_>, rhs: MatRef<'_>, alpha: f32) -> Result<()> {
    let shapes_agree = lhs.rows == dst.rows && rhs.cols == dst.cols && lhs.cols == rhs.rows;
    let dst_end = if dst.rows == 0 || dst.cols == 0 {
        dst.offset
    } else {
        dst.offset + (dst.rows - 1) * dst.row_stride + dst.cols
    };
    let in_bounds = lhs.end() <= lhs.data.len()
        && rhs.end() <= rhs.data.len()
        && dst_end <= dst.data.len()
        && (dst.rows <= 1 || dst.row_stride >= dst.cols);
    if !shapes_agree || !in_bounds {
        candle_core::bail!("fused attention: internal matrix views do not fit")
    }
    if dst.rows == 0 || dst.cols == 0 {
        return Ok(());
    }
    if lhs.cols == 0 {
        for r in 0..dst.rows {
            let start = dst.offset + r * dst.row_stride;
            dst.data[start..start + dst.cols].fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: every index gemm reads or writes is inside the three slices (checked
    // above from the shapes and strides), the destination is borrowed mutably so it
    // aliases neither source, and distinct destination rows do not overlap
    // (row_stride >= cols, unit column stride).
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.data.as_mut_ptr().add(dst.offset),
            1,
            dst.row_stride as isize,
            false,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// Adds the decomposed bias to a block's scores (from the precomputed terms) and
/// turns each row into unnormalised probabilities; stores each row's 1 / sum.
pub(crate) struct BiasExpRows<'a> {
    pub(crate) scores: &'a mut [f32],
    pub(crate) keys: usize,
    /// Per row `kh + kw` terms: `<q, rh[y, a]>` then `<q, rw[x, b]>`; the key grid
    /// width `kw`.
    pub(crate) bias: Option<(&'a [f32], usize)>,
    pub(crate) inv_sums: &'a mut [f32],
}

impl pulp::WithSimd for BiasExpRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let rows = self.scores.chunks_mut(self.keys.max(1));
        for (i, (row, inv)) in rows.zip(self.inv_sums.iter_mut()).enumerate() {
            if let Some((terms, kw)) = self.bias {
                let per_row = self.keys / kw.max(1) + kw;
                let (rel_h, rel_w) = terms[i * per_row..(i + 1) * per_row].split_at(per_row - kw);
                // row[a * kw + b] += rel_h[a] + rel_w[b]
                for (chunk, &bh) in row.chunks_exact_mut(kw.max(1)).zip(rel_h) {
                    for (s, &bw) in chunk.iter_mut().zip(rel_w) {
                        *s += bh + bw;
                    }
                }
            }
            let max = row_max(row);
            *inv = 1.0 / exp_shifted_sum(row, max);
        }
    }
}

/// Slice `index` of a gathered relative-position table `(q, keys, d)`: a `keys x d`
/// matrix.
fn table_slice(table: &[f32], index: usize, keys: usize, d: usize) -> MatRef<'_> {
    MatRef {
        data: table,
        offset: index * keys * d,
        rows: keys,
        cols: d,
        row_stride: d,
        col_stride: 1,
    }
}

/// The decomposed bias terms of every query of one head, `Nq x (kh + kw)`:
/// `<q, rh[y, a]>` for the query's grid row `y`, then `<q, rw[x, b]>` for its column
/// `x` (the unscaled queries, as SAM's `add_decomposed_rel_pos`), as small matrix
/// products: the queries of one grid row share `rh[y]`, those of one column `rw[x]`.
fn bias_terms(q: &HeadsView, b: usize, h: usize, rel: &HostRelPos, out: &mut [f32]) -> Result<()> {
    let (qh, qw) = rel.q_size;
    let (kh, kw) = rel.k_size;
    let d = q.dims[3];
    let width = kh + kw;
    for y in 0..qh {
        let rh = table_slice(&rel.rh, y, kh, d);
        let dst = MatMut {
            data: out,
            offset: y * qw * width,
            rows: qw,
            cols: kh,
            row_stride: width,
        };
        matmul(dst, q.rows(b, h, y * qw, qw), rh.t(), 1.0)?;
    }
    for x in 0..qw {
        let rw = table_slice(&rel.rw, x, kw, d);
        let column = MatRef {
            rows: qh,
            row_stride: qw * q.row_stride,
            ..q.rows(b, h, x, 1)
        };
        let dst = MatMut {
            data: out,
            offset: x * width + kh,
            rows: qh,
            cols: kw,
            row_stride: qw * width,
        };
        matmul(dst, column, rw.t(), 1.0)?;
    }
    Ok(())
}

impl FusedAttention {
    fn check(&self, q: &HeadsView, k: &HeadsView, v: &HeadsView) -> Result<()> {
        let [b, h, nq, d] = q.dims;
        let [kb, kh, nk, kd] = k.dims;
        if (kb, kh, kd) != (b, h, d) || v.dims != [b, h, nk, d] {
            candle_core::bail!(
                "fused attention shapes do not agree: q {:?}, k {:?}, v {:?}",
                q.dims,
                k.dims,
                v.dims
            )
        }
        if let Some(rel) = &self.rel_pos {
            let (qh, qw) = rel.q_size;
            let (gh, gw) = rel.k_size;
            if qh * qw != nq || gh * gw != nk {
                candle_core::bail!(
                    "relative-position bias is for {}x{} tokens, attention has {nq}x{nk}",
                    qh * qw,
                    gh * gw
                )
            }
            if rel.rh.len() != qh * gh * d || rel.rw.len() != qw * gw * d {
                candle_core::bail!("relative-position tables do not match head size {d}")
            }
        }
        if let Some(extents) = &self.extents {
            let Some(grid) = self.rel_pos.as_ref().map(|r| r.q_size) else {
                candle_core::bail!("fused attention: query extents need a bias's query grid")
            };
            if extents.len() != b {
                candle_core::bail!(
                    "fused attention: {} query extents for {b} batch items",
                    extents.len()
                )
            }
            if let Some(&(rows, cols)) = extents.iter().find(|&&(r, c)| r > grid.0 || c > grid.1) {
                candle_core::bail!(
                    "query extent {rows}x{cols} exceeds the {}x{} query grid",
                    grid.0,
                    grid.1
                )
            }
        }
        Ok(())
    }

    /// Queries `queries` (indices into batch item `b`'s queries, ascending, none
    /// before `first`) of every head, into `out`: the item's output rows from query
    /// `first` on, `H Dh` values each (rows of other queries are left as they are).
    /// `terms` holds the bias terms of every head of `b`.
    fn block(
        &self,
        (q, k, v): (&HeadsView, &HeadsView, &HeadsView),
        terms: &[f32],
        (b, first, queries): (usize, usize, &[usize]),
        out: &mut [f32],
    ) -> Result<()> {
        let [_, heads, nq, d] = q.dims;
        let nk = k.dims[2];
        let width = heads * d;
        let rows = queries.len();
        let per_query = self.rel_pos.as_ref().map_or(0, |r| r.k_size.0 + r.k_size.1);
        if queries
            .iter()
            .any(|&i| i < first || i >= nq || (i - first + 1) * width > out.len())
        {
            candle_core::bail!("fused attention: a query block lies outside its output rows")
        }
        // Per head: the block's queries and bias terms gathered into contiguous
        // rows, their scores (in the cache), and their outputs before scattering.
        let mut q_rows = vec![0f32; rows * d];
        let mut bias_rows = vec![0f32; rows * per_query];
        let mut scores = vec![0f32; rows * nk];
        let mut inv_sums = vec![0f32; rows];
        let mut head_out = vec![0f32; rows * d];
        for h in 0..heads {
            for (dst, &i) in q_rows.chunks_exact_mut(d.max(1)).zip(queries) {
                dst.copy_from_slice(q.row(b, h, i));
            }
            let q_block = MatRef {
                data: &q_rows,
                offset: 0,
                rows,
                cols: d,
                row_stride: d,
                col_stride: 1,
            };
            let score_view = MatMut {
                data: &mut scores,
                offset: 0,
                rows,
                cols: nk,
                row_stride: nk,
            };
            matmul(score_view, q_block, k.rows(b, h, 0, nk).t(), self.scale)?;
            let bias = match &self.rel_pos {
                Some(r) => {
                    for (dst, &i) in bias_rows.chunks_exact_mut(per_query.max(1)).zip(queries) {
                        dst.copy_from_slice(&terms[(h * nq + i) * per_query..][..per_query]);
                    }
                    Some((&bias_rows[..], r.k_size.1))
                }
                None => None,
            };
            crate::cpu::simd().dispatch(BiasExpRows {
                scores: &mut scores,
                keys: nk,
                bias,
                inv_sums: &mut inv_sums,
            });
            let probs = MatRef {
                data: &scores,
                offset: 0,
                rows,
                cols: nk,
                row_stride: nk,
                col_stride: 1,
            };
            let out_view = MatMut {
                data: &mut head_out,
                offset: 0,
                rows,
                cols: d,
                row_stride: d,
            };
            matmul(out_view, probs, v.rows(b, h, 0, nk), 1.0)?;
            let finished = head_out.chunks_exact(d.max(1)).zip(&inv_sums);
            for ((values, &inv), &i) in finished.zip(queries) {
                let dst = &mut out[(i - first) * width + h * d..][..d];
                for (o, &value) in dst.iter_mut().zip(values) {
                    *o = value * inv;
                }
            }
        }
        Ok(())
    }

    /// The query grid of one batch item and the part of it to compute: the bias's
    /// grid, or the queries as a column (`(Nq, 1)`) without a bias.
    fn query_grid(&self, nq: usize, b: usize) -> ((usize, usize), (usize, usize)) {
        let grid = self.rel_pos.as_ref().map_or((nq, 1), |r| r.q_size);
        let extent = self
            .extents
            .as_ref()
            .and_then(|e| e.get(b).copied())
            .unwrap_or(grid);
        (grid, extent)
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "samus-fused-attention"
    }

    fn cpu_fwd(
        &self,
        q_storage: &CpuStorage,
        q_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
        v_storage: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = HeadsView::new(q_storage, q_layout, "q")?;
        let k = HeadsView::new(k_storage, k_layout, "k")?;
        let v = HeadsView::new(v_storage, v_layout, "v")?;
        self.check(&q, &k, &v)?;
        let [batch, heads, nq, d] = q.dims;
        let width = heads * d;
        if width == 0 || nq == 0 {
            let out = vec![0f32; batch * nq * width];
            return Ok((CpuStorage::F32(out), Shape::from((batch, nq, width))));
        }
        // The bias terms of every (batch item, head), `Nq x (kh + kw)` each.
        let mut terms = Vec::new();
        if let Some(rel) = &self.rel_pos {
            let per_head = nq * (rel.k_size.0 + rel.k_size.1);
            terms = vec![0f32; batch * heads * per_head];
            terms
                .par_chunks_mut(per_head)
                .enumerate()
                .try_for_each(|(g, chunk)| bias_terms(&q, g / heads, g % heads, rel, chunk))?;
        }
        let per_item = terms.len() / batch;
        // Blocks of whole rows of the query grid, about QUERY_BLOCK queries each; a
        // block keeps the queries inside its item's extent (none: it stays zero).
        let out = par_filled(batch * nq * width, nq * width, |b, item| {
            let terms = &terms[b * per_item..(b + 1) * per_item];
            let ((_, grid_w), (rows, cols)) = self.query_grid(nq, b);
            let block_rows = (QUERY_BLOCK / grid_w.max(1)).max(1);
            item.par_chunks_mut(block_rows * grid_w * width)
                .enumerate()
                .try_for_each(|(j, block)| {
                    let first_row = j * block_rows;
                    let queries: Vec<usize> = (first_row..(first_row + block_rows).min(rows))
                        .flat_map(|y| (0..cols).map(move |x| y * grid_w + x))
                        .collect();
                    if queries.is_empty() {
                        return Ok(());
                    }
                    let first = first_row * grid_w;
                    self.block((&q, &k, &v), terms, (b, first, &queries), block)
                })
        })?;
        Ok((CpuStorage::F32(out), Shape::from((batch, nq, width))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::multi_head_attention;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 20_000) as f32 / 10_000.0 - 1.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn rel_error(got: &Tensor, want: &Tensor) -> f32 {
        let diff = (got - want)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let norm = want
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        (diff / norm.max(1e-30)).sqrt()
    }

    /// The composed (differentiable) path, the definition of the result.
    fn composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        rel: Option<&DecomposedRelPos>,
    ) -> Tensor {
        merge_heads(
            &multi_head_attention(q, k, v, scale, rel, AttentionOptions::default()).unwrap(),
        )
        .unwrap()
    }

    /// The fused operation itself (not the dispatch, which may fall back).
    fn fused(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        rel: Option<&DecomposedRelPos>,
    ) -> Tensor {
        q.apply_op3_no_bwd(k, v, &FusedAttention::new(scale, rel).unwrap())
            .unwrap()
    }

    /// Self-attention inputs over a `gh x gw` grid: q, k and v as strided views of one
    /// fused qkv tensor (as the encoder reads them; `get` would copy the permuted
    /// parts), and a random decomposed bias.
    fn grid_case(
        b: usize,
        heads: usize,
        (gh, gw): (usize, usize),
        d: usize,
        seed: u64,
    ) -> (Tensor, Tensor, Tensor, DecomposedRelPos) {
        let qkv = random(&[b, gh * gw, 3, heads, d], seed)
            .permute((2, 0, 3, 1, 4))
            .unwrap();
        let part = |i: usize| qkv.narrow(0, i, 1).unwrap().squeeze(0).unwrap();
        let rel = DecomposedRelPos::new(
            &random(&[2 * gh - 1, d], seed + 1),
            &random(&[2 * gw - 1, d], seed + 2),
            (gh, gw),
            (gh, gw),
        )
        .unwrap();
        (part(0), part(1), part(2), rel)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// Self-attention over a grid with the decomposed bias, with q, k and v read
        /// as strided views of one fused qkv tensor (as the encoder does).
        #[test]
        fn fused_matches_composed_with_rel_pos(
            b in 1usize..3, heads in 1usize..4, gh in 1usize..10, gw in 1usize..10, d in 1usize..20, seed in 0u64..1000,
        ) {
            let (q, k, v, rel) = grid_case(b, heads, (gh, gw), d, seed);
            prop_assert!(gh * gw == 1 || !q.is_contiguous());
            let scale = 1.0 / (d as f64).sqrt();
            let got = fused(&q, &k, &v, scale, Some(&rel));
            let want = composed(&q, &k, &v, scale, Some(&rel));
            prop_assert_eq!(got.dims(), want.dims());
            let err = rel_error(&got, &want);
            prop_assert!(err <= 1e-5, "relative error {err}");
        }

        /// Only the queries inside each item's extent: those rows equal the full
        /// attention's, the others stay zero (grids wider than one query block
        /// included).
        #[test]
        fn extents_keep_the_real_queries(
            b in 1usize..4, heads in 1usize..3, gh in 1usize..13, gw in 1usize..13, d in 1usize..9, seed in 0u64..1000,
        ) {
            let (q, k, v, rel) = grid_case(b, heads, (gh, gw), d, seed);
            let extents: Vec<(usize, usize)> = (0..b)
                .map(|i| ((seed as usize + i) % gh + 1, (seed as usize / 7 + 2 * i) % gw + 1))
                .collect();
            let scale = 1.0 / (d as f64).sqrt();
            let got = attention_merged_in(&q, &k, &v, scale, &rel, &extents, AttentionOptions::default())
                .unwrap().to_vec3::<f32>().unwrap();
            let want = composed(&q, &k, &v, scale, Some(&rel)).to_vec3::<f32>().unwrap();
            for (item, (&(rows, cols), (g, w))) in extents.iter().zip(got.iter().zip(&want)).enumerate() {
                for (index, (g_row, w_row)) in g.iter().zip(w).enumerate() {
                    let real = index / gw < rows && index % gw < cols;
                    for (&gv, &wv) in g_row.iter().zip(w_row) {
                        let expected = if real { wv } else { 0.0 };
                        prop_assert!((gv - expected).abs() <= 1e-5 * (1.0 + wv.abs()), "item {item}, query {index}: {gv} vs {expected}");
                    }
                }
            }
        }

        /// Cross attention: different query and key counts, more queries than one
        /// block, contiguous inputs, no bias.
        #[test]
        fn fused_matches_composed_cross(
            b in 1usize..3, heads in 1usize..4, nq in 1usize..150, nk in 1usize..90, d in 1usize..17, seed in 0u64..1000,
        ) {
            let q = random(&[b, heads, nq, d], seed);
            let k = random(&[b, heads, nk, d], seed + 1);
            let v = random(&[b, heads, nk, d], seed + 2);
            let got = fused(&q, &k, &v, 0.3, None);
            let want = composed(&q, &k, &v, 0.3, None);
            let err = rel_error(&got, &want);
            prop_assert!(err <= 1e-5, "relative error {err}");
        }
    }

    #[test]
    fn gradients_take_the_composed_path() {
        let q = Var::from_tensor(&random(&[1, 2, 5, 4], 1)).unwrap();
        let (k, v) = (random(&[1, 2, 3, 4], 2), random(&[1, 2, 3, 4], 3));
        let out = attention_merged(
            q.as_tensor(),
            &k,
            &v,
            0.5,
            None,
            AttentionOptions::default(),
        )
        .unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(q.as_tensor()).is_some());
    }

    #[test]
    fn plain_tensors_take_the_fused_path() {
        let (q, k, v) = (
            random(&[1, 2, 5, 4], 1),
            random(&[1, 2, 3, 4], 2),
            random(&[1, 2, 3, 4], 3),
        );
        let out = attention_merged(&q, &k, &v, 0.5, None, AttentionOptions::default()).unwrap();
        let direct = fused(&q, &k, &v, 0.5, None);
        assert_eq!(
            out.to_vec3::<f32>().unwrap(),
            direct.to_vec3::<f32>().unwrap()
        );
        assert_eq!(out.dims(), &[1, 5, 8]);
    }

    #[test]
    fn extents_must_fit_the_grid_and_the_batch() {
        let (q, k, v) = (
            random(&[2, 1, 6, 4], 1),
            random(&[2, 1, 6, 4], 2),
            random(&[2, 1, 6, 4], 3),
        );
        let rel = DecomposedRelPos::new(&random(&[3, 4], 4), &random(&[5, 4], 5), (2, 3), (2, 3))
            .unwrap();
        let options = AttentionOptions::default();
        let run = |extents: &[(usize, usize)]| {
            attention_merged_in(&q, &k, &v, 0.5, &rel, extents, options).map(|t| t.dims().to_vec())
        };
        assert_eq!(run(&[(2, 3), (1, 1)]).unwrap(), [2, 6, 4]);
        assert!(run(&[(3, 3), (1, 1)]).is_err());
        assert!(run(&[(2, 4), (1, 1)]).is_err());
        assert!(run(&[(2, 3)]).is_err());
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let q = random(&[1, 2, 5, 4], 1);
        let k = random(&[1, 2, 3, 4], 2);
        let v = random(&[1, 2, 4, 4], 3);
        assert!(attention_merged(&q, &k, &v, 0.5, None, AttentionOptions::default()).is_err());
    }
}
