// Causal attention inside document spans on CPU, fp32, forward and backward.
//
// Query i of batch row b attends the keys j <= i of its document: ids[b, j] == ids[b, i] (ids < 0 are
// padding: an empty row, output 0, lse -inf, no gradient). Keys are scanned from the document's first
// position, so packed documents (contiguous runs) cost only their causal window; ids that recur
// after other documents are still masked exactly. Small head dims (16..128) are where
// the CPU flash kernel of SDPA is weakest: its per-block GEMM calls have K = head_dim. Here a block of
// R query rows is scored against one register of keys at a time with the keys transposed (one FMA
// per query row and head-dim element, accumulators in registers), softmax uses a branch-free exp
// that vectorises, and P@V / the gradient scatters run over contiguous head-dim rows, a few
// registers of columns at a time. Threads claim the B*H heads one at a time (a head's dK/dV belong
// to the thread that claimed it: no atomics on them). GIL released. Reference: craft_kernels/attention.py.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <optional>
#include <vector>

#include "bindings.h"
#include "vec_exp.h"

namespace py = pybind11;
using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

namespace craft {
namespace {

using i64 = int64_t;
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

// ISA variants. Each is the same loop nest written over vectors of W fp32 lanes, W the width of
// one register of that ISA: 16 (AVX-512), 8 (AVX2), 4 (the portable default: SSE2 / NEON). Vectors
// wider than the ISA's registers are not an option: GCC lowers them piecewise and builds every
// scalar broadcast through the stack (a store-forwarding stall per FMA), which made the AVX2 build
// of the 16-lane code many times slower than the AVX-512 one (benchmarks/RESULTS.md). Blocking (query rows per block, columns
// per block, key registers per score step: Cfg) is sized per ISA for its register file (32 vector
// registers on AVX-512, 16 on AVX2 and SSE). Every helper is always_inline and each ISA's entry
// point carries a target attribute, so the whole loop nest is compiled for that ISA. Which runs:
// the CPU's best, or CRAFT_SPAN_ISA=avx512|avx2|default.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define CRAFT_X86 1
#define CRAFT_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
#define CRAFT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define CRAFT_X86 0
#endif
#define CRAFT_INLINE inline __attribute__((always_inline))
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"  // vector arguments never cross a call: every helper is inlined
#endif

enum class Isa { Default = 0, Avx2 = 1, Avx512 = 2 };

// W fp32 / int32 lanes (GCC/Clang vector extensions); the u types load and store unaligned.
template <int W>
struct Vec {
    typedef float f __attribute__((vector_size(4 * W)));
    typedef int32_t i __attribute__((vector_size(4 * W)));
    typedef float fu __attribute__((vector_size(4 * W), aligned(4)));
    typedef int32_t iu __attribute__((vector_size(4 * W), aligned(4)));
};

// Blocking per ISA and head dim. W: lanes per vector, also keys per score chunk. R: query rows per
// block (their score accumulators, and in P@V / the backward their output columns, stay in
// registers). MB: head-dim vectors per column block of P@V and of the backward's key loop (the
// backward holds R * MB dQ accumulators, MB each of k, dK, dV and two broadcasts: 2R+8 <= 16 on AVX2
// for R = 4, MB = 2; its q and dO columns are read from L1 where they do not fit).
template <Isa I, int HD>
struct Cfg {
    static constexpr int W = I == Isa::Avx512 ? 16 : (I == Isa::Avx2 ? 8 : 4);
    static constexpr int M = HD / W;
    static constexpr int R = I == Isa::Avx512 ? (HD <= 16 ? 8 : 4) : (I == Isa::Avx2 ? 4 : 2);
    static constexpr int MB = I == Isa::Avx512 ? (M < 4 ? M : 4) : (M < 2 ? M : 2);
    static_assert(M >= 1 && M % MB == 0, "head dim must be a multiple of the column block");
};

template <int W>
CRAFT_INLINE typename Vec<W>::f load(const float* p) {
    return *reinterpret_cast<const typename Vec<W>::fu*>(p);
}
template <int W>
CRAFT_INLINE void store(float* p, typename Vec<W>::f x) {
    *reinterpret_cast<typename Vec<W>::fu*>(p) = x;
}
template <int W>
CRAFT_INLINE typename Vec<W>::i loadi(const int32_t* p) {
    return *reinterpret_cast<const typename Vec<W>::iu*>(p);
}
template <int W>
CRAFT_INLINE typename Vec<W>::f splat(float x) {
    return typename Vec<W>::f{} + x;
}
template <int W>
CRAFT_INLINE typename Vec<W>::i iota() {
    typename Vec<W>::i r{};
    for (int l = 0; l < W; ++l) r[l] = l;
    return r;
}

// exp(x) for x <= 0 (softmax arguments), via vec_exp.h; arguments below -87 give ~1.6e-38.
template <int W>
CRAFT_INLINE typename Vec<W>::f exp_neg(typename Vec<W>::f x) {
    using V = typename Vec<W>::f;
    x = x < -87.f ? splat<W>(-87.f) : x;
    x = x > 0.f ? splat<W>(0.f) : x;
    return exp_clamped<V, typename Vec<W>::i>(x);
}

template <int W>
CRAFT_INLINE float hmax(typename Vec<W>::f x) {
    float m = x[0];
    for (int l = 1; l < W; ++l) m = std::max(m, x[l]);
    return m;
}

template <int W>
CRAFT_INLINE float hsum(typename Vec<W>::f x) {
    float s = 0.f;
    for (int l = 0; l < W; ++l) s += x[l];
    return s;
}

struct Geometry {
    i64 heads, H, T;  // heads = B * H
};

// The (batch, head) problems of one call, claimed one at a time by the threads that run it: each
// head is computed whole by one thread (results do not depend on the thread count).
struct HeadQueue {
    explicit HeadQueue(i64 n) : heads(n) {}
    const i64 heads;
    std::atomic<i64> next{0}, done{0};
    i64 claim() { return next.fetch_add(1, std::memory_order_relaxed); }
    void finish() { done.fetch_add(1, std::memory_order_release); }
};

// One (batch, head) problem: row-major q/k/v (T, HD); kT/vT (HD, Tp) transposed, zero-padded; ids
// padded with -2 up to Tp (never equal to a real id or padding's -1 check: padding rows are empty).
template <int HD, class C>
struct Head {
    static constexpr int W = C::W, R = C::R;
    using V = typename Vec<W>::f;
    using Vi = typename Vec<W>::i;
    i64 T, Tp;
    std::vector<float> kT, vT;
    std::vector<int32_t> ids;

