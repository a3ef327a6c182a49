"""Document-span attention masks, built straight from document ids.

``doc_ids (B, T)`` int: the document of every token, ``-1`` for padding. Padding never attends
and is never attended, in every kind. ``links (B, Dmax, Dmax)`` (or ``(Dmax, Dmax)``, shared by
the batch) bool: ``links[b, i, j]`` lets document ``i`` see document ``j``. Kinds, for a query at
position ``q`` and a key at position ``k`` (both not padding):

- ``causal``: ``k <= q`` (documents ignored)
- ``full``: every pair
- ``doc_causal``: same document and ``k <= q``
- ``doc_bidirectional``: same document
- ``cross_doc_link``: (same document and ``k <= q``) or ``links[doc(q), doc(k)]``. A linked
  document is visible at *every* one of its positions, wherever it lies: a document linked from
  ``i`` but placed later in the sequence is seen in full by ``i`` (information then flows
  backwards across documents; put linked documents first to keep packed training causal). In a
  decoding cache (:class:`DocMaskState`) the same rule holds over cache slots; there a linked
  document is normally earlier in the cache. ``links[i, i]`` makes document ``i`` bidirectional.

The mask mod, the dense mask, the BlockMask and :class:`DocMaskState` all evaluate one rule
(``_pair_mask``), so they agree everywhere (the tests check it).

How :func:`doc_block_mask` avoids the T x T mask: it splits each row into *runs* (maximal spans
of equal id, padding included; for packed sequences a run is a document). A block of positions
touches a contiguous interval of runs, so the visible (q-run, kv-run) pairs of a block pair are a
rectangle in a (runs x runs) table. With 2-d prefix sums of that table, every block pair is empty
(count 0), full (count = area) or partial in O(1): O(T + R^2 + block pairs) time and memory for R
runs, never O(T^2). Diagonal blocks are classified in closed form, and only the rare candidates
for a full diagonal block under ``cross_doc_link`` are checked position by position.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn.attention.flex_attention import BlockMask

from craft_kernels._validate import check_int

MASK_KINDS = ("causal", "full", "doc_causal", "doc_bidirectional", "cross_doc_link")


def _check_kind(kind: str) -> None:
    if kind not in MASK_KINDS:
        raise ValueError(f"kind: expected one of {MASK_KINDS}, got {kind!r}")


# ------------------------------------------------------------------------------------------- ids
def doc_ids_from_spans(spans, T: int, device=None) -> torch.Tensor:
    """Ids from spans ``(start, end, doc)`` (end exclusive, sorted by start, non-overlapping,
    ``0 <= start <= end <= T``, ``doc >= 0``); uncovered positions are padding (-1).

    A list of ``(start, end, doc)`` gives ``(T,)`` int64; a list of such lists gives ``(B, T)``."""
    if T < 0:
        raise ValueError(f"T: must be >= 0, got {T}")
    if len(spans) and isinstance(spans[0], (list, tuple)) and len(spans[0]) and isinstance(spans[0][0], (list, tuple)):
        return torch.stack([doc_ids_from_spans(s, T, device) for s in spans])
    out = torch.full((T,), -1, dtype=torch.int64, device=device)
    prev_end = 0
    for i, sp in enumerate(spans):
        if len(sp) != 3:
            raise ValueError(f"spans[{i}]: expected (start, end, doc), got {sp!r}")
        s, e, d = (int(x) for x in sp)
        if s < prev_end or e < s or e > T or d < 0:
            raise ValueError(f"spans[{i}]={tuple(sp)!r}: spans must be sorted, non-overlapping, within "
                             f"[0, {T}] (T) and have doc >= 0; the previous span ended at {prev_end}")
        out[s:e] = d
        prev_end = e
    return out


def doc_ids_from_cu_seqlens(cu_seqlens, T: int | None = None, device=None) -> torch.Tensor:
    """``(T,)`` int64 ids from cumulative lengths ``[0, l0, l0+l1, ...]`` (flash-attn style):
    document i covers ``cu[i]:cu[i+1]``; positions from ``cu[-1]`` to ``T`` are padding."""
    cu = torch.as_tensor(cu_seqlens, device=device)
    if cu.dtype.is_floating_point or cu.dtype == torch.bool:
        raise TypeError(f"cu_seqlens: expected integers, got {cu.dtype}")
    cu = cu.long()
    if cu.dim() != 1 or cu.numel() == 0 or int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError("cu_seqlens: expected a 1-d non-decreasing sequence starting at 0")
    T = int(cu[-1]) if T is None else int(T)
    if int(cu[-1]) > T:
        raise ValueError(f"cu_seqlens: ends at {int(cu[-1])}, past T={T}; pass a larger T")
    ids = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=cu.device), cu.diff())
    return torch.cat([ids, ids.new_full((T - ids.numel(),), -1)])


def links_from_edges(edges, n_docs: int, batch_size: int | None = None, device=None) -> torch.Tensor:
    """Bool links ``(n_docs, n_docs)`` from ``[(src, dst), ...]`` (src may see dst), or
    ``(B, n_docs, n_docs)`` from ``batch_size`` such lists."""
    if n_docs < 1:
        raise ValueError(f"n_docs: must be >= 1, got {n_docs}")
    if batch_size is not None:
        if len(edges) != batch_size:
            raise ValueError(f"edges: expected {batch_size} edge lists (batch_size), got {len(edges)}")
        return torch.stack([links_from_edges(e, n_docs, device=device) for e in edges])
    out = torch.zeros(n_docs, n_docs, dtype=torch.bool, device=device)
    for s, d in edges:
        if not (0 <= s < n_docs and 0 <= d < n_docs):
            raise ValueError(f"edges: ({s}, {d}) names a document outside [0, {n_docs}); raise n_docs")
        out[s, d] = True
    return out


# ------------------------------------------------------------------------------------- the rule
def _prepare(doc_ids, kind: str, links):
    """Validate; return (doc_ids int64 (B, T), links bool (B, D, D) or None)."""
    _check_kind(kind)
    if not isinstance(doc_ids, torch.Tensor):
        raise TypeError(f"doc_ids: expected a torch.Tensor, got {type(doc_ids).__name__}")
    if doc_ids.dtype.is_floating_point or doc_ids.dtype.is_complex or doc_ids.dtype == torch.bool:
        raise TypeError(f"doc_ids: expected an integer tensor, got {doc_ids.dtype}")
    if doc_ids.dim() != 2:
        raise ValueError(f"doc_ids: expected shape (B, T), got {tuple(doc_ids.shape)}; use ids[None] for one row")
    doc_ids = doc_ids.long()
    n_docs = 0
    # inside torch.compile tracing the value checks would read data (a graph break); kinds without
    # links need no value from the data, so there they are checked only in eager calls
    if doc_ids.numel() and not (torch.compiler.is_compiling() and kind != "cross_doc_link"):
        lo, hi = torch.aminmax(doc_ids)
        if int(lo) < -1:
            raise ValueError(f"doc_ids: must be >= 0, or -1 for padding; got {int(lo)}")
        n_docs = int(hi) + 1
    B = doc_ids.shape[0]
    if kind != "cross_doc_link":
        if links is not None:
            raise ValueError(f"links: only the 'cross_doc_link' kind uses links, not {kind!r}; pass links=None")
        return doc_ids, None
    if links is None:
        links = torch.zeros(1, 1, 1, dtype=torch.bool, device=doc_ids.device)
        links = links.expand(B, max(n_docs, 1), max(n_docs, 1))
    if not isinstance(links, torch.Tensor):
        raise TypeError(f"links: expected a bool tensor, got {type(links).__name__}; see links_from_edges")
    if links.dtype.is_floating_point or links.dtype.is_complex:
        raise TypeError(f"links: expected a bool (or 0/1 integer) tensor, got {links.dtype}")
    if links.dim() == 2:
        links = links.expand(B, *links.shape)
    if links.dim() != 3 or links.shape[0] != B or links.shape[1] != links.shape[2]:
        raise ValueError(f"links: expected shape (B={B}, Dmax, Dmax) or (Dmax, Dmax), got {tuple(links.shape)}")
    if n_docs > links.shape[-1]:
        raise ValueError(f"doc_ids: document {n_docs - 1} is beyond links' Dmax={links.shape[-1]}; "
                         "size links to the largest document id + 1")
    return doc_ids, links.to(device=doc_ids.device, dtype=torch.bool)


def _pair_mask(kind, dq, dk, q_pos, k_pos, links, b):
    """The rule: query docs ``dq`` at ``q_pos`` against key docs ``dk`` at ``k_pos`` (broadcastable
    tensors) -> bool; ``links`` (B, D, D) indexed by batch ``b``."""
    valid = (dq >= 0) & (dk >= 0)
    if kind == "full":
        return valid
    if kind == "causal":
        return valid & (k_pos <= q_pos)
    same = dq == dk
    if kind == "doc_bidirectional":
        return valid & same
    m = valid & same & (k_pos <= q_pos)
    if kind == "cross_doc_link":
        m = m | (valid & links[b, dq.clamp(min=0), dk.clamp(min=0)])
    return m


def _mask_mod(kind, doc_ids, links) -> Callable:
    def mask_mod(b, h, q_idx, kv_idx):
        return _pair_mask(kind, doc_ids[b, q_idx], doc_ids[b, kv_idx], q_idx, kv_idx, links, b)

    return mask_mod


def doc_mask_mod(doc_ids: torch.Tensor, kind: str = "doc_causal", links: torch.Tensor | None = None) -> Callable:
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` for ``doc_ids (B, T)`` and
    optional ``links``; it closes over tensors only, so new lengths or contents never recompile.
    Arguments in the order of :func:`doc_dense_mask` and :func:`doc_block_mask`; the old order
    ``(kind, doc_ids, links)`` still works, with a DeprecationWarning."""
    if isinstance(doc_ids, str) and isinstance(kind, torch.Tensor):
        warnings.warn("doc_mask_mod(kind, doc_ids, links) is deprecated, use doc_mask_mod(doc_ids, kind, links)",
                      DeprecationWarning, stacklevel=2)
        doc_ids, kind = kind, doc_ids
    doc_ids, links = _prepare(doc_ids, kind, links)
    return _mask_mod(kind, doc_ids, links)


