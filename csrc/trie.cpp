// Compact trie for constrained decoding: the build (sort, then one pass in DFS pre-order into CSR
// arrays) and TrieCore, the batched state operations over those arrays (which may be memory-mapped).
// The Python twin is craft_kernels/native/trie.py (trie_build_reference and the python paths of Trie).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "bindings.h"

namespace py = pybind11;

namespace craft {
namespace {

using i64 = int64_t;
using i32 = int32_t;
using I64 = py::array_t<i64, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<i32, py::array::c_style | py::array::forcecast>;
constexpr i64 kMaxToken = (i64(1) << 31) - 1;

template <class T>
py::array_t<T> empty_array(i64 n) {
    return py::array_t<T>(static_cast<py::ssize_t>(n));
}

// Stable LSD radix sort of (key, index) pairs by the low `bits` bits of the keys, 8 bits a pass.
void radix_sort_pairs(std::vector<uint64_t>& key, std::vector<i64>& idx, int bits) {
    const size_t m = key.size();
    std::vector<uint64_t> k2(m);
    std::vector<i64> i2(m);
    for (int shift = 0; shift < bits; shift += 8) {
        size_t count[257] = {0};
        for (size_t k = 0; k < m; ++k) ++count[((key[k] >> shift) & 255) + 1];
        if (count[((key[0] >> shift) & 255) + 1] == m) continue;  // one digit value: already in order
        for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
        for (size_t k = 0; k < m; ++k) {
            const size_t dst = count[(key[k] >> shift) & 255]++;
            k2[dst] = key[k];
            i2[dst] = idx[k];
        }
        key.swap(k2);
        idx.swap(i2);
    }
}

// Stable order of the sequences, lexicographic (a prefix sorts before its extensions).
std::vector<i64> sort_sequences(const i64* f, const i64* o, i64 m) {
    std::vector<i64> order(static_cast<size_t>(m));
    std::iota(order.begin(), order.end(), i64(0));
    if (m == 0) return order;
    i64 lmax = 0, total = o[m], tmax = -1;
    for (i64 s = 0; s < m; ++s) lmax = std::max(lmax, o[s + 1] - o[s]);
    for (i64 k = 0; k < total; ++k) tmax = std::max(tmax, f[k]);
    int bits = 0;  // bits per position: token t is stored as t + 1, 0 = "sequence ended"
    while ((i64(1) << bits) < tmax + 2) ++bits;
    if (lmax * bits <= 64) {  // short sequences: pack each one into a 64-bit key
        std::vector<uint64_t> key(static_cast<size_t>(m));
        for (i64 s = 0; s < m; ++s) {
            uint64_t k = 0;
            for (i64 d = 0; d < lmax; ++d)
                k = (bits == 64 ? 0 : k << bits) | (d < o[s + 1] - o[s] ? static_cast<uint64_t>(f[o[s] + d] + 1) : 0);
            key[static_cast<size_t>(s)] = k;
        }
        radix_sort_pairs(key, order, static_cast<int>(lmax * bits));
        return order;
    }
    const i64 buckets = tmax + 2;
    // LSD radix, one stable counting sort per position (last first), when that is linear work.
    if (buckets <= (i64(1) << 20) && lmax * m <= 2 * total + m && lmax * buckets <= 8 * (total + m)) {
        std::vector<i64> tmp(static_cast<size_t>(m)), count(static_cast<size_t>(buckets) + 1);
        std::vector<i32> col(static_cast<size_t>(m));
        for (i64 d = lmax - 1; d >= 0; --d) {
            for (i64 s = 0; s < m; ++s)  // column d in input order (sequential reads)
                col[static_cast<size_t>(s)] = d < o[s + 1] - o[s] ? static_cast<i32>(f[o[s] + d] + 1) : 0;
            std::fill(count.begin(), count.end(), 0);
            for (i64 s = 0; s < m; ++s) ++count[static_cast<size_t>(col[static_cast<size_t>(s)]) + 1];
            for (i64 b = 0; b < buckets; ++b) count[static_cast<size_t>(b) + 1] += count[static_cast<size_t>(b)];
            for (i64 k = 0; k < m; ++k) {
                const i64 s = order[static_cast<size_t>(k)];
                tmp[static_cast<size_t>(count[static_cast<size_t>(col[static_cast<size_t>(s)])]++)] = s;
            }
            order.swap(tmp);
        }
        return order;
    }
    std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) {
        return std::lexicographical_compare(f + o[a], f + o[a + 1], f + o[b], f + o[b + 1]);
    });
    return order;
}