    explicit Head(i64 T_) : T(T_), Tp((T_ + W - 1) / W * W + W), kT(HD * Tp), vT(HD * Tp), ids(Tp) {}

    CRAFT_INLINE void transpose(const float* x, std::vector<float>& xT) const {
        for (int d = 0; d < HD; ++d) {
            float* row = xT.data() + d * Tp;
            for (i64 j = 0; j < T; ++j) row[j] = x[j * HD + d];
            std::fill(row + T, row + Tp, 0.f);
        }
    }

    CRAFT_INLINE void set_ids(const int32_t* id) {
        std::copy(id, id + T, ids.begin());
        std::fill(ids.begin() + T, ids.end(), -2);
    }

    // s[rr * Tp + j] = rows[rr] . xT[:, lo + j] for j in [0, n) rounded up to W.
    CRAFT_INLINE void scores(const float (&rows)[R][HD], const std::vector<float>& xT, i64 lo, i64 n, float* s) const {
        for (i64 jb = 0; jb < n; jb += W) {
            V acc[R] = {};
            for (int d = 0; d < HD; ++d) {
                const V kr = load<W>(xT.data() + d * Tp + lo + jb);
                for (int rr = 0; rr < R; ++rr) acc[rr] += rows[rr][d] * kr;
            }
            for (int rr = 0; rr < R; ++rr) store<W>(s + rr * Tp + jb, acc[rr]);
        }
    }

    // Lanes of chunk jb (keys lo + jb ..) inside the window [a, e) and of document di: all ones, else 0.
    // A pure window (one contiguous document) needs no id test and no mask away from its two edges.
    CRAFT_INLINE Vi window_mask(i64 jb, i64 a, i64 e, int32_t di, i64 lo, bool pure) const {
        if (pure && jb >= a && jb + W <= e) return Vi{} - 1;
        const Vi j = iota<W>() + static_cast<int32_t>(jb);
        Vi ok = (j >= static_cast<int32_t>(a)) & (j < static_cast<int32_t>(e));
        if (!pure) ok &= loadi<W>(ids.data() + lo + jb) == di;
        return ok;
    }