def doc_dense_mask(doc_ids: torch.Tensor, kind: str = "doc_causal", links: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, 1, T, T)`` bool mask for SDPA (True = attend), on doc_ids' device."""
    doc_ids, links = _prepare(doc_ids, kind, links)
    B, T = doc_ids.shape
    pos = torch.arange(T, device=doc_ids.device)
    b = torch.arange(B, device=doc_ids.device)[:, None, None]
    return _pair_mask(kind, doc_ids[:, :, None], doc_ids[:, None, :], pos[:, None], pos[None, :], links, b)[:, None]


# ------------------------------------------------------------------------------- the BlockMask
def _rect_count(S, b, r0, r1, c0, c1):
    """Number of True entries in rows r0..r1, columns c0..c1 (inclusive) from prefix sums S."""
    return S[b, r1 + 1, c1 + 1] - S[b, r0, c1 + 1] - S[b, r1 + 1, c0] + S[b, r0, c0]


def _prefix_sums(table: torch.Tensor) -> torch.Tensor:
    B, R, _ = table.shape
    S = torch.zeros(B, R + 1, R + 1, dtype=torch.int32, device=table.device)
    S[:, 1:, 1:] = table.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    return S


_MIN_RUN_TABLE = 1 << 20  # (runs x runs) tables up to this size are always fine


