"""Document-span attention masks, built straight from document ids.

``doc_ids (B, T)`` int: the document of every token, ``-1`` for padding. Padding never attends
and is never attended, in every kind. ``links (B, Dmax, Dmax)`` bool: ``links[b, i, j]`` lets
document ``i`` see document ``j``. Kinds (query position ``q``, key position ``k``):

- ``causal``: ``k <= q``
- ``full``: every pair
- ``doc_causal``: same document and ``k <= q``
- ``doc_bidirectional``: same document
- ``cross_doc_link``: same document and ``k <= q``, or ``links[doc(q), doc(k)]`` — a linked
  document is visible at every position, wherever it lies in the sequence.

:func:`doc_block_mask` classifies each (q-block, kv-block) pair without the T x T mask: per block
it records which documents appear (a (blocks, Dmax) presence matrix, O(T)), and a pair of blocks
strictly below / above the diagonal is empty, partial or full according to a (Dmax x Dmax)
document-pair table for that side (matrix products over presence); only diagonal blocks are
evaluated position by position (O(T * block_size)). :class:`DocMaskState` tracks the documents in
a KV cache while decoding.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.nn.attention.flex_attention import BlockMask

MASK_KINDS = ("causal", "full", "doc_causal", "doc_bidirectional", "cross_doc_link")


def _check_kind(kind: str) -> None:
    if kind not in MASK_KINDS:
        raise ValueError(f"kind: expected one of {MASK_KINDS}, got {kind!r}")


def doc_ids_from_spans(spans: Sequence[Sequence[int]], T: int, device=None) -> torch.Tensor:
    """``(T,)`` int64 ids from spans ``(start, end, doc)`` (end exclusive, in order, non-overlapping);
    uncovered positions are padding (-1). Pass a list of span lists for a batch: ``(B, T)``."""
    if spans and isinstance(spans[0], (list, tuple)) and spans[0] and isinstance(spans[0][0], (list, tuple)):
        return torch.stack([doc_ids_from_spans(s, T, device) for s in spans])
    out = torch.full((T,), -1, dtype=torch.int64, device=device)
    prev_end = 0
    for i, sp in enumerate(spans):
        if len(sp) != 3:
            raise ValueError(f"spans[{i}]: expected (start, end, doc), got {sp!r}")
        s, e, d = (int(x) for x in sp)
        if s < prev_end or e < s or e > T or d < 0:
            raise ValueError(f"spans[{i}]={sp!r}: spans must be in order, non-overlapping, within [0, {T}] "
                             "with doc >= 0")
        out[s:e] = d
        prev_end = e
    return out


def doc_ids_from_cu_seqlens(cu_seqlens, T: int | None = None, device=None) -> torch.Tensor:
    """``(T,)`` ids from cumulative lengths ``[0, l0, l0+l1, ...]``: document i covers
    ``cu[i]:cu[i+1]``; positions past ``cu[-1]`` (up to ``T``) are padding."""
    cu = torch.as_tensor(cu_seqlens, dtype=torch.int64, device=device)
    if cu.dim() != 1 or cu.numel() == 0 or cu[0] != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError("cu_seqlens: expected a 1-d non-decreasing sequence starting at 0")
    T = int(cu[-1]) if T is None else T
    if int(cu[-1]) > T:
        raise ValueError(f"cu_seqlens: ends at {int(cu[-1])}, past T={T}")
    lengths = cu.diff()
    ids = torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), lengths)
    return torch.cat([ids, ids.new_full((T - ids.numel(),), -1)])


def links_from_edges(edges, n_docs: int, batch_size: int | None = None, device=None) -> torch.Tensor:
    """Bool links ``(n_docs, n_docs)`` from ``[(src, dst), ...]``, or ``(B, n_docs, n_docs)`` from a
    list of such lists (``batch_size`` of them)."""
    if batch_size is not None:
        if len(edges) != batch_size:
            raise ValueError(f"edges: expected {batch_size} edge lists, got {len(edges)}")
        return torch.stack([links_from_edges(e, n_docs, device=device) for e in edges])
    out = torch.zeros(n_docs, n_docs, dtype=torch.bool, device=device)
    for s, d in edges:
        if not (0 <= s < n_docs and 0 <= d < n_docs):
            raise ValueError(f"edges: ({s}, {d}) names a document outside [0, {n_docs})")
        out[s, d] = True
    return out


def _prepare(doc_ids: torch.Tensor, kind: str, links: torch.Tensor | None):
    _check_kind(kind)
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.dim() != 2 or doc_ids.dtype.is_floating_point:
        raise ValueError(f"doc_ids: expected an int tensor of shape (B, T), got {getattr(doc_ids, 'shape', doc_ids)}")
    doc_ids = doc_ids.long()
    if doc_ids.numel() and int(doc_ids.min()) < -1:
        raise ValueError("doc_ids: must be >= 0, or -1 for padding")
    B = doc_ids.shape[0]
    n_docs = int(doc_ids.max()) + 1 if doc_ids.numel() else 0
    if kind == "cross_doc_link":
        if links is None:
            links = torch.zeros(B, max(n_docs, 1), max(n_docs, 1), dtype=torch.bool, device=doc_ids.device)
        if links.dim() == 2:
            links = links.expand(B, *links.shape)
        if links.dim() != 3 or links.shape[0] != B or links.shape[1] != links.shape[2]:
            raise ValueError(f"links: expected a bool tensor (B={B}, Dmax, Dmax), got {tuple(links.shape)}")
        if n_docs > links.shape[-1]:
            raise ValueError(f"doc_ids: document {n_docs - 1} is beyond links' Dmax={links.shape[-1]}; "
                             "size links to the largest document id + 1")
        links = links.to(device=doc_ids.device, dtype=torch.bool)
    elif links is not None:
        raise ValueError(f"links: only the 'cross_doc_link' kind uses links, not {kind!r}")
    return doc_ids, links


def _pair_mask(kind, dq, dk, q_pos, k_pos, links, b=None):
    """The mask for query docs ``dq``/positions ``q_pos`` against key docs ``dk``/positions ``k_pos``
    (broadcastable tensors); ``links`` indexed by ``b`` when given."""
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
        linked = links[b, dq.clamp(min=0), dk.clamp(min=0)]
        m = m | (valid & linked)
    return m


def doc_mask_mod(kind: str, doc_ids: torch.Tensor, links: torch.Tensor | None = None) -> Callable:
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` closing over tensors only (changing lengths
    or contents never recompiles)."""
    doc_ids, links = _prepare(doc_ids, kind, links)

    def mask_mod(b, h, q_idx, kv_idx):
        return _pair_mask(kind, doc_ids[b, q_idx], doc_ids[b, kv_idx], q_idx, kv_idx, links, b)

    return mask_mod


