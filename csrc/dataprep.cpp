// Data-prep ops: unit padding, greedy next-fit join-padding, agent-level flattening, DVT building.
// Inputs arrive validated and converted to contiguous int64 by the Python wrappers
// (craft_kernels/native/dataprep.py), which pass private copies of every array indexed with, so the
// loops can run with the GIL released while other threads rewrite the caller's arrays.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "bindings.h"

namespace py = pybind11;
using i64 = int64_t;
using Arr = py::array_t<i64, py::array::c_style | py::array::forcecast>;

namespace craft {
namespace {

Arr new_array(std::vector<py::ssize_t> shape) { return Arr(shape); }

// (n_units, width) ids, each unit's tokens then pad_id; units longer than width are cut.
Arr pad_units(Arr tokens, Arr offsets, i64 width, i64 pad_id) {
    const i64 n_units = offsets.shape(0) - 1;
    Arr out = new_array({n_units, width});
    const i64* tok = tokens.data();
    const i64* off = offsets.data();
    i64* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        if (width <= 16) {  // short rows: one select per slot, no library call per unit
            for (i64 u = 0; u < n_units; ++u) {
                const i64 len = std::min(off[u + 1] - off[u], width);
                const i64* src = tok + off[u];
                i64* row = o + u * width;
                for (i64 k = 0; k < width; ++k) row[k] = k < len ? src[k] : pad_id;
            }
        } else {
            for (i64 u = 0; u < n_units; ++u) {
                const i64 len = std::min(off[u + 1] - off[u], width);
                i64* row = o + u * width;
                std::copy(tok + off[u], tok + off[u] + len, row);
                std::fill(row + len, row + width, pad_id);
            }
        }
    }
    return out;
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

// Offsets of every unit of the top level directly into tokens: compose the levels' offsets.
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
    m.def("pad_units", &pad_units, py::arg("tokens"), py::arg("offsets"), py::arg("width"), py::arg("pad_id"));
    m.def("greedy_join", &greedy_join, py::arg("lengths"), py::arg("budget"), py::arg("join_cost"));
    m.def("split_units", &split_units, py::arg("offsets"), py::arg("budget"));
    m.def("join_pad", &join_pad, py::arg("tokens"), py::arg("offsets"), py::arg("unit_ids"), py::arg("unit_pos0"),
          py::arg("budget"), py::arg("join_id"), py::arg("pad_id"));
    m.def("compose_offsets", &compose_offsets, py::arg("levels"));
    m.def("build_dvt", &build_dvt, py::arg("levels"));
}

}  // namespace craft