// flat (total,) tokens, offsets (M + 1,), item_ids (M,): the CSR arrays of the trie.
py::dict trie_build(I64 flat_a, I64 offsets_a, I64 item_ids) {
    // Private copies, taken with the GIL held: another thread may rewrite the caller's arrays while
    // the loops below run without it, and the copies are what was validated.
    const std::vector<i64> flat_v(flat_a.data(), flat_a.data() + flat_a.size());
    const std::vector<i64> off_v(offsets_a.data(), offsets_a.data() + offsets_a.size());
    const i64 m = static_cast<i64>(off_v.size()) - 1;
    if (flat_a.ndim() != 1 || offsets_a.ndim() != 1 || item_ids.ndim() != 1)
        throw py::value_error("trie_build: flat, offsets and item_ids must be 1-d");
    if (m < 0 || item_ids.shape(0) != m || off_v[0] != 0 || static_cast<i64>(flat_v.size()) != off_v[static_cast<size_t>(m)])
        throw py::value_error("trie_build: inconsistent flat/offsets/item_ids");
    const i64 *f = flat_v.data(), *o = off_v.data(), *ids = item_ids.data();
    for (i64 s = 0; s < m; ++s)
        if (o[s + 1] < o[s]) throw py::value_error("trie_build: offsets must be non-decreasing");
    for (i64 k = 0; k < o[m]; ++k)
        if (f[k] < 0 || f[k] > kMaxToken)
            throw py::value_error("sequences: tokens must be in [0, 2**31), found " + std::to_string(f[k]));
    const std::vector<i64> ids_v(ids, ids + m);  // read after the GIL is released
    std::vector<i64> order;
    std::vector<i32> parent{-1}, token{-1};
    std::vector<i64> item_node(static_cast<size_t>(m));
    {
        py::gil_scoped_release nogil;
        order = sort_sequences(f, o, m);
        std::vector<i32> sf(static_cast<size_t>(o[m]));  // the sequences in sorted order, contiguous
        std::vector<i64> so(static_cast<size_t>(m) + 1, 0);
        for (i64 k = 0; k < m; ++k) {
            const i64 s = order[static_cast<size_t>(k)];
            so[static_cast<size_t>(k) + 1] = so[static_cast<size_t>(k)] + (o[s + 1] - o[s]);
            std::copy(f + o[s], f + o[s + 1], sf.begin() + so[static_cast<size_t>(k)]);
        }
        parent.reserve(static_cast<size_t>(o[m]) + 1);
        token.reserve(static_cast<size_t>(o[m]) + 1);
        std::vector<i32> path{0};  // node ids along the previous sequence
        for (i64 k = 0; k < m; ++k) {
            const i32* cur = sf.data() + so[static_cast<size_t>(k)];
            const i64 len = so[static_cast<size_t>(k) + 1] - so[static_cast<size_t>(k)];
            i64 lcp = 0;
            if (k > 0) {
                const i32* prv = sf.data() + so[static_cast<size_t>(k) - 1];
                const i64 plen = so[static_cast<size_t>(k)] - so[static_cast<size_t>(k) - 1];
                while (lcp < len && lcp < plen && cur[lcp] == prv[lcp]) ++lcp;
            }
            path.resize(static_cast<size_t>(lcp + 1));
            for (i64 d = lcp; d < len; ++d) {
                parent.push_back(path.back());
                token.push_back(cur[d]);
                path.push_back(static_cast<i32>(parent.size() - 1));
            }
            item_node[static_cast<size_t>(k)] = path[static_cast<size_t>(len)];
        }
    }
    const i64 n = static_cast<i64>(parent.size());
    if (n > kMaxToken) throw py::value_error("sequences: more than 2**31 trie nodes");
    auto child_off = empty_array<i64>(n + 1), item_off = empty_array<i64>(n + 1), items = empty_array<i64>(m);
    auto child_tok = empty_array<i32>(n - 1), child_node = empty_array<i32>(n - 1), sub_end = empty_array<i32>(n);
    {
        py::gil_scoped_release nogil;
        i64 *co = child_off.mutable_data(), *io = item_off.mutable_data(), *it = items.mutable_data();
        i32 *ct = child_tok.mutable_data(), *cn = child_node.mutable_data(), *se = sub_end.mutable_data();
        std::fill(co, co + n + 1, 0);
        std::fill(io, io + n + 1, 0);
        for (i64 v = 1; v < n; ++v) ++co[parent[static_cast<size_t>(v)] + 1];
        for (i64 v = 0; v < n; ++v) co[v + 1] += co[v];
        std::vector<i64> fill(co, co + n);
        for (i64 v = 1; v < n; ++v) {  // pre-order creates siblings in token order
            const i64 slot = fill[static_cast<size_t>(parent[static_cast<size_t>(v)])]++;
            ct[slot] = token[static_cast<size_t>(v)];
            cn[slot] = static_cast<i32>(v);
        }
        // item nodes are non-decreasing in sorted order: items are already grouped by node
        for (i64 k = 0; k < m; ++k) {
            ++io[item_node[static_cast<size_t>(k)] + 1];
            it[k] = ids_v[static_cast<size_t>(order[static_cast<size_t>(k)])];
        }
        for (i64 v = 0; v < n; ++v) io[v + 1] += io[v];
        for (i64 v = n - 1; v >= 0; --v) {  // subtree of v = nodes [v, subtree_end[v])
            se[v] = co[v + 1] > co[v] ? se[cn[co[v + 1] - 1]] : static_cast<i32>(v + 1);
        }
    }
    py::dict d;
    d["child_offsets"] = child_off;
    d["child_tokens"] = child_tok;
    d["child_nodes"] = child_node;
    d["item_offsets"] = item_off;
    d["items"] = items;
    d["subtree_end"] = sub_end;
    return d;
}