    // p = exp(s - shift) inside the window, 0 outside, in place; returns the sum.
    CRAFT_INLINE float exp_window(float* s, i64 n, i64 a, i64 e, int32_t di, float shift, i64 lo, bool pure) const {
        V sum = {};
        for (i64 jb = 0; jb < n; jb += W) {
            const Vi ok = window_mask(jb, a, e, di, lo, pure);
            const V p = (V)((Vi)exp_neg<W>(load<W>(s + jb) - shift) & ok);
            store<W>(s + jb, p);
            sum += p;
        }
        return hsum<W>(sum);
    }

    CRAFT_INLINE float window_max(const float* s, i64 n, i64 a, i64 e, int32_t di, i64 lo, bool pure) const {
        const Vi ninf = (Vi)splat<W>(NEG_INF);
        V m = splat<W>(NEG_INF);
        for (i64 jb = 0; jb < n; jb += W) {
            const Vi ok = window_mask(jb, a, e, di, lo, pure);
            const V x = (V)(((Vi)load<W>(s + jb) & ok) | (ninf & ~ok));
            m = x > m ? x : m;
        }
        return hmax<W>(m);
    }
};

// Rows i0..i0+r-1 see keys in [lo, i0 + r): lo0 = lo rounded down to W, n = keys scanned from lo0.
template <int W>
CRAFT_INLINE void block_range(const i64* st, i64 i0, int r, i64& lo0, i64& n) {
    i64 lo = i0 + r;
    for (int rr = 0; rr < r; ++rr) lo = std::min<i64>(lo, st[i0 + rr]);
    lo0 = lo / W * W;
    n = i0 + r - lo0;
}

template <int HD, class C>
CRAFT_INLINE void forward_heads(const float* q, const float* k, const float* v, const int32_t* ids,
                                const i64* first, const uint8_t* pure, float scale, Geometry g, float* out, float* lse,
                                HeadQueue& work, i64 bh0) {
    constexpr int W = C::W, R = C::R, M = C::M, MB = C::MB;
    using V = typename Vec<W>::f;
    const i64 T = g.T;
    Head<HD, C> h(T);
    std::vector<float> s(static_cast<size_t>(R * h.Tp));
    for (i64 bh = bh0; bh < g.heads; work.finish(), bh = work.claim()) {
        const i64 b = bh / g.H, base = bh * T * HD;
        const float *qh = q + base, *vh = v + base;
        const int32_t* id = ids + b * T;
        const i64* st = first + b * T;
        const uint8_t* pu = pure + b * T;
        h.transpose(k + base, h.kT);
        h.set_ids(id);
        for (i64 i0 = 0; i0 < T; i0 += R) {
            const int r = static_cast<int>(std::min<i64>(R, T - i0));
            i64 lo0, n;
            block_range<W>(st, i0, r, lo0, n);
            float qs[R][HD] = {};
            for (int rr = 0; rr < r; ++rr)
                for (int d = 0; d < HD; ++d) qs[rr][d] = qh[(i0 + rr) * HD + d] * scale;
            h.scores(qs, h.kT, lo0, n, s.data());
            float inv[R] = {};
            for (int rr = 0; rr < R; ++rr) {
                float* pr = s.data() + rr * h.Tp;
                const i64 i = i0 + rr;
                if (rr >= r || st[i] > i) {  // past the end, or padding: no keys
                    std::fill(pr, pr + (n + W - 1) / W * W, 0.f);
                    if (rr < r) lse[bh * T + i] = NEG_INF;
                    continue;
                }
                const i64 a = st[i] - lo0, e = i - lo0 + 1;
                const bool pure = pu[i];
                const float m = h.window_max(pr, n, a, e, id[i], lo0, pure);
                const float sum = h.exp_window(pr, n, a, e, id[i], m, lo0, pure);
                inv[rr] = 1.f / sum;  // applied to the output row: P stays unnormalised
                lse[bh * T + i] = m + std::log(sum);
            }
            for (int c0 = 0; c0 < M; c0 += MB) {  // O = P V, MB vectors of columns at a time
                V o[R][MB] = {};
                for (i64 j = 0; j < n; ++j) {
                    const float* vj = vh + (lo0 + j) * HD + c0 * W;
                    V vr[MB];
                    for (int c = 0; c < MB; ++c) vr[c] = load<W>(vj + c * W);
                    for (int rr = 0; rr < R; ++rr) {
                        const float pj = s[rr * h.Tp + j];
                        for (int c = 0; c < MB; ++c) o[rr][c] += pj * vr[c];
                    }
                }
                for (int rr = 0; rr < r; ++rr)
                    for (int c = 0; c < MB; ++c)
                        store<W>(out + base + (i0 + rr) * HD + (c0 + c) * W, o[rr][c] * inv[rr]);
            }
        }
    }
}

template <int HD, class C>
CRAFT_INLINE void backward_heads(const float* q, const float* k, const float* v, const float* out,
                                 const float* dout, const float* lse, const int32_t* ids, const i64* first,
                                 const uint8_t* pure, float scale, Geometry g, float* dq, float* dk, float* dv,
                                 HeadQueue& work, i64 bh0) {
    constexpr int W = C::W, R = C::R, M = C::M, MB = C::MB;
    using V = typename Vec<W>::f;
    const i64 T = g.T;
    Head<HD, C> h(T);
    std::vector<float> p(static_cast<size_t>(R * h.Tp)), ds(static_cast<size_t>(R * h.Tp));
    for (i64 bh = bh0; bh < g.heads; work.finish(), bh = work.claim()) {
        const i64 b = bh / g.H, base = bh * T * HD;
        const float *qh = q + base, *kh = k + base, *oh = out + base, *doh = dout + base;
        float *dqh = dq + base, *dkh = dk + base, *dvh = dv + base;
        const int32_t* id = ids + b * T;
        const i64* st = first + b * T;
        const uint8_t* pu = pure + b * T;
        h.transpose(kh, h.kT);
        h.transpose(v + base, h.vT);
        h.set_ids(id);
        std::fill(dkh, dkh + T * HD, 0.f);
        std::fill(dvh, dvh + T * HD, 0.f);
        for (i64 i0 = 0; i0 < T; i0 += R) {
            const int r = static_cast<int>(std::min<i64>(R, T - i0));
            i64 lo0, n;
            block_range<W>(st, i0, r, lo0, n);
            float qs[R][HD] = {}, dos[R][HD] = {}, delta[R] = {};
            for (int rr = 0; rr < r; ++rr) {
                const i64 i = i0 + rr;
                float dsum = 0.f;
                for (int d = 0; d < HD; ++d) {
                    qs[rr][d] = qh[i * HD + d] * scale;
                    dos[rr][d] = doh[i * HD + d];
                    dsum += dos[rr][d] * oh[i * HD + d];
                }
                delta[rr] = dsum;
            }
            h.scores(qs, h.kT, lo0, n, p.data());    // scaled scores
            h.scores(dos, h.vT, lo0, n, ds.data());  // dP = dO . v
            for (int rr = 0; rr < R; ++rr) {
                float *pr = p.data() + rr * h.Tp, *dr = ds.data() + rr * h.Tp;
                const i64 i = i0 + rr;
                const i64 nn = (n + W - 1) / W * W;
                if (rr >= r || st[i] > i) {
                    std::fill(pr, pr + nn, 0.f);
                    std::fill(dr, dr + nn, 0.f);
                    continue;
                }
                h.exp_window(pr, n, st[i] - lo0, i - lo0 + 1, id[i], lse[bh * T + i], lo0, pu[i]);
                for (i64 jb = 0; jb < nn; jb += W)  // dS = P * (dP - delta), w.r.t. the scaled scores
                    store<W>(dr + jb, load<W>(pr + jb) * (load<W>(dr + jb) - delta[rr]));
            }
            for (int c0 = 0; c0 < M; c0 += MB) {  // MB vectors of head-dim columns at a time
                V dqs[R][MB] = {}, qv[R][MB], dov[R][MB];
                for (int rr = 0; rr < R; ++rr)
                    for (int c = 0; c < MB; ++c) {
                        qv[rr][c] = load<W>(qs[rr] + (c0 + c) * W);
                        dov[rr][c] = load<W>(dos[rr] + (c0 + c) * W);
                    }
                for (i64 j = 0; j < n; ++j) {
                    const i64 at = (lo0 + j) * HD + c0 * W;
                    V kr[MB], dka[MB] = {}, dva[MB] = {};
                    for (int c = 0; c < MB; ++c) kr[c] = load<W>(kh + at + c * W);
                    for (int rr = 0; rr < R; ++rr) {
                        const float pj = p[rr * h.Tp + j], dsj = ds[rr * h.Tp + j];
                        for (int c = 0; c < MB; ++c) {
                            dqs[rr][c] += dsj * kr[c];
                            dka[c] += dsj * qv[rr][c];  // qs carries the scale: dK = scale * dS^T Q
                            dva[c] += pj * dov[rr][c];
                        }
                    }
                    for (int c = 0; c < MB; ++c) {
                        store<W>(dkh + at + c * W, load<W>(dkh + at + c * W) + dka[c]);
                        store<W>(dvh + at + c * W, load<W>(dvh + at + c * W) + dva[c]);
                    }
                }
                for (int rr = 0; rr < r; ++rr)
                    for (int c = 0; c < MB; ++c) store<W>(dqh + (i0 + rr) * HD + (c0 + c) * W, dqs[rr][c] * scale);
            }
        }
    }
}

#define CRAFT_ISA_ENTRY(NAME, ATTR, ISA)                                                                      \
    template <int HD>                                                                                     \
    ATTR void forward_##NAME(const float* q, const float* k, const float* v, const int32_t* ids,            \
                             const i64* first, const uint8_t* pure, float scale, Geometry g, float* out,     \
                             float* lse, HeadQueue& work, i64 bh0) {                                       \
        forward_heads<HD, Cfg<ISA, HD>>(q, k, v, ids, first, pure, scale, g, out, lse, work, bh0);          \
    }                                                                                                     \
    template <int HD>                                                                                     \
    ATTR void backward_##NAME(const float* q, const float* k, const float* v, const float* out,             \
                              const float* dout, const float* lse, const int32_t* ids, const i64* first,    \
                              const uint8_t* pure, float scale, Geometry g, float* dq, float* dk, float* dv, \
                              HeadQueue& work, i64 bh0) {                                                  \
        backward_heads<HD, Cfg<ISA, HD>>(q, k, v, out, dout, lse, ids, first, pure, scale, g, dq, dk, dv, work, \
                                         bh0);                                                             \
    }

