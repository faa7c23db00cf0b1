// Fused multi-head attention for SAMUS, forward and backward, FlashAttention
// style: no score matrix is ever written to global memory.
//
// All kernels work on G independent sequences (G = batch x heads, or
// batch x windows x heads for windowed attention):
//
//   q_ext : (G, Nq, q_stride)  the queries in columns [0, d); with a decomposed
//                              relative-position bias, columns [d, d + kh + kw)
//                              hold its two terms (see below), q_stride = d + kh + kw
//   k, v  : (G, Nk, d)
//   out   : (G, Nq, d)         softmax(scale * q k^T + bias) v
//   lse   : (G, Nq) float      log-sum-exp of each score row (saved for the backward)
//   out_f32: (G, Nq, d) float  for bf16, the output before rounding (saved for the
//                              backward: delta = rowsum(dO * O) from a bf16-rounded O
//                              loses the small differences dP - delta); null for float
//
// SAM's decomposed relative-position bias (rel_pos.rs) of query i and key
// j = a * kw + b is rel_h[i, a] + rel_w[i, b]; rel_h = q_ext[.., d + a] and
// rel_w = q_ext[.., d + kh + b]. kh = kw = 0 means no bias. The bias terms are
// computed by candle from the unscaled queries (matrix products, differentiable);
// the backward kernel returns their gradient in the same columns of dq_ext, the
// row sums of the score gradient over the other key axis.
//
// Every kernel assigns one thread to one row (a query row for the forward and dq
// kernels, a key row for the dk/dv kernel), keeps that row and its accumulators in
// registers, and streams tiles of the other operand through shared memory (read
// by all threads of a warp at the same address: broadcast). Accumulation is in
// float for both float and bf16 storage. Head sizes up to 128 are compiled in
// four buckets (16, 32, 64, 128); a head of size d runs in the smallest bucket
// that holds it, zero-padded.
//
// The tile sizes below are mirrored in src/cuda_attention/kernels.rs (shared
// memory sizes); each kernel checks its block size and shared memory at entry
// and traps on a mismatch instead of reading out of bounds.

#include <cuda_bf16.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}

// Tile sizes (threads per block = rows per block).
constexpr int FWD_BR = 64;
__host__ __device__ constexpr int fwd_bc(int dmax) { return dmax <= 64 ? 32 : 16; }
constexpr int DQ_BR = 32;
__host__ __device__ constexpr int dq_bc(int dmax) { return dmax <= 64 ? 32 : 16; }
__host__ __device__ constexpr int kv_bk(int dmax) { return dmax <= 64 ? 64 : 32; }
__host__ __device__ constexpr int kv_bq(int dmax) { return dmax <= 64 ? 32 : 16; }

// Shared memory (in floats) of each kernel for nb = kh + kw bias columns.
__device__ __forceinline__ int fwd_smem_floats(int dmax, int nb) {
    return 2 * fwd_bc(dmax) * dmax + FWD_BR * nb;
}
__device__ __forceinline__ int dq_smem_floats(int dmax, int nb) {
    return 2 * dq_bc(dmax) * dmax + 2 * DQ_BR * nb;
}
__device__ __forceinline__ int kv_smem_floats(int dmax, int nb) {
    return 2 * kv_bq(dmax) * dmax + dmax * (kv_bk(dmax) + 1) + kv_bq(dmax) * nb + 2 * kv_bq(dmax);
}

template <int DMAX>
__device__ __forceinline__ float dot_shared(const float (&row)[DMAX], const float *shared_row) {
    const float4 *s4 = reinterpret_cast<const float4 *>(shared_row);
    float acc = 0.f;
#pragma unroll
    for (int c4 = 0; c4 < DMAX / 4; ++c4) {
        const float4 x = s4[c4];
        acc = fmaf(row[4 * c4], x.x, acc);
        acc = fmaf(row[4 * c4 + 1], x.y, acc);
        acc = fmaf(row[4 * c4 + 2], x.z, acc);
        acc = fmaf(row[4 * c4 + 3], x.w, acc);
    }
    return acc;
}

