// SwiGLU on CPU, forward and backward, fp32 or bf16 storage (fp32 math), one pass each.
//
//   forward:  out = g * s * u                                  s = sigmoid(g) = 1 / (1 + exp(-g))
//   backward: dg = do * u * s * (1 + g * (1 - s)),  du = do * g * s   (s recomputed: only g, u saved)
//
// Memory-bound: the forward reads 2 tensors and writes 1, the backward reads 3 and writes 2. Where
// the outputs are larger than the caches (stream = true), they are written with non-temporal stores:
// an ordinary store first reads the destination line into the cache (read for ownership), so each
// written tensor would cost a read too (11 tensor passes instead of 8 for fwd + bwd); a copy
// (memcpy) streams its large writes the same way. Rows may be strided (the packed gate/up halves);
// the outputs are contiguous. Work is split into blocks of a row claimed from a shared counter by the
// calling thread and n_threads - 1 helpers (a helper that starts late finds nothing left and exits;
// the caller never waits for one to start). Vector code per ISA (AVX-512: 16 lanes, AVX2: 8, the
// portable default: 4), chosen like span attention's (CRAFT_SPAN_ISA overrides). GIL released.
// Reference: craft_kernels/swiglu.py (_fwd_math, _bwd_math).
#include <pybind11/numpy.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>

#include "bindings.h"
#include "vec_exp.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define SW_X86 1
#define SW_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
#define SW_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define SW_X86 0
#endif
#define SW_INLINE inline __attribute__((always_inline))
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace py = pybind11;

