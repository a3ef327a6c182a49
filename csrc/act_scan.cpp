// ACT slot accumulation: the sequential scalar scan over return/halting probabilities, forward and
// reverse (adjoint) pass (float64), and the D-dimensional pouring of results into slots by the piece
// weights the scan produces, forward and backward (float32 or float64, the results' dtype). A step
// pours into at most two slots, so the pour is one pass over results: O(B*N*D) reads, where a dense
// (B, S, N) assignment matrix times results costs S times that. GIL released; rows split over threads.
#include <pybind11/numpy.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bindings.h"

namespace py = pybind11;
using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using U8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

namespace craft {
namespace {

// The decision tape's bits. craft_kernels/act.py (TAPE_BITS) holds the same values for the Triton
// kernels; act_tape_bits() exports these so a test checks that the two agree.
enum : uint8_t { CLAMPED = 1, CAPPED = 2, CLOSE = 4, HSAT = 8, OVERFLOW = 16, ACTIVE = 32 };

// Returns w (B,N,2), slot (B,N,2) (-1 = no piece), tape (B,N), halt (B,), n_closed (B,).
py::tuple act_scan_forward(F64 r, F64 h, U8 mask, double eps, bool carry) {
    const int64_t B = r.shape(0), N = r.shape(1);
    F64 w({B, N, int64_t(2)});
    I64 slot({B, N, int64_t(2)});
    U8 tape({B, N});
    F64 halt_out({B});
    I64 closed_out({B});
    const double *pr = r.data(), *ph = h.data();
    const uint8_t* pm = mask.data();
    double *pw = w.mutable_data(), *pho = halt_out.mutable_data();
    int64_t *ps = slot.mutable_data(), *pc = closed_out.mutable_data();
    uint8_t* pt = tape.mutable_data();
    {
        py::gil_scoped_release nogil;
        for (int64_t b = 0; b < B; ++b) {
            double cum = 0.0, halt = 0.0;
            int64_t s = 0;
            for (int64_t n = 0; n < N; ++n) {
                const int64_t i = b * N + n;
                double* wi = pw + 2 * i;
                int64_t* si = ps + 2 * i;
                wi[0] = wi[1] = 0.0;
                si[0] = si[1] = -1;
                uint8_t t = 0;
                if (!pm[i]) {
                    pt[i] = t;
                    continue;
                }
                t |= ACTIVE;
                double p = pr[i];
                if (!carry && cum + p > 1.0 - eps) {
                    p = 1.0 - cum;
                    t |= CLAMPED;
                }
                if (p > 1.0 - halt) {
                    p = 1.0 - halt;
                    t |= CAPPED;
                }
                auto close = [&]() {
                    t |= CLOSE;
                    if (halt + ph[i] >= 1.0) {
                        halt = 1.0;
                        t |= HSAT;
                    } else {
                        halt += ph[i];
                    }
                    ++s;
                    cum = 0.0;
                };
                if (carry && p > 1.0 - cum) {  // fill the slot, close it, carry the excess
                    t |= OVERFLOW;
                    wi[0] = 1.0 - cum;
                    si[0] = s;
                    const double rest = p - wi[0];
                    close();
                    wi[1] = rest;
                    si[1] = s;
                    cum = rest;  // rest < 1 - eps: the next slot stays open
                } else {
                    wi[0] = p;
                    si[0] = s;
                    cum += p;
                    if (cum >= 1.0 - eps) close();
                }
                pt[i] = t;
            }
            pho[b] = halt;
            pc[b] = s;
        }
    }
    return py::make_tuple(w, slot, tape, halt_out, closed_out);
}

// Reverse pass through the recorded decisions: gradients of (w, final halt) -> (r, h).
py::tuple act_scan_backward(U8 tape, F64 gw, F64 ghalt, bool carry) {
    const int64_t B = tape.shape(0), N = tape.shape(1);
    F64 gr({B, N}), gh({B, N});
    const uint8_t* pt = tape.data();
    const double *pgw = gw.data(), *pgh = ghalt.data();
    double *pgr = gr.mutable_data(), *pghh = gh.mutable_data();
    {
        py::gil_scoped_release nogil;
        std::fill(pgr, pgr + B * N, 0.0);
        std::fill(pghh, pghh + B * N, 0.0);
        for (int64_t b = 0; b < B; ++b) {
            double a_cum = 0.0, a_halt = pgh[b];
            for (int64_t n = N - 1; n >= 0; --n) {
                const int64_t i = b * N + n;
                const uint8_t t = pt[i];
                if (!(t & ACTIVE)) continue;
                const double g0 = pgw[2 * i], g1 = pgw[2 * i + 1];
                if (t & CLOSE) {  // halt_after = halt0 + h (or 1 when saturated)
                    if (t & HSAT) {
                        a_halt = 0.0;
                    } else {
                        pghh[i] += a_halt;
                    }
                }
                double a_p, a_cum0;
                if (t & OVERFLOW) {  // w0 = 1 - cum0, w1 = p - w0, cum_after = w1
                    const double a_w1 = g1 + a_cum;
                    const double a_w0 = g0 - a_w1;
                    a_cum0 = -a_w0;
                    a_p = a_w1;
                } else {  // w0 = p, cum_after = (close ? 0 : cum0 + p)
                    const double a_c = (t & CLOSE) ? 0.0 : a_cum;
                    a_p = g0 + a_c;
                    a_cum0 = a_c;
                }
                if (t & CAPPED) {  // p = 1 - halt0
                    a_halt -= a_p;
                } else if (!carry && (t & CLAMPED)) {  // p = 1 - cum0
                    a_cum0 -= a_p;
                } else {
                    pgr[i] += a_p;
                }
                a_cum = a_cum0;
            }
        }
    }
    return py::make_tuple(gr, gh);
}


#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define CRAFT_POUR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CRAFT_POUR_CLONES
#endif

// acc[d] += a * x[d]
template <typename T>
CRAFT_POUR_CLONES void axpy(T* __restrict acc, const T* __restrict x, T a, int64_t D) {
    for (int64_t d = 0; d < D; ++d) acc[d] += a * x[d];
}

// out[d] = a * x[d] (+ b * y[d] when y); returns nothing
template <typename T>
CRAFT_POUR_CLONES void scale2(T* __restrict out, const T* __restrict x, T a, const T* __restrict y, T b, int64_t D) {
    if (y) {
        for (int64_t d = 0; d < D; ++d) out[d] = a * x[d] + b * y[d];
    } else {
        for (int64_t d = 0; d < D; ++d) out[d] = a * x[d];
    }
}

// sum_d x[d] * y[d] with 8 independent partial sums (vectorises without reassociating a single sum)
template <typename T>
CRAFT_POUR_CLONES T dot(const T* __restrict x, const T* __restrict y, int64_t D) {
    T part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t d = 0;
    for (; d + 8 <= D; d += 8)
        for (int j = 0; j < 8; ++j) part[j] += x[d + j] * y[d + j];
    T s = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
    for (; d < D; ++d) s += x[d] * y[d];
    return s;
}

// fn(first_row, end_row) over chunks of rows claimed from a shared counter by the calling thread and
// up to n_threads - 1 detached helpers (no shared writes between rows). The caller never waits for a
// helper to start: with a fixed split and joined threads, a helper not yet scheduled on a busy machine
// held up every call (figures in benchmarks/RESULTS.md); here the caller takes the chunks a late
// helper has not claimed. A helper calls fn only holding a
// claimed chunk (the caller is then still waiting, its arrays alive); one that starts after the last
// claim touches only the shared counters (as run_threads in span_attention.cpp).
template <typename Fn>
void over_rows(int64_t B, int64_t work, int n_threads, Fn fn) {
    const int64_t nt = std::max<int64_t>(1, std::min<int64_t>({int64_t(n_threads), B, work >> 16}));
    if (nt == 1) return fn(int64_t(0), B);
    struct Counters { std::atomic<int64_t> next{0}, done{0}; };
    auto q = std::make_shared<Counters>();
    const int64_t chunk = std::max<int64_t>(1, B / (nt * 4)), chunks = (B + chunk - 1) / chunk;
    auto run = [q, chunk, chunks, B, fn]() {
        for (int64_t c = q->next.fetch_add(1, std::memory_order_relaxed); c < chunks;
             c = q->next.fetch_add(1, std::memory_order_relaxed)) {
            fn(c * chunk, std::min(B, (c + 1) * chunk));
            q->done.fetch_add(1, std::memory_order_release);
        }
    };
    for (int64_t t = 1; t < nt; ++t) std::thread(run).detach();
    run();
    while (q->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// Every piece's slot is -1 (no piece) or in [0, S): checked before any thread reads with it.
void check_slots(const I64& idx, int64_t S, const char* name) {
    const int64_t* p = idx.data();
    bool ok = true;
    for (int64_t i = 0, n = idx.size(); i < n; ++i) ok &= p[i] >= -1 && p[i] < S;
    if (!ok) throw py::value_error(std::string(name) + ": a slot index is outside [-1, S)");
}

// slots (B, S, D): slots[b, idx[b,n,k]] += w[b,n,k] * x[b,n] for each piece k with idx >= 0.
template <typename T>
py::array_t<T> act_pour_forward(py::array_t<T, py::array::c_style | py::array::forcecast> x,
                                py::array_t<T, py::array::c_style | py::array::forcecast> w, I64 idx, int64_t S,
                                int n_threads) {
    const int64_t B = x.shape(0), N = x.shape(1), D = x.shape(2);
    if (w.ndim() != 3 || w.shape(0) != B || w.shape(1) != N || w.shape(2) != 2 || idx.ndim() != 3 ||
        idx.shape(0) != B || idx.shape(1) != N || idx.shape(2) != 2 || S < 0)
        throw py::value_error("act_pour_forward: expected x (B,N,D), w and idx (B,N,2), S >= 0");
    check_slots(idx, S, "act_pour_forward");
    py::array_t<T> slots({B, S, D});
    const T *px = x.data(), *pw = w.data();
    const int64_t* pi = idx.data();
    T* ps = slots.mutable_data();
    {
        py::gil_scoped_release nogil;
        over_rows(B, B * N * D, n_threads, [&](int64_t b0, int64_t b1) {
            std::fill(ps + b0 * S * D, ps + b1 * S * D, T(0));
            for (int64_t b = b0; b < b1; ++b)
                for (int64_t n = 0; n < N; ++n) {
                    const int64_t i = b * N + n;
                    for (int k = 0; k < 2; ++k) {
                        const int64_t s = pi[2 * i + k];
                        if (s < 0) continue;
                        axpy(ps + (b * S + s) * D, px + i * D, pw[2 * i + k], D);
                    }
                }
        });
    }
    return slots;
}

// Gradients of the pour: gx (B,N,D) = sum_k w[k] * gs[idx[k]], and gdot (B,N,2) = <gs[idx[k]], x> (0 for
// absent pieces), which the caller adds to the piece weights' gradient.
template <typename T>
py::tuple act_pour_backward(py::array_t<T, py::array::c_style | py::array::forcecast> gs,
                            py::array_t<T, py::array::c_style | py::array::forcecast> x,
                            py::array_t<T, py::array::c_style | py::array::forcecast> w, I64 idx, int n_threads) {
    const int64_t B = x.shape(0), N = x.shape(1), D = x.shape(2), S = gs.shape(1);
    if (gs.ndim() != 3 || gs.shape(0) != B || gs.shape(2) != D || w.ndim() != 3 || w.shape(0) != B ||
        w.shape(1) != N || w.shape(2) != 2 || idx.ndim() != 3 || idx.shape(0) != B || idx.shape(1) != N ||
        idx.shape(2) != 2)
        throw py::value_error("act_pour_backward: expected gs (B,S,D), x (B,N,D), w and idx (B,N,2)");
    check_slots(idx, S, "act_pour_backward");
    py::array_t<T> gx({B, N, D}), gdot({B, N, int64_t(2)});
    const T *pg = gs.data(), *px = x.data(), *pw = w.data();
    const int64_t* pi = idx.data();
    T *pgx = gx.mutable_data(), *pd = gdot.mutable_data();
    {
        py::gil_scoped_release nogil;
        over_rows(B, B * N * D, n_threads, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b)
                for (int64_t n = 0; n < N; ++n) {
                    const int64_t i = b * N + n;
                    const T* row[2] = {nullptr, nullptr};
                    for (int k = 0; k < 2; ++k) {
                        const int64_t s = pi[2 * i + k];
                        row[k] = s >= 0 ? pg + (b * S + s) * D : nullptr;
                        pd[2 * i + k] = row[k] ? dot(row[k], px + i * D, D) : T(0);
                    }
                    T* out = pgx + i * D;
                    if (row[0])
                        scale2(out, row[0], pw[2 * i], row[1], row[1] ? pw[2 * i + 1] : T(0), D);
                    else if (row[1])
                        scale2<T>(out, row[1], pw[2 * i + 1], nullptr, T(0), D);
                    else
                        std::fill(out, out + D, T(0));
                }
        });
    }
    return py::make_tuple(gx, gdot);
}

}  // namespace

void bind_act_scan(py::module_& m) {
    m.def("act_scan_forward", &act_scan_forward, py::arg("r"), py::arg("h"), py::arg("mask"), py::arg("eps"),
          py::arg("carry"));
    m.def("act_tape_bits", []() {
        py::dict d;
        d["clamped"] = int(CLAMPED);
        d["capped"] = int(CAPPED);
        d["close"] = int(CLOSE);
        d["hsat"] = int(HSAT);
        d["overflow"] = int(OVERFLOW);
        d["active"] = int(ACTIVE);
        return d;
    });
    m.def("act_scan_backward", &act_scan_backward, py::arg("tape"), py::arg("gw"), py::arg("ghalt"), py::arg("carry"));
    // float64 first: overload resolution tries them in order, and forcecast would accept either
    m.def("act_pour_forward", &act_pour_forward<double>, py::arg("x").noconvert(), py::arg("w").noconvert(),
          py::arg("idx"), py::arg("S"), py::arg("n_threads"));
    m.def("act_pour_forward", &act_pour_forward<float>, py::arg("x").noconvert(), py::arg("w").noconvert(),
          py::arg("idx"), py::arg("S"), py::arg("n_threads"));
    m.def("act_pour_backward", &act_pour_backward<double>, py::arg("gs").noconvert(), py::arg("x").noconvert(),
          py::arg("w").noconvert(), py::arg("idx"), py::arg("n_threads"));
    m.def("act_pour_backward", &act_pour_backward<float>, py::arg("gs").noconvert(), py::arg("x").noconvert(),
          py::arg("w").noconvert(), py::arg("idx"), py::arg("n_threads"));
}

}  // namespace craft
