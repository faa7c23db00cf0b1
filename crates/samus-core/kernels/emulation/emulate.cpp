// Runs the kernels of fused_attention.cu on the CPU under host emulation (see
// cuda_bf16.h beside this file: one std::thread per CUDA thread, blocks one after
// another, shared memory poisoned with NaNs before each block) and compares the
// forward output and the gradients dq, d(bias terms), dk, dv with a double-precision
// reference, in f32 and bf16, for random shapes (with and without the decomposed
// relative-position bias, every head-size bucket, partial tiles) and SAM's 14 x 14
// windows. This checks the kernels' indexing, tiling, masking, online softmax and
// backward algebra without a GPU; it says nothing about speed, races the emulation
// does not reproduce, or the PTX compiler.
//
// Build and run: scripts/emulate-cuda-kernels.sh
#include "../fused_attention.cu"

#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace emu {

void launch(unsigned blocks, unsigned threads, const std::function<void()> &body) {
    for (unsigned b = 0; b < blocks; ++b) {
        std::barrier<> barrier(threads);
        emu_block_barrier = &barrier;
        std::memset(smem4, 0xff, sizeof smem4);  // NaN: reads of unset shared memory show
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned t = 0; t < threads; ++t) {
            pool.emplace_back([=, &body] {
                threadIdx.x = t;
                blockIdx.x = b;
                blockDim.x = threads;
                body();
            });
        }
        for (auto &t : pool) t.join();
    }
}

template <typename T> T store(float x);
template <> float store<float>(float x) { return x; }
template <> __nv_bfloat16 store<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
float load(float x) { return x; }
float load(__nv_bfloat16 x) { return __bfloat162float(x); }

using FwdFn = void (*)(const void *, const void *, const void *, void *, float *, float *, int,
                       int, int, int, int, int, float, int);
using DqFn = void (*)(const void *, const void *, const void *, const void *, const float *,
                      const void *, const float *, float *, void *, int, int, int, int, int, int,
                      float, int);
using DkvFn = void (*)(const void *, const void *, const void *, const void *, const float *,
                       const float *, void *, void *, int, int, int, int, int, int, float, int);

struct Kernels {
    FwdFn fwd;
    DqFn dq;
    DkvFn dkv;
};

