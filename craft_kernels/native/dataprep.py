"""Data-prep native ops: unit padding, greedy join-padding, agent-level flattening, DVT building.

Conventions. A *unit* (a word, a sentence, …) is a slice of a flat array given by CSR offsets:
unit ``u`` is ``tokens[offsets[u]:offsets[u+1]]``; ``offsets`` starts at 0, never decreases and
ends at ``len(tokens)``. A nested batch is ``tokens`` plus ``level_offsets = [words, sentences,
paragraphs, …]`` where ``level_offsets[0]`` indexes tokens and ``level_offsets[l]`` indexes the
units of level ``l-1``. All outputs are int64 NumPy arrays (``cu_seqlens`` int32 when it fits, as flash
attention wants). Each op has a pure-Python reference (``*_reference``) — the specification — and
runs in C++ unless ``CRAFT_NATIVE=python``.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from craft_kernels._validate import check_int
from craft_kernels.native import _dispatch
from craft_kernels.native._validate import (
    check_output_size, ids_in_range, int64_scalar, int_array, offsets_array, positive_int,
)


# --------------------------------------------------------------------------- pad_units
def pad_units_reference(tokens, offsets, width, pad_id):
    out = []
    for u in range(len(offsets) - 1):
        unit = list(tokens[offsets[u]:offsets[u + 1]])[:width]
        out.append(unit + [pad_id] * (width - len(unit)))
    return np.array(out, dtype=np.int64).reshape(len(offsets) - 1, width)


def pad_units(tokens, offsets, width: int, pad_id: int, truncate: bool = False) -> np.ndarray:
    """Every unit padded with ``pad_id`` to ``width``: int64 ``(n_units, width)``.

    A unit longer than ``width`` raises ValueError naming the longest one, unless ``truncate=True``
    (then it is cut to its first ``width`` ids).
    """
    tokens = int_array(tokens, "tokens")
    width = positive_int(width, "width")
    pad_id = int64_scalar(pad_id, "pad_id")
    if _dispatch.use_cpp():
        # checks and pads in one C++ call on the caller's array (no copy); None: invalid, and the
        # checks below say why
        off = int_array(offsets, "offsets")
        check_output_size(max(len(off) - 1, 0) * width, 8, "width")
        out = _dispatch.ext().pad_units(tokens, off, width, pad_id, bool(truncate))
        if out is not None:
            return out
    offsets = offsets_array(offsets, "offsets", len(tokens))
    lengths = np.diff(offsets)
    if not truncate and lengths.size and lengths.max() > width:
        u = int(np.argmax(lengths))
        raise ValueError(f"offsets: unit {u} has {lengths[u]} ids, longer than width={width}; "
                         "raise width or pass truncate=True")
    check_output_size(lengths.size * width, 8, "width")
    if _dispatch.use_cpp():  # valid now, though not a moment ago: another thread rewrote the offsets
        return _dispatch.ext().pad_units(tokens, offsets, width, pad_id, bool(truncate))
    return pad_units_reference(tokens.tolist(), offsets.tolist(), width, pad_id)


# --------------------------------------------------------------------------- greedy_join
class Groups(Sequence):
    """Groups of consecutive units, as the sequence of groups: ``groups[g]`` is the int64 array of
    the unit indices of group ``g`` (``units offsets[g]:offsets[g+1]``), ``len(groups)`` the number
    of groups, ``list(groups)`` every group. ``offsets`` (G + 1,) int64 is the CSR form."""

    __slots__ = ("offsets",)

    def __init__(self, offsets: np.ndarray):
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, g):
        if isinstance(g, slice):
            return [self[i] for i in range(*g.indices(len(self)))]
        n = len(self)
        g = check_int(g, "group index")
        if not -n <= g < n:
            raise IndexError(f"group index {g} out of range for {n} groups")
        g = int(g) % n
        return np.arange(self.offsets[g], self.offsets[g + 1], dtype=np.int64)

    def __eq__(self, other) -> bool:
        return isinstance(other, Groups) and np.array_equal(self.offsets, other.offsets)

    def __repr__(self) -> str:
        return f"Groups({self.tolist()!r})"

    def tolist(self) -> list[list[int]]:
        o = self.offsets.tolist()
        return [list(range(o[g], o[g + 1])) for g in range(len(o) - 1)]


def greedy_join_reference(lengths, budget, join_cost=1):
    groups, used = [], None
    for i, n in enumerate(lengths):
        if used is not None and used + join_cost + n <= budget:
            groups[-1].append(i)
            used += join_cost + n
        else:
            groups.append([i])
            used = n
    return groups


def _check_budget(lengths: np.ndarray, budget: int, what: str) -> None:
    if lengths.size and lengths.max() > budget:
        u = int(np.argmax(lengths))
        raise ValueError(f"{what}: unit {u} has length {lengths[u]}, longer than budget={budget}; "
                         "raise budget or use join_pad(..., split_long=True)")


def greedy_join(lengths, budget: int, join_cost: int = 1) -> Groups:
    """Next-fit grouping, order kept: a unit joins the current group while
    ``sum(lengths) + join_cost * (len(group) - 1) <= budget``.

    >>> greedy_join([3, 6, 4, 7, 5, 4], 10).tolist()
    [[0, 1], [2], [3], [4, 5]]
    """
    lengths = int_array(lengths, "lengths")
    budget = positive_int(budget, "budget")
    join_cost = positive_int(join_cost, "join_cost", minimum=0)
    if lengths.size and lengths.min() < 0:
        raise ValueError(f"lengths: must be >= 0, found {int(lengths.min())}")
    _check_budget(lengths, budget, "lengths")
    if _dispatch.use_cpp():
        return Groups(_dispatch.ext().greedy_join(lengths, budget, join_cost))
    groups = greedy_join_reference(lengths.tolist(), budget, join_cost)
    return Groups(np.array([0] + list(np.cumsum([len(g) for g in groups])), dtype=np.int64))


# --------------------------------------------------------------------------- join_pad
class JoinPadded(NamedTuple):
    """Output of :func:`join_pad`. ``ids``, ``unit_index``, ``position`` are ``(n_groups, budget)``;
    ``unit_index``/``position`` are -1 on join and pad positions; ``cu_seqlens`` (``n_groups + 1``;
    int32, or int64 once the rows hold 2**31 positions or more) are the cumulative content lengths
    of the rows (pads excluded); ``group_offsets`` index the (possibly split) units of each row."""
    ids: np.ndarray
    unit_index: np.ndarray
    position: np.ndarray
    cu_seqlens: np.ndarray
    group_offsets: np.ndarray


def join_pad_reference(tokens, offsets, budget, join_id, pad_id, unit_ids, unit_pos0):
    lengths = [offsets[u + 1] - offsets[u] for u in range(len(offsets) - 1)]
    groups = greedy_join_reference(lengths, budget, 1)
    ids, uidx, pos, cu, go = [], [], [], [0], [0]
    for g in groups:
        row_i, row_u, row_p = [], [], []
        for k, u in enumerate(g):
            if k:
                row_i.append(join_id), row_u.append(-1), row_p.append(-1)
            for j in range(offsets[u], offsets[u + 1]):
                row_i.append(tokens[j]), row_u.append(unit_ids[u]), row_p.append(unit_pos0[u] + j - offsets[u])
        cu.append(cu[-1] + len(row_i))
        go.append(go[-1] + len(g))
        pad = budget - len(row_i)
        ids.append(row_i + [pad_id] * pad), uidx.append(row_u + [-1] * pad), pos.append(row_p + [-1] * pad)
    shape = (len(groups), budget)
    a = lambda x: np.array(x, dtype=np.int64).reshape(shape)  # noqa: E731
    return a(ids), a(uidx), a(pos), np.array(cu, dtype=np.int64), np.array(go, dtype=np.int64)


def _split_reference(offsets, budget):
    po, pu, pp = [], [], []
    for u in range(len(offsets) - 1):
        s = offsets[u]
        while True:
            po.append(s), pu.append(u), pp.append(s - offsets[u])
            s += budget
            if s >= offsets[u + 1]:
                break
    po.append(offsets[-1])
    return [np.array(x, dtype=np.int64) for x in (po, pu, pp)]


def _check_rows_fit(offsets: np.ndarray, budget: int) -> None:
    """The three (rows, budget) int64 outputs must fit in memory: rows <= units, counted exactly
    only when that bound is too loose."""
    check_output_size(3 * budget, 8, "budget")
    n = len(offsets) - 1
    if n * budget * 24 > (1 << 30):
        rows = len(greedy_join(np.diff(offsets), budget, 1).offsets) - 1
        check_output_size(3 * rows * budget, 8, "budget")


def join_pad(tokens, offsets, budget: int, join_id: int, pad_id: int, split_long: bool = False) -> JoinPadded:
    """Greedy join-padding: consecutive units packed next-fit into rows of ``budget`` ids with
    ``join_id`` between joined units (each join costs one position), then ``pad_id``.

    A unit longer than ``budget`` raises ValueError naming it, unless ``split_long=True``: then it
    is cut into pieces of ``budget`` ids, each packed like a unit (``unit_index`` still names the
    original unit and ``position`` counts from its start).
    """
    tokens = int_array(tokens, "tokens")
    offsets = offsets_array(offsets, "offsets", len(tokens))
    budget = positive_int(budget, "budget")
    join_id, pad_id = int64_scalar(join_id, "join_id"), int64_scalar(pad_id, "pad_id")
    n = len(offsets) - 1
    if split_long:
        if _dispatch.use_cpp():
            offsets, unit_ids, pos0 = _dispatch.ext().split_units(offsets, budget)
        else:
            offsets, unit_ids, pos0 = _split_reference(offsets.tolist(), budget)
    else:
        _check_budget(np.diff(offsets), budget, "offsets")
        unit_ids, pos0 = np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    _check_rows_fit(offsets, budget)
    if _dispatch.use_cpp():
        ids, unit, pos, cu, go = _dispatch.ext().join_pad(tokens, offsets, unit_ids, pos0, budget, join_id, pad_id)
    else:
        ids, unit, pos, cu, go = join_pad_reference(tokens.tolist(), offsets.tolist(), budget, join_id,
                                                    pad_id, unit_ids.tolist(), pos0.tolist())
    # int32 as flash attention wants, unless the batch holds 2**31 or more positions (never wrap silently)
    cu_dtype = np.int32 if cu[-1] <= np.iinfo(np.int32).max else np.int64
    return JoinPadded(ids, unit, pos, cu.astype(cu_dtype), go)


# --------------------------------------------------------------------------- flatten_level
class Flattened(NamedTuple):
    """The units of one agent level. ``level_offsets`` keeps the levels below it (so a sentence
    agent still sees each sentence's words); ``unit_token_offsets`` (``n_units + 1``) slice each
    unit's tokens straight out of ``tokens``."""
    tokens: np.ndarray
    level_offsets: list
    unit_token_offsets: np.ndarray


def _check_levels(tokens: np.ndarray, level_offsets) -> list[np.ndarray]:
    if isinstance(level_offsets, np.ndarray) or not isinstance(level_offsets, Sequence) or not len(level_offsets):
        raise TypeError("level_offsets: expected a non-empty list of offsets arrays, one per level (words first)")
    out, total = [], len(tokens)
    for l, o in enumerate(level_offsets):
        a = offsets_array(o, f"level_offsets[{l}]", total)
        out.append(a)
        total = len(a) - 1
    return out


def compose_offsets_reference(levels):
    cur = list(levels[0])
    for sel in levels[1:]:
        cur = [cur[i] for i in sel]
    return np.array(cur, dtype=np.int64)


def flatten_level(tokens, level_offsets, level: int) -> Flattened:
    """Agent-level flattening of a nested batch: the units of ``level`` (0 = words, 1 = sentences,
    2 = paragraphs, …) across the whole batch, whatever lies above them. Two paragraphs of three
    sentences each give six units at level 1. Every level is checked (CSR offsets, each ending at
    the unit count of the level below); the returned ``level_offsets`` are the caller's arrays when
    they are already contiguous int64 (no copy), else converted copies."""
    if _dispatch.use_cpp() and type(level) is int:
        # int64 arrays in a list or tuple: checked and composed in one C++ call that reads them
        # without NumPy calls; None: another form or an invalid level (the paths below say which)
        tok_off = _dispatch.ext().flatten_fast(tokens, level_offsets, level)
        if tok_off is not None:
            return Flattened(tokens, list(level_offsets[: level + 1]), tok_off)
    tokens = int_array(tokens, "tokens")
    if _dispatch.use_cpp() and isinstance(level_offsets, (list, tuple)) and level_offsets:
        # checks every level and composes in one C++ call on the caller's arrays (no copies); None:
        # invalid, and the checks below say why
        levels = [int_array(o, f"level_offsets[{l}]") for l, o in enumerate(level_offsets)]
        level = check_int(level, "level", 0, len(levels) - 1, hint=f" for {len(levels)} levels")
        tok_off = _dispatch.ext().flatten_offsets(levels, len(tokens), level)
        if tok_off is not None:
            return Flattened(tokens, levels[: level + 1], tok_off)
    levels = _check_levels(tokens, level_offsets)
    level = check_int(level, "level", 0, len(levels) - 1, hint=f" for {len(levels)} levels")
    kept = levels[: level + 1]
    if _dispatch.use_cpp():
        tok_off = _dispatch.ext().compose_offsets(kept)
    else:
        tok_off = compose_offsets_reference([k.tolist() for k in kept])
    return Flattened(tokens, kept, tok_off)


# --------------------------------------------------------------------------- build_dvt
class DvtArrays(NamedTuple):
    """Every node of a batch of DVTs, indexed by pre-order id (unique across the batch, consecutive
    within a tree: tree ``t`` holds ids ``tree_offsets[t]:tree_offsets[t+1]``).

    Node level 0 is a token (leaf), level ``l+1`` a unit of ``level_offsets[l]``; the units of the
    last level are the roots. ``unit`` is a node's index within its level (for a leaf: its index in
    ``tokens``). Children of node ``i`` are ``children[child_offsets[i]:child_offsets[i+1]]`` in
    order; ``first_child`` is -1 for leaves. ``level_nodes[l]`` lists level ``l``'s nodes sorted by
    pre-order id."""
    parent: np.ndarray
    level: np.ndarray
    tree: np.ndarray
    unit: np.ndarray
    first_child: np.ndarray
    n_children: np.ndarray
    subtree_size: np.ndarray
    child_offsets: np.ndarray
    children: np.ndarray
    tree_offsets: np.ndarray
    level_nodes: list


def build_dvt_reference(levels):
    """Plain recursive pre-order walk of each tree."""
    K = len(levels)
    n_tok = levels[0][-1]
    counts = [n_tok] + [len(o) - 1 for o in levels]
    rows = []  # (level, unit, parent_id, tree)
    children_of = {}

    def visit(l, u, parent, t):
        me = len(rows)
        rows.append((l, u, parent, t))
        kids = []
        if l > 0:
            o = levels[l - 1]
            for c in range(o[u], o[u + 1]):
                kids.append(visit(l - 1, c, me, t))
        children_of[me] = kids
        return me

    tree_offsets = []
    for t in range(counts[K]):
        tree_offsets.append(len(rows))
        visit(K, t, -1, t)
    tree_offsets.append(len(rows))
    n = len(rows)
    size = [1] * n
    for i in reversed(range(n)):
        size[i] = 1 + sum(size[c] for c in children_of[i])
    child_offsets, children = [0], []
    for i in range(n):
        children += children_of[i]
        child_offsets.append(len(children))
    level_nodes = [[i for i in range(n) if rows[i][0] == l] for l in range(K + 1)]
    i64 = lambda x: np.array(x, dtype=np.int64)  # noqa: E731
    return {
        "parent": i64([r[2] for r in rows]), "level": i64([r[0] for r in rows]), "tree": i64([r[3] for r in rows]),
        "unit": i64([r[1] for r in rows]), "subtree_size": i64(size), "child_offsets": i64(child_offsets),
        "children": i64(children), "tree_offsets": i64(tree_offsets), "level_nodes": [i64(x) for x in level_nodes],
    }


def build_dvt(level_offsets, n_tokens: int | None = None) -> DvtArrays:
    """Builds the DVT arrays of a whole batch in one pass from ``level_offsets`` (words → tokens
    first, then sentences → words, …; the last level's units are the trees' roots).
    ``n_tokens`` (default ``level_offsets[0][-1]``) is checked against the word offsets."""
    if isinstance(level_offsets, np.ndarray) or not isinstance(level_offsets, Sequence) or not len(level_offsets):
        raise TypeError("level_offsets: expected a non-empty list of offsets arrays, one per level (words first)")
    first = offsets_array(level_offsets[0], "level_offsets[0]")
    total = int(first[-1])
    if n_tokens is not None and n_tokens != total:
        raise ValueError(f"level_offsets[0]: must end at n_tokens={n_tokens}, got {total}")
    levels = _check_levels(np.empty(total), level_offsets)
    if _dispatch.use_cpp():
        d = _dispatch.ext().build_dvt(levels)
    else:
        d = build_dvt_reference([o.tolist() for o in levels])
    co = d["child_offsets"]
    n_children = np.diff(co)
    first_child = np.full(len(n_children), -1, dtype=np.int64)
    has = n_children > 0
    first_child[has] = d["children"][co[:-1][has]]
    return DvtArrays(d["parent"], d["level"], d["tree"], d["unit"], first_child, n_children, d["subtree_size"],
                     co, d["children"], d["tree_offsets"], list(d["level_nodes"]))


__all__ = ["pad_units", "greedy_join", "join_pad", "flatten_level", "build_dvt", "Groups", "JoinPadded",
           "Flattened", "DvtArrays", "ids_in_range"]