def doc_dense_mask(doc_ids: torch.Tensor, kind: str = "doc_causal", links: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, 1, T, T)`` bool mask for SDPA (True = attend)."""
    doc_ids, links = _prepare(doc_ids, kind, links)
    B, T = doc_ids.shape
    pos = torch.arange(T, device=doc_ids.device)
    b = torch.arange(B, device=doc_ids.device)[:, None, None]
    m = _pair_mask(kind, doc_ids[:, :, None], doc_ids[:, None, :], pos[:, None], pos[None, :], links, b)
    return m[:, None]


def _side_tables(kind, links, B, D, device):
    """(B, D, D) doc-pair tables for blocks strictly below and strictly above the diagonal."""
    eye = torch.eye(D, dtype=torch.bool, device=device).expand(B, D, D)
    ones = torch.ones(B, D, D, dtype=torch.bool, device=device)
    none = torch.zeros(B, D, D, dtype=torch.bool, device=device)
    below = {"causal": ones, "full": ones, "doc_causal": eye, "doc_bidirectional": eye}.get(kind)
    above = {"causal": none, "full": ones, "doc_causal": none, "doc_bidirectional": eye}.get(kind)
    if kind == "cross_doc_link":
        lk = links[:, :D, :D]
        below, above = eye | lk, lk
    return below, above


def doc_block_mask(doc_ids: torch.Tensor, kind: str = "doc_causal", links: torch.Tensor | None = None,
                   block_size: int = 128) -> BlockMask:
    """A FlexAttention ``BlockMask`` built directly from ``doc_ids (B, T)`` in O(T * block_size +
    block pairs * Dmax) time, never materialising T x T; ``to_dense()`` equals
    ``create_block_mask(doc_mask_mod(...), B, 1, T, T)``'s."""
    doc_ids, links = _prepare(doc_ids, kind, links)
    if block_size < 1:
        raise ValueError(f"block_size: must be >= 1, got {block_size}")
    B, T = doc_ids.shape
    dev = doc_ids.device
    nb = -(-T // block_size)
    Tp = nb * block_size
    ids = torch.full((B, Tp), -1, dtype=torch.int64, device=dev)
    ids[:, :T] = doc_ids
    D = max(int(doc_ids.max()) + 1 if doc_ids.numel() else 1, 1)
    blocks = ids.view(B, nb, block_size)
    # presence of every document in every block (padding dropped), and blocks with any padding
    pres = torch.zeros(B, nb, D + 1, device=dev)
    pres.scatter_(2, (blocks + 1), 1.0)  # column 0 counts padding
    has_pad = pres[..., 0] > 0
    pres = pres[..., 1:]
    below, above = _side_tables(kind, links, B, D, dev)
    any_b = (pres @ below.float() @ pres.transpose(1, 2)) > 0
    bad_b = (pres @ (~below).float() @ pres.transpose(1, 2)) > 0
    any_a = (pres @ above.float() @ pres.transpose(1, 2)) > 0
    bad_a = (pres @ (~above).float() @ pres.transpose(1, 2)) > 0
    clean = ~has_pad[:, :, None] & ~has_pad[:, None, :]
    qb = torch.arange(nb, device=dev)
    lower = qb[:, None] > qb[None, :]
    upper = qb[:, None] < qb[None, :]
    nonempty = torch.where(lower, any_b, torch.where(upper, any_a, torch.zeros_like(any_b)))
    full = torch.where(lower, ~bad_b & any_b & clean, torch.where(upper, ~bad_a & any_a & clean, torch.zeros_like(any_b)))
    # diagonal blocks, position by position
    p = torch.arange(block_size, device=dev)
    bidx = torch.arange(B, device=dev)[:, None, None, None]
    diag = _pair_mask(kind, blocks[:, :, :, None], blocks[:, :, None, :], p[:, None], p[None, :],
                      links if links is None else torch.nn.functional.pad(links, (0, 0, 0, 0)), bidx)
    d_any = diag.flatten(2).any(-1)
    d_all = diag.flatten(2).all(-1)
    nonempty[:, qb, qb] = d_any
    full[:, qb, qb] = d_all
    partial = nonempty & ~full
    return _from_block_flags(partial, full, block_size, T, T, doc_mask_mod(kind, doc_ids, links))


def _from_block_flags(partial: torch.Tensor, full: torch.Tensor, block_size, q_len, kv_len, mask_mod) -> BlockMask:
    """BlockMask from (B, nQB, nKB) partial/full flags (heads broadcast)."""
    def pack(flags):
        num = flags.sum(-1, dtype=torch.int32)
        idx = torch.argsort(flags.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return num[:, None], idx[:, None]

    kv_num, kv_idx = pack(partial)
    full_num, full_idx = pack(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod,
                                    seq_lengths=(q_len, kv_len))


class DocMaskState:
    """The documents held in a static KV cache of ``max_len`` slots, for decoding.

    ``start_document(doc, links_to)`` makes ``doc`` current (and lets it see ``links_to``);
    ``append(n)`` gives the next n slots to the current document; ``evict(doc)`` hides a
    document's slots; ``compact()`` drops hidden slots and returns the gather index the caller
    applies to its KV cache. ``query_mask(n)`` is the (1, 1, n, max_len) bool mask of the last n
    appended tokens against every slot (the CPU/SDPA path), ``block_mask(n)`` the same as a
    BlockMask (the CUDA/flex path). Each costs O(max_len) vectorised work, independent of history.
    """

    def __init__(self, max_len: int, max_docs: int, kind: str = "cross_doc_link", device="cpu", block_size: int = 128):
        _check_kind(kind)
        if max_len < 1 or max_docs < 1:
            raise ValueError(f"max_len, max_docs: must be >= 1, got {max_len}, {max_docs}")
        self.max_len, self.max_docs, self.kind, self.block_size = max_len, max_docs, kind, block_size
        self.doc_ids = torch.full((max_len,), -1, dtype=torch.int64, device=device)
        self.links = torch.zeros(max_docs, max_docs, dtype=torch.bool, device=device)
        self.length = 0
        self.current_doc: int | None = None
        self._last = torch.zeros(0, dtype=torch.int64, device=device)  # slots of the last append

    def _doc(self, doc: int, name: str) -> int:
        if not 0 <= int(doc) < self.max_docs:
            raise ValueError(f"{name}: document {doc} is outside [0, max_docs={self.max_docs})")
        return int(doc)

    def start_document(self, doc: int, links_to: Sequence[int] = ()) -> None:
        doc = self._doc(doc, "doc")
        for t in links_to:
            self.links[doc, self._doc(t, "links_to")] = True
        self.current_doc = doc

    def append(self, n: int) -> torch.Tensor:
        if self.current_doc is None:
            raise RuntimeError("append: no current document; call start_document(doc) first")
        if n < 1 or self.length + n > self.max_len:
            raise ValueError(f"n: {n} more tokens do not fit ({self.length} of {self.max_len} slots used); "
                             "evict a document and compact()")
        slots = torch.arange(self.length, self.length + n, device=self.doc_ids.device)
        self.doc_ids[slots] = self.current_doc
        self.length += n
        self._last = slots
        return slots

    def evict(self, doc: int) -> None:
        doc = self._doc(doc, "doc")
        self.doc_ids[self.doc_ids == doc] = -1
        self.links[doc, :] = False
        self.links[:, doc] = False
        if self.current_doc == doc:
            self.current_doc = None

    def compact(self) -> torch.Tensor:
        keep = torch.nonzero(self.doc_ids[: self.length] >= 0).flatten()
        new_pos = torch.full((self.max_len,), -1, dtype=torch.int64, device=self.doc_ids.device)
        new_pos[keep] = torch.arange(len(keep), device=keep.device)
        kept_ids = self.doc_ids[keep]
        self.doc_ids.fill_(-1)
        self.doc_ids[: len(keep)] = kept_ids
        self.length = len(keep)
        self._last = new_pos[self._last]
        self._last = self._last[self._last >= 0]
        return keep

    def query_mask(self, n_query: int = 1) -> torch.Tensor:
        if not 1 <= n_query <= len(self._last):
            raise ValueError(f"n_query: must be in [1, {len(self._last)}] (the tokens of the last append)")
        q = self._last[-n_query:]
        j = torch.arange(self.max_len, device=q.device)
        m = _pair_mask(self.kind, self.doc_ids[q][:, None], self.doc_ids[None, :], q[:, None], j[None, :],
                       self.links[None], 0)
        return m[None, None]

    def block_mask(self, n_query: int = 1) -> BlockMask:
        row = self.query_mask(n_query)[0, 0]  # (n, max_len)
        bs = self.block_size
        nb = -(-self.max_len // bs)
        padded = torch.zeros(row.shape[0], nb * bs, dtype=torch.bool, device=row.device)
        padded[:, : self.max_len] = row
        blocks = padded.view(row.shape[0], nb, bs)
        if row.shape[0] > bs:
            raise ValueError(f"n_query: at most block_size={bs} query tokens per step")
        anyb = blocks.any(-1).any(0)[None, None]  # (B=1, one q block, nb)
        allb = blocks.all(-1).all(0)[None, None]
        if self.max_len % bs:
            allb[..., -1] = False
        q = self._last[-n_query:]
        docs, pos = self.doc_ids.clone(), torch.arange(self.max_len, device=q.device)
        qdocs, kind, links = self.doc_ids[q], self.kind, self.links

        def mask_mod(b, h, q_idx, kv_idx):
            return _pair_mask(kind, qdocs[q_idx], docs[kv_idx], q[q_idx], pos[kv_idx], links[None], 0)

        return _from_block_flags(anyb & ~allb, allb, (bs, bs), n_query, self.max_len, mask_mod)
