//! SAM's decomposed relative-position bias (`get_rel_pos` and
//! `add_decomposed_rel_pos` in the reference).
//!
//! For a query at grid cell `(qh, qw)` and a key at `(kh, kw)` the bias added to the
//! attention score is `<q, Rh[qh - kh + K - 1]> + <q, Rw[qw - kw + K - 1]>`, computed
//! with the unscaled query vector.

use candle_core::{Result, Tensor};

use crate::resize::resize_linear_along;

/// Gathers the relative-position embeddings for every (query, key) pair along one
/// axis: `rel_pos` is `(L, C)`; the result is `(q_size, k_size, C)`.
///
/// When `L != 2 * max(q_size, k_size) - 1` the table is first resized linearly
/// (`align_corners=False`), as the reference does.
pub fn get_rel_pos(q_size: usize, k_size: usize, rel_pos: &Tensor) -> Result<Tensor> {
    let (len, channels) = rel_pos.dims2()?;
    let max_dist = 2 * q_size.max(k_size) - 1;
    let table = if len != max_dist {
        resize_linear_along(rel_pos, 0, max_dist)?
    } else {
        rel_pos.clone()
    };
    let q_scale = (k_size as f64 / q_size as f64).max(1.0);
    let k_scale = (q_size as f64 / k_size as f64).max(1.0);
    let offset = (k_size as f64 - 1.0) * k_scale;
    let mut index = Vec::with_capacity(q_size * k_size);
    for qi in 0..q_size {
        for ki in 0..k_size {
            let coord = qi as f64 * q_scale - ki as f64 * k_scale + offset;
            index.push(coord as u32);
        }
    }
    let index = Tensor::from_vec(index, q_size * k_size, rel_pos.device())?;
    table
        .index_select(&index, 0)?
        .reshape((q_size, k_size, channels))
}

/// The gathered relative-position tables of one attention layer for a given query
/// and key grid.
#[derive(Debug, Clone)]
pub struct DecomposedRelPos {
    /// `(qh, kh, C)`
    rh: Tensor,
    /// `(qw, kw, C)`
    rw: Tensor,
    q_size: (usize, usize),
    k_size: (usize, usize),
}

impl DecomposedRelPos {
    /// Builds the tables from the `rel_pos_h` and `rel_pos_w` parameters for a query
    /// grid `q_size` and a key grid `k_size` (both `(height, width)`).
    pub fn new(
        rel_pos_h: &Tensor,
        rel_pos_w: &Tensor,
        q_size: (usize, usize),
        k_size: (usize, usize),
    ) -> Result<Self> {
        Ok(Self {
            rh: get_rel_pos(q_size.0, k_size.0, rel_pos_h)?,
            rw: get_rel_pos(q_size.1, k_size.1, rel_pos_w)?,
            q_size,
            k_size,
        })
    }