namespace craft {
namespace {

using i64 = int64_t;

template <int W>
struct V {
    typedef float f __attribute__((vector_size(4 * W)));
    typedef int32_t i __attribute__((vector_size(4 * W)));
    typedef uint32_t u __attribute__((vector_size(4 * W)));
    typedef uint16_t h __attribute__((vector_size(2 * W)));
};

template <int W>
SW_INLINE typename V<W>::f splat(float x) {
    return typename V<W>::f{} + x;
}

// sigmoid(x) = 1 / (1 + exp(-x)), exp from vec_exp.h; the argument is clamped to [-87, 87], which
// changes sigmoid by less than 2e-38 absolute. Branch-free.
template <int W>
SW_INLINE typename V<W>::f sigmoid(typename V<W>::f x) {
    using F = typename V<W>::f;
    F a = -x;
    a = a < -87.f ? splat<W>(-87.f) : a;
    a = a > 87.f ? splat<W>(87.f) : a;
    return 1.f / (1.f + exp_clamped<F, typename V<W>::i>(a));
}

// Storage: fp32 (float) or bf16 (its bits, uint16_t), widened to fp32 on load and rounded to nearest
// even on store (NaN stays NaN), as torch rounds.
template <int W, class T>
SW_INLINE typename V<W>::f load(const T* p) {
    if constexpr (sizeof(T) == 4) {
        typename V<W>::f x;
        std::memcpy(&x, p, sizeof(x));
        return x;
    } else {
        typename V<W>::h x;
        std::memcpy(&x, p, sizeof(x));
        return (typename V<W>::f)(__builtin_convertvector(x, typename V<W>::u) << 16);
    }
}

template <int W, class T>
SW_INLINE auto narrow(typename V<W>::f x) {
    if constexpr (sizeof(T) == 4) {
        return x;
    } else {
        using U = typename V<W>::u;
        const U b = (U)x;
        const U r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
        const U q = (b >> 16) | 0x40u;  // quiet NaN
        return __builtin_convertvector(x != x ? q : r, typename V<W>::h);
    }
}

// Stores one vector to p, non-temporal when NT (p then aligned to the vector's size).
template <int W, class T, bool NT>
SW_INLINE void store(T* p, typename V<W>::f x) {
    auto y = narrow<W, T>(x);
    using Y = decltype(y);
    static_assert(sizeof(y) == W * sizeof(T), "vector size");
#if SW_X86
    if constexpr (NT) {  // inline asm: intrinsics would need a target attribute on this helper
        if constexpr (sizeof(y) == 8) {
            long long v;
            std::memcpy(&v, &y, 8);
            asm volatile("movnti %1, %0" : "=m"(*reinterpret_cast<long long*>(p)) : "r"(v));
        } else if constexpr (W >= 8) {
            asm volatile("vmovntdq %1, %0" : "=m"(*reinterpret_cast<Y*>(p)) : "v"(y));
        } else {
            asm volatile("movntdq %1, %0" : "=m"(*reinterpret_cast<Y*>(p)) : "x"(y));
        }
        return;
    }
#endif
    std::memcpy(p, &y, sizeof(y));
}

// One direction's math on W lanes, applied to n elements: whole vectors, plus a tail through a
// zero-padded buffer (the same vector math, so every element is computed alike).
template <int W>
struct Fwd {
    static constexpr int NI = 2, NO = 1;
    template <class Vf>
    SW_INLINE static void math(const Vf* in, Vf* out) {
        const Vf g = in[0];
        out[0] = g * sigmoid<W>(g) * in[1];
    }
};

template <int W>
struct Bwd {
    static constexpr int NI = 3, NO = 2;  // in: do, g, u; out: dg, du
    template <class Vf>
    SW_INLINE static void math(const Vf* in, Vf* out) {
        const Vf d = in[0], g = in[1], u = in[2];
        const Vf s = sigmoid<W>(g);
        const Vf ds = d * s;
        out[0] = ds * u * (1.f + g * (1.f - s));
        out[1] = ds * g;
    }
};

template <int W, template <int> class Op, class T, bool NT>
SW_INLINE void span(const T* const* in, T* const* out, i64 n) {
    using F = typename V<W>::f;
    constexpr int NI = Op<W>::NI, NO = Op<W>::NO;
    F a[NI], b[NO];
    i64 i = 0;
    if constexpr (NT) {  // scalar-width head until the outputs are aligned (same offset in each)
        const i64 mis = static_cast<i64>((reinterpret_cast<uintptr_t>(out[0]) / sizeof(T)) % W);
        const i64 head = std::min<i64>(n, mis ? W - mis : 0);
        if (head) {
            T buf[NI][W] = {};
            for (int k = 0; k < NI; ++k) std::memcpy(buf[k], in[k], head * sizeof(T));
            for (int k = 0; k < NI; ++k) a[k] = load<W>(buf[k]);
            Op<W>::math(a, b);
            for (int k = 0; k < NO; ++k) {
                store<W, T, false>(buf[k], b[k]);
                std::memcpy(out[k], buf[k], head * sizeof(T));
            }
            i = head;
        }
    }
    for (; i + W <= n; i += W) {
        for (int k = 0; k < NI; ++k) a[k] = load<W>(in[k] + i);
        Op<W>::math(a, b);
        for (int k = 0; k < NO; ++k) store<W, T, NT>(out[k] + i, b[k]);
    }
    if (i < n) {
        T buf[NI][W] = {};
        for (int k = 0; k < NI; ++k) std::memcpy(buf[k], in[k] + i, (n - i) * sizeof(T));
        for (int k = 0; k < NI; ++k) a[k] = load<W>(buf[k]);
        Op<W>::math(a, b);
        for (int k = 0; k < NO; ++k) {
            store<W, T, false>(buf[k], b[k]);
            std::memcpy(out[k] + i, buf[k], (n - i) * sizeof(T));
        }
    }
}

// The problem: `rows` rows of `cols` elements; input k's row r starts at in[k] + r * in_stride[k],
// output k's at out[k] + r * cols. A block is up to BLOCK elements of one row.
// A block is about BLOCK elements: a piece of one long row, or several whole short rows (contiguous
// inputs are passed as one row).
template <class T>
struct Problem {
    const T* in[3];
    i64 in_stride[3];
    T* out[2];
    i64 rows, cols, blocks_per_row, rows_per_block;
    bool stream;
    i64 blocks() const { return (rows + rows_per_block - 1) / rows_per_block * blocks_per_row; }
};

constexpr i64 BLOCK = 1 << 14;

template <int W, template <int> class Op, class T>
SW_INLINE void run_block(const Problem<T>& p, i64 blk) {
    const i64 r0 = blk / p.blocks_per_row * p.rows_per_block, c0 = (blk % p.blocks_per_row) * BLOCK;
    const i64 n = std::min<i64>(BLOCK, p.cols - c0), r1 = std::min(p.rows, r0 + p.rows_per_block);
    for (i64 r = r0; r < r1; ++r) {
        const T* in[3];
        T* out[2];
        for (int k = 0; k < Op<W>::NI; ++k) in[k] = p.in[k] + r * p.in_stride[k] + c0;
        for (int k = 0; k < Op<W>::NO; ++k) out[k] = p.out[k] + r * p.cols + c0;
        if (p.stream) span<W, Op, T, true>(in, out, n);
        else span<W, Op, T, false>(in, out, n);
    }
}

struct Queue {
    explicit Queue(i64 n) : total(n) {}
    const i64 total;
    std::atomic<i64> next{0}, done{0};
};

#define SW_ISA_LOOP(NAME, TARGET, W)                                                       \
    template <template <int> class Op, class T>                                            \
    TARGET void loop_##NAME(const Problem<T>& p, Queue& q) {                               \
        for (i64 b = q.next.fetch_add(1, std::memory_order_relaxed); b < q.total;          \
             b = q.next.fetch_add(1, std::memory_order_relaxed)) {                         \
            run_block<W, Op, T>(p, b);                                                     \
            q.done.fetch_add(1, std::memory_order_release);                                \
        }                                                                                  \
        if (p.stream) fence();                                                             \
    }

SW_INLINE void fence() {
#if SW_X86
    _mm_sfence();  // non-temporal stores are weakly ordered: make them visible before reporting done
#endif
}

SW_ISA_LOOP(default, , 4)
#if SW_X86
SW_ISA_LOOP(avx2, SW_TARGET_AVX2, 8)
SW_ISA_LOOP(avx512, SW_TARGET_AVX512, 16)
#endif

template <template <int> class Op, class T>
void loop(int isa, const Problem<T>& p, Queue& q) {
#if SW_X86
    if (isa == 2) return loop_avx512<Op, T>(p, q);
    if (isa == 1) return loop_avx2<Op, T>(p, q);
#endif
    loop_default<Op, T>(p, q);
}

// Runs every block on the caller and up to n_threads - 1 helpers; returns once all are done.
template <template <int> class Op, class T>
void run(const Problem<T>& p, int n_threads, int isa) {
    const i64 total = p.blocks();
    auto q = std::make_shared<Queue>(total);
    // a helper is worth its start (tens of us) only with 8 blocks or more for it
    const i64 nt = std::max<i64>(1, std::min<i64>(n_threads, total / 8));
    if (nt > 1) {
        auto pp = std::make_shared<Problem<T>>(p);
        for (i64 t = 1; t < nt; ++t)
            std::thread([q, pp, isa]() { loop<Op, T>(isa, *pp, *q); }).detach();
    }
    loop<Op, T>(isa, p, *q);
    while (q->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

// (rows, cols) of a 2-d array whose columns are contiguous, its row stride in elements.
void shape_of(const py::array& a, const char* name, i64& rows, i64& cols, i64& stride, bool want_contiguous) {
    if (a.ndim() != 2) throw py::value_error(std::string(name) + ": expected a 2-d (rows, cols) array");
    rows = a.shape(0);
    cols = a.shape(1);
    const i64 es = static_cast<i64>(a.itemsize());
    if (cols > 1 && a.strides(1) != es)
        throw py::value_error(std::string(name) + ": columns must be contiguous (pass .contiguous())");
    stride = rows > 1 ? a.strides(0) / es : cols;
    if (rows > 1 && a.strides(0) % es) throw py::value_error(std::string(name) + ": misaligned row stride");
    if (want_contiguous && rows > 1 && stride != cols)
        throw py::value_error(std::string(name) + ": output must be C-contiguous");
}

template <class T>
bool is_type(const py::array& a) {
    if constexpr (std::is_same_v<T, uint16_t>)  // bf16 bits: torch's .view(torch.int16) gives int16
        if (py::isinstance<py::array_t<int16_t>>(a)) return true;
    return py::isinstance<py::array_t<T>>(a);
}

// Inputs then outputs, all float32 or all uint16 (bf16 bits), of one (rows, cols) shape.
template <template <int> class Op>
void call(std::initializer_list<py::array> ins, std::initializer_list<py::array> outs, bool stream, int n_threads) {
    const py::array& first = *ins.begin();
    const bool f32 = is_type<float>(first);
    if (!f32 && !is_type<uint16_t>(first))
        throw py::type_error("swiglu: expected float32 arrays, or int16/uint16 arrays holding bf16 bits");
    i64 rows, cols, stride;
    shape_of(first, "gate", rows, cols, stride, false);
    auto fill = [&](auto* proto) {
        using T = std::remove_pointer_t<decltype(proto)>;
        Problem<T> p{};
        p.rows = rows;
        p.cols = cols;
        p.stream = stream;
        int k = 0;
        for (const py::array& a : ins) {
            i64 r, c, s;
            shape_of(a, "input", r, c, s, false);
            if (r != rows || c != cols || !is_type<T>(a))
                throw py::value_error("swiglu: every array must have the same shape and dtype");
            p.in[k] = static_cast<const T*>(a.data());
            p.in_stride[k++] = s;
        }
        k = 0;
        for (const py::array& a : outs) {
            i64 r, c, s;
            shape_of(a, "out", r, c, s, true);
            if (r != rows || c != cols || !is_type<T>(a))
                throw py::value_error("swiglu: every array must have the same shape and dtype");
            if (!a.writeable()) throw py::value_error("swiglu: output array is read-only");
            p.out[k++] = static_cast<T*>(const_cast<void*>(a.data()));
        }
        bool flat = true;  // every input contiguous: one row
        for (int j = 0; j < static_cast<int>(ins.size()); ++j) flat = flat && (rows <= 1 || p.in_stride[j] == cols);
        if (flat && rows > 1) {
            p.cols = rows * cols;
            p.rows = 1;
        }
        p.blocks_per_row = std::max<i64>(1, (p.cols + BLOCK - 1) / BLOCK);
        p.rows_per_block = p.cols >= BLOCK ? 1 : BLOCK / std::max<i64>(1, p.cols);
        // non-temporal stores need every output at the same offset from a vector boundary
        for (int j = 1; j < k; ++j)
            if (reinterpret_cast<uintptr_t>(p.out[j]) % 64 != reinterpret_cast<uintptr_t>(p.out[0]) % 64) p.stream = false;
        if (rows == 0 || cols == 0) return;
        const int isa = native_isa();
        // streamed stores narrower than 32 bytes (bf16 on AVX2, the portable path) were slower than
        // plain ones into freshly faulted pages (benchmarks/RESULTS.md, SwiGLU 2026-12-07, late)
        if (static_cast<int>(sizeof(T)) * (isa == 2 ? 16 : isa == 1 ? 8 : 4) < 32) p.stream = false;
        py::gil_scoped_release nogil;
        run<Op, T>(p, n_threads, isa);
    };
    if (f32) fill(static_cast<float*>(nullptr));
    else fill(static_cast<uint16_t*>(nullptr));
}

}  // namespace

void bind_swiglu(py::module_& m) {
    m.def(
        "swiglu_forward",
        [](py::array g, py::array u, py::array out, bool stream, int n_threads) {
            call<Fwd>({g, u}, {out}, stream, n_threads);
        },
        py::arg("g"), py::arg("u"), py::arg("out"), py::arg("stream"), py::arg("n_threads"),
        "out = silu(g) * u for (rows, cols) arrays, float32 or uint16 (bf16 bits); g, u may have strided rows, "
        "out is C-contiguous; stream: write out with non-temporal stores (outputs larger than the caches).");
    m.def(
        "swiglu_backward",
        [](py::array d, py::array g, py::array u, py::array dg, py::array du, bool stream, int n_threads) {
            call<Bwd>({d, g, u}, {dg, du}, stream, n_threads);
        },
        py::arg("grad"), py::arg("g"), py::arg("u"), py::arg("dg"), py::arg("du"), py::arg("stream"),
        py::arg("n_threads"), "(dg, du) of swiglu_forward written into dg, du (C-contiguous).");
    // Bumped when the kernel's speed changes: cached dispatch choices (compiled vs native) are keyed by it.
    m.attr("swiglu_revision") = 1;
}

}  // namespace craft
