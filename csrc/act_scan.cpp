// ACT slot accumulation: the sequential scalar scan over return/halting probabilities, forward and
// reverse (adjoint) pass. The D-dimensional pouring of results into slots happens in torch from the
// piece weights this scan produces (craft_kernels/act.py). float64 throughout; GIL released.
#include <pybind11/numpy.h>

#include <algorithm>
#include <cstdint>

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
}

}  // namespace craft