std::string range_msg(i64 v, i64 n) {
    return "states: node ids must be in [-1, " + std::to_string(n) + "), got " + std::to_string(v) +
           "; use root_states/advance to make them";
}

// The batched operations; holds the arrays (NumPy or memory-mapped) alive.
class TrieCore {
   public:
    TrieCore(I64 child_off, I32 child_tok, I32 child_node, I64 item_off, I64 items, I32 sub_end, bool check)
        : co_a_(child_off), ct_a_(child_tok), cn_a_(child_node), io_a_(item_off), it_a_(items), se_a_(sub_end) {
        n_ = co_a_.shape(0) - 1;
        co_ = co_a_.data();
        ct_ = ct_a_.data();
        cn_ = cn_a_.data();
        io_ = io_a_.data();
        it_ = it_a_.data();
        se_ = se_a_.data();
        if (check) {
            validate();
        } else if (n_ < 1 || ct_a_.shape(0) != n_ - 1 || cn_a_.shape(0) != n_ - 1 || io_a_.shape(0) != n_ + 1 ||
                   se_a_.shape(0) != n_ || io_[n_] != it_a_.shape(0)) {
            throw py::value_error("trie arrays: lengths disagree");
        }
        build_lookup_tables();
    }

    i64 n_nodes() const { return n_; }

    // Every method copies the states/offsets it indexes with while it holds the GIL and checks the
    // copy, so a caller rewriting its arrays from another thread cannot make a lookup read out of
    // bounds (it can only change which values were looked up).
    I64 advance(I64 states, I64 tokens) const {
        const std::vector<i64> st = checked_states(states);
        const i64 b = static_cast<i64>(st.size());
        if (tokens.ndim() != 1 || tokens.shape(0) != b) throw py::value_error("tokens: expected one token per state");
        const std::vector<i64> tk(tokens.data(), tokens.data() + b);
        I64 out(b);
        i64* o = out.mutable_data();
        py::gil_scoped_release nogil;
        for (i64 r = 0; r < b; ++r) o[r] = child(st[r], tk[r]);
        return out;
    }

    // mask (B, V) bool/uint8: allowed entries set to `value` (the rest untouched).
    void set_allowed(I64 states, py::array mask, bool value) const {
        const std::vector<i64> st = checked_states(states);
        const i64 b = static_cast<i64>(st.size());
        if (mask.ndim() != 2 || mask.shape(0) != b || mask.itemsize() != 1 || !mask.writeable() ||
            (b > 0 && mask.shape(1) > 1 && mask.strides(1) != 1))
            throw py::value_error("mask: expected a writeable (B, V) 1-byte array with unit column stride");
        if (b == 0 || mask.shape(1) == 0) return;  // nothing to write (NumPy may report zero strides)
        const i64 v = mask.shape(1), rs = mask.strides(0);
        auto* m = static_cast<uint8_t*>(mask.mutable_data());
        py::gil_scoped_release nogil;
        for (i64 r = 0; r < b; ++r) {
            if (st[r] < 0) continue;
            uint8_t* row = m + r * rs;
            for (i64 e = co_[st[r]]; e < co_[st[r] + 1] && ct_[e] < v; ++e) row[ct_[e]] = value;
        }
    }

    // Number of allowed tokens below vocab_size per state (children are sorted by token).
    I64 counts(I64 states, i64 vocab) const {
        const std::vector<i64> st = checked_states(states);
        const i64 b = static_cast<i64>(st.size());
        I64 out(b);
        i64* o = out.mutable_data();
        for (i64 r = 0; r < b; ++r) o[r] = st[r] < 0 ? 0 : lower(st[r], vocab) - co_[st[r]];
        return out;
    }