def _block_flags_by_position(kind, ids, links, bs, chunk_elems=1 << 22):
    """The fallback for rows with very many runs: evaluate the rule q-block by q-block in chunks
    (O(T^2) time, O(chunk) memory)."""
    B, Tp = ids.shape
    nb, dev = Tp // bs, ids.device
    pos = torch.arange(Tp, device=dev)
    b = torch.arange(B, device=dev)[:, None, None]
    step = max(1, chunk_elems // (B * Tp * bs))
    anys, alls = [], []
    for q0 in range(0, nb, step):
        q = pos[q0 * bs:min(nb, q0 + step) * bs]
        m = _pair_mask(kind, ids[:, q, None], ids[:, None, :], q[:, None], pos[None, :], links, b)
        m = m.view(B, -1, bs, nb, bs)
        anys.append(m.any(4).any(2))
        alls.append(m.all(4).all(2))
    nonempty, full = torch.cat(anys, 1), torch.cat(alls, 1)
    return nonempty & ~full, full


def _block_flags(kind, ids, links, bs):
    """Partial and full flags (B, nb, nb) for padded ids (B, nb * bs)."""
    B, Tp = ids.shape
    nb, dev = Tp // bs, ids.device
    change = torch.ones(B, Tp, dtype=torch.bool, device=dev)
    change[:, 1:] = ids[:, 1:] != ids[:, :-1]
    run = change.cumsum(1) - 1  # (B, Tp) run index of each position
    R = int(run[:, -1].max()) + 1
    if R * R > max(Tp * bs, _MIN_RUN_TABLE):  # ids that change almost every token: go position by position
        return _block_flags_by_position(kind, ids, links, bs)
    run_doc = torch.full((B, R), -1, dtype=torch.int64, device=dev).scatter_(1, run, ids)
    first, last = run[:, ::bs], run[:, bs - 1::bs]  # (B, nb) run interval of each block
    bi = torch.arange(B, device=dev)
    bq, b3 = bi[:, None, None], bi[:, None, None]
    dq, dk = run_doc[:, :, None], run_doc[:, None, :]
    one, zero = torch.ones((), dtype=torch.int64, device=dev), torch.zeros((), dtype=torch.int64, device=dev)
    q0, q1 = first[:, :, None], last[:, :, None]
    k0, k1 = first[:, None, :], last[:, None, :]
    area = (q1 - q0 + 1) * (k1 - k0 + 1)
    # strictly below the diagonal every key precedes every query; strictly above, follows it
    below_t = _pair_mask(kind, dq, dk, one, zero, links, b3)
    n_below = _rect_count(_prefix_sums(below_t), bq, q0, q1, k0, k1)
    if kind in ("causal", "doc_causal"):
        n_above = torch.zeros_like(n_below)
    else:
        above_t = _pair_mask(kind, dq, dk, zero, one, links, b3)
        n_above = _rect_count(_prefix_sums(above_t), bq, q0, q1, k0, k1)
    blk = torch.arange(nb, device=dev)
    lower = blk[:, None] > blk[None, :]
    count = torch.where(lower, n_below, n_above)
    nonempty, full = count > 0, count == area
    # diagonal: every valid token sees itself; full only in the cases below
    valid = (ids >= 0).view(B, nb, bs)
    d_any, d_all = valid.any(-1), valid.all(-1)
    if kind == "full":
        d_full = d_all
    elif kind == "doc_bidirectional":
        d_full = d_all & (first == last)
    elif kind in ("causal", "doc_causal"):
        d_full = d_all & (bs == 1)
    else:  # cross_doc_link: candidates need each run to see the next run and be seen by it (or,
        # for a one-run block, to see itself); candidates are then checked position by position
        r = torch.arange(R, device=dev)
        nxt = (r + 1).clamp(max=R - 1)
        ok = above_t[:, r, nxt] & below_t[:, nxt, r] & (r < R - 1)  # (B, R)
        bad_before = torch.cat([ok.new_zeros(B, 1, dtype=torch.int64), (~ok).long().cumsum(1)], 1)
        chain = (bad_before.gather(1, last) - bad_before.gather(1, first)) == 0  # ok[first:last] all set
        self_ok = above_t[:, r, r].gather(1, first)
        d_full = d_all & ((bs == 1) | torch.where(first == last, self_ok, chain))
        cb, cn = torch.nonzero(d_full, as_tuple=True)
        if cb.numel():
            blocks = ids.view(B, nb, bs)[cb, cn]  # (n, bs) candidates, checked position by position
            p = torch.arange(bs, device=dev)
            m = _pair_mask(kind, blocks[:, :, None], blocks[:, None, :], p[:, None], p[None, :], links, cb[:, None, None])
            d_full = d_full.clone()
            d_full[cb, cn] = m.flatten(1).all(-1)
    nonempty[:, blk, blk] = d_any
    full[:, blk, blk] = d_full
    return nonempty & ~full, full


def _pack(flags: torch.Tensor):
    """(B, nq, nk) bool -> num (B, 1, nq) int32, indices (B, 1, nq, nk) int32, set blocks first."""
    num = flags.sum(-1, dtype=torch.int32)
    idx = torch.argsort(flags.to(torch.uint8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num[:, None], idx[:, None]


def doc_block_mask(doc_ids: torch.Tensor, kind: str = "doc_causal", links: torch.Tensor | None = None,
                   block_size: int = 128) -> BlockMask:
    """A FlexAttention ``BlockMask`` (B, 1 head broadcast, T, T) built directly from
    ``doc_ids (B, T)`` (any int dtype, -1 = padding) on their device (CPU or CUDA), in
    O(T + R^2 + (T / block_size)^2) for R runs of equal id, never materialising T x T.
    ``to_dense()`` and the full/partial block counts equal
    ``create_block_mask(doc_mask_mod(doc_ids, kind, links), B, None, T, T, BLOCK_SIZE=block_size)``'s;
    T need not be a multiple of ``block_size`` (the tail block is never full)."""
    doc_ids, links = _prepare(doc_ids, kind, links)
    block_size = check_int(block_size, "block_size", 1)
    B, T = doc_ids.shape
    if B == 0 or T == 0:
        raise ValueError(f"doc_ids: expected B >= 1 and T >= 1, got shape {tuple(doc_ids.shape)}")
    nb = -(-T // block_size)
    ids = torch.full((B, nb * block_size), -1, dtype=torch.int64, device=doc_ids.device)
    ids[:, :T] = doc_ids
    partial, full = _block_flags(kind, ids, links, block_size)
    kv_num, kv_idx = _pack(partial)
    full_num, full_idx = _pack(full)
    # the mask mod reads the padded ids, so a kernel touching the tail block stays in bounds
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size,
                                    mask_mod=_mask_mod(kind, ids, links), seq_lengths=(T, T))


# ---------------------------------------------------------------------------- decoding state
class DocMaskState:
    """The documents held in a static KV cache of ``max_seq_len`` slots, for decoding.

    ``start_document(doc, links_to)`` makes ``doc`` (in ``[0, max_docs)``) current and lets it see
    ``links_to`` (``cross_doc_link``); ``append(n)`` gives the next ``n`` free slots (from
    ``length``) to the current document and returns them (int64 ``(n,)``); ``evict(doc)`` hides
    a document's slots and drops its links; ``compact()`` moves the slots still in use to the
    front and returns the gather index (int64 ``(length,)``) the caller applies to its KV cache.

    ``query_mask(n)`` -> bool ``(1, 1, n, max_seq_len)``: the last ``n`` appended tokens against every
    slot (CPU/SDPA path); ``block_mask(n)`` -> the same as a ``BlockMask`` with one query block
    (CUDA/flex path, ``n <= block_size``). Both equal the rows of ``doc_dense_mask`` rebuilt from
    ``doc_ids`` and the links. The state keeps the visible-slot row of the current document and
    its per-block counts up to date: ``append(n)`` costs O(n) element writes (on CPU through NumPy
    views of the same memory, no torch op per write); a step's ``query_mask(n)`` copies that row
    (n x max_seq_len bools) and fixes the n x n corner, ``block_mask(n)`` reads the block
    counts and recomputes only the blocks holding the query tokens; ``start_document``, ``evict``
    and ``compact`` cost O(max_seq_len). The BlockMask's mask mod reads the state's own buffers (updated in place),
    so a compiled flex kernel never recompiles between steps; use each BlockMask before the next
    state change.
    """

    def __init__(self, max_seq_len: int | None = None, max_docs: int | None = None, kind: str = "cross_doc_link",
                 device="cpu", block_size: int = 128, *, max_len: int | None = None):
        if max_len is not None:  # the old name of max_seq_len
            if max_seq_len is not None:
                raise TypeError("DocMaskState: pass max_seq_len only (max_len is its deprecated name)")
            warnings.warn("DocMaskState: max_len is deprecated, use max_seq_len", DeprecationWarning, stacklevel=2)
            max_seq_len = max_len
        if max_seq_len is None or max_docs is None:
            raise TypeError("DocMaskState: max_seq_len and max_docs are required")
        _check_kind(kind)
        if max_seq_len < 1 or max_docs < 1:
            raise ValueError(f"max_seq_len, max_docs: must be >= 1, got {max_seq_len}, {max_docs}")
        if block_size < 1:
            raise ValueError(f"block_size: must be >= 1, got {block_size}")
        self.max_seq_len, self.max_docs, self.kind, self.block_size = int(max_seq_len), int(max_docs), kind, int(block_size)
        self.n_blocks = -(-self.max_seq_len // self.block_size)
        dev = torch.device(device)
        self.doc_ids = torch.full((self.max_seq_len,), -1, dtype=torch.int64, device=dev)
        self.links = torch.zeros(self.max_docs, self.max_docs, dtype=torch.bool, device=dev)
        self.length = 0
        self.current_doc: int | None = None
        self._n_last = 0  # tokens of the last append still at the tail of the cache
        self._row = torch.zeros(self.max_seq_len, dtype=torch.bool, device=dev)  # a new current-doc token's view
        self._count = torch.zeros(self.n_blocks, dtype=torch.int64, device=dev)  # visible slots per block
        self._slots = torch.arange(self.max_seq_len, device=dev)
        self._qslots = torch.zeros(self.block_size, dtype=torch.int64, device=dev)  # read by the mask mod
        self._mask_mod = self._make_mask_mod()
        # CPU: NumPy views of the same memory, so a decoding step's few element updates cost no
        # torch op dispatch (the step is O(n) element writes plus one row copy)
        self._np = (self.doc_ids.numpy(), self._row.numpy(), self._count.numpy()) if dev.type == "cpu" else None
        if self._np is not None:  # the row as a (1, 1, 1, max_seq_len) view: one copy makes query_mask(1)
            self._row4 = self._np[1].reshape(1, 1, 1, self.max_seq_len)

    @property
    def max_len(self) -> int:
        """Deprecated name of ``max_seq_len``."""
        warnings.warn("DocMaskState.max_len is deprecated, use max_seq_len", DeprecationWarning, stacklevel=2)
        return self.max_seq_len

    # -- bookkeeping
    def _doc(self, doc, name: str) -> int:
        ok = isinstance(doc, numbers.Integral) or (isinstance(doc, torch.Tensor) and doc.numel() == 1
                                                   and not doc.dtype.is_floating_point)
        if isinstance(doc, bool) or not ok:
            raise TypeError(f"{name}: expected an int document id, got {doc!r}")
        if not 0 <= int(doc) < self.max_docs:
            raise ValueError(f"{name}: document {int(doc)} is outside [0, max_docs={self.max_docs})")
        return int(doc)

    def _rule(self, dq, dk, q_pos, k_pos):
        return _pair_mask(self.kind, dq, dk, q_pos, k_pos, self.links[None], 0)

    def _refresh_row(self) -> None:
        """Recompute the current document's row (slots all precede the next token)."""
        if self.current_doc is None:
            self._row.zero_()
        else:
            cur = self.doc_ids.new_tensor(self.current_doc)
            self._row.copy_(self._rule(cur, self.doc_ids, self._slots.new_tensor(self.max_seq_len), self._slots))
        self._count.zero_().index_add_(0, self._slots // self.block_size, self._row.long())

    # -- operations
    def start_document(self, doc: int, links_to: Sequence[int] = ()) -> None:
        """Make ``doc`` current (new, or resuming one already in the cache); it sees ``links_to``."""
        doc = self._doc(doc, "doc")
        targets = [self._doc(t, "links_to") for t in links_to]
        if targets:
            self.links[doc, targets] = True
        self.current_doc = doc
        self._n_last = 0
        self._refresh_row()

    def append(self, n: int) -> torch.Tensor:
        """Give the next ``n`` slots to the current document; returns them, int64 ``(n,)``."""
        a = self.length
        if (self._np is not None and type(n) is int and 0 < n <= self.max_seq_len - a
                and self.current_doc is not None):
            # the decoding step on CPU: a few element writes through the NumPy views
            ids, row, count = self._np
            b = a + n
            if n == 1:
                ids[a] = self.current_doc
                row[a] = True  # a document's own earlier tokens are visible under every kind
                count[a // self.block_size] += 1
            else:
                ids[a:b] = self.current_doc
                row[a:b] = True
                for blk in range(a // self.block_size, (b - 1) // self.block_size + 1):  # blocks the slots touch
                    count[blk] += min(b, (blk + 1) * self.block_size) - max(a, blk * self.block_size)
            self.length, self._n_last = b, n
            return torch.from_numpy(np.arange(a, b))
        if self.current_doc is None:
            raise RuntimeError("append: no current document; call start_document(doc) first")
        n = check_int(n, "n", 1)
        if self.length + n > self.max_seq_len:
            raise ValueError(f"n: {n} more tokens do not fit ({self.length} of {self.max_seq_len} slots used); "
                             "evict a document and compact()")
        if self._np is not None:  # valid, but not a plain int (a NumPy integer, a bool-free Integral)
            return self.append(int(n))
        a, b = self.length, self.length + n
        slots = self._slots[a:b]
        self.doc_ids[slots] = self.current_doc
        self._row[slots] = True
        self._count.index_add_(0, slots // self.block_size, torch.ones_like(slots))
        self.length += n
        self._n_last = n
        return slots.clone()

    def evict(self, doc: int) -> None:
        """Hide ``doc``'s slots (free after ``compact()``) and drop its links."""
        doc = self._doc(doc, "doc")
        self.doc_ids[self.doc_ids == doc] = -1
        self.links[doc, :] = False
        self.links[:, doc] = False
        if self.current_doc == doc:
            self.current_doc = None
            self._n_last = 0
        self._refresh_row()

    def compact(self) -> torch.Tensor:
        """Move used slots to the front, in order; returns ``keep`` (int64), the old slot of each
        new slot ``0..len(keep)-1``: gather the KV cache with it (``cache[..., keep, :]``)."""
        used = self.doc_ids[: self.length] >= 0
        keep = torch.nonzero(used).flatten()
        tail = self.length - self._n_last
        self._n_last = int(used[tail:].sum())  # the last append stays at the tail
        kept = self.doc_ids[keep]
        self.doc_ids.fill_(-1)
        self.doc_ids[: keep.numel()] = kept
        self.length = keep.numel()
        self._refresh_row()
        return keep

    # -- masks
    def _check_query(self, n_query: int) -> None:
        check_int(n_query, "n_query", 1, self._n_last, hint=" (tokens of the last append of the current document)")

    def query_mask(self, n_query: int = 1) -> torch.Tensor:
        """bool ``(1, 1, n_query, max_seq_len)``: the last ``n_query`` appended tokens against every slot."""
        if n_query == 1 and type(n_query) is int and self._n_last >= 1 and self._np is not None:
            # the decoding step on CPU: one query token sees exactly the current document's row
            # (its own slot, the corner, is already in it); one 1-byte-per-slot copy
            return torch.from_numpy(self._row4.copy())
        self._check_query(n_query)
        rows = self._row.expand(n_query, self.max_seq_len).clone()
        s = self._slots[self.length - n_query:self.length]
        cur = self.doc_ids[s]
        rows[:, s] = self._rule(cur[:, None], cur[None, :], s[:, None], s[None, :])
        return rows[None, None]

    def _make_mask_mod(self) -> Callable:
        doc_ids, links, qslots, kind = self.doc_ids, self.links, self._qslots, self.kind

        def mask_mod(b, h, q_idx, kv_idx):
            q = qslots[q_idx]
            return _pair_mask(kind, doc_ids[q], doc_ids[kv_idx], q, kv_idx, links[None], 0)

        return mask_mod

    def block_mask(self, n_query: int = 1) -> BlockMask:
        """BlockMask (1, 1, n_query, max_seq_len) equal to ``query_mask(n_query)`` (``n_query <= block_size``)."""
        self._check_query(n_query)
        bs = self.block_size
        if n_query > bs:
            raise ValueError(f"n_query: at most block_size={bs} query tokens per BlockMask, got {n_query}")
        width = torch.full((self.n_blocks,), bs, dtype=torch.int64, device=self._count.device)
        width[-1] = bs if self.max_seq_len % bs == 0 else -1  # a tail block past max_seq_len is never full
        anyb, allb = self._count > 0, self._count == width
        # blocks holding the query tokens differ between rows: recompute them from the exact rows
        lo, hi = (self.length - n_query) // bs, (self.length - 1) // bs
        rows = self.query_mask(n_query)[0, 0, :, lo * bs:min((hi + 1) * bs, self.max_seq_len)]
        pad = (hi - lo + 1) * bs - rows.shape[1]
        if pad:
            rows = torch.cat([rows, rows.new_zeros(n_query, pad)], 1)
        touched = rows.view(n_query, hi - lo + 1, bs)
        anyb[lo:hi + 1] = touched.any(-1).any(0)
        allb[lo:hi + 1] = touched.all(-1).all(0)
        self._qslots[:n_query] = self._slots[self.length - n_query:self.length]
        kv_num, kv_idx = _pack((anyb & ~allb)[None, None])
        full_num, full_idx = _pack(allb[None, None])
        return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=bs, mask_mod=self._mask_mod,
                                        seq_lengths=(n_query, self.max_seq_len), compute_q_blocks=False)