template <int DMAX>
__device__ __forceinline__ void axpy_shared(float (&acc)[DMAX], float a, const float *shared_row) {
    const float4 *s4 = reinterpret_cast<const float4 *>(shared_row);
#pragma unroll
    for (int c4 = 0; c4 < DMAX / 4; ++c4) {
        const float4 x = s4[c4];
        acc[4 * c4] = fmaf(a, x.x, acc[4 * c4]);
        acc[4 * c4 + 1] = fmaf(a, x.y, acc[4 * c4 + 1]);
        acc[4 * c4 + 2] = fmaf(a, x.z, acc[4 * c4 + 2]);
        acc[4 * c4 + 3] = fmaf(a, x.w, acc[4 * c4 + 3]);
    }
}

// Loads rows [row0, row0 + rows) of a (n, d) matrix (row stride `stride`) into
// shared memory as (rows, DMAX) floats, zero-padded past n and d.
template <typename T, int DMAX>
__device__ __forceinline__ void load_tile(float *dst, const T *src, int row0, int rows, int n,
                                          int d, int stride) {
    for (int idx = threadIdx.x; idx < rows * DMAX; idx += blockDim.x) {
        const int r = idx / DMAX;
        const int c = idx - r * DMAX;
        const int row = row0 + r;
        dst[idx] = (row < n && c < d) ? to_float(src[(size_t)row * stride + c]) : 0.f;
    }
}

// ---------------------------------------------------------------------------
// Forward: one thread per query row; online softmax over tiles of keys.
template <typename T, int DMAX>
__device__ __forceinline__ void fwd_impl(const T *__restrict__ q, const T *__restrict__ k,
                                         const T *__restrict__ v, T *__restrict__ out,
                                         float *__restrict__ lse, float *__restrict__ out_f32,
                                         int nq, int nk, int d,
                                         int q_stride, int kh, int kw, float scale,
                                         int smem_bytes) {
    constexpr int BR = FWD_BR;
    constexpr int BC = fwd_bc(DMAX);
    extern __shared__ float4 smem4[];
    float *smem = reinterpret_cast<float *>(smem4);
    const int nb = kh + kw;
    if (blockDim.x != BR || smem_bytes < (int)sizeof(float) * fwd_smem_floats(DMAX, nb)) {
        __trap();
    }
    float *ks = smem;            // [BC][DMAX]
    float *vs = ks + BC * DMAX;  // [BC][DMAX]
    float *bs = vs + BC * DMAX;  // [nb][BR]: transposed, a warp reads consecutive words

    const int tiles = (nq + BR - 1) / BR;
    const int g = blockIdx.x / tiles;
    const int row0 = (blockIdx.x - g * tiles) * BR;
    const int r = threadIdx.x;
    const int i = row0 + r;
    const bool valid = i < nq;
    const T *qg = q + (size_t)g * nq * q_stride;
    const T *kg = k + (size_t)g * nk * d;
    const T *vg = v + (size_t)g * nk * d;

    float qr[DMAX];
#pragma unroll
    for (int c = 0; c < DMAX; ++c) {
        qr[c] = (valid && c < d) ? to_float(qg[(size_t)i * q_stride + c]) : 0.f;
    }
    for (int idx = threadIdx.x; idx < BR * nb; idx += BR) {
        const int rr = idx / nb;
        const int a = idx - rr * nb;
        const int row = row0 + rr;
        bs[a * BR + rr] = row < nq ? to_float(qg[(size_t)row * q_stride + d + a]) : 0.f;
    }

    float o[DMAX];
#pragma unroll
    for (int c = 0; c < DMAX; ++c) o[c] = 0.f;
    float m = -INFINITY;
    float l = 0.f;

    for (int j0 = 0; j0 < nk; j0 += BC) {
        __syncthreads();  // the previous tile is consumed
        load_tile<T, DMAX>(ks, kg, j0, BC, nk, d, d);
        load_tile<T, DMAX>(vs, vg, j0, BC, nk, d, d);
        __syncthreads();
        if (!valid) continue;
        float s[BC];
        float tile_max = -INFINITY;
#pragma unroll
        for (int jj = 0; jj < BC; ++jj) {
            const int j = j0 + jj;
            float sc = -INFINITY;
            if (j < nk) {
                sc = scale * dot_shared<DMAX>(qr, ks + jj * DMAX);
                if (nb > 0) {
                    const int a = j / kw;
                    const int b = j - a * kw;
                    sc += bs[a * BR + r];
                    sc += bs[(kh + b) * BR + r];
                }
            }
            s[jj] = sc;
            tile_max = fmaxf(tile_max, sc);
        }
        const float m_new = fmaxf(m, tile_max);
        const float alpha = expf(m - m_new);  // 0 on the first tile (m = -inf)
        l *= alpha;
#pragma unroll
        for (int c = 0; c < DMAX; ++c) o[c] *= alpha;
#pragma unroll
        for (int jj = 0; jj < BC; ++jj) {
            const float p = expf(s[jj] - m_new);  // 0 past nk
            l += p;
            axpy_shared<DMAX>(o, p, vs + jj * DMAX);
        }
        m = m_new;
    }
    if (valid) {
        const float inv = 1.f / l;
        T *orow = out + ((size_t)g * nq + i) * d;
        float *frow = out_f32 ? out_f32 + ((size_t)g * nq + i) * d : nullptr;
#pragma unroll
        for (int c = 0; c < DMAX; ++c) {
            if (c < d) {
                orow[c] = from_float<T>(o[c] * inv);
                if (frow) frow[c] = o[c] * inv;
            }
        }
        lse[(size_t)g * nq + i] = m + logf(l);
    }
}