    // logits (B, V) of any 2/4/8-byte float dtype viewed as ints: every disallowed entry becomes
    // `neg_inf` (its bit pattern). Rows with keep[r] != 0 are left alone; rows with eos_row[r] != 0
    // keep only `eos`. A masked row whose allowed entries were all -inf already gets them set to 0
    // (a uniform choice among the allowed tokens), so no masked row is left all -inf.
    void mask_logits(I64 states, py::array logits, uint64_t neg_inf, I64 keep_a, I64 eos_row_a, i64 eos) const {
        const std::vector<i64> st = checked_states(states);
        const i64 b = static_cast<i64>(st.size());
        const i64 isz = logits.itemsize();
        if (logits.ndim() != 2 || logits.shape(0) != b || !logits.writeable() || (isz != 2 && isz != 4 && isz != 8) ||
            (b > 0 && logits.shape(1) > 1 && logits.strides(1) != isz) || keep_a.ndim() != 1 ||
            keep_a.shape(0) != b || eos_row_a.ndim() != 1 || eos_row_a.shape(0) != b)
            throw py::value_error("logits: expected a writeable (B, V) array with unit column stride");
        const i64 v = logits.shape(1), rs = logits.strides(0);
        if (b == 0) return;
        if (eos < 0 || eos >= v) throw py::value_error("eos_id: outside the vocabulary");
        auto* base = static_cast<char*>(logits.mutable_data());
        const std::vector<i64> kp(keep_a.data(), keep_a.data() + b), er(eos_row_a.data(), eos_row_a.data() + b);
        py::gil_scoped_release nogil;
        for (i64 r = 0; r < b; ++r) {
            if (kp[r]) continue;
            char* row = base + r * rs;
            const i32* lo = &ct_[0];
            const i32* hi = lo;
            const i32 one = static_cast<i32>(eos);
            if (er[r]) {
                lo = &one;
                hi = lo + 1;
            } else if (st[r] >= 0) {
                lo = ct_ + co_[st[r]];
                hi = ct_ + lower(st[r], v);
            }
            i64 next = 0;  // fill the gaps between allowed tokens
            bool all_neg_inf = true;
            for (const i32* p = lo; p != hi; ++p) {
                fill(row, next, *p, isz, neg_inf);
                all_neg_inf = all_neg_inf && get(row, *p, isz) == neg_inf;
                next = static_cast<i64>(*p) + 1;
            }
            fill(row, next, v, isz, neg_inf);
            if (all_neg_inf)  // force the constraint: the allowed tokens become equally likely
                for (const i32* p = lo; p != hi; ++p) fill(row, *p, static_cast<i64>(*p) + 1, isz, 0);
        }
    }

    py::list allowed(I64 states) const {
        const std::vector<i64> st = checked_states(states);
        const i64 b = static_cast<i64>(st.size());
        py::list out(static_cast<size_t>(b));
        for (i64 r = 0; r < b; ++r) {
            const i64 lo = st[r] < 0 ? 0 : co_[st[r]], hi = st[r] < 0 ? 0 : co_[st[r] + 1];
            I64 a(hi - lo);
            std::copy(ct_ + lo, ct_ + hi, a.mutable_data());
            out[static_cast<size_t>(r)] = a;
        }
        return out;
    }

    py::array_t<bool> is_terminal(I64 states) const {
        const std::vector<i64> st = checked_states(states);
        const i64 b = static_cast<i64>(st.size());
        py::array_t<bool> out(b);
        bool* o = out.mutable_data();
        for (i64 r = 0; r < b; ++r) o[r] = st[r] >= 0 && io_[st[r] + 1] > io_[st[r]];
        return out;
    }

    // Follows each sequence from the root: (node reached, tokens consumed) per sequence.
    py::tuple walk(I64 flat, I64 offsets) const {
        const std::vector<i64> o = checked_offsets(offsets, flat);
        const i64 q = static_cast<i64>(o.size()) - 1;
        const std::vector<i64> f(flat.data(), flat.data() + flat.size());
        I64 nodes(q), used(q);
        i64 *nd = nodes.mutable_data(), *us = used.mutable_data();
        {
            py::gil_scoped_release nogil;
            walk_many(f.data(), o.data(), q, nd, us);
        }
        return py::make_tuple(nodes, used);
    }

    // Items whose sequence starts with each prefix (CSR: offsets (Q + 1,), items), at most `limit` each
    // (limit < 0: all); `exact`: only items whose sequence equals the prefix.
    py::tuple items_under(I64 flat, I64 offsets, i64 limit, bool exact) const {
        const std::vector<i64> o = checked_offsets(offsets, flat);
        const i64 q = static_cast<i64>(o.size()) - 1;
        const std::vector<i64> f(flat.data(), flat.data() + flat.size());
        std::vector<i64> lo(static_cast<size_t>(q)), hi(static_cast<size_t>(q));
        I64 out_off(q + 1);
        i64* oo = out_off.mutable_data();
        {
            py::gil_scoped_release nogil;
            ranges_many(f.data(), o.data(), q, limit, exact, lo.data(), hi.data());
            oo[0] = 0;
            for (i64 s = 0; s < q; ++s) oo[s + 1] = oo[s] + (hi[static_cast<size_t>(s)] - lo[static_cast<size_t>(s)]);
        }
        I64 items(oo[q]);
        i64* it = items.mutable_data();
        for (i64 s = 0; s < q; ++s) {
            if (s + 8 < q) __builtin_prefetch(it_ + lo[static_cast<size_t>(s) + 8]);
            std::copy(it_ + lo[static_cast<size_t>(s)], it_ + hi[static_cast<size_t>(s)], it + oo[s]);
        }
        return py::make_tuple(out_off, items);
    }

    // One prefix: the items under it (or ending exactly at it), at most `limit` (< 0: all).
    I64 items_one(I64 seq, i64 limit, bool exact) const {
        if (seq.ndim() != 1) throw py::value_error("seq: expected a 1-d array of tokens");
        i64 a, z;
        range_under(seq.data(), seq.shape(0), limit, exact, a, z);  // GIL held: seq cannot change
        I64 out(z - a);
        std::copy(it_ + a, it_ + z, out.mutable_data());
        return out;
    }

