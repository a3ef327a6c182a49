"""``DocumentContext``: which documents hold which KV-cache slots during linked generation.

Every document of a run is registered here (creation order = its index). A document is *pending*
(registered, not in the cache yet), *active* (its tokens occupy cache slots) or *archived* (evicted;
its tokens are kept for the result and it can be placed again). The context drives a
``craft_kernels.DocMaskState`` (document ids and links of every slot, the per-step query mask) and,
through ``on_compact(keep)``, the model's KV cache: evicting a document hides its slots and compacts
both the mask state and the cache with the same gather index, so nothing is ever recomputed.

A document's tokens are contiguous in its own numbering (``rope_positions``: 0, 1, ... within the
document) even when another document was generated in the middle of it (the parent resumes after
its child), so each document looks to the model as it did in training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from craft._deprecation import renamed
from craft.generation.linked.config import EVICTION_POLICIES, GENERATION_MASK_KINDS


class ContextFull(RuntimeError):
    """Raised when tokens cannot get cache slots (``stop_new``, or nothing left to evict)."""


@dataclass
class ContextDocument:
    """Bookkeeping of one document: ``tokens`` (all of them, placed or not), ``links`` (indices of
    the documents it links to, in order), ``mask_id`` (its id in the mask state while active)."""

    index: int
    title: str
    source: str
    parent: int | None
    depth: int
    tokens: list[int] = field(default_factory=list)
    links: list[int] = field(default_factory=list)
    mask_id: int | None = None
    placed: int = 0  # how many of ``tokens`` are in the cache (== len(tokens) for an active document)
    archived: bool = False
    status: str | None = None  # None while open
    activated_at: int = -1  # activation sequence number (drop_oldest evicts the smallest)
    corpus_filename: str | None = None

    @property
    def active(self) -> bool:
        return self.mask_id is not None


@renamed(max_context_length="max_seq_len")
class DocumentContext:
    """Documents in a ``max_seq_len``-slot KV cache (see module docstring).

    ``max_documents`` bounds the documents active at once (mask ids are reused after eviction);
    ``max_tokens_per_document`` bounds one document's tokens; ``eviction_policy`` is
    ``drop_oldest`` (evict the earliest-activated document that is not the current one or one of its
    ancestors, then compact) or ``stop_new`` (never evict; :class:`ContextFull` when out of slots).
    ``on_compact(keep: LongTensor)`` is called with the gather index after every compaction (pass
    ``model.compact_cache``).
    """

    def __init__(self, max_seq_len: int, max_documents: int, eviction_policy: str = "drop_oldest",
                 mask_kind: str = "cross_doc_link", max_tokens_per_document: int | None = None, device="cpu",
                 on_compact: Callable[[torch.Tensor], None] | None = None):
        from craft_kernels import DocMaskState, check_choice

        check_choice(eviction_policy, "eviction_policy", EVICTION_POLICIES)
        check_choice(mask_kind, "mask_kind", GENERATION_MASK_KINDS)
        if max_seq_len < 1 or max_documents < 1:
            raise ValueError(f"max_seq_len, max_documents: must be >= 1, got {max_seq_len}, {max_documents}")
        self.max_seq_len = int(max_seq_len)
        self.max_documents = int(max_documents)
        self.max_tokens_per_document = int(max_tokens_per_document or max_seq_len)
        if self.max_tokens_per_document > self.max_seq_len:
            raise ValueError(f"max_tokens_per_document: {self.max_tokens_per_document} exceeds max_seq_len="
                             f"{self.max_seq_len}")
        self.eviction_policy, self.mask_kind = eviction_policy, mask_kind
        self.mask = DocMaskState(self.max_seq_len, self.max_documents, kind=mask_kind, device=device)
        self.on_compact = on_compact
        self.docs: list[ContextDocument] = []
        self.current: int | None = None
        self.n_evictions = 0
        self._by_title: dict[str, int] = {}
        self._free_ids = list(range(self.max_documents - 1, -1, -1))  # pop() gives 0 first
        self._slot_doc: list[int] = []  # document index of every used slot (-1 = hole until compaction)
        self._slot_pos: list[int] = []  # position of that token inside its document
        self._activations = 0
        self._device = self.mask.doc_ids.device

    # ------------------------------------------------------------------ queries
    @property
    def length(self) -> int:
        """Cache slots in use."""
        return len(self._slot_doc)

    @property
    def free_slots(self) -> int:
        return self.max_seq_len - self.length

    def find(self, title: str) -> int | None:
        return self._by_title.get(title)

    def active_documents(self) -> list[int]:
        return [d.index for d in self.docs if d.active]

    def archived_documents(self) -> list[int]:
        return [d.index for d in self.docs if d.archived and not d.active]

    def ancestors(self, index: int) -> list[int]:
        """``index`` and its parents up to the root (a cycle of parents cannot occur: parents are older)."""
        out = []
        while index is not None:
            out.append(index)
            index = self.docs[index].parent
        return out

    def spans(self) -> list[tuple[int, int, int]]:
        """Runs of slots ``(start, end, document index)`` in slot order (end exclusive); a document
        has several runs when another document was placed while it was open."""
        out = []
        for s, d in enumerate(self._slot_doc):
            if out and out[-1][2] == d and out[-1][1] == s:
                out[-1] = (out[-1][0], s + 1, d)
            elif d >= 0:
                out.append((s, s + 1, d))
        return out

    def slot_documents(self) -> np.ndarray:
        """int64 (length,): the document index of every used slot."""
        return np.asarray(self._slot_doc, dtype=np.int64)

    def rope_positions(self) -> np.ndarray:
        """int64 (length,): every used slot's position inside its document."""
        return np.asarray(self._slot_pos, dtype=np.int64)

    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole active context as ``(tokens, mask doc ids, rope positions)``, each int64
        (length,) in slot order: what a model without a cache would recompute."""
        toks = [self.docs[d].tokens[p] for d, p in zip(self._slot_doc, self._slot_pos)]
        return (torch.tensor(toks, dtype=torch.int64), self.mask.doc_ids[: self.length].clone(),
                torch.tensor(self._slot_pos, dtype=torch.int64))

    def query_mask(self, n_query: int = 1) -> torch.Tensor:
        """bool (1, 1, n_query, max_seq_len): the last ``n_query`` placed tokens against
        every slot (from the incremental mask state)."""
        return self.mask.query_mask(n_query)

    # ------------------------------------------------------------------ registration
    def add_document(self, title: str, parent: int | None, source: str = "generated", depth: int | None = None,
                     tokens: Sequence[int] = ()) -> int:
        """Registers a pending document (nothing placed yet) and returns its index; ``parent`` is the
        linking document (None for the root) and ``tokens`` its initial tokens (a header, a prompt,
        a corpus document)."""
        if title in self._by_title:
            raise ValueError(f"title: {title!r} is already document {self._by_title[title]}; reuse it")
        if parent is not None and not 0 <= parent < len(self.docs):
            raise ValueError(f"parent: {parent} is not a registered document")
        if parent is None and self.docs:
            raise ValueError("parent: only the first document (the root) may have no parent")
        toks = [int(t) for t in tokens]
        if len(toks) > self.max_tokens_per_document:
            raise ValueError(f"tokens: {len(toks)} tokens exceed max_tokens_per_document={self.max_tokens_per_document}")
        if depth is None:
            depth = 0 if parent is None else self.docs[parent].depth + 1
        d = ContextDocument(len(self.docs), title, source, parent, depth, toks)
        self.docs.append(d)
        self._by_title[title] = d.index
        return d.index

    def link(self, src: int, dst: int) -> None:
        """Records ``src -> dst`` (once); the mask lets ``src`` see ``dst`` whenever both are active."""
        if dst not in self.docs[src].links:
            self.docs[src].links.append(dst)
        a, b = self.docs[src], self.docs[dst]
        if a.active and b.active:
            self.mask.start_document(a.mask_id, [b.mask_id])
            self._restore_current()

    # ------------------------------------------------------------------ room
    def _evictable(self, protect: set[int]) -> list[int]:
        cand = [d for d in self.docs if d.active and d.index not in protect]
        return [d.index for d in sorted(cand, key=lambda d: d.activated_at)]

    def can_fit(self, n: int, protect: Sequence[int] = ()) -> bool:
        """Whether ``n`` more slots can be had (by evicting under ``drop_oldest``), without changing anything."""
        if n <= self.free_slots:
            return True
        if self.eviction_policy == "stop_new":
            return False
        prot = set(protect) | (set(self.ancestors(self.current)) if self.current is not None else set())
        freeable = sum(self.docs[i].placed for i in self._evictable(prot))
        return n <= self.free_slots + freeable

    def make_room(self, n: int, protect: Sequence[int] = ()) -> None:
        """Frees ``n`` slots, evicting under ``drop_oldest`` (never the current document, its
        ancestors or ``protect``) then compacting once. Raises :class:`ContextFull` otherwise."""
        if n > self.max_seq_len:
            raise ContextFull(f"{n} tokens can never fit in {self.max_seq_len} slots")
        if n <= self.free_slots:
            return
        if not self.can_fit(n, protect):
            raise ContextFull(f"{n} more tokens do not fit ({self.length} of {self.max_seq_len} slots used, "
                              f"eviction_policy={self.eviction_policy!r})")
        prot = set(protect) | (set(self.ancestors(self.current)) if self.current is not None else set())
        freed = 0
        for i in self._evictable(prot):
            if self.free_slots + freed >= n:
                break
            freed += self.docs[i].placed
            self._evict(i)
        self.compact()

    # ------------------------------------------------------------------ mutations
    def _activate(self, d: ContextDocument) -> None:
        if not self._free_ids:
            raise ContextFull(f"more than max_documents={self.max_documents} documents would be active at once")
        d.mask_id = self._free_ids.pop()
        d.archived = False
        d.activated_at = self._activations
        self._activations += 1
        for o in self.docs:  # documents already active that link to d see it from now on
            if o.active and o is not d and d.index in o.links:
                self.mask.start_document(o.mask_id, [d.mask_id])

    def _links_to(self, d: ContextDocument) -> list[int]:
        return [self.docs[j].mask_id for j in d.links if self.docs[j].active]

    def _restore_current(self) -> None:
        if self.current is not None and self.docs[self.current].active:
            c = self.docs[self.current]
            self.mask.start_document(c.mask_id, self._links_to(c))

    def place(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Puts every not-yet-placed token of document ``index`` into the cache (a corpus document,
        a prompt, or an archived document coming back) and makes it current. Returns ``(slots,
        rope_pos)``, int64 (n,) each, for ``forward_step``."""
        d = self.docs[index]
        if not d.active:
            d.placed = 0
        n = len(d.tokens) - d.placed
        if n < 1:
            raise ValueError(f"index: document {index} has no tokens left to place")
        self.make_room(n, protect=[index])
        if not d.active:
            self._activate(d)
        self.current = index
        return self._append_slots(d, n)

    def append(self, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Appends ``tokens`` to the current document and places them; returns ``(slots, rope_pos)``.
        Raises :class:`ContextFull` (nothing changed) when they cannot get slots, ValueError past
        ``max_tokens_per_document``."""
        if self.current is None:
            raise RuntimeError("append: no current document; place() one first")
        d = self.docs[self.current]
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("tokens: expected at least one token")
        if len(d.tokens) + len(toks) > self.max_tokens_per_document:
            raise ValueError(f"tokens: document {d.title!r} would exceed max_tokens_per_document="
                             f"{self.max_tokens_per_document}")
        if d.placed != len(d.tokens):
            raise RuntimeError(f"append: document {d.title!r} has unplaced tokens; place() it first")
        self.make_room(len(toks))
        if not d.active:
            self._activate(d)
            self._restore_current()
        d.tokens.extend(toks)
        return self._append_slots(d, len(toks))

    def room_in_document(self, index: int | None = None) -> int:
        """How many more tokens document ``index`` (default: current) may take."""
        i = self.current if index is None else index
        return self.max_tokens_per_document - len(self.docs[i].tokens)

    def _append_slots(self, d: ContextDocument, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask.current_doc != d.mask_id:
            self.mask.start_document(d.mask_id, self._links_to(d))
        slots = self.mask.append(n)
        start = d.placed
        self._slot_doc.extend([d.index] * n)
        self._slot_pos.extend(range(start, start + n))
        d.placed += n
        return slots, torch.arange(start, start + n, dtype=torch.int64, device=self._device)

    def switch_to(self, index: int) -> None:
        """Returns generation to document ``index`` (the parent, after a child is done), letting it see
        every active document it links to. The document must still be active (ancestors of the
        current document are never evicted)."""
        d = self.docs[index]
        if not d.active:
            raise ValueError(f"index: document {index} ({d.title!r}) is not in the cache")
        self.current = index
        self._restore_current()

    def finish(self, index: int, status: str) -> None:
        self.docs[index].status = status

    def evict(self, index: int) -> None:
        """Evicts document ``index`` (archived; its tokens are kept) and compacts the cache."""
        if self.current is not None and index in self.ancestors(self.current):
            raise ValueError(f"index: document {index} is the current document or one of its ancestors")
        self._evict(index)
        self.compact()

    def _evict(self, index: int) -> None:
        d = self.docs[index]
        if not d.active:
            raise ValueError(f"index: document {index} ({d.title!r}) is not in the cache")
        self.mask.evict(d.mask_id)
        self._free_ids.append(d.mask_id)
        d.mask_id, d.placed, d.archived = None, 0, True
        self._slot_doc = [-1 if s == index else s for s in self._slot_doc]
        self.n_evictions += 1

    def compact(self) -> torch.Tensor:
        """Drops evicted slots from the mask state, the bookkeeping and (``on_compact``) the KV cache."""
        keep = self.mask.compact()
        kl = keep.tolist()
        self._slot_doc = [self._slot_doc[k] for k in kl]
        self._slot_pos = [self._slot_pos[k] for k in kl]
        if self.on_compact is not None:
            self.on_compact(keep)
        self._restore_current()
        return keep
