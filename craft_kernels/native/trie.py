"""A compact trie over int sequences for constrained decoding (semantic IDs, document titles).

Storage is CSR arrays, no dict per node. Nodes are numbered in DFS pre-order (root = 0), so the
subtree of node ``v`` is the node range ``[v, subtree_end[v])`` and its items are one slice:

- ``child_offsets`` int64 (n + 1,): the children of ``v`` are edges ``child_offsets[v]:child_offsets[v+1]``;
- ``child_tokens`` int32 (n - 1,) (sorted within a node) and ``child_nodes`` int32 (n - 1,) per edge;
- ``item_offsets`` int64 (n + 1,) and ``items`` int64 (M,): ``items[item_offsets[v]:item_offsets[v+1]]``
  are the items whose whole sequence ends at ``v`` (several items may share one sequence);
  the items of the subtree of ``v`` are ``items[item_offsets[v]:item_offsets[subtree_end[v]]]``;
- ``subtree_end`` int32 (n,).

Decoding states are plain int64 arrays of node ids (-1 = dead), so they survive beam reordering by
fancy indexing; each step costs O(log children) per beam (``advance``) or O(children) (masks).
Tokens must be in ``[0, 2**31)``.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import weakref
from typing import Sequence

import numpy as np
import torch

from craft_kernels._validate import check_int
from craft_kernels.native import _dispatch
from craft_kernels.native._validate import int_array, positive_int

_DTYPES = {"child_offsets": np.int64, "child_tokens": np.int32, "child_nodes": np.int32,
           "item_offsets": np.int64, "items": np.int64, "subtree_end": np.int32}
_ARRAYS = tuple(_DTYPES)
_FORMAT = 2
_NEG_INF_BITS = {torch.float32: 0xFF800000, torch.float16: 0xFC00, torch.bfloat16: 0xFF80,
                 torch.float64: 0xFFF0000000000000}
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64}


def trie_build_reference(seqs: list[list[int]], item_ids: list[int]) -> dict:
    """Plain Python (the specification of ``trie_build``): insert the sequences in sorted order
    into dict nodes, numbering nodes as they are created (= DFS pre-order), then lay out CSR."""
    order = sorted(range(len(seqs)), key=lambda i: (seqs[i], i))
    parent, children = [-1], [{}]
    node_of = []
    for i in order:
        v = 0
        for t in seqs[i]:
            if t not in children[v]:
                parent.append(v)
                children.append({})
                children[v][t] = len(parent) - 1
            v = children[v][t]
        node_of.append(v)
    n = len(parent)
    child_offsets, child_tokens, child_nodes = [0], [], []
    for v in range(n):
        for t in sorted(children[v]):
            child_tokens.append(t)
            child_nodes.append(children[v][t])
        child_offsets.append(len(child_tokens))
    by_node: list[list[int]] = [[] for _ in range(n)]
    for k, i in enumerate(order):
        by_node[node_of[k]].append(item_ids[i])
    item_offsets, items = [0], []
    for v in range(n):
        items += by_node[v]
        item_offsets.append(len(items))
    subtree_end = [0] * n
    for v in reversed(range(n)):
        kids = [children[v][t] for t in sorted(children[v])]
        subtree_end[v] = subtree_end[kids[-1]] if kids else v + 1
    arrays = dict(child_offsets=child_offsets, child_tokens=child_tokens, child_nodes=child_nodes,
                  item_offsets=item_offsets, items=items, subtree_end=subtree_end)
    return {k: np.array(v, dtype=_DTYPES[k]) for k, v in arrays.items()}


class Trie:
    """``Trie(sequences, item_ids=None)``: ``sequences`` an int array (M, L) or a list of M int
    sequences (any lengths, empty allowed); ``item_ids`` (M,) ints, default ``arange(M)``.
    C++ unless ``CRAFT_NATIVE=python``; every method also has a pure-Python path (the reference)."""

    def __init__(self, sequences, item_ids=None):
        flat, offsets = _flatten(sequences, "sequences")
        m = len(offsets) - 1
        ids = np.arange(m, dtype=np.int64) if item_ids is None else int_array(item_ids, "item_ids")
        if len(ids) != m:
            raise ValueError(f"item_ids: expected {m} ids, one per sequence, got {len(ids)}")
        if flat.size and flat.min() < 0:
            raise ValueError(f"sequences: tokens must be >= 0, found {int(flat.min())}")
        if flat.size and flat.max() >= 2**31:
            raise ValueError(f"sequences: tokens must be < 2**31, found {int(flat.max())}")
        if _dispatch.use_cpp():
            arrays = dict(_dispatch.ext().trie_build(flat, offsets, ids))
        else:
            seqs = [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(m)]
            arrays = trie_build_reference(seqs, ids.tolist())
        self._set(arrays, check=False)

    def _set(self, arrays: dict, check: bool) -> None:
        for name in _ARRAYS:
            a = arrays[name]
            if a.flags.writeable:  # the lookups trust these arrays: publish them read-only
                a = a.view()
                a.flags.writeable = False
                arrays[name] = a
            setattr(self, name, a)
        self._core = None
        self._last_mask = None  # (weakref to the last allowed_mask array, the states it was filled for)
        if _dispatch.use_cpp():
            core_type = _dispatch.ext().TrieCore
            self._core = core_type(*(arrays[n] for n in _ARRAYS), check)
            # Single lookups are builtin functions bound to the core: no Python frame, no pybind11
            # dispatch on the hot path (a tuple or list of ints, or an int64 row, and no limit);
            # every other input goes to _lookup_general, the checked path of the methods below.
            self.lookup = core_type.fast_lookup(self._core, True, _lookup_general)
            self.items_with_prefix = core_type.fast_lookup(self._core, False, _lookup_general)

    # ------------------------------------------------------------------ storage
    @property
    def n_nodes(self) -> int:
        return len(self.child_offsets) - 1

    @property
    def n_items(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        return self.n_items

    def save(self, path: str) -> None:
        """Writes a directory of ``.npy`` files (memory-mappable) plus ``meta.json``; a temporary
        directory is renamed into place. An existing ``path`` is replaced only when it is an
        earlier Trie save; anything else there raises FileExistsError and is left untouched."""
        path = os.path.abspath(os.fspath(path))
        if os.path.lexists(path):
            _check_replaceable(path)
        parent = os.path.dirname(path)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
        try:
            for name in _ARRAYS:
                np.save(os.path.join(tmp, f"{name}.npy"),
                        np.ascontiguousarray(getattr(self, name), dtype=_DTYPES[name]))
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump({"format": _FORMAT, "n_nodes": self.n_nodes, "n_items": self.n_items}, f)
            if os.path.lexists(path):
                old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
                os.replace(path, os.path.join(old, "trie"))  # the checked earlier save, moved aside
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path: str, mmap: bool = True) -> "Trie":
        """Opens a saved trie; ``mmap=True`` maps the arrays read-only instead of reading them.
        The arrays are checked once (a corrupt file raises ValueError, it cannot crash a lookup)."""
        path = os.fspath(path)
        meta_path = os.path.join(path, "meta.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"path: {path!r} is not a saved Trie (no meta.json); create it with Trie.save")
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"path: {path!r} has trie format {meta.get('format')}, this version reads {_FORMAT}")
        arrays = {}
        for name in _ARRAYS:
            a = np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r" if mmap else None)
            if a.dtype != _DTYPES[name] or a.ndim != 1:
                raise ValueError(f"path: {name}.npy holds {a.dtype} {a.shape}, expected 1-d {np.dtype(_DTYPES[name])}")
            arrays[name] = a
        t = cls.__new__(cls)
        t._set(arrays, check=True)
        if t._core is None:
            _validate_reference(arrays)
        return t

    # ------------------------------------------------------------------ lookups
    def _child(self, v: int, t: int) -> int:
        lo, hi = int(self.child_offsets[v]), int(self.child_offsets[v + 1])
        j = lo + int(np.searchsorted(self.child_tokens[lo:hi], t))
        return int(self.child_nodes[j]) if j < hi and self.child_tokens[j] == t else -1

    def _walk(self, seq: list) -> tuple[int, int]:
        """(node reached, tokens consumed) following ``seq`` from the root."""
        v = 0
        for k, t in enumerate(seq):
            c = self._child(v, t)
            if c < 0:
                return v, k
            v = c
        return v, len(seq)

    def walk(self, sequences) -> tuple[np.ndarray, np.ndarray]:
        """For each sequence (an (Q, L) array or a list): ``(states (Q,), consumed (Q,))``, the node
        reached by its longest prefix in the trie (a decoding state to continue from) and its length."""
        flat, offsets = _flatten(sequences, "sequences")
        if self._core is not None:
            states, used = self._core.walk(flat, offsets)
            return states, used
        res = [self._walk(flat[offsets[i]:offsets[i + 1]].tolist()) for i in range(len(offsets) - 1)]
        return np.array([r[0] for r in res], dtype=np.int64), np.array([r[1] for r in res], dtype=np.int64)

    def lookup(self, seq) -> np.ndarray:
        """int64 ids of the items whose full sequence is ``seq`` (empty if none)."""
        if self._core is not None:  # the hot path: a tuple/list of ints or an int64 row, one C++ call
            out = self._core.prefix_items(seq, True)
            if out is not None:
                return out
        return self._under(seq, "seq", -1, exact=True)

    def longest_prefix(self, seq) -> int:
        """Length of the longest prefix of ``seq`` that is a path in the trie."""
        a = int_array(seq, "seq")
        if self._core is not None:
            return int(self._core.walk(a, np.array([0, len(a)], dtype=np.int64))[1][0])
        return self._walk(a.tolist())[1]

    def items_with_prefix(self, prefix, limit: int | None = None) -> np.ndarray:
        """int64 ids of the items whose sequence starts with ``prefix`` (in sequence order), at most
        ``limit``. The retrieval fallback is ``items_with_prefix(seq[:longest_prefix(seq)])``."""
        if limit is None and self._core is not None:  # the hot path: a tuple/list of ints or an int64 row
            out = self._core.prefix_items(prefix, False)
            if out is not None:
                return out
        lim = -1 if limit is None else positive_int(limit, "limit", 0)
        return self._under(prefix, "prefix", lim, exact=False)

    def items_with_prefixes(self, prefixes, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Batched ``items_with_prefix``: ``prefixes`` (Q, P) array or list -> CSR ``(offsets (Q+1,), items)``;
        the items of prefix q are ``items[offsets[q]:offsets[q+1]]``."""
        lim = -1 if limit is None else positive_int(limit, "limit", 0)
        flat, offsets = _flatten(prefixes, "prefixes")
        if self._core is not None:
            return self._core.items_under(flat, offsets, lim, False)
        parts = [self._under_ref(flat[offsets[i]:offsets[i + 1]].tolist(), lim, False) for i in range(len(offsets) - 1)]
        return (np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64),
                np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64))

    def _under(self, seq, name: str, limit: int, exact: bool) -> np.ndarray:
        a = seq if type(seq) is np.ndarray and seq.dtype == np.int64 and seq.ndim == 1 else int_array(seq, name)
        if self._core is not None:
            return self._core.items_one(a, limit, exact)
        return self._under_ref(a.tolist(), limit, exact)

    def _under_ref(self, seq: list, limit: int, exact: bool) -> np.ndarray:
        v, k = self._walk(seq)
        if k < len(seq):
            return np.zeros(0, dtype=np.int64)
        lo = int(self.item_offsets[v])
        hi = int(self.item_offsets[v + 1] if exact else self.item_offsets[self.subtree_end[v]])
        if limit >= 0:
            hi = min(hi, lo + limit)
        return np.array(self.items[lo:hi], dtype=np.int64)

    # ------------------------------------------------------------------ batched decoding
    def root_states(self, batch: int) -> np.ndarray:
        """int64 (batch,) root states."""
        return np.zeros(positive_int(batch, "batch", 0), dtype=np.int64)

    def _states(self, states) -> np.ndarray:
        if type(states) is np.ndarray and states.dtype == np.int64 and states.ndim == 1 and self._core is not None:
            return states  # the C++ core checks the range
        s = int_array(states, "states")
        if s.size and (s.min() < -1 or s.max() >= self.n_nodes):
            bad = int(s.min()) if s.min() < -1 else int(s.max())
            raise ValueError(f"states: node ids must be in [-1, {self.n_nodes}), got {bad}; "
                             "use root_states/advance to make them")
        return s

    def allowed(self, states) -> list[np.ndarray]:
        """Per state, the int64 tokens that continue a sequence (sorted; empty for dead states)."""
        s = self._states(states)
        if self._core is not None:
            return self._core.allowed(s)
        co, ct = self.child_offsets, self.child_tokens
        return [np.array(ct[co[v]:co[v + 1]], dtype=np.int64) if v >= 0 else np.zeros(0, dtype=np.int64)
                for v in s.tolist()]

    def allowed_mask(self, states, vocab_size: int, out: np.ndarray | None = None) -> np.ndarray:
        """bool (B, vocab_size): True where the token continues a sequence (tokens >= vocab_size are ignored).

        ``out``: pass back the array the previous call returned (left as it was returned) to refill
        it: only the entries that call set are cleared, so a decoding step writes O(allowed
        children) per beam instead of B x vocab_size bytes. Any other bool (B, vocab_size) array
        is cleared whole first."""
        s = self._states(states)
        V = positive_int(vocab_size, "vocab_size")
        if out is None:
            mask = np.zeros((len(s), V), dtype=bool)
        else:
            if not isinstance(out, np.ndarray) or out.dtype != np.bool_ or out.shape != (len(s), V):
                got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
                raise ValueError(f"out: expected a bool array of shape ({len(s)}, {V}), got {got}")
            last = self._last_mask
            if last is not None and last[0]() is out and last[1].shape == s.shape:
                self._fill(last[1], out, False)
            else:
                out[...] = False
            mask = out
        self._fill(s, mask, True)
        self._last_mask = (weakref.ref(mask), s.copy())
        return mask

    def _fill(self, s: np.ndarray, mask: np.ndarray, value: bool) -> None:
        if self._core is not None:
            self._core.set_allowed(s, mask, value)
        else:
            for r, toks in enumerate(self.allowed(s)):
                mask[r, toks[toks < mask.shape[1]]] = value

    def advance(self, states, tokens) -> np.ndarray:
        """int64 (B,) next states after ``tokens (B,)``; -1 where the token leaves the trie or the state was dead."""
        s = self._states(states)
        t = tokens if type(tokens) is np.ndarray and tokens.dtype == np.int64 else int_array(tokens, "tokens")
        if t.shape != s.shape:
            raise ValueError(f"tokens: expected shape {s.shape} like states, got {t.shape}")
        if self._core is not None:
            return self._core.advance(s, t)
        return np.array([self._child(v, tok) if v >= 0 else -1 for v, tok in zip(s.tolist(), t.tolist())],
                        dtype=np.int64)

    def is_terminal(self, states) -> np.ndarray:
        """bool (B,): True where the prefix decoded so far is a whole sequence (some item ends there)."""
        s = self._states(states)
        if self._core is not None:
            return self._core.is_terminal(s)
        io = np.asarray(self.item_offsets)
        safe = np.maximum(s, 0)
        return (s >= 0) & (io[safe + 1] > io[safe])

    def _counts(self, s: np.ndarray, vocab: int) -> np.ndarray:
        if self._core is not None:
            return self._core.counts(s, vocab)
        return np.array([int((t < vocab).sum()) for t in self.allowed(s)], dtype=np.int64)

    def apply_to_logits(self, logits: torch.Tensor, states, on_empty: str = "raise",
                        eos_id: int | None = None) -> torch.Tensor:
        """Sets the disallowed entries of ``logits`` (B, V) float (CPU or CUDA) to -inf in place.

        Returns a bool (B,) tensor on ``logits.device`` flagging rows with no allowed token (dead
        states, or children all >= V), handled by ``on_empty``: ``'raise'`` (ValueError, logits
        untouched), ``'eos'`` (only ``eos_id`` stays allowed) or ``'keep'`` (the row is left as it
        is). A masked row whose allowed entries were all -inf already (e.g. set by another
        processor) gets them set to 0, so the constraint still holds and no row this call masks is
        left all -inf (a softmax never yields NaN there); ``'keep'`` rows are the caller's.

        CPU: C++ writes -inf straight into the tensor's memory (one pass, float16/bfloat16/float32/
        float64, unit column stride; otherwise a mask is built). CUDA: the disallowed mask is built
        on the CPU, copied once, and applied with ``masked_fill_``.
        """
        if on_empty not in ("raise", "eos", "keep"):
            raise ValueError(f"on_empty: expected 'raise', 'eos' or 'keep', got {on_empty!r}")
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
        if logits.dim() != 2 or not logits.is_floating_point():
            raise ValueError(f"logits: expected a (B, V) float tensor, got {tuple(logits.shape)} {logits.dtype}")
        b, v = logits.shape
        if on_empty == "eos":
            if eos_id is None:
                raise ValueError("eos_id: required with on_empty='eos'")
            check_int(eos_id, "eos_id", 0, v - 1, hint=" (the vocabulary)")
        s = self._states(states)
        if s.shape != (b,):
            raise ValueError(f"states: expected {b} states, one per logits row, got shape {s.shape}")
        empty = self._counts(s, v) == 0
        if empty.any() and on_empty == "raise":
            raise ValueError(f"states: rows {np.flatnonzero(empty).tolist()} have no allowed token; "
                             "pass on_empty='eos' or 'keep'")
        keep = empty if on_empty == "keep" else np.zeros(b, dtype=bool)
        eos_rows = empty if on_empty == "eos" else np.zeros(b, dtype=bool)
        eos = int(eos_id) if on_empty == "eos" else 0
        if (self._core is not None and logits.device.type == "cpu" and logits.dtype in _INT_VIEW
                and logits.stride(1) == 1 and b > 0):
            view = logits.view(_INT_VIEW[logits.dtype]).numpy()
            self._core.mask_logits(s, view, _NEG_INF_BITS[logits.dtype], keep.astype(np.int64),
                                   eos_rows.astype(np.int64), eos)
        else:
            pin = logits.device.type == "cuda"
            bad = torch.ones((b, v), dtype=torch.bool, pin_memory=pin)
            bad_np = bad.numpy()
            if self._core is not None:
                self._core.set_allowed(s, bad_np, False)
            else:
                bad_np &= ~self.allowed_mask(s, v)
            bad_np[keep] = False
            if eos_rows.any():
                bad_np[eos_rows, eos] = False
            bad_dev = bad.to(logits.device, non_blocking=pin)
            logits.masked_fill_(bad_dev, float("-inf"))
            # rows whose allowed entries were already all -inf: force the constraint (no host sync)
            forced = torch.isneginf(logits).all(-1, keepdim=True) & ~bad_dev
            forced[torch.from_numpy(keep).to(logits.device)] = False
            logits.masked_fill_(forced, 0.0)
        return torch.from_numpy(empty).to(logits.device)