    // The single-lookup fast path: `seq` a tuple or list of Python ints, or a 1-d C-contiguous int64
    // NumPy array (a row of a 2-d one); the item ids under it (exact: ending at it) as int64, or None for any
    // other input (the wrapper then converts and checks it the general way). Every token is read
    // once, with the GIL held (into a local copy), and any int64 value is a valid query (unknown tokens match nothing).
    py::object prefix_items(py::handle seq, bool exact) const {
        PyObject* r = prefix_items_raw(seq.ptr(), exact);
        if (!r) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(r);
    }

    // prefix_items without pybind11 (new reference; nullptr with a Python error set; Py_None when the
    // input takes the general path). What the builtin functions of fast_lookup call.
    PyObject* prefix_items_raw(PyObject* o, bool exact) const {
        i64 small[32];
        std::vector<i64> big;
        const i64* p = nullptr;
        i64 len = 0;
        if (PyTuple_CheckExact(o) || PyList_CheckExact(o)) {
            len = PySequence_Fast_GET_SIZE(o);
            i64* dst = small;
            if (len > 32) {
                big.resize(static_cast<size_t>(len));
                dst = big.data();
            }
            PyObject** xs = PySequence_Fast_ITEMS(o);
            for (i64 k = 0; k < len; ++k) {
                if (!PyLong_CheckExact(xs[k])) return Py_NewRef(Py_None);  // bool, NumPy scalar, float: the general way
                int overflow = 0;
                const long long v = PyLong_AsLongLongAndOverflow(xs[k], &overflow);
                if (overflow) return Py_NewRef(Py_None);  // the wrapper raises the int64 error
                dst[k] = static_cast<i64>(v);
            }
            p = dst;
        } else if (const i64* row = nullptr; int64_row(o, row, len)) {  // copied under the GIL
            i64* dst = small;
            if (len > 32) {
                big.resize(static_cast<size_t>(len));
                dst = big.data();
            }
            if (len) std::memcpy(dst, row, static_cast<size_t>(len) * 8);
            p = dst;
        } else {
            return Py_NewRef(Py_None);
        }
        i64 a, z;
        range_under(p, len, -1, exact, a, z);
        return new_items(a, z);
    }

   private:
    // A new int64 (z - a,) array holding items_[a:z] (new reference, or nullptr with the error set).
    PyObject* new_items(i64 a, i64 z) const {
        auto& api = py::detail::npy_api::get();
        PyObject* descr = api.PyArray_DescrFromType_(py::detail::npy_api::NPY_INT64_);
        if (!descr) return nullptr;
        const Py_intptr_t dim = static_cast<Py_intptr_t>(z - a);
        PyObject* out = api.PyArray_NewFromDescr_(api.PyArray_Type_, descr, 1, &dim, nullptr, nullptr, 0, nullptr);
        if (!out) return nullptr;
        if (dim) std::memcpy(py::detail::array_proxy(out)->data, it_ + a, static_cast<size_t>(dim) * 8);
        return out;
    }

   public:
    // lookup / items_with_prefix as builtin functions bound to this core (no pybind11 dispatch, no
    // Python frame): ``fn(seq)`` / ``fn(prefix, limit=None)``. Inputs other than a tuple or list of
    // ints or an int64 row, and any limit, go to ``fallback(core, seq, limit, exact)`` (the checked
    // general path). The function holds the core alive.
    static py::object fast_lookup(py::object core, bool exact, py::object fallback);

   private:
    static void fill(char* row, i64 from, i64 to, i64 isz, uint64_t bits) {
        if (isz == 4) {
            auto* p = reinterpret_cast<uint32_t*>(row);
            std::fill(p + from, p + to, static_cast<uint32_t>(bits));
        } else if (isz == 2) {
            auto* p = reinterpret_cast<uint16_t*>(row);
            std::fill(p + from, p + to, static_cast<uint16_t>(bits));
        } else {
            auto* p = reinterpret_cast<uint64_t*>(row);
            std::fill(p + from, p + to, bits);
        }
    }

    static uint64_t get(const char* row, i64 at, i64 isz) {
        if (isz == 4) return reinterpret_cast<const uint32_t*>(row)[at];
        if (isz == 2) return reinterpret_cast<const uint16_t*>(row)[at];
        return reinterpret_cast<const uint64_t*>(row)[at];
    }

    // [a, z): the slice of items under seq (exact: ending at it), at most `limit` long (< 0: all).
    void range_under(const i64* seq, i64 len, i64 limit, bool exact, i64& a, i64& z) const {
        i64 v, k;
        walk_one(seq, len, v, k);
        finish_range(k == len ? v : -1, limit, exact, a, z);
    }

    void finish_range(i64 v, i64 limit, bool exact, i64& a, i64& z) const {
        a = z = 0;
        if (v < 0) return;
        if (fast_) {
            a = nodes_[v].item_begin;
            z = exact ? nodes_[v + 1].item_begin : nodes_[v].item_subtree_end;
        } else {
            a = io_[v];
            z = exact ? io_[v + 1] : io_[se_[v]];
        }
        if (limit >= 0 && z - a > limit) z = a + limit;  // never a + limit: it may overflow
    }

