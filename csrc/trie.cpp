// Compact trie for constrained decoding: build (CSR arrays, nodes in DFS pre-order) and batched
// state operations. Stateless functions over the arrays held by craft_kernels/native/trie.py.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "bindings.h"

namespace py = pybind11;
using i64 = int64_t;
using Arr = py::array_t<i64, py::array::c_style | py::array::forcecast>;

namespace craft {
namespace {

Arr to_arr(const std::vector<i64>& v) {
    Arr a({static_cast<py::ssize_t>(v.size())});
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

// flat/offsets: the sequences (CSR); item_ids per sequence. Returns the CSR arrays.
py::dict trie_build(Arr flat, Arr offsets, Arr item_ids) {
    const i64 m = offsets.shape(0) - 1;
    const i64 *f = flat.data(), *o = offsets.data(), *ids = item_ids.data();
    std::vector<i64> parent{-1}, token{-1}, depth{0}, items_node, order(static_cast<size_t>(m));
    {
        py::gil_scoped_release nogil;
        std::iota(order.begin(), order.end(), i64(0));
        std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) {
            return std::lexicographical_compare(f + o[a], f + o[a + 1], f + o[b], f + o[b + 1]);
        });
        std::vector<i64> path{0};  // node ids along the previous sequence
        i64 prev = -1;
        items_node.resize(static_cast<size_t>(m));
        for (i64 k = 0; k < m; ++k) {
            const i64 s = order[k];
            const i64 len = o[s + 1] - o[s];
            i64 lcp = 0;
            if (prev >= 0) {
                const i64 plen = o[prev + 1] - o[prev];
                while (lcp < len && lcp < plen && f[o[s] + lcp] == f[o[prev] + lcp]) ++lcp;
            }
            path.resize(static_cast<size_t>(lcp + 1));
            for (i64 d = lcp; d < len; ++d) {
                parent.push_back(path.back());
                token.push_back(f[o[s] + d]);
                depth.push_back(d + 1);
                path.push_back(static_cast<i64>(parent.size()) - 1);
            }
            items_node[k] = path[static_cast<size_t>(len)];
            prev = s;
        }
    }
    const i64 n = static_cast<i64>(parent.size());
    std::vector<i64> child_off(static_cast<size_t>(n + 1), 0), child_tok(static_cast<size_t>(n - 1)),
        child_node(static_cast<size_t>(n - 1)), item_off(static_cast<size_t>(n + 1), 0), items(static_cast<size_t>(m)),
        subtree_end(static_cast<size_t>(n));
    {
        py::gil_scoped_release nogil;
        for (i64 v = 1; v < n; ++v) ++child_off[parent[v] + 1];
        for (i64 v = 0; v < n; ++v) child_off[v + 1] += child_off[v];
        std::vector<i64> fill(child_off.begin(), child_off.end() - 1);
        for (i64 v = 1; v < n; ++v) {  // pre-order visits siblings in token order
            const i64 slot = fill[parent[v]]++;
            child_tok[slot] = token[v];
            child_node[slot] = v;
        }
        for (i64 k = 0; k < m; ++k) ++item_off[items_node[k] + 1];
        for (i64 v = 0; v < n; ++v) item_off[v + 1] += item_off[v];
        std::vector<i64> ifill(item_off.begin(), item_off.end() - 1);
        for (i64 k = 0; k < m; ++k) items[ifill[items_node[k]]++] = ids[order[k]];
        // subtree of v = nodes [v, subtree_end[v]) in pre-order
        for (i64 v = n - 1; v >= 0; --v) {
            const i64 last = child_off[v + 1] > child_off[v] ? child_node[child_off[v + 1] - 1] : -1;
            subtree_end[v] = last < 0 ? v + 1 : subtree_end[last];
        }
    }
    py::dict d;
    d["child_offsets"] = to_arr(child_off);
    d["child_tokens"] = to_arr(child_tok);
    d["child_nodes"] = to_arr(child_node);
    d["item_offsets"] = to_arr(item_off);
    d["items"] = to_arr(items);
    d["subtree_end"] = to_arr(subtree_end);
    d["depth"] = to_arr(depth);
    return d;
}

void trie_fill_mask(Arr child_off, Arr child_tok, Arr states, py::array_t<bool> mask) {
    const i64 b = states.shape(0), v = mask.shape(1);
    const i64 *co = child_off.data(), *ct = child_tok.data(), *st = states.data();
    bool* m = mask.mutable_data();
    py::gil_scoped_release nogil;
    for (i64 r = 0; r < b; ++r) {
        if (st[r] < 0) continue;
        bool* row = m + r * v;
        for (i64 e = co[st[r]]; e < co[st[r] + 1]; ++e)
            if (ct[e] < v) row[ct[e]] = true;
    }
}

Arr trie_advance(Arr child_off, Arr child_tok, Arr child_node, Arr states, Arr tokens) {
    const i64 b = states.shape(0);
    Arr out({b});
    const i64 *co = child_off.data(), *ct = child_tok.data(), *cn = child_node.data(), *st = states.data(),
              *tk = tokens.data();
    i64* o = out.mutable_data();
    py::gil_scoped_release nogil;
    for (i64 r = 0; r < b; ++r) {
        o[r] = -1;
        if (st[r] < 0) continue;
        const i64* lo = ct + co[st[r]];
        const i64* hi = ct + co[st[r] + 1];
        const i64* it = std::lower_bound(lo, hi, tk[r]);
        if (it != hi && *it == tk[r]) o[r] = cn[it - ct];
    }
    return out;
}

}  // namespace

void bind_trie(py::module_& m) {
    m.def("trie_build", &trie_build, py::arg("flat"), py::arg("offsets"), py::arg("item_ids"));
    m.def("trie_fill_mask", &trie_fill_mask);
    m.def("trie_advance", &trie_advance);
}

}  // namespace craft
