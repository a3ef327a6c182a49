// Data-prep ops: unit padding, greedy next-fit join-padding, agent-level flattening, DVT building.
// join_pad, split_units and build_dvt get validated private int64 copies from the Python wrappers
// (craft_kernels/native/dataprep.py), so their loops run with the GIL released while other threads
// may rewrite the caller's arrays. pad_units and flatten_offsets are short, memory-bound passes: they
// read the caller's arrays in place, validate them and use them in one call with the GIL held (so
// no Python thread can change them in between), and return None when the input is invalid; the
// wrapper then runs the NumPy checks, which raise the message naming the argument.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "bindings.h"

#if defined(__GNUC__) && defined(__x86_64__)
#define CRAFT_X86_DATAPREP 1
#include <immintrin.h>
#else
#define CRAFT_X86_DATAPREP 0
#endif

namespace py = pybind11;
using i64 = int64_t;
using u64 = uint64_t;
using Arr = py::array_t<i64, py::array::c_style | py::array::forcecast>;

// The scans below are plain loops the compiler vectorises; one clone per ISA, picked at load time.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define CRAFT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CRAFT_CLONES
#endif

namespace craft {

// CSR offsets check in one pass: a[0] == 0, non-decreasing, a[n-1] == total (total < 0: any end).
// Returns the longest unit (a[i+1] - a[i]), or -1 when the offsets are invalid.
CRAFT_CLONES i64 scan_offsets(const i64* a, i64 n, i64 total) {
    if (n < 1 || a[0] != 0 || (total >= 0 && a[n - 1] != total)) return -1;
    i64 bad = 0, longest = 0;
    for (i64 i = 0; i + 1 < n; ++i) {
        bad |= static_cast<i64>(a[i + 1] < a[i]);
        // unsigned difference: never overflows; exact once the order holds (all values >= 0)
        const i64 d = static_cast<i64>(static_cast<u64>(a[i + 1]) - static_cast<u64>(a[i]));
        longest = d > longest ? d : longest;
    }
    return bad ? -1 : longest;
}

// pad_units kernels. Each reads every offset once (carried from one row to the next), checks it
// (CSR order, inside tokens, not longer than width unless truncating) before reading tokens with
// it, and returns false at the first bad one: valid output, or false, even if another thread
// rewrites the offsets meanwhile (NumPy copies release the GIL). `longest` (truncate=false) is width.
struct PadArgs {
    const i64* tok;
    i64 n_tok;
    const i64* off;
    i64 n_units, width, pad_id;
    bool truncate;
    i64* out;
};

// Reads offsets u+1 and returns the row's length in [0, width], or -1 if bad. `s` is offsets[u].
inline __attribute__((always_inline)) i64 next_len(const PadArgs& a, i64 u, i64 s, i64* e_out) {
    const i64 e = a.off[u + 1];
    *e_out = e;
    if (e < s || e > a.n_tok) return -1;
    const i64 len = e - s;
    if (len > a.width) return a.truncate ? a.width : -1;
    return len;
}

// Rows of W ids: units whose W-token window lies inside `tokens` are loaded whole and blended with
// pad_id (no branch on the length); the few at the very end go one id at a time.
template <int W>
inline __attribute__((always_inline)) bool pad_rows_fixed(const PadArgs& a) {
    i64 s = a.off[0];
    if (s != 0) return false;
    for (i64 u = 0; u < a.n_units; ++u) {
        i64 e;
        const i64 len = next_len(a, u, s, &e);
        if (len < 0) return false;
        i64* row = a.out + u * W;
        if (s <= a.n_tok - W) {
            i64 buf[W];
            std::memcpy(buf, a.tok + s, sizeof(buf));
            // a bitwise blend, which the compiler keeps branch-free and vectorises
            for (int k = 0; k < W; ++k) {
                const i64 keep = -static_cast<i64>(k < len);
                row[k] = (buf[k] & keep) | (a.pad_id & ~keep);
            }
        } else {
            for (int k = 0; k < W; ++k) row[k] = k < len ? a.tok[s + k] : a.pad_id;
        }
        s = e;
    }
    return s == a.n_tok;
}

CRAFT_CLONES bool pad_rows(const PadArgs& a) {
    switch (a.width) {
#define CRAFT_PAD_CASE(W) \
    case W: return pad_rows_fixed<W>(a);
        CRAFT_PAD_CASE(1) CRAFT_PAD_CASE(2) CRAFT_PAD_CASE(3) CRAFT_PAD_CASE(4) CRAFT_PAD_CASE(5) CRAFT_PAD_CASE(6)
        CRAFT_PAD_CASE(7) CRAFT_PAD_CASE(8) CRAFT_PAD_CASE(9) CRAFT_PAD_CASE(10) CRAFT_PAD_CASE(11)
        CRAFT_PAD_CASE(12) CRAFT_PAD_CASE(13) CRAFT_PAD_CASE(14) CRAFT_PAD_CASE(15) CRAFT_PAD_CASE(16)
#undef CRAFT_PAD_CASE
        default: break;
    }
    i64 s = a.off[0];
    if (s != 0) return false;
    for (i64 u = 0; u < a.n_units; ++u) {
        i64 e;
        const i64 len = next_len(a, u, s, &e);
        if (len < 0) return false;
        i64* row = a.out + u * a.width;
        std::copy(a.tok + s, a.tok + s + len, row);
        std::fill(row + len, row + a.width, a.pad_id);
        s = e;
    }
    return s == a.n_tok;
}

#if CRAFT_X86_DATAPREP
// AVX-512, width <= 16: each row is one or two masked loads (masked-off lanes never fault, so no
// window check) that fill the lanes past the unit's length with pad_id. `stream` (width 8 or 16,
// row-aligned 64-byte output): non-temporal stores, for outputs much larger than the cache, which
// then skip the read-for-ownership of every output line.
__attribute__((target("avx512f"))) bool pad_rows_avx512(const PadArgs& a, bool stream) {
    const __m512i iota = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i pad = _mm512_set1_epi64(a.pad_id);
    const i64 width = a.width;
    const __mmask8 store0 = static_cast<__mmask8>(width >= 8 ? 0xff : (1u << width) - 1);
    const __mmask8 store1 = static_cast<__mmask8>(width >= 16 ? 0xff : width > 8 ? (1u << (width - 8)) - 1 : 0);
    i64 s = a.off[0];
    bool ok = s == 0;
    for (i64 u = 0; ok && u < a.n_units; ++u) {
        i64 e;
        const i64 len = next_len(a, u, s, &e);
        if (len < 0) {
            ok = false;
            break;
        }
        const __mmask8 k0 = _mm512_cmplt_epi64_mask(iota, _mm512_set1_epi64(len));
        const __m512i r0 = _mm512_mask_loadu_epi64(pad, k0, a.tok + s);
        i64* row = a.out + u * width;
        if (stream) {
            _mm512_stream_si512(reinterpret_cast<__m512i*>(row), r0);
        } else {
            _mm512_mask_storeu_epi64(row, store0, r0);
        }
        if (store1) {
            const __mmask8 k1 = _mm512_cmplt_epi64_mask(iota, _mm512_set1_epi64(len - 8));
            const __m512i r1 = _mm512_mask_loadu_epi64(pad, k1, a.tok + s + 8);
            if (stream) {
                _mm512_stream_si512(reinterpret_cast<__m512i*>(row + 8), r1);
            } else {
                _mm512_mask_storeu_epi64(row + 8, store1, r1);
            }
        }
        s = e;
    }
    if (stream) _mm_sfence();
    return ok && s == a.n_tok;
}

bool has_avx512() {
    static const bool yes = __builtin_cpu_supports("avx512f");
    return yes;
}
#endif

namespace {

Arr new_array(std::vector<py::ssize_t> shape) { return Arr(shape); }

// (n_units, width) ids, each unit's tokens then pad_id; with truncate, longer units are cut, else
// they make the input invalid. None when offsets are not valid CSR offsets into tokens.
py::object pad_units(Arr tokens, Arr offsets, i64 width, i64 pad_id, bool truncate, bool avx512) {
    if (offsets.shape(0) < 1 || width < 1) return py::none();
    const i64 n_units = offsets.shape(0) - 1;
    PadArgs a{tokens.data(), tokens.shape(0), offsets.data(), n_units, width, pad_id, truncate, nullptr};
#if CRAFT_X86_DATAPREP
    if (avx512 && width <= 16 && has_avx512()) {
        // outputs past 8 MiB are written with streaming stores into 64-byte-aligned rows: the
        // array is then a view into a buffer 8 ids longer, from its first 64-byte boundary
        const bool stream = width % 8 == 0 && n_units * width > (i64(1) << 20);
        Arr buf = new_array({n_units * width + (stream ? 8 : 0)});
        i64* p = buf.mutable_data();
        const i64 skip = stream ? static_cast<i64>((64 - reinterpret_cast<uintptr_t>(p) % 64) % 64 / 8) : 0;
        a.out = p + skip;
        if (!pad_rows_avx512(a, stream)) return py::none();
        if (!stream) return buf.attr("reshape")(n_units, width);
        return py::array_t<i64>({n_units, width}, {width * i64(sizeof(i64)), i64(sizeof(i64))}, a.out, buf);
    }
#endif
    Arr out = new_array({n_units, width});
    a.out = out.mutable_data();
    if (!pad_rows(a)) return py::none();
    return std::move(out);
}

// Next-fit grouping: a unit joins the current group while sum(lengths) + join_cost*(n-1) <= budget.
// Returns group offsets into units (G+1,). Lengths were checked to be <= budget.
Arr greedy_join(Arr lengths, i64 budget, i64 join_cost) {
    const i64 n = lengths.shape(0);
    const i64* len = lengths.data();
    std::vector<i64> starts;
    {
        py::gil_scoped_release nogil;
        starts.reserve(static_cast<size_t>(n / 2 + 2));
        i64 used = -1;  // -1: no group open
        for (i64 i = 0; i < n; ++i) {
            // used + join_cost + len[i] <= budget, written so that huge values cannot overflow
            // (0 <= used <= budget, join_cost >= 0 and len[i] <= budget are checked by the wrapper)
            if (used >= 0 && join_cost <= budget - used && len[i] <= budget - used - join_cost) {
                used += join_cost + len[i];
            } else {
                starts.push_back(i);
                used = len[i];
            }
        }
        starts.push_back(n);
    }
    Arr out = new_array({static_cast<py::ssize_t>(starts.size())});
    std::copy(starts.begin(), starts.end(), out.mutable_data());
    return out;
}

// Splits units longer than `budget` into pieces of at most `budget` tokens.
// Returns piece offsets into tokens, the unit of each piece and the position-in-unit of its first token.
py::tuple split_units(Arr offsets, i64 budget) {
    const i64 n = offsets.shape(0) - 1;
    const i64* off = offsets.data();
    std::vector<i64> po, pu, pp;
    {
        py::gil_scoped_release nogil;
        po.reserve(static_cast<size_t>(n + 1));
        pu.reserve(static_cast<size_t>(n));
        pp.reserve(static_cast<size_t>(n));
        for (i64 u = 0; u < n; ++u) {
            for (i64 s = off[u];; s += budget) {
                po.push_back(s);
                pu.push_back(u);
                pp.push_back(s - off[u]);
                if (off[u + 1] - s <= budget) break;  // last piece; never computes s + budget past the end
            }
        }
        po.push_back(n > 0 ? off[n] : 0);
    }
    auto to_arr = [](const std::vector<i64>& v) {
        Arr a = new_array({static_cast<py::ssize_t>(v.size())});
        std::copy(v.begin(), v.end(), a.mutable_data());
        return a;
    };
    return py::make_tuple(to_arr(po), to_arr(pu), to_arr(pp));
}

// Join-padding: groups of consecutive units (next-fit, join_cost 1), each row the units of one group
// with join_id between them, then pad_id. Returns ids, unit index and position-in-unit per position
// (-1 on join and pad), cu_seqlens (int64 here; the wrapper casts) and group offsets into units.
py::tuple join_pad(Arr tokens, Arr offsets, Arr unit_ids, Arr unit_pos0, i64 budget, i64 join_id, i64 pad_id) {
    const i64 n = offsets.shape(0) - 1;
    const i64* off = offsets.data();
    std::vector<i64> lengths(static_cast<size_t>(n));
    for (i64 u = 0; u < n; ++u) lengths[u] = off[u + 1] - off[u];
    Arr len_arr = new_array({n});
    std::copy(lengths.begin(), lengths.end(), len_arr.mutable_data());
    Arr groups = greedy_join(len_arr, budget, 1);
    const i64 g = groups.shape(0) - 1;
    Arr ids = new_array({g, budget}), unit = new_array({g, budget}), pos = new_array({g, budget});
    Arr cu = new_array({g + 1});
    const i64* tok = tokens.data();
    const i64* uid = unit_ids.data();
    const i64* up0 = unit_pos0.data();
    const i64* grp = groups.data();
    i64 *pi = ids.mutable_data(), *pu = unit.mutable_data(), *pp = pos.mutable_data(), *pc = cu.mutable_data();
    {
        py::gil_scoped_release nogil;
        pc[0] = 0;
        for (i64 r = 0; r < g; ++r) {
            i64* ri = pi + r * budget;
            i64* ru = pu + r * budget;
            i64* rp = pp + r * budget;
            i64 c = 0;
            for (i64 u = grp[r]; u < grp[r + 1]; ++u) {
                if (u > grp[r]) {
                    ri[c] = join_id;
                    ru[c] = -1;
                    rp[c] = -1;
                    ++c;
                }
                const i64 len = off[u + 1] - off[u];
                std::copy(tok + off[u], tok + off[u + 1], ri + c);
                for (i64 k = 0; k < len; ++k) {
                    ru[c + k] = uid[u];
                    rp[c + k] = up0[u] + k;
                }
                c += len;
            }
            pc[r + 1] = pc[r] + c;
            std::fill(ri + c, ri + budget, pad_id);
            std::fill(ru + c, ru + budget, i64(-1));
            std::fill(rp + c, rp + budget, i64(-1));
        }
    }
    return py::make_tuple(ids, unit, pos, cu, groups);
}

// o[i] = base[o[i]] for all i, every index checked against n_base first; false if one is out of range.
CRAFT_CLONES bool gather_checked(const i64* base, i64 n_base, i64* o, i64 n) {
    u64 bad = 0;
    for (i64 i = 0; i < n; ++i) {
        const u64 v = static_cast<u64>(o[i]);
        const bool out_of_range = v >= static_cast<u64>(n_base);
        bad |= out_of_range;
        o[i] = base[out_of_range ? 0 : v];
    }
    return !bad;
}

// Offsets of every unit of levels[upto] directly into tokens, composing the levels' offsets, after
// checking every level (levels[0] ends at n_tokens, levels[l] at the unit count of levels[l-1]).
// None when a level is invalid.
py::object flatten_offsets(std::vector<Arr> levels, i64 n_tokens, i64 upto) {
    i64 total = n_tokens;
    for (auto& a : levels) {
        if (scan_offsets(a.data(), a.shape(0), total) < 0) return py::none();
        total = a.shape(0) - 1;
    }
    if (upto < 0 || upto >= static_cast<i64>(levels.size())) return py::none();
    Arr cur = levels[0];
    if (upto == 0) return std::move(cur);  // the caller's array: the wrapper already returns it as level 0
    const i64 n = levels[static_cast<size_t>(upto)].shape(0);
    Arr out = new_array({n});
    i64* o = out.mutable_data();
    const i64* top = levels[static_cast<size_t>(upto)].data();
    // Compose top-down: each unit of levels[upto] walks its first-child index down to the tokens.
    // Every index is bounds-checked as read: the levels were valid a moment ago, but NumPy copies
    // in other threads run without the GIL and may have rewritten them since.
    std::copy(top, top + n, o);
    for (i64 l = upto - 1; l >= 0; --l) {
        if (!gather_checked(levels[static_cast<size_t>(l)].data(), levels[static_cast<size_t>(l)].shape(0), o, n))
            return py::none();
    }
    return std::move(out);
}

// CSR offsets check alone (no longest unit): a[0] == 0, non-decreasing, a[n-1] == total.
CRAFT_CLONES bool offsets_ok(const i64* a, i64 n, i64 total) {
    if (n < 1 || a[0] != 0 || a[n - 1] != total) return false;
    i64 bad = 0;
    for (i64 i = 0; i + 1 < n; ++i) bad |= static_cast<i64>(a[i + 1] < a[i]);
    return !bad;
}

// flatten_level's one-call path: `tokens` a 1-d int64 array, `levels` a list or tuple of them, `upto`
// a level index. Every level is checked (as flatten_offsets) and the offsets of levels[upto] composed
// down to the tokens, on the caller's arrays with the GIL held, the arrays read without NumPy calls.
// None for any other input or an invalid level: the wrapper's checks then raise the message naming
// the argument.
py::object flatten_fast(py::handle tokens, py::handle levels, i64 upto) {
    const i64* tp = nullptr;
    i64 total = 0;
    if (!int64_row(tokens.ptr(), tp, total)) return py::none();
    PyObject* seq = levels.ptr();
    if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq)) return py::none();
    const i64 k = PySequence_Fast_GET_SIZE(seq);
    if (k < 1 || upto < 0 || upto >= k) return py::none();
    PyObject** items = PySequence_Fast_ITEMS(seq);
    std::vector<const i64*> p(static_cast<size_t>(k));
    std::vector<i64> n(static_cast<size_t>(k));
    for (i64 l = 0; l < k; ++l) {
        if (!int64_row(items[l], p[static_cast<size_t>(l)], n[static_cast<size_t>(l)]) ||
            !offsets_ok(p[static_cast<size_t>(l)], n[static_cast<size_t>(l)], total))
            return py::none();
        total = n[static_cast<size_t>(l)] - 1;
    }
    if (upto == 0) return py::reinterpret_borrow<py::object>(items[0]);
    const i64 m = n[static_cast<size_t>(upto)];
    Arr out = new_array({m});
    i64* o = out.mutable_data();
    std::copy(p[static_cast<size_t>(upto)], p[static_cast<size_t>(upto)] + m, o);
    for (i64 l = upto - 1; l >= 0; --l)  // bounds-checked: see flatten_offsets
        if (!gather_checked(p[static_cast<size_t>(l)], n[static_cast<size_t>(l)], o, m)) return py::none();
    return std::move(out);
}