    i64 lower(i64 v, i64 tok) const {  // first edge of v with token >= tok
        return std::lower_bound(ct_ + co_[v], ct_ + co_[v + 1], tok,
                                [](i32 a, i64 t) { return static_cast<i64>(a) < t; }) -
               ct_;
    }

    i64 child(i64 v, i64 tok) const {
        if (v < 0) return -1;
        if (fast_ && nodes_[v].dense_off >= 0)
            return static_cast<uint64_t>(tok) < static_cast<uint64_t>(nodes_[v].dense_span)
                       ? dense_[static_cast<size_t>(nodes_[v].dense_off + tok)]
                       : -1;
        const i64 e = lower(v, tok);
        return e < co_[v + 1] && ct_[e] == tok ? cn_[e] : -1;
    }

    // walk_one for q sequences (flat f, offsets o), kGroup of them at a time in lock step: each lane
    // prefetches the line it reads next before the group moves on, so the cache misses of a group
    // overlap instead of queueing one after another. A trie evicted from the caches (by the garbage
    // collector, or any other work between lookups) is what this is for.
    static constexpr int kGroup = 32;
    void walk_many(const i64* f, const i64* o, i64 q, i64* node, i64* used) const {
        for (i64 g0 = 0; g0 < q; g0 += kGroup) {
            const int g = static_cast<int>(std::min<i64>(kGroup, q - g0));
            i64 v[kGroup], k[kGroup], lo[kGroup], n[kGroup], tok[kGroup];
            int live[kGroup], sparse[kGroup];
            int nl = 0;
            for (int i = 0; i < g; ++i) {
                v[i] = n_ > 0 ? 0 : -1;
                k[i] = 0;
                if (v[i] >= 0 && o[g0 + i + 1] > o[g0 + i]) live[nl++] = i;
            }
            while (nl > 0) {
                int ns = 0;
                for (int j = 0; j < nl; ++j) {  // the node's record (prefetched), then the line of its child
                    const int i = live[j];
                    tok[i] = f[o[g0 + i] + k[i]];
                    if (fast_ && nodes_[v[i]].dense_off >= 0) {
                        const Node& r = nodes_[v[i]];
                        lo[i] = static_cast<uint64_t>(tok[i]) < static_cast<uint64_t>(r.dense_span) ? r.dense_off + tok[i] : -1;
                        if (lo[i] >= 0) __builtin_prefetch(dense_.data() + lo[i]);
                    } else {
                        lo[i] = co_[v[i]];
                        n[i] = co_[v[i] + 1] - lo[i];
                        __builtin_prefetch(ct_ + lo[i] + n[i] / 2);
                        sparse[ns++] = i;
                    }
                }
                for (bool any = ns > 0; any;) {  // lower_bound over the sparse lanes, in lock step
                    any = false;
                    for (int j = 0; j < ns; ++j) {
                        const int i = sparse[j];
                        if (n[i] <= 0) continue;
                        const i64 half = n[i] / 2;
                        if (static_cast<i64>(ct_[lo[i] + half]) < tok[i]) {
                            lo[i] += half + 1;
                            n[i] -= half + 1;
                        } else {
                            n[i] = half;
                        }
                        if (n[i] > 0) {
                            __builtin_prefetch(ct_ + lo[i] + n[i] / 2);
                            any = true;
                        }
                    }
                }
                for (int j = 0; j < ns; ++j) {
                    const int i = sparse[j];
                    if (lo[i] < co_[v[i] + 1] && static_cast<i64>(ct_[lo[i]]) == tok[i]) {
                        __builtin_prefetch(cn_ + lo[i]);
                        n[i] = 1;  // marks "the child is cn_[lo]"
                    } else {
                        lo[i] = -1;
                    }
                }
                int m = 0;
                for (int j = 0; j < nl; ++j) {
                    const int i = live[j];
                    if (lo[i] < 0) continue;  // the token leaves the trie: the walk stops at v
                    const bool dense = fast_ && nodes_[v[i]].dense_off >= 0;
                    const i64 c = dense ? dense_[static_cast<size_t>(lo[i])] : cn_[lo[i]];
                    if (c < 0) continue;
                    v[i] = c;
                    ++k[i];
                    if (fast_) __builtin_prefetch(nodes_.data() + c);
                    else __builtin_prefetch(co_ + c);
                    if (o[g0 + i] + k[i] < o[g0 + i + 1]) live[m++] = i;
                }
                nl = m;
            }
            for (int i = 0; i < g; ++i) {
                node[g0 + i] = v[i];
                used[g0 + i] = k[i];
            }
        }
    }

