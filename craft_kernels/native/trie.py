"""A compact trie over int sequences for constrained decoding (semantic IDs, document titles).

Storage is CSR arrays (no dict per node). Nodes are numbered in DFS pre-order (root = 0), so
the subtree of node ``v`` is the node range ``[v, subtree_end[v])`` and its items are one slice.
Children of ``v``: ``child_tokens/child_nodes[child_offsets[v]:child_offsets[v+1]]``, sorted by
token. Items ending at ``v``: ``items[item_offsets[v]:item_offsets[v+1]]`` (several items may
share one sequence). Decoding states are plain int64 arrays of node ids (-1 = dead), so they
survive beam reordering by fancy indexing; each step costs O(children) per beam.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import torch

from craft_kernels.native import _dispatch
from craft_kernels.native._validate import int_array

_ARRAYS = ("child_offsets", "child_tokens", "child_nodes", "item_offsets", "items", "subtree_end", "depth")


def trie_build_reference(seqs: list[list[int]], item_ids: list[int]) -> dict:
    """Plain Python: insert the sorted sequences, number nodes in creation (= pre-)order."""
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    parent, token, depth, node_of_item = [-1], [-1], [0], []
    children: list[dict] = [{}]
    for i in order:
        v = 0
        for t in seqs[i]:
            if t not in children[v]:
                parent.append(v), token.append(t), depth.append(depth[v] + 1), children.append({})
                children[v][t] = len(parent) - 1
            v = children[v][t]
        node_of_item.append(v)
    n = len(parent)
    child_offsets, child_tokens, child_nodes = [0], [], []
    for v in range(n):
        for t in sorted(children[v]):
            child_tokens.append(t), child_nodes.append(children[v][t])
        child_offsets.append(len(child_tokens))
    item_offsets, items = [0], []
    by_node: list[list[int]] = [[] for _ in range(n)]
    for k, i in enumerate(order):
        by_node[node_of_item[k]].append(item_ids[i])
    for v in range(n):
        items += by_node[v]
        item_offsets.append(len(items))
    subtree_end = [0] * n
    for v in reversed(range(n)):
        kids = [children[v][t] for t in sorted(children[v])]
        subtree_end[v] = subtree_end[kids[-1]] if kids else v + 1
    a = lambda x: np.array(x, dtype=np.int64)  # noqa: E731
    return dict(child_offsets=a(child_offsets), child_tokens=a(child_tokens), child_nodes=a(child_nodes),
                item_offsets=a(item_offsets), items=a(items), subtree_end=a(subtree_end), depth=a(depth))


class Trie:
    """``Trie(sequences, item_ids=None)``: ``sequences`` an int array (M, L) or a list of int
    sequences; ``item_ids`` (M,) ints (default ``arange(M)``)."""

    def __init__(self, sequences=None, item_ids=None, *, _arrays: dict | None = None):
        if _arrays is not None:
            self.__dict__.update(_arrays)
            return
        flat, offsets = _flatten(sequences)
        m = len(offsets) - 1
        ids = np.arange(m, dtype=np.int64) if item_ids is None else int_array(item_ids, "item_ids")
        if len(ids) != m:
            raise ValueError(f"item_ids: expected {m} ids, one per sequence, got {len(ids)}")
        if flat.size and flat.min() < 0:
            raise ValueError(f"sequences: tokens must be >= 0, found {int(flat.min())}")
        if _dispatch.use_cpp():
            arrays = dict(_dispatch.ext().trie_build(flat, offsets, ids))
        else:
            seqs = [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(m)]
            arrays = trie_build_reference(seqs, ids.tolist())
        self.__dict__.update(arrays)

    # ------------------------------------------------------------------ storage
    @property
    def n_nodes(self) -> int:
        return len(self.child_offsets) - 1

    def save(self, path: str) -> None:
        """A directory of .npy files (memory-mappable) plus meta.json; written to a temp dir, then renamed."""
        tmp = f"{path}.tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        for name in _ARRAYS:
            np.save(os.path.join(tmp, f"{name}.npy"), getattr(self, name))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"format": 1, "n_nodes": self.n_nodes}, f)
        if os.path.exists(path):
            import shutil
            shutil.rmtree(path)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, mmap: bool = True) -> "Trie":
        if not os.path.exists(os.path.join(path, "meta.json")):
            raise FileNotFoundError(f"path: {path!r} is not a saved Trie (no meta.json); create it with Trie.save")
        arrays = {n: np.load(os.path.join(path, f"{n}.npy"), mmap_mode="r" if mmap else None) for n in _ARRAYS}
        return cls(_arrays=arrays)

    # ------------------------------------------------------------------ lookups
    def _walk(self, seq) -> tuple[int, int]:
        """(node reached, tokens consumed) following ``seq`` from the root."""
        v = 0
        for k, t in enumerate(seq):
            lo, hi = self.child_offsets[v], self.child_offsets[v + 1]
            j = lo + np.searchsorted(self.child_tokens[lo:hi], t)
            if j >= hi or self.child_tokens[j] != t:
                return v, k
            v = int(self.child_nodes[j])
        return v, len(seq)

    def lookup(self, seq) -> np.ndarray:
        """Item ids whose full sequence is ``seq`` (empty if none)."""
        seq = int_array(seq, "seq").tolist()
        v, k = self._walk(seq)
        if k < len(seq):
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.items[self.item_offsets[v]:self.item_offsets[v + 1]])

    def longest_prefix(self, seq) -> int:
        """Length of the longest prefix of ``seq`` that is a path in the trie."""
        return self._walk(int_array(seq, "seq").tolist())[1]

    def items_with_prefix(self, prefix, limit: int | None = None) -> np.ndarray:
        """Items under ``prefix`` (in sequence order), at most ``limit``; the retrieval fallback is
        ``items_with_prefix(seq[:longest_prefix(seq)])``."""
        prefix = int_array(prefix, "prefix").tolist()
        v, k = self._walk(prefix)
        if k < len(prefix):
            return np.zeros(0, dtype=np.int64)
        lo, hi = self.item_offsets[v], self.item_offsets[self.subtree_end[v]]
        if limit is not None:
            hi = min(hi, lo + limit)
        return np.asarray(self.items[lo:hi])

    # ------------------------------------------------------------------ batched decoding
    def root_states(self, batch: int) -> np.ndarray:
        return np.zeros(batch, dtype=np.int64)

    def _states(self, states) -> np.ndarray:
        s = int_array(states, "states")
        if s.size and (s.min() < -1 or s.max() >= self.n_nodes):
            raise ValueError(f"states: node ids must be in [-1, {self.n_nodes}); use root_states/advance to make them")
        return s

    def allowed(self, states) -> list[np.ndarray]:
        s = self._states(states)
        co, ct = self.child_offsets, self.child_tokens
        return [np.asarray(ct[co[v]:co[v + 1]]) if v >= 0 else np.zeros(0, dtype=np.int64) for v in s.tolist()]

    def allowed_mask(self, states, vocab_size: int) -> np.ndarray:
        """bool (B, vocab_size): True where the token continues a sequence of the trie."""
        s = self._states(states)
        mask = np.zeros((len(s), vocab_size), dtype=bool)
        if _dispatch.use_cpp():
            _dispatch.ext().trie_fill_mask(np.asarray(self.child_offsets), np.asarray(self.child_tokens), s, mask)
        else:
            for r, toks in enumerate(self.allowed(s)):
                mask[r, toks[toks < vocab_size]] = True
        return mask

    def advance(self, states, tokens) -> np.ndarray:
        """Next states after ``tokens (B,)``; -1 where the token leaves the trie (or the state was dead)."""
        s = self._states(states)
        t = int_array(tokens, "tokens")
        if t.shape != s.shape:
            raise ValueError(f"tokens: expected shape {s.shape} like states, got {t.shape}")
        if _dispatch.use_cpp():
            return _dispatch.ext().trie_advance(np.asarray(self.child_offsets), np.asarray(self.child_tokens),
                                                 np.asarray(self.child_nodes), s, t)
        out = np.full(len(s), -1, dtype=np.int64)
        co, ct, cn = self.child_offsets, self.child_tokens, self.child_nodes
        for r, (v, tok) in enumerate(zip(s.tolist(), t.tolist())):
            if v >= 0:
                for e in range(co[v], co[v + 1]):
                    if ct[e] == tok:
                        out[r] = cn[e]
        return out

    def is_terminal(self, states) -> np.ndarray:
        s = self._states(states)
        io = np.asarray(self.item_offsets)
        safe = np.maximum(s, 0)
        return (s >= 0) & (io[safe + 1] > io[safe])

    def apply_to_logits(self, logits: torch.Tensor, states, on_empty: str = "raise", eos_id: int | None = None):
        """Sets disallowed logits (B, V) to -inf in place (CPU or CUDA). Returns a bool (B,) tensor
        flagging rows with no allowed token, handled by ``on_empty``: ``'raise'`` (ValueError),
        ``'eos'`` (only ``eos_id`` stays allowed), ``'keep'`` (the row is left unmasked). Never
        leaves a row all -inf, so softmax never yields NaN."""
        if on_empty not in ("raise", "eos", "keep"):
            raise ValueError(f"on_empty: expected 'raise', 'eos' or 'keep', got {on_empty!r}")
        if on_empty == "eos" and eos_id is None:
            raise ValueError("eos_id: required with on_empty='eos'")
        if logits.dim() != 2:
            raise ValueError(f"logits: expected (B, V), got {tuple(logits.shape)}")
        mask = self.allowed_mask(states, logits.shape[1])
        if mask.shape[0] != logits.shape[0]:
            raise ValueError(f"states: expected {logits.shape[0]} states, one per logits row, got {mask.shape[0]}")
        empty = ~mask.any(1)
        if empty.any():
            if on_empty == "raise":
                raise ValueError(f"states: rows {np.flatnonzero(empty).tolist()} have no allowed token; "
                                 "pass on_empty='eos' or 'keep'")
            if on_empty == "eos":
                mask[empty, eos_id] = True
            else:
                mask[empty] = True
        m = torch.from_numpy(mask).to(logits.device, non_blocking=True)
        logits.masked_fill_(~m, float("-inf"))
        return torch.from_numpy(empty).to(logits.device)


def _flatten(sequences) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(sequences, np.ndarray) or isinstance(sequences, torch.Tensor):
        a = np.asarray(sequences)
        if a.ndim != 2:
            raise ValueError(f"sequences: expected an (M, L) int array or a list of sequences, got shape {a.shape}")
        a = int_array(a, "sequences", ndim=2)
        return a.reshape(-1), np.arange(a.shape[0] + 1, dtype=np.int64) * a.shape[1]
    if not isinstance(sequences, Sequence):
        raise TypeError("sequences: expected an (M, L) int array or a list of int sequences")
    parts = [int_array(s, f"sequences[{i}]") for i, s in enumerate(sequences)]
    lengths = [len(p) for p in parts]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return flat.astype(np.int64), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