// ---------------------------------------------------------------------------
// Backward, queries: one thread per query row. Recomputes the probabilities from
// the saved log-sum-exp, writes dq (and the bias-term gradients) into dq_ext and
// delta_i = sum_c dO[i, c] O[i, c] for the dk/dv kernel.
template <typename T, int DMAX>
__device__ __forceinline__ void dq_impl(const T *__restrict__ q, const T *__restrict__ k,
                                        const T *__restrict__ v, const T *__restrict__ out,
                                        const float *__restrict__ out_f32,
                                        const T *__restrict__ dout,
                                        const float *__restrict__ lse,
                                        float *__restrict__ delta_out, T *__restrict__ dq,
                                        int nq, int nk, int d, int q_stride, int kh, int kw,
                                        float scale, int smem_bytes) {
    constexpr int BR = DQ_BR;
    constexpr int BC = dq_bc(DMAX);
    extern __shared__ float4 smem4[];
    float *smem = reinterpret_cast<float *>(smem4);
    const int nb = kh + kw;
    if (blockDim.x != BR || smem_bytes < (int)sizeof(float) * dq_smem_floats(DMAX, nb)) {
        __trap();
    }
    float *ks = smem;            // [BC][DMAX]
    float *vs = ks + BC * DMAX;  // [BC][DMAX]
    float *bs = vs + BC * DMAX;  // [nb][BR] bias terms
    float *dbs = bs + nb * BR;   // [nb][BR] their gradient

    const int tiles = (nq + BR - 1) / BR;
    const int g = blockIdx.x / tiles;
    const int row0 = (blockIdx.x - g * tiles) * BR;
    const int r = threadIdx.x;
    const int i = row0 + r;
    const bool valid = i < nq;
    const T *qg = q + (size_t)g * nq * q_stride;
    const T *kg = k + (size_t)g * nk * d;
    const T *vg = v + (size_t)g * nk * d;
    const size_t row_index = (size_t)g * nq + (valid ? i : 0);

    float qr[DMAX];
    float dor[DMAX];
    float dqr[DMAX];
    float delta = 0.f;
#pragma unroll
    for (int c = 0; c < DMAX; ++c) {
        const bool in = valid && c < d;
        qr[c] = in ? to_float(qg[(size_t)i * q_stride + c]) : 0.f;
        dor[c] = in ? to_float(dout[row_index * d + c]) : 0.f;
        const float oc = !in ? 0.f
                         : out_f32 ? out_f32[row_index * d + c]
                                   : to_float(out[row_index * d + c]);
        delta = fmaf(dor[c], oc, delta);
        dqr[c] = 0.f;
    }
    const float lse_i = valid ? lse[row_index] : 0.f;
    for (int idx = threadIdx.x; idx < BR * nb; idx += BR) {
        const int rr = idx / nb;
        const int a = idx - rr * nb;
        const int row = row0 + rr;
        bs[a * BR + rr] = row < nq ? to_float(qg[(size_t)row * q_stride + d + a]) : 0.f;
        dbs[a * BR + rr] = 0.f;
    }

    for (int j0 = 0; j0 < nk; j0 += BC) {
        __syncthreads();
        load_tile<T, DMAX>(ks, kg, j0, BC, nk, d, d);
        load_tile<T, DMAX>(vs, vg, j0, BC, nk, d, d);
        __syncthreads();
        if (!valid) continue;
        const int jmax = min(BC, nk - j0);
        for (int jj = 0; jj < jmax; ++jj) {
            const int j = j0 + jj;
            float sc = scale * dot_shared<DMAX>(qr, ks + jj * DMAX);
            int a = 0;
            int b = 0;
            if (nb > 0) {
                a = j / kw;
                b = j - a * kw;
                sc += bs[a * BR + r];
                sc += bs[(kh + b) * BR + r];
            }
            const float p = expf(sc - lse_i);
            const float dp = dot_shared<DMAX>(dor, vs + jj * DMAX);
            const float ds = p * (dp - delta);
            axpy_shared<DMAX>(dqr, ds, ks + jj * DMAX);
            if (nb > 0) {
                dbs[a * BR + r] += ds;
                dbs[(kh + b) * BR + r] += ds;
            }
        }
    }
    if (valid) {
        T *dqrow = dq + row_index * q_stride;
#pragma unroll
        for (int c = 0; c < DMAX; ++c) {
            if (c < d) dqrow[c] = from_float<T>(dqr[c] * scale);
        }
        delta_out[row_index] = delta;
    }
    __syncthreads();
    T *dqg = dq + (size_t)g * nq * q_stride;
    for (int idx = threadIdx.x; idx < BR * nb; idx += BR) {
        const int rr = idx / nb;
        const int a = idx - rr * nb;
        const int row = row0 + rr;
        if (row < nq) dqg[(size_t)row * q_stride + d + a] = from_float<T>(dbs[a * BR + rr]);
    }
}