// Compose offsets of levels already validated (private copies): the GIL is released.
Arr compose_offsets(std::vector<Arr> levels) {
    Arr cur = levels[0];
    for (size_t l = 1; l < levels.size(); ++l) {
        const i64 n = levels[l].shape(0);
        Arr next = new_array({n});
        const i64* sel = levels[l].data();
        const i64* base = cur.data();
        i64* o = next.mutable_data();
        {
            py::gil_scoped_release nogil;
            for (i64 i = 0; i < n; ++i) o[i] = base[sel[i]];
        }
        cur = next;
    }
    return cur;
}

// ---- build_dvt, in steps: node counts, subtree sizes, pre-order ids, per-node fields, children.
// levels[0] maps words -> tokens, levels[l] maps level-l units to level l-1 units; the units of the
// last level are the roots. Node level: 0 = token (leaf), l+1 = units of levels[l]. Pre-order ids:
// tree by tree, a node before its children, children in order. off[l] are the offsets of node
// level l+1 into node level l; count[l] the nodes of node level l.

// Subtree sizes bottom-up, per node level.
std::vector<std::vector<i64>> dvt_subtree_sizes(const std::vector<const i64*>& off, const std::vector<i64>& count) {
    const size_t K = off.size();
    std::vector<std::vector<i64>> size(K + 1);
    size[0].assign(static_cast<size_t>(count[0]), 1);
    for (size_t l = 1; l <= K; ++l) {
        size[l].resize(static_cast<size_t>(count[l]));
        const i64* o = off[l - 1];
        for (i64 u = 0; u < count[l]; ++u) {
            i64 s = 1;
            for (i64 c = o[u]; c < o[u + 1]; ++c) s += size[l - 1][static_cast<size_t>(c)];
            size[l][static_cast<size_t>(u)] = s;
        }
    }
    return size;
}