def _lookup_general(core, seq, limit, exact: bool) -> np.ndarray:
    """The C++ single lookups' path for every input but the hot forms: checks and converts ``seq``
    and ``limit`` the way :meth:`Trie.lookup` / :meth:`Trie.items_with_prefix` do."""
    lim = -1 if limit is None else positive_int(limit, "limit", 0)
    name = "seq" if exact else "prefix"
    a = seq if type(seq) is np.ndarray and seq.dtype == np.int64 and seq.ndim == 1 else int_array(seq, name)
    return core.items_one(a, lim, exact)


_SAVED_FILES = {"meta.json", *(f"{n}.npy" for n in _ARRAYS)}


def _check_replaceable(path: str) -> None:
    """Raises unless ``path`` is a directory holding exactly what :meth:`Trie.save` writes."""
    if os.path.islink(path) or not os.path.isdir(path):
        raise FileExistsError(f"path: {path!r} exists and is not a saved Trie; choose another path or remove it")
    names = set(os.listdir(path))
    fmt = None
    if names <= _SAVED_FILES and "meta.json" in names:
        try:
            with open(os.path.join(path, "meta.json")) as f:
                fmt = json.load(f).get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
    if fmt is None:
        raise FileExistsError(f"path: {path!r} exists and is not a saved Trie (Trie.save replaces only an "
                              "earlier save); choose another path or remove it")