    /// The gathered tables: `rh` `(qh, kh, C)` and `rw` `(qw, kw, C)`.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.rh, &self.rw)
    }

    /// The query grid `(qh, qw)`.
    pub fn query_grid(&self) -> (usize, usize) {
        self.q_size
    }

    /// The key grid `(kh, kw)`.
    pub fn key_grid(&self) -> (usize, usize) {
        self.k_size
    }

    /// Whether the tables carry a gradient (built from trainable parameters).
    pub fn tracks_gradient(&self) -> bool {
        self.rh.track_op() || self.rw.track_op()
    }

    /// Number of query tokens, `qh * qw`.
    pub fn query_len(&self) -> usize {
        self.q_size.0 * self.q_size.1
    }

    /// Number of key tokens, `kh * kw`.
    pub fn key_len(&self) -> usize {
        self.k_size.0 * self.k_size.1
    }

    /// The two bias terms for the queries `q` `(G, Nq, C)` (G = batch x heads,
    /// unscaled queries): `rel_h` `(G, Nq, kh)` and `rel_w` `(G, Nq, kw)`, both
    /// contiguous. The bias of key `(a, b)` is `rel_h[.., a] + rel_w[.., b]`.
    pub fn bias_terms(&self, q: &Tensor) -> Result<(Tensor, Tensor)> {
        let (g, nq, c) = q.dims3()?;
        let (qh, qw) = self.q_size;
        let (kh, kw) = self.k_size;
        if nq != qh * qw {
            candle_core::bail!(
                "relative-position bias expects {} queries, got {nq}",
                qh * qw
            )
        }
        let r_q = q.reshape((g, qh, qw, c))?;
        // rel_h[g, y, x, k] = sum_c r_q[g, y, x, c] * rh[y, k, c]
        let rel_h = r_q
            .permute((1, 0, 2, 3))?
            .contiguous()?
            .reshape((qh, g * qw, c))?
            .matmul(&self.rh.transpose(1, 2)?.contiguous()?)?
            .reshape((qh, g, qw, kh))?
            .permute((1, 0, 2, 3))?
            .contiguous()?
            .reshape((g, nq, kh))?;
        // rel_w[g, y, x, k] = sum_c r_q[g, y, x, c] * rw[x, k, c]
        let rel_w = r_q
            .permute((2, 0, 1, 3))?
            .contiguous()?
            .reshape((qw, g * qh, c))?
            .matmul(&self.rw.transpose(1, 2)?.contiguous()?)?
            .reshape((qw, g, qh, kw))?
            .permute((1, 2, 0, 3))?
            .contiguous()?
            .reshape((g, nq, kw))?;
        Ok((rel_h, rel_w))
    }

    /// Adds the bias to attention scores `(G, Nq, Nk)` computed for the queries
    /// `q` `(G, Nq, C)` (G = batch x heads, unscaled queries).
    pub fn add_to_scores(&self, scores: &Tensor, q: &Tensor) -> Result<Tensor> {
        let (g, nq, _) = q.dims3()?;
        let (kh, kw) = self.k_size;
        let (rel_h, rel_w) = self.bias_terms(q)?;
        scores
            .reshape((g, nq, kh, kw))?
            .broadcast_add(&rel_h.unsqueeze(3)?)?
            .broadcast_add(&rel_w.unsqueeze(2)?)?
            .reshape((g, nq, kh * kw))
    }

    /// `softmax(scores + bias)` over the keys in one fused step (see
    /// [`crate::softmax::softmax_with_decomposed_bias`]).
    pub fn softmax_with_bias(&self, scores: &Tensor, q: &Tensor) -> Result<Tensor> {
        let (rel_h, rel_w) = self.bias_terms(q)?;
        crate::softmax::softmax_with_decomposed_bias(scores, &rel_h, &rel_w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn bias_matches_definition(g in 1usize..3, qh in 1usize..5, qw in 1usize..5, c in 1usize..5, seed in 0u32..50) {
            let dev = Device::Cpu;
            let val = |i: usize, salt: u32| (((((i as u32) + 1).wrapping_mul(seed + salt).wrapping_mul(2_654_435_761)) >> 7) % 1000) as f32 / 250.0 - 2.0;
            let len_h = 2 * qh - 1;
            let len_w = 2 * qw - 1;
            let rph: Vec<f32> = (0..len_h * c).map(|i| val(i, 3)).collect();
            let rpw: Vec<f32> = (0..len_w * c).map(|i| val(i, 5)).collect();
            let qv: Vec<f32> = (0..g * qh * qw * c).map(|i| val(i, 7)).collect();
            let rel = DecomposedRelPos::new(
                &Tensor::from_vec(rph.clone(), (len_h, c), &dev).unwrap(),
                &Tensor::from_vec(rpw.clone(), (len_w, c), &dev).unwrap(),
                (qh, qw), (qh, qw)).unwrap();
            let n = qh * qw;
            let scores = Tensor::zeros((g, n, n), candle_core::DType::F32, &dev).unwrap();
            let q = Tensor::from_vec(qv.clone(), (g, n, c), &dev).unwrap();
            let got = rel.add_to_scores(&scores, &q).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for gi in 0..g { for y in 0..qh { for x in 0..qw { for ky in 0..qh { for kx in 0..qw {
                let qvec = &qv[((gi * qh + y) * qw + x) * c..][..c];
                let rh = &rph[(y + qh - 1 - ky) * c..][..c];
                let rw = &rpw[(x + qw - 1 - kx) * c..][..c];
                let want: f32 = qvec.iter().zip(rh).map(|(a, b)| a * b).sum::<f32>()
                    + qvec.iter().zip(rw).map(|(a, b)| a * b).sum::<f32>();
                let idx = ((gi * n) + y * qw + x) * n + ky * qw + kx;
                prop_assert!((got[idx] - want).abs() < 1e-4, "got {}, want {want}", got[idx]);
            }}}}}
        }
    }

    #[test]
    fn table_is_resampled_when_lengths_differ() -> Result<()> {
        let dev = Device::Cpu;
        let table = Tensor::arange(0f32, 7.0, &dev)?.reshape((7, 1))?;
        // 2 * 2 - 1 = 3 entries are needed: the table is resized 7 -> 3 first.
        let gathered = get_rel_pos(2, 2, &table)?.flatten_all()?.to_vec1::<f32>()?;
        let resized = resize_linear_along(&table, 0, 3)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(
            gathered,
            vec![resized[1], resized[0], resized[2], resized[1]]
        );
        Ok(())
    }
}