    // range_under for q sequences: walk_many (which leaves each lane's last node record prefetched).
    void ranges_many(const i64* f, const i64* o, i64 q, i64 limit, bool exact, i64* a, i64* z) const {
        for (i64 g0 = 0; g0 < q; g0 += kGroup) {
            const i64 g = std::min<i64>(kGroup, q - g0);
            i64 node[kGroup], used[kGroup];
            walk_many(f, o + g0, g, node, used);
            for (i64 i = 0; i < g; ++i) {
                const i64 s = g0 + i;
                finish_range(used[i] == o[s + 1] - o[s] ? node[i] : -1, limit, exact, a[s], z[s]);
            }
        }
    }

    void walk_one(const i64* seq, i64 len, i64& node, i64& used) const {
        i64 v = n_ > 0 ? 0 : -1, k = 0;
        for (; k < len && v >= 0; ++k) {
            const i64 c = child(v, seq[k]);
            if (c < 0) break;
            v = c;
        }
        node = v;
        used = k;
    }

    std::vector<i64> checked_states(const I64& states) const {
        if (states.ndim() != 1) throw py::value_error("states: expected a 1-d array of node ids");
        std::vector<i64> st(states.data(), states.data() + states.shape(0));
        for (const i64 s : st)
            if (s < -1 || s >= n_) throw py::value_error(range_msg(s, n_));
        return st;
    }

    static std::vector<i64> checked_offsets(const I64& offsets, const I64& flat) {
        if (offsets.ndim() != 1 || flat.ndim() != 1) throw py::value_error("sequences: expected 1-d flat and offsets");
        std::vector<i64> o(offsets.data(), offsets.data() + offsets.shape(0));
        const i64 q = static_cast<i64>(o.size()) - 1;
        if (q < 0 || o[0] != 0 || o[static_cast<size_t>(q)] != flat.shape(0))
            throw py::value_error("sequences: inconsistent offsets");
        for (i64 s = 0; s < q; ++s)
            if (o[s + 1] < o[s]) throw py::value_error("sequences: offsets must be non-decreasing");
        return o;
    }

    // A loaded file must not be able to crash the operations: check every index once.
    void validate() const {
        auto bad = [](const std::string& what) { throw py::value_error("trie arrays are corrupt: " + what); };
        if (n_ < 1 || ct_a_.shape(0) != n_ - 1 || cn_a_.shape(0) != n_ - 1 || io_a_.shape(0) != n_ + 1 ||
            se_a_.shape(0) != n_)
            bad("array lengths disagree");
        if (co_[0] != 0 || co_[n_] != n_ - 1 || io_[0] != 0 || io_[n_] != it_a_.shape(0)) bad("offsets do not span");
        for (i64 v = 0; v < n_; ++v) {
            if (co_[v + 1] < co_[v] || io_[v + 1] < io_[v]) bad("offsets decrease");
            if (se_[v] <= v || se_[v] > n_) bad("subtree_end out of range");
            for (i64 e = co_[v]; e < co_[v + 1]; ++e) {
                if (cn_[e] <= v || cn_[e] >= n_) bad("child node out of range");
                if (e > co_[v] && ct_[e] <= ct_[e - 1]) bad("children not sorted");
                if (ct_[e] < 0) bad("negative token");
            }
        }
    }

    // Lookup tables derived from the arrays (so a lookup touches fewer cache lines): one 16-byte
    // record per node, and for a node whose children cover most of [0, max token] (the levels of
    // semantic IDs: every code of a codebook) its child ids indexed by token (-1: none), so a step
    // reads the record and one entry instead of binary-searching the child tokens.
    struct Node {
        i32 dense_off;  // into dense_, or -1 (binary search over child_tokens)
        i32 dense_span;  // tokens [0, dense_span) have an entry
        i32 item_begin;  // item_offsets[v]
        i32 item_subtree_end;  // item_offsets[subtree_end[v]]
    };
    void build_lookup_tables() {
        fast_ = false;
        if (n_ + 1 > kMaxToken || io_[n_] > kMaxToken) return;  // 32-bit records: the plain arrays only
        nodes_.resize(static_cast<size_t>(n_) + 1);
        i64 pool = 0;
        for (i64 v = 0; v < n_; ++v) {
            const i64 c = co_[v + 1] - co_[v];
            const i64 span = c > 0 ? static_cast<i64>(ct_[co_[v + 1] - 1]) + 1 : 0;
            Node& r = nodes_[static_cast<size_t>(v)];
            r.dense_off = -1;
            r.dense_span = 0;
            if (c >= kDenseMin && span <= 2 * c && pool + span <= kMaxToken) {
                r.dense_off = static_cast<i32>(pool);
                r.dense_span = static_cast<i32>(span);
                pool += span;
            }
            r.item_begin = static_cast<i32>(io_[v]);
            r.item_subtree_end = static_cast<i32>(io_[se_[v]]);
        }
        nodes_[static_cast<size_t>(n_)] = Node{-1, 0, static_cast<i32>(io_[n_]), static_cast<i32>(io_[n_])};
        dense_.assign(static_cast<size_t>(pool), -1);
        for (i64 v = 0; v < n_; ++v) {
            const Node& r = nodes_[static_cast<size_t>(v)];
            if (r.dense_off < 0) continue;
            for (i64 e = co_[v]; e < co_[v + 1]; ++e) dense_[static_cast<size_t>(r.dense_off + ct_[e])] = cn_[e];
        }
        fast_ = true;
    }
    static constexpr i64 kDenseMin = 16;
    bool fast_ = false;
    std::vector<Node> nodes_;
    std::vector<i32> dense_;