def _validate_reference(arrays: dict) -> None:
    """The python path's check of loaded arrays (the C++ core does the same in TrieCore)."""
    co, ct, cn, io = (np.asarray(arrays[k]) for k in ("child_offsets", "child_tokens", "child_nodes", "item_offsets"))
    se, n = np.asarray(arrays["subtree_end"]), len(co) - 1
    ok = (n >= 1 and len(ct) == len(cn) == n - 1 and len(io) == n + 1 and len(se) == n and co[0] == 0
          and co[-1] == n - 1 and io[0] == 0 and io[-1] == len(arrays["items"]) and (np.diff(co) >= 0).all()
          and (np.diff(io) >= 0).all() and (se > np.arange(n)).all() and (se <= n).all()
          and (cn < n).all() and (ct >= 0).all())
    if ok and n > 1:
        parent = np.repeat(np.arange(n), np.diff(co))
        first = np.zeros(n - 1, dtype=bool)
        first[co[:-1][np.diff(co) > 0]] = True
        ok = bool((cn > parent).all() and (np.diff(ct.astype(np.int64))[~first[1:]] > 0).all())
    if not ok:
        raise ValueError("trie arrays are corrupt: the saved files disagree with each other")


def _flatten(sequences, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat int64 tokens, offsets int64 (M + 1,)) of an (M, L) array or a list of int sequences."""
    if isinstance(sequences, torch.Tensor):
        sequences = sequences.detach().cpu().numpy()
    if isinstance(sequences, np.ndarray):
        if sequences.ndim != 2:
            raise ValueError(f"{name}: expected an (M, L) int array or a list of sequences, got shape {sequences.shape}")
        a = int_array(sequences, name, ndim=2)
        return a.reshape(-1), np.arange(a.shape[0] + 1, dtype=np.int64) * a.shape[1]
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
        raise TypeError(f"{name}: expected an (M, L) int array or a list of int sequences, got {type(sequences).__name__}")
    if sequences and all(type(s) is list or type(s) is tuple for s in sequences):  # lists of ints: one conversion
        lengths = [len(s) for s in sequences]
        try:
            flat = np.array(list(itertools.chain.from_iterable(sequences)))
        except (ValueError, OverflowError):
            flat = None
        if flat is not None and flat.ndim == 1 and (np.issubdtype(flat.dtype, np.integer) or not flat.size):
            flat = int_array(flat, name)  # uint64 beyond int64 raises
            return flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # not a flat list of ints: the per-sequence path below names the first bad sequence
    parts = [int_array(s, f"{name}[{i}]") for i, s in enumerate(sequences)]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return flat.astype(np.int64), np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