CRAFT_ISA_ENTRY(default, , Isa::Default)
#if CRAFT_X86
CRAFT_ISA_ENTRY(avx2, CRAFT_TARGET_AVX2, Isa::Avx2)
CRAFT_ISA_ENTRY(avx512, CRAFT_TARGET_AVX512, Isa::Avx512)
#endif


// The ISA this CPU runs best, or the one CRAFT_SPAN_ISA names (never one the CPU lacks).
Isa pick_isa() {
    Isa best = Isa::Default;
#if CRAFT_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::Avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        best = Isa::Avx512;
#endif
    const char* env = std::getenv("CRAFT_SPAN_ISA");
    if (env == nullptr || *env == 0) return best;
    const std::string want(env);
    Isa w;
    if (want == "avx512") w = Isa::Avx512;
    else if (want == "avx2") w = Isa::Avx2;
    else if (want == "default") w = Isa::Default;
    else throw py::value_error("CRAFT_SPAN_ISA=" + want + ": expected avx512, avx2 or default");
    if (static_cast<int>(w) > static_cast<int>(best))
        throw py::value_error("CRAFT_SPAN_ISA=" + want + ": this CPU does not support it");
    return w;
}

const char* isa_name(Isa i) { return i == Isa::Avx512 ? "avx512" : (i == Isa::Avx2 ? "avx2" : "default"); }