    I64 co_a_;
    I32 ct_a_, cn_a_;
    I64 io_a_, it_a_;
    I32 se_a_;
    i64 n_ = 0;
    const i64 *co_ = nullptr, *io_ = nullptr, *it_ = nullptr;
    const i32 *ct_ = nullptr, *cn_ = nullptr, *se_ = nullptr;
};

struct FastLookup {
    PyObject* core_obj;
    const TrieCore* core;
    PyObject* fallback;
    bool exact;
};
constexpr const char* kFastName = "craft.trie.fast_lookup";

void fast_lookup_free(PyObject* cap) {
    auto* c = static_cast<FastLookup*>(PyCapsule_GetPointer(cap, kFastName));
    if (!c) return;
    Py_XDECREF(c->core_obj);
    Py_XDECREF(c->fallback);
    delete c;
}

PyObject* fast_lookup_call(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    auto* c = static_cast<FastLookup*>(PyCapsule_GetPointer(self, kFastName));
    if (!c) return nullptr;
    const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject* seq = nullptr;
    PyObject* limit = Py_None;
    const char* name = c->exact ? "seq" : "prefix";
    for (Py_ssize_t k = 0; k < nkw; ++k) {
        PyObject* key = PyTuple_GET_ITEM(kwnames, k);
        PyObject* val = args[nargs + k];
        if (PyUnicode_CompareWithASCIIString(key, name) == 0 && !seq && nargs == 0) {
            seq = val;
        } else if (!c->exact && PyUnicode_CompareWithASCIIString(key, "limit") == 0 && nargs < 2) {
            limit = val;
        } else {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R",
                         c->exact ? "lookup" : "items_with_prefix", key);
            return nullptr;
        }
    }
    if (nargs >= 1) seq = args[0];
    if (nargs == 2 && !c->exact) limit = args[1];
    if (!seq || nargs > (c->exact ? 1 : 2)) {
        PyErr_Format(PyExc_TypeError, c->exact ? "lookup(seq): expected one sequence of tokens"
                                                : "items_with_prefix(prefix, limit=None): expected a prefix and an optional limit");
        return nullptr;
    }
    if (limit == Py_None) {
        PyObject* r;
        try {
            r = c->core->prefix_items_raw(seq, c->exact);
        } catch (const std::exception& e) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
            return nullptr;
        }
        if (r != Py_None) return r;
        Py_DECREF(r);
    }
    PyObject* fargs[4] = {c->core_obj, seq, limit, c->exact ? Py_True : Py_False};
    return PyObject_Vectorcall(c->fallback, fargs, 4, nullptr);
}

PyMethodDef kLookupDef = {"lookup", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_lookup_call)),
                          METH_FASTCALL | METH_KEYWORDS, "lookup(seq) -> int64 ids of the items whose sequence is seq"};
PyMethodDef kPrefixDef = {"items_with_prefix",
                          reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_lookup_call)),
                          METH_FASTCALL | METH_KEYWORDS,
                          "items_with_prefix(prefix, limit=None) -> int64 ids of the items under prefix"};

py::object TrieCore::fast_lookup(py::object core, bool exact, py::object fallback) {
    auto* c = new FastLookup{core.ptr(), core.cast<const TrieCore*>(), fallback.ptr(), exact};
    Py_INCREF(c->core_obj);
    Py_INCREF(c->fallback);
    PyObject* cap = PyCapsule_New(c, kFastName, &fast_lookup_free);
    if (!cap) {
        Py_DECREF(c->core_obj);
        Py_DECREF(c->fallback);
        delete c;
        throw py::error_already_set();
    }
    PyObject* fn = PyCFunction_NewEx(exact ? &kLookupDef : &kPrefixDef, cap, nullptr);
    Py_DECREF(cap);
    if (!fn) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(fn);
}

}  // namespace

void bind_trie(py::module_& m) {
    m.def("trie_build", &trie_build, py::arg("flat"), py::arg("offsets"), py::arg("item_ids"));
    py::class_<TrieCore>(m, "TrieCore")
        .def(py::init<I64, I32, I32, I64, I64, I32, bool>())
        .def_property_readonly("n_nodes", &TrieCore::n_nodes)
        .def("advance", &TrieCore::advance)
        .def("set_allowed", &TrieCore::set_allowed)
        .def("counts", &TrieCore::counts)
        .def("mask_logits", &TrieCore::mask_logits)
        .def("allowed", &TrieCore::allowed)
        .def("is_terminal", &TrieCore::is_terminal)
        .def("walk", &TrieCore::walk)
        .def("items_under", &TrieCore::items_under)
        .def("items_one", &TrieCore::items_one)
        .def("prefix_items", &TrieCore::prefix_items)
        .def_static("fast_lookup", &TrieCore::fast_lookup);
}

}  // namespace craft