// Pre-order ids top-down: root ids are running sums of tree sizes; a first child is its parent's id
// + 1, a next sibling the previous sibling's id + its subtree size. Fills ln[l][u] and tree offsets.
void dvt_preorder_ids(const std::vector<const i64*>& off, const std::vector<i64>& count,
                      const std::vector<std::vector<i64>>& size, const std::vector<i64*>& ln, i64* tree_off) {
    const size_t K = off.size();
    i64 next = 0;
    for (i64 t = 0; t < count[K]; ++t) {
        ln[K][t] = next;
        tree_off[t] = next;
        next += size[K][static_cast<size_t>(t)];
    }
    tree_off[count[K]] = next;
    for (size_t l = K; l >= 1; --l) {
        const i64* o = off[l - 1];
        for (i64 u = 0; u < count[l]; ++u) {
            i64 id = ln[l][u] + 1;
            for (i64 c = o[u]; c < o[u + 1]; ++c) {
                ln[l - 1][c] = id;
                id += size[l - 1][static_cast<size_t>(c)];
            }
        }
    }
}

struct DvtNodes {  // the per-node outputs, indexed by pre-order id
    i64 *parent, *level, *tree, *unit, *subtree;
};

// Level, unit, subtree size of every node; parent and tree (roots first, then inherited downwards).
void dvt_node_fields(const std::vector<const i64*>& off, const std::vector<i64>& count,
                     const std::vector<std::vector<i64>>& size, const std::vector<i64*>& ln, const DvtNodes& n) {
    const size_t K = off.size();
    for (size_t l = 0; l <= K; ++l) {
        for (i64 u = 0; u < count[l]; ++u) {
            const i64 id = ln[l][u];
            n.level[id] = static_cast<i64>(l);
            n.unit[id] = u;
            n.subtree[id] = size[l][static_cast<size_t>(u)];
            if (l == K) {
                n.parent[id] = -1;
                n.tree[id] = u;
            }
        }
    }
    for (size_t l = K; l >= 1; --l) {
        const i64* o = off[l - 1];
        for (i64 u = 0; u < count[l]; ++u) {
            const i64 id = ln[l][u];
            for (i64 c = o[u]; c < o[u + 1]; ++c) {
                n.parent[ln[l - 1][c]] = id;
                n.tree[ln[l - 1][c]] = n.tree[id];
            }
        }
    }
}