// Runs fn(queue, first claimed head) on the calling thread and n_threads - 1 helper threads, and
// returns once every head is done. The caller never waits for a helper to start: on a busy machine a
// new thread can wait milliseconds for a core, and with a fixed split of the heads (joined threads)
// every call waited with it; here the caller takes the heads a late helper has not claimed. Helpers
// are detached and call fn only holding a claimed head (the caller is then still waiting, its arrays
// alive); one that starts after the last claim touches only the shared queue.
template <class Fn>
void run_threads(i64 heads, int n_threads, Fn fn) {
    auto work = std::make_shared<HeadQueue>(heads);
    const i64 nt = std::max<i64>(1, std::min<i64>(n_threads, heads));
    for (i64 t = 1; t < nt; ++t)
        std::thread([work, fn]() mutable {
            const i64 bh = work->claim();
            if (bh < work->heads) fn(*work, bh);
        }).detach();
    fn(*work, work->claim());
    while (work->done.load(std::memory_order_acquire) < heads) std::this_thread::yield();
}

Geometry check(const F32& q, const F32& k, const F32& v, const I32& ids) {
    if (q.ndim() != 4) throw py::value_error("q: expected (B, H, T, head_dim) float32");
    for (const F32* x : {&k, &v})
        for (int d = 0; d < 4; ++d)
            if (x->ndim() != 4 || x->shape(d) != q.shape(d))
                throw py::value_error("k, v: expected the shape of q (repeat grouped K/V heads first)");
    if (ids.ndim() != 2 || ids.shape(0) != q.shape(0) || ids.shape(1) != q.shape(2))
        throw py::value_error("ids: expected (B, T) int32 document ids (-1 = padding)");
    return Geometry{q.shape(0) * q.shape(1), q.shape(1), q.shape(2)};
}

