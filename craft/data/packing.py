"""Packing documents into training sequences with document ids.

The documents of a pretokenized corpus are concatenated, each followed by EOS, into one stream
(never materialised: windows are gathered from the memory-mapped shards). Window ``i`` is the
``seq_len + 1`` tokens starting at ``i * seq_len``: inputs ``w[:-1]``, targets ``w[1:]``, so every
token of the stream is a target exactly once per epoch and nothing is padded. Each token carries
the index of its document (its EOS included) renumbered from 0 inside the window, which the model
uses to keep attention inside documents.

:class:`WindowSampler` walks the windows in a seeded random order, epoch after epoch; its
``state_dict`` (epoch, index) is the data position a checkpoint stores.
"""
from __future__ import annotations

import numpy as np
import torch

from craft_kernels import check_int

from craft.data.pretokenize import PretokenizedCorpus


class PackedSequences:
    """Windows of ``seq_len + 1`` tokens over the EOS-joined document stream of ``corpus``."""

    def __init__(self, corpus: PretokenizedCorpus, seq_len: int):
        check_int(seq_len, "seq_len", 1)
        self.corpus = corpus
        self.seq_len = seq_len
        self.eos_id = corpus.eos_id
        self.starts = np.concatenate([[0], np.cumsum(corpus.doc_lengths + 1)])  # stream start of each document
        self.stream_len = int(self.starts[-1])
        self.n_windows = max(0, (self.stream_len - 1) // seq_len)
        if self.n_windows == 0:
            raise ValueError(f"seq_len={seq_len}: the corpus has only {self.stream_len} tokens (EOS included); "
                             f"it needs at least seq_len + 1 = {seq_len + 1}; lower seq_len or add text")

    def __len__(self) -> int:
        return self.n_windows

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``i``: tokens (seq_len + 1,) int64 and doc_ids (seq_len + 1,) int64 (0 = first document in it)."""
        if not 0 <= i < self.n_windows:
            raise IndexError(f"window {i}: expected 0 <= i < {self.n_windows}")
        L = self.seq_len + 1
        s = i * self.seq_len
        tokens = np.empty(L, dtype=np.int64)
        docs = np.empty(L, dtype=np.int64)
        d = int(np.searchsorted(self.starts, s, side="right")) - 1
        pos, first = s, d
        while pos < s + L:
            lo, hi = int(self.starts[d]), int(self.starts[d + 1])  # hi - 1 is this document's EOS
            take_end = min(hi, s + L)
            a, b = pos - s, take_end - s
            body_end = min(take_end, hi - 1)
            if body_end > pos:
                tokens[a:a + body_end - pos] = self.corpus.document(d)[pos - lo:body_end - lo]
            if take_end == hi:
                tokens[b - 1] = self.eos_id
            docs[a:b] = d - first
            pos, d = take_end, d + 1
        return tokens, docs

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Windows ``indices`` stacked: ``tokens``, ``targets``, ``doc_ids``, each (B, seq_len) long."""
        pairs = [self.window(int(i)) for i in indices]
        tok = torch.from_numpy(np.stack([p[0] for p in pairs])) if pairs else torch.zeros(0, self.seq_len + 1,
                                                                                           dtype=torch.long)
        doc = torch.from_numpy(np.stack([p[1] for p in pairs])) if pairs else torch.zeros_like(tok)
        return {"tokens": tok[:, :-1].contiguous(), "targets": tok[:, 1:].contiguous(),
                "doc_ids": doc[:, :-1].contiguous()}


def split_windows(n_windows: int, eval_fraction: float = 0.02, max_eval: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Train and eval window indices: the last ``eval_fraction`` of the stream (at least 1, at most
    ``max_eval`` windows) is held out; with fewer than 2 windows both sets are the single window."""
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction: expected a number in [0, 1), got {eval_fraction!r}")
    if n_windows < 2 or eval_fraction == 0:
        all_ = np.arange(n_windows)
        return all_, all_[-1:] if eval_fraction == 0 else all_
    n_eval = min(max_eval, max(1, int(round(n_windows * eval_fraction))))
    return np.arange(n_windows - n_eval), np.arange(n_windows - n_eval, n_windows)


class WindowSampler:
    """Seeded order over ``items`` (e.g. train window indices): epoch ``e`` visits them in the
    permutation drawn from ``np.random.default_rng([seed, e])``. ``take(n)`` returns the next n
    items (crossing into the next epoch when needed); ``state_dict``/``load_state_dict`` hold the
    position."""

    def __init__(self, items, seed: int = 0):
        self.items = np.asarray(items, dtype=np.int64)
        if self.items.size == 0:
            raise ValueError("items: the sampler needs at least one item")
        self.seed = int(seed)
        self.epoch = 0
        self.index = 0
        self._perm_epoch = -1
        self._perm = None

    def _order(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            self._perm = self.items[np.random.default_rng([self.seed, self.epoch]).permutation(len(self.items))]
            self._perm_epoch = self.epoch
        return self._perm

    def take(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            order = self._order()
            chunk = order[self.index:self.index + n]
            out.append(chunk)
            n -= len(chunk)
            self.index += len(chunk)
            if self.index == len(order):
                self.epoch, self.index = self.epoch + 1, 0
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n_items": int(len(self.items))}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("n_items", len(self.items))) != len(self.items):
            raise ValueError(f"data position: saved for {state['n_items']} windows, this corpus has "
                             f"{len(self.items)}; resume with the same corpus and seq_len")
        self.seed = int(state.get("seed", self.seed))
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
