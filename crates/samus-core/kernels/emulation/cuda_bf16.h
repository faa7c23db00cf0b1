// Host emulation of the little of CUDA that kernels/fused_attention.cu uses, so that
// the kernels can be compiled by a C++ compiler and checked on a machine without a
// GPU (scripts/emulate-cuda-kernels.sh). Included in place of the real cuda_bf16.h:
// it defines CUDA's keywords away, gives each emulated thread its own threadIdx /
// blockIdx, makes __syncthreads() a barrier over the std::threads of one block and
// provides one block's dynamic shared memory (blocks run one after another).
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __restrict__
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;

struct alignas(16) float4 {
    float x, y, z, w;
};

inline std::barrier<> *emu_block_barrier = nullptr;
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
[[noreturn]] inline void __trap() {
    std::fprintf(stderr, "__trap() in block %u thread %u\n", blockIdx.x, threadIdx.x);
    std::abort();
}

using std::min;
using std::max;

// bfloat16 with round-to-nearest-even conversion, as __float2bfloat16.
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 x) {
    uint32_t u = uint32_t(x.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return {uint16_t(0x7fc0)};
    u += 0x7fff + ((u >> 16) & 1);
    return {uint16_t(u >> 16)};
}

// One block's dynamic shared memory (the kernels' `extern __shared__ float4 smem4[]`
// lives in the same anonymous namespace).
namespace {
alignas(16) float4 smem4[48 * 1024 / 16];
}