// first[b, i]: the first position of ids[b, i]'s document in row b (i + 1 for padding: an empty window);
// pure[b, i]: every position of that window belongs to the document (it has not been interrupted).
std::vector<i64> first_positions(const int32_t* ids, i64 B, i64 T, std::vector<uint8_t>& pure) {
    std::vector<i64> first(static_cast<size_t>(B * T));
    pure.assign(static_cast<size_t>(B * T), 1);
    std::vector<std::pair<int32_t, i64>> seen;  // (id, first position), few documents per row
    for (i64 b = 0; b < B; ++b) {
        seen.clear();
        const int32_t* id = ids + b * T;
        for (i64 i = 0; i < T; ++i) {
            i64 f = i + 1;
            if (id[i] >= 0) {
                if (i > 0 && id[i] == id[i - 1]) {
                    f = first[static_cast<size_t>(b * T + i - 1)];
                    pure[static_cast<size_t>(b * T + i)] = pure[static_cast<size_t>(b * T + i - 1)];
                } else {
                    f = i;
                    for (const auto& s : seen)
                        if (s.first == id[i]) f = s.second;
                    if (f == i)
                        seen.emplace_back(id[i], i);
                    else
                        pure[static_cast<size_t>(b * T + i)] = 0;  // the document resumes after another
                }
            }
            first[static_cast<size_t>(b * T + i)] = f;
        }
    }
    return first;
}

template <class F>
void dispatch_hd(i64 hd, F f) {
    switch (hd) {
        case 16: f(std::integral_constant<int, 16>{}); break;
        case 32: f(std::integral_constant<int, 32>{}); break;
        case 64: f(std::integral_constant<int, 64>{}); break;
        case 128: f(std::integral_constant<int, 128>{}); break;
        default: throw py::value_error("head_dim: " + std::to_string(hd) + " is not one of 16, 32, 64, 128");
    }
}

// Explicit windows: query i of row b sees exactly the keys [starts[b, i], i] (starts[b, i] == i + 1: none).
// Copied and checked with the GIL held; every window is pure (no id test).
std::vector<i64> window_starts(const I64& starts, i64 B, i64 T, std::vector<uint8_t>& pure) {
    if (starts.ndim() != 2 || starts.shape(0) != B || starts.shape(1) != T)
        throw py::value_error("starts: expected (B, T) int64 window starts, like ids");
    const int64_t* p = starts.data();
    std::vector<i64> first(p, p + B * T);
    for (i64 b = 0; b < B; ++b)
        for (i64 i = 0; i < T; ++i) {
            const i64 s = first[static_cast<size_t>(b * T + i)];
            if (s < 0 || s > i + 1)
                throw py::value_error("starts: each window start must lie in [0, i + 1] for query i, got " +
                                      std::to_string(s) + " at (" + std::to_string(b) + ", " + std::to_string(i) + ")");
        }
    pure.assign(static_cast<size_t>(B * T), 1);
    return first;
}

// Runs fn(head-dim constant, first, pure, queue, first head) on n_threads threads with the GIL
// released, after computing the document windows of ids (B, T), or taking the explicit ``starts``.
template <class F>
void run_heads(i64 hd, const int32_t* ids, const std::optional<I64>& starts, i64 B, const Geometry& g,
               int n_threads, F fn) {
    dispatch_hd(hd, [&](auto c) {
        std::vector<uint8_t> pure;
        std::vector<i64> first;
        if (starts) first = window_starts(*starts, B, g.T, pure);
        py::gil_scoped_release nogil;
        if (!starts) first = first_positions(ids, B, g.T, pure);
        run_threads(g.heads, n_threads, [&](HeadQueue& work, i64 bh0) { fn(c, first.data(), pure.data(), work, bh0); });
    });
}