// Children CSR in pre-order of the parents.
void dvt_children(const std::vector<const i64*>& off, const std::vector<i64*>& ln, const DvtNodes& n, i64 total,
                  i64* child_off, i64* children) {
    i64 pos = 0;
    for (i64 id = 0; id < total; ++id) {
        child_off[id] = pos;
        const i64 l = n.level[id];
        if (l == 0) continue;
        const i64* o = off[static_cast<size_t>(l - 1)];
        for (i64 c = o[n.unit[id]]; c < o[n.unit[id] + 1]; ++c) children[pos++] = ln[static_cast<size_t>(l - 1)][c];
    }
    child_off[total] = pos;
}

// The DVT arrays of a batch of trees (levels validated and owned by the wrapper).
py::dict build_dvt(std::vector<Arr> levels) {
    const size_t K = levels.size();
    std::vector<i64> count(K + 1);
    count[0] = levels[0].data()[levels[0].shape(0) - 1];
    for (size_t l = 0; l < K; ++l) count[l + 1] = levels[l].shape(0) - 1;
    i64 total = 0;
    for (auto c : count) total += c;
    const i64 n_trees = count[K];

    Arr parent = new_array({total}), level = new_array({total}), tree = new_array({total}),
        unit = new_array({total}), child_off = new_array({total + 1}), subtree = new_array({total}),
        tree_off = new_array({n_trees + 1}), children = new_array({total - n_trees});
    std::vector<Arr> level_nodes;
    for (size_t l = 0; l <= K; ++l) level_nodes.push_back(new_array({count[l]}));
    std::vector<const i64*> off(K);
    for (size_t l = 0; l < K; ++l) off[l] = levels[l].data();
    std::vector<i64*> ln(K + 1);
    for (size_t l = 0; l <= K; ++l) ln[l] = level_nodes[l].mutable_data();
    const DvtNodes nodes{parent.mutable_data(), level.mutable_data(), tree.mutable_data(), unit.mutable_data(),
                         subtree.mutable_data()};
    {
        py::gil_scoped_release nogil;
        const auto size = dvt_subtree_sizes(off, count);
        dvt_preorder_ids(off, count, size, ln, tree_off.mutable_data());
        dvt_node_fields(off, count, size, ln, nodes);
        dvt_children(off, ln, nodes, total, child_off.mutable_data(), children.mutable_data());
    }
    py::dict d;
    d["parent"] = parent;
    d["level"] = level;
    d["tree"] = tree;
    d["unit"] = unit;
    d["subtree_size"] = subtree;
    d["child_offsets"] = child_off;
    d["children"] = children;
    d["tree_offsets"] = tree_off;
    py::list lnl;
    for (auto& a : level_nodes) lnl.append(a);
    d["level_nodes"] = lnl;
    return d;
}

}  // namespace

void bind_dataprep(py::module_& m) {
    m.def("pad_units", &pad_units, py::arg("tokens"), py::arg("offsets"), py::arg("width"), py::arg("pad_id"),
          py::arg("truncate"), py::arg("avx512") = true);  // avx512=false: the portable kernel (tests)
    m.def("flatten_offsets", &flatten_offsets, py::arg("levels"), py::arg("n_tokens"), py::arg("upto"));
    m.def("flatten_fast", &flatten_fast, py::arg("tokens"), py::arg("levels"), py::arg("upto"));
    m.def("greedy_join", &greedy_join, py::arg("lengths"), py::arg("budget"), py::arg("join_cost"));
    m.def("split_units", &split_units, py::arg("offsets"), py::arg("budget"));
    m.def("join_pad", &join_pad, py::arg("tokens"), py::arg("offsets"), py::arg("unit_ids"), py::arg("unit_pos0"),
          py::arg("budget"), py::arg("join_id"), py::arg("pad_id"));
    m.def("compose_offsets", &compose_offsets, py::arg("levels"));
    m.def("build_dvt", &build_dvt, py::arg("levels"));
}

}  // namespace craft