// ---------------------------------------------------------------------------
// Backward, keys and values: one thread per key row, tiles of queries (with their
// dO rows, bias terms, log-sum-exp and delta) streamed through shared memory.
template <typename T, int DMAX>
__device__ __forceinline__ void dkv_impl(const T *__restrict__ q, const T *__restrict__ k,
                                         const T *__restrict__ v, const T *__restrict__ dout,
                                         const float *__restrict__ lse,
                                         const float *__restrict__ delta,
                                         T *__restrict__ dk, T *__restrict__ dv, int nq, int nk,
                                         int d, int q_stride, int kh, int kw, float scale,
                                         int smem_bytes) {
    constexpr int BK = kv_bk(DMAX);
    constexpr int BQ = kv_bq(DMAX);
    constexpr int VT = BK + 1;  // padded row of the transposed value tile
    extern __shared__ float4 smem4[];
    float *smem = reinterpret_cast<float *>(smem4);
    const int nb = kh + kw;
    if (blockDim.x != BK || smem_bytes < (int)sizeof(float) * kv_smem_floats(DMAX, nb)) {
        __trap();
    }
    float *qs = smem;              // [BQ][DMAX]
    float *dos = qs + BQ * DMAX;   // [BQ][DMAX]
    float *vt = dos + BQ * DMAX;   // [DMAX][BK + 1]: this block's values, transposed
    float *bs = vt + DMAX * VT;    // [BQ][nb]
    float *ls = bs + BQ * nb;      // [BQ] log-sum-exp
    float *dls = ls + BQ;          // [BQ] delta

    const int tiles = (nk + BK - 1) / BK;
    const int g = blockIdx.x / tiles;
    const int col0 = (blockIdx.x - g * tiles) * BK;
    const int r = threadIdx.x;
    const int j = col0 + r;
    const bool valid = j < nk;
    const T *qg = q + (size_t)g * nq * q_stride;
    const T *dog = dout + (size_t)g * nq * d;
    const size_t key_index = (size_t)g * nk + (valid ? j : 0);

    float kr[DMAX];
    float dkr[DMAX];
    float dvr[DMAX];
#pragma unroll
    for (int c = 0; c < DMAX; ++c) {
        kr[c] = (valid && c < d) ? to_float(k[key_index * d + c]) : 0.f;
        dkr[c] = 0.f;
        dvr[c] = 0.f;
    }
    const T *vg = v + (size_t)g * nk * d;
    for (int idx = threadIdx.x; idx < BK * DMAX; idx += BK) {
        const int rr = idx / DMAX;
        const int c = idx - rr * DMAX;
        const int row = col0 + rr;
        vt[c * VT + rr] = (row < nk && c < d) ? to_float(vg[(size_t)row * d + c]) : 0.f;
    }
    int a = 0;
    int b = 0;
    if (nb > 0 && valid) {
        a = j / kw;
        b = j - a * kw;
    }

    for (int i0 = 0; i0 < nq; i0 += BQ) {
        __syncthreads();
        load_tile<T, DMAX>(qs, qg, i0, BQ, nq, d, q_stride);
        load_tile<T, DMAX>(dos, dog, i0, BQ, nq, d, d);
        for (int idx = threadIdx.x; idx < BQ * nb; idx += BK) {
            const int rr = idx / nb;
            const int col = idx - rr * nb;
            const int row = i0 + rr;
            bs[idx] = row < nq ? to_float(qg[(size_t)row * q_stride + d + col]) : 0.f;
        }
        for (int idx = threadIdx.x; idx < BQ; idx += BK) {
            const int row = i0 + idx;
            ls[idx] = row < nq ? lse[(size_t)g * nq + row] : 0.f;
            dls[idx] = row < nq ? delta[(size_t)g * nq + row] : 0.f;
        }
        __syncthreads();
        if (!valid) continue;
        const int imax = min(BQ, nq - i0);
        for (int ii = 0; ii < imax; ++ii) {
            float sc = scale * dot_shared<DMAX>(kr, qs + ii * DMAX);
            if (nb > 0) {
                sc += bs[ii * nb + a];
                sc += bs[ii * nb + kh + b];
            }
            const float p = expf(sc - ls[ii]);
            axpy_shared<DMAX>(dvr, p, dos + ii * DMAX);
            float dp = 0.f;
#pragma unroll
            for (int c = 0; c < DMAX; ++c) dp = fmaf(dos[ii * DMAX + c], vt[c * VT + r], dp);
            const float ds = p * (dp - dls[ii]);
            axpy_shared<DMAX>(dkr, ds, qs + ii * DMAX);
        }
    }
    if (valid) {
#pragma unroll
        for (int c = 0; c < DMAX; ++c) {
            if (c < d) {
                dk[key_index * d + c] = from_float<T>(dkr[c] * scale);
                dv[key_index * d + c] = from_float<T>(dvr[c]);
            }
        }
    }
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points: samus_attn_{fwd,dq,dkv}_{f32,bf16}_d{16,32,64,128}.

#define SAMUS_ATTN_KERNELS(TNAME, T, D)                                                       \
    extern "C" __global__ void __launch_bounds__(FWD_BR) samus_attn_fwd_##TNAME##_d##D(      \
        const T *q, const T *k, const T *v, T *out, float *lse, float *out_f32, int nq,       \
        int nk, int d, int q_stride, int kh, int kw, float scale, int smem_bytes) {           \
        fwd_impl<T, D>(q, k, v, out, lse, out_f32, nq, nk, d, q_stride, kh, kw, scale,        \
                       smem_bytes);                                                           \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(DQ_BR) samus_attn_dq_##TNAME##_d##D(        \
        const T *q, const T *k, const T *v, const T *out, const float *out_f32,               \
        const T *dout, const float *lse, float *delta, T *dq, int nq, int nk, int d,          \
        int q_stride, int kh, int kw, float scale, int smem_bytes) {                          \
        dq_impl<T, D>(q, k, v, out, out_f32, dout, lse, delta, dq, nq, nk, d, q_stride, kh,   \
                      kw, scale, smem_bytes);                                                 \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(kv_bk(D)) samus_attn_dkv_##TNAME##_d##D(    \
        const T *q, const T *k, const T *v, const T *dout, const float *lse,                  \
        const float *delta, T *dk, T *dv, int nq, int nk, int d, int q_stride, int kh,        \
        int kw, float scale, int smem_bytes) {                                                \
        dkv_impl<T, D>(q, k, v, dout, lse, delta, dk, dv, nq, nk, d, q_stride, kh, kw, scale, \
                       smem_bytes);                                                           \
    }

SAMUS_ATTN_KERNELS(f32, float, 16)
SAMUS_ATTN_KERNELS(f32, float, 32)
SAMUS_ATTN_KERNELS(f32, float, 64)
SAMUS_ATTN_KERNELS(f32, float, 128)
SAMUS_ATTN_KERNELS(bf16, __nv_bfloat16, 16)
SAMUS_ATTN_KERNELS(bf16, __nv_bfloat16, 32)
SAMUS_ATTN_KERNELS(bf16, __nv_bfloat16, 64)
SAMUS_ATTN_KERNELS(bf16, __nv_bfloat16, 128)