py::tuple span_attention_forward(F32 q, F32 k, F32 v, I32 ids, float scale, int n_threads,
                                 std::optional<I64> starts) {
    const Geometry g = check(q, k, v, ids);
    const i64 hd = q.shape(3);
    F32 out({q.shape(0), q.shape(1), q.shape(2), q.shape(3)});
    F32 lse({q.shape(0), q.shape(1), q.shape(2)});
    const float *pq = q.data(), *pk = k.data(), *pv = v.data();
    const int32_t* pi = ids.data();
    float *po = out.mutable_data(), *pl = lse.mutable_data();
    const Isa isa = pick_isa();
    run_heads(hd, pi, starts, q.shape(0), g, n_threads, [&](auto c, const i64* first, const uint8_t* pure, HeadQueue& work, i64 bh0) {
        constexpr int HD = decltype(c)::value;
#if CRAFT_X86
        if (isa == Isa::Avx512) return forward_avx512<HD>(pq, pk, pv, pi, first, pure, scale, g, po, pl, work, bh0);
        if (isa == Isa::Avx2) return forward_avx2<HD>(pq, pk, pv, pi, first, pure, scale, g, po, pl, work, bh0);
#endif
        forward_default<HD>(pq, pk, pv, pi, first, pure, scale, g, po, pl, work, bh0);
    });
    return py::make_tuple(out, lse);
}

py::tuple span_attention_backward(F32 q, F32 k, F32 v, F32 out, F32 dout, F32 lse, I32 ids, float scale,
                                  int n_threads, std::optional<I64> starts) {
    const Geometry g = check(q, k, v, ids);
    check(out, dout, dout, ids);
    if (lse.ndim() != 3 || lse.shape(0) != q.shape(0) || lse.shape(1) != q.shape(1) || lse.shape(2) != q.shape(2))
        throw py::value_error("lse: expected (B, H, T) from the forward");
    const i64 hd = q.shape(3);
    F32 dq({q.shape(0), q.shape(1), q.shape(2), hd}), dk({q.shape(0), q.shape(1), q.shape(2), hd}),
        dv({q.shape(0), q.shape(1), q.shape(2), hd});
    const float *pq = q.data(), *pk = k.data(), *pv = v.data(), *po = out.data(), *pdo = dout.data(),
                *pl = lse.data();
    const int32_t* pi = ids.data();
    float *pdq = dq.mutable_data(), *pdk = dk.mutable_data(), *pdv = dv.mutable_data();
    const Isa isa = pick_isa();
    run_heads(hd, pi, starts, q.shape(0), g, n_threads, [&](auto c, const i64* first, const uint8_t* pure, HeadQueue& work, i64 bh0) {
        constexpr int HD = decltype(c)::value;
#if CRAFT_X86
        if (isa == Isa::Avx512)
            return backward_avx512<HD>(pq, pk, pv, po, pdo, pl, pi, first, pure, scale, g, pdq, pdk, pdv, work, bh0);
        if (isa == Isa::Avx2)
            return backward_avx2<HD>(pq, pk, pv, po, pdo, pl, pi, first, pure, scale, g, pdq, pdk, pdv, work, bh0);
#endif
        backward_default<HD>(pq, pk, pv, po, pdo, pl, pi, first, pure, scale, g, pdq, pdk, pdv, work, bh0);
    });
    return py::make_tuple(dq, dk, dv);
}

}  // namespace

int native_isa() { return static_cast<int>(pick_isa()); }

void bind_span_attention(py::module_& m) {
    m.def("span_attention_forward", &span_attention_forward, py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("ids"), py::arg("scale"), py::arg("n_threads"), py::arg("starts") = py::none(),
          "(out (B,H,T,hd), lse (B,H,T)) of causal attention within documents ids (B,T) int32 (-1 = padding), "
          "or, given starts (B,T) int64, within the windows [starts[b,i], i]; fp32.");
    m.def("span_attention_backward", &span_attention_backward, py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("ids"), py::arg("scale"), py::arg("n_threads"),
          py::arg("starts") = py::none(), "(dq, dk, dv) of span_attention_forward.");
    // Bumped when the kernel's speed changes: cached dispatch choices (span vs SDPA) are keyed by it.
    m.attr("span_attention_revision") = 2;
    m.def("span_attention_isa", [] { return std::string(isa_name(pick_isa())); },
          "The ISA variant span attention runs here: avx512, avx2 or default (CRAFT_SPAN_ISA overrides).");
}

}  // namespace craft