#define EMU_KERNELS(TNAME, D)                                              \
    Kernels{reinterpret_cast<FwdFn>(&samus_attn_fwd_##TNAME##_d##D),      \
            reinterpret_cast<DqFn>(&samus_attn_dq_##TNAME##_d##D),        \
            reinterpret_cast<DkvFn>(&samus_attn_dkv_##TNAME##_d##D)}

Kernels kernels(bool bf16, int dmax) {
    if (bf16) {
        switch (dmax) {
        case 16: return EMU_KERNELS(bf16, 16);
        case 32: return EMU_KERNELS(bf16, 32);
        case 64: return EMU_KERNELS(bf16, 64);
        default: return EMU_KERNELS(bf16, 128);
        }
    }
    switch (dmax) {
    case 16: return EMU_KERNELS(f32, 16);
    case 32: return EMU_KERNELS(f32, 32);
    case 64: return EMU_KERNELS(f32, 64);
    default: return EMU_KERNELS(f32, 128);
    }
}

struct Case {
    int g, nq, nk, d, kh, kw;
};

double rel_error(const std::vector<double> &got, const std::vector<double> &want) {
    double diff = 0, scale = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        double e = std::fabs(got[i] - want[i]);
        if (std::isnan(got[i])) e = INFINITY;
        diff = std::max(diff, e);
        scale = std::max(scale, std::fabs(want[i]));
    }
    return diff / std::max(scale, 1e-12);
}

template <typename T> bool run_case(const Case &c, std::mt19937 &rng, std::string &report) {
    const bool bf16 = !std::is_same<T, float>::value;
    const int nb = c.kh + c.kw;
    const int qs = c.d + nb;
    const int dmax = c.d <= 16 ? 16 : c.d <= 32 ? 32 : c.d <= 64 ? 64 : 128;
    const float scale = 1.0f / std::sqrt(float(c.d));
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    auto fill = [&](size_t n, float amp) {
        std::vector<T> v(n);
        for (auto &x : v) x = store<T>(u(rng) * amp);
        return v;
    };
    std::vector<T> q = fill(size_t(c.g) * c.nq * qs, 2.f);
    std::vector<T> k = fill(size_t(c.g) * c.nk * c.d, 2.f);
    std::vector<T> v = fill(size_t(c.g) * c.nk * c.d, 1.f);
    std::vector<T> dout = fill(size_t(c.g) * c.nq * c.d, 1.f);
    std::vector<T> out(size_t(c.g) * c.nq * c.d, store<T>(NAN));
    std::vector<float> lse(size_t(c.g) * c.nq, NAN), delta(size_t(c.g) * c.nq, NAN);
    std::vector<float> out_f32(bf16 ? out.size() : 0, NAN);
    float *out_f32_ptr = bf16 ? out_f32.data() : nullptr;
    std::vector<T> dq(size_t(c.g) * c.nq * qs, store<T>(NAN));
    std::vector<T> dk(size_t(c.g) * c.nk * c.d, store<T>(NAN)), dv = dk;

    Kernels kern = kernels(bf16, dmax);
    const int fwd_smem = 4 * fwd_smem_floats(dmax, nb);
    const int dq_smem = 4 * dq_smem_floats(dmax, nb);
    const int kv_smem = 4 * kv_smem_floats(dmax, nb);
    if (fwd_smem > 48 * 1024 || dq_smem > 48 * 1024 || kv_smem > 48 * 1024) {
        report = "shared memory over 48 KiB";
        return false;
    }
    launch(c.g * ((c.nq + FWD_BR - 1) / FWD_BR), FWD_BR, [&] {
        kern.fwd(q.data(), k.data(), v.data(), out.data(), lse.data(), out_f32_ptr, c.nq, c.nk, c.d,
                 qs, c.kh, c.kw, scale, fwd_smem);
    });
    launch(c.g * ((c.nq + DQ_BR - 1) / DQ_BR), DQ_BR, [&] {
        kern.dq(q.data(), k.data(), v.data(), out.data(), out_f32_ptr, dout.data(), lse.data(),
                delta.data(), dq.data(), c.nq, c.nk, c.d, qs, c.kh, c.kw, scale, dq_smem);
    });
    const int bk = kv_bk(dmax);
    launch(c.g * ((c.nk + bk - 1) / bk), bk, [&] {
        kern.dkv(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dk.data(),
                 dv.data(), c.nq, c.nk, c.d, qs, c.kh, c.kw, scale, kv_smem);
    });

    // Reference in double on the same (rounded) inputs.
    std::vector<double> r_out(out.size()), r_dq(dq.size()), r_dk(dk.size()), r_dv(dv.size());
    std::vector<double> p(c.nk), dp(c.nk);
    for (int g = 0; g < c.g; ++g) {
        for (int i = 0; i < c.nq; ++i) {
            const T *qi = &q[(size_t(g) * c.nq + i) * qs];
            double m = -INFINITY;
            for (int j = 0; j < c.nk; ++j) {
                const T *kj = &k[(size_t(g) * c.nk + j) * c.d];
                double s = 0;
                for (int x = 0; x < c.d; ++x) s += double(load(qi[x])) * load(kj[x]);
                s *= scale;
                if (nb > 0) s += double(load(qi[c.d + j / c.kw])) + load(qi[c.d + c.kh + j % c.kw]);
                p[j] = s;
                m = std::max(m, s);
            }
            double sum = 0;
            for (int j = 0; j < c.nk; ++j) sum += (p[j] = std::exp(p[j] - m));
            for (int j = 0; j < c.nk; ++j) p[j] /= sum;
            const size_t o = (size_t(g) * c.nq + i) * c.d;
            double dlt = 0;
            for (int x = 0; x < c.d; ++x) {
                double acc = 0;
                for (int j = 0; j < c.nk; ++j) acc += p[j] * load(v[(size_t(g) * c.nk + j) * c.d + x]);
                r_out[o + x] = acc;
                dlt += acc * load(dout[o + x]);
            }
            for (int j = 0; j < c.nk; ++j) {
                const size_t kj = (size_t(g) * c.nk + j) * c.d;
                double acc = 0;
                for (int x = 0; x < c.d; ++x) acc += double(load(dout[o + x])) * load(v[kj + x]);
                const double ds = p[j] * (acc - dlt);
                for (int x = 0; x < c.d; ++x) {
                    r_dq[(size_t(g) * c.nq + i) * qs + x] += scale * ds * load(k[kj + x]);
                    r_dk[kj + x] += scale * ds * load(qi[x]);
                    r_dv[kj + x] += p[j] * load(dout[o + x]);
                }
                if (nb > 0) {
                    r_dq[(size_t(g) * c.nq + i) * qs + c.d + j / c.kw] += ds;
                    r_dq[(size_t(g) * c.nq + i) * qs + c.d + c.kh + j % c.kw] += ds;
                }
            }
        }
    }
    auto as_double = [](const std::vector<T> &x) {
        std::vector<double> y(x.size());
        for (size_t i = 0; i < x.size(); ++i) y[i] = load(x[i]);
        return y;
    };
    const double tol = bf16 ? 1e-2 : 1e-4;
    const double e_out = rel_error(as_double(out), r_out);
    const double e_dq = rel_error(as_double(dq), r_dq);
    const double e_dk = rel_error(as_double(dk), r_dk);
    const double e_dv = rel_error(as_double(dv), r_dv);
    char line[256];
    std::snprintf(line, sizeof line, "out %.2e dq %.2e dk %.2e dv %.2e", e_out, e_dq, e_dk, e_dv);
    report = line;
    return e_out <= tol && e_dq <= tol && e_dk <= tol && e_dv <= tol;
}

}  // namespace emu

int main(int argc, char **argv) {
    const int random_cases = argc > 1 ? std::atoi(argv[1]) : 40;
    std::mt19937 rng(20261128);
    std::uniform_int_distribution<int> pick(0, 1 << 30);
    std::vector<emu::Case> cases = {
        {2, 196, 196, 64, 14, 14},  // SAM windows
        {1, 70, 33, 64, 0, 0},      // cross-branch, partial tiles
        {1, 1, 1, 1, 0, 0},
        {1, 64, 64, 128, 8, 8},
    };
    const int heads[] = {1, 7, 16, 17, 31, 32, 33, 48, 64, 65, 100, 128};
    for (int n = 0; n < random_cases; ++n) {
        emu::Case c{};
        c.g = 1 + pick(rng) % 3;
        c.d = heads[pick(rng) % 12];
        if (pick(rng) % 2) {
            const int qh = 1 + pick(rng) % 11, qw = 1 + pick(rng) % 11;
            c.kh = 1 + pick(rng) % 11;
            c.kw = 1 + pick(rng) % 11;
            c.nq = qh * qw;
            c.nk = c.kh * c.kw;
        } else {
            c.nq = 1 + pick(rng) % 150;
            c.nk = 1 + pick(rng) % 150;
        }
        cases.push_back(c);
    }
    int failed = 0, passed = 0;
    for (const auto &c : cases) {
        for (int bf16 = 0; bf16 < 2; ++bf16) {
            std::string report;
            const bool ok = bf16 ? emu::run_case<__nv_bfloat16>(c, rng, report)
                                 : emu::run_case<float>(c, rng, report);
            std::printf("%s g=%d nq=%d nk=%d d=%d kh=%d kw=%d %s: %s\n", ok ? "ok    " : "FAILED",
                        c.g, c.nq, c.nk, c.d, c.kh, c.kw, bf16 ? "bf16" : "f32 ", report.c_str());
            (ok ? passed : failed)++;
        }
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
