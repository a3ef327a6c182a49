"""Linked packing: training sequences holding a document together with documents it links to.

Linked generation lets a document attend to the documents it links to (``cross_doc_link``). To
train for that, a *linked* sequence places (some of) an anchor document's link targets first and
the anchor after them, then fills the rest with the documents that follow the anchor in the
corpus (each ``doc_causal``, no links). Per row: ``doc_ids`` numbered 0.. in order of placement
and link edges ``(anchor, target)``; the batch turns them into ``links (B, Dmax, Dmax)`` bool for
``craft_kernels.doc_attention(..., kind="cross_doc_link", links=links)``. Targets come first, so
the mask stays causal across documents: the anchor sees every token of its targets, the targets
never see the anchor.

Sequence ``i`` (``0 <= i < len(anchors)``) is a pure function of ``(seed, i)``: anchor
``anchors[i]``; with probability ``plain_share`` (or when the anchor links nowhere) a *plain*
sequence (the anchor and its followers, no edges, what ``doc_causal`` training sees). Otherwise
up to ``max_linked`` distinct targets drawn at random from the anchor's resolved links, together
taking at most ``budget_share`` of the ``seq_len + 1`` tokens (split evenly; a target longer than
its share is cut, without EOS). Every complete document is followed by EOS, as in
:mod:`craft.data.packing`; inputs are ``w[:-1]``, targets ``w[1:]``.

Links come from the corpus index (``links`` table, resolved ``dst``); an index with no link rows
(a corpus written without them) is scanned with ``craft_kernels.LinkDetector`` and its targets
resolved by title.
"""
from __future__ import annotations

import sqlite3

import numpy as np
import torch

from craft_kernels import check_float, check_int

from craft.data.packing import PackedSequences, split_windows
from craft.data.pretokenize import PretokenizedCorpus


def corpus_links(corpus: PretokenizedCorpus) -> list[list[int]]:
    """Per document, the ids of the corpus documents it links to (first appearance order, no
    duplicates, no self-links). From the index; from ``LinkDetector`` when the index has no links."""
    n = corpus.n_documents
    out: list[list[int]] = [[] for _ in range(n)]
    db = sqlite3.connect(f"{(corpus.path / 'index.sqlite').resolve().as_uri()}?mode=ro", uri=True)
    try:
        n_rows = db.execute("SELECT COUNT(*) FROM links").fetchone()[0]
        rows = db.execute("SELECT src, dst FROM links WHERE dst IS NOT NULL ORDER BY rowid").fetchall()
    except sqlite3.Error:
        n_rows, rows = 0, []
    finally:
        db.close()
    if n_rows == 0:
        rows = _detected_links(corpus)
    for src, dst in rows:
        if 0 <= src < n and 0 <= dst < n and dst != src and dst not in out[src]:
            out[src].append(int(dst))
    return out


def _detected_links(corpus: PretokenizedCorpus) -> list[tuple[int, int]]:
    from craft_kernels import LinkDetector

    det = LinkDetector.for_tokenizer(corpus.tokenizer)
    rows = []
    for i in range(corpus.n_documents):
        for link in det.scan(np.asarray(corpus.document(i), dtype=np.int64)):
            if link.is_image:
                continue
            dst = corpus.find(link.target_bytes.decode("utf-8", "replace")) if link.target_bytes else None
            if dst is None and link.target_bytes:
                title = corpus.resolve_title(link.target_bytes.decode("utf-8", "replace"))
                dst = None if title is None else corpus.find(title)
            if dst is not None:
                rows.append((i, dst))
    return rows


def train_document_count(packed: PackedSequences, eval_fraction: float) -> int:
    """Documents ``0 .. n-1`` lie wholly before the held-out windows of
    ``split_windows(len(packed), eval_fraction)`` (the trainer's split): linked training draws its
    anchors from them, and the documents from ``n`` on are held out. When the split reuses training
    windows for evaluation (tiny corpora) every document counts (n = n_documents)."""
    train_idx, eval_idx = split_windows(len(packed), eval_fraction)
    if int(eval_idx[0]) <= int(train_idx[-1]):
        return packed.corpus.n_documents
    first_eval = int(eval_idx[0]) * packed.seq_len
    return max(1, int((packed.starts[1:] <= first_eval).sum()))


class LinkedPacking:
    """Linked (and a share of plain) sequences of ``seq_len + 1`` tokens over ``corpus``.

    ``anchors``: document ids that may start a sequence (default: all); ``n_documents``: only
    documents ``0 .. n_documents-1`` are placed, as targets or followers (default: all; the trainer
    passes the training documents so held-out ones never enter a sequence); ``links``: per-document
    target ids (default :func:`corpus_links`); ``max_linked`` >= 1 targets per sequence;
    ``budget_share`` in (0, 1]: the share of the sequence the targets may take; ``plain_share`` in
    [0, 1]: the share of plain ``doc_causal`` sequences; ``seed``: the draw of each sequence."""

    def __init__(self, corpus: PretokenizedCorpus, seq_len: int, anchors=None, links: list[list[int]] | None = None,
                 n_documents: int | None = None, max_linked: int = 3, budget_share: float = 0.5, plain_share: float = 0.25, seed: int = 0):
        check_int(seq_len, "seq_len", 1)
        check_int(max_linked, "max_linked", 1)
        check_float(budget_share, "budget_share", 0, 1, min_open=True)
        check_float(plain_share, "plain_share", 0, 1)
        self.corpus, self.seq_len, self.eos_id = corpus, seq_len, corpus.eos_id
        self.links = corpus_links(corpus) if links is None else links
        if len(self.links) != corpus.n_documents:
            raise ValueError(f"links: expected one list per document ({corpus.n_documents}), got {len(self.links)}")
        self.n_documents = corpus.n_documents if n_documents is None else int(n_documents)
        if not 1 <= self.n_documents <= corpus.n_documents:
            raise ValueError(f"n_documents: expected 1..{corpus.n_documents}, got {n_documents!r}")
        self.anchors = np.arange(self.n_documents) if anchors is None else np.asarray(anchors, dtype=np.int64)
        if self.anchors.size == 0:
            raise ValueError("anchors: linked packing needs at least one anchor document")
        if self.anchors.min() < 0 or self.anchors.max() >= self.n_documents:
            raise ValueError(f"anchors: expected document ids in [0, n_documents={self.n_documents})")
        self.max_linked, self.budget_share, self.plain_share, self.seed = max_linked, budget_share, plain_share, seed
        if corpus.n_tokens + corpus.n_documents < seq_len + 1:
            raise ValueError(f"seq_len={seq_len}: the corpus has only {corpus.n_tokens + corpus.n_documents} tokens "
                             f"(EOS included); it needs at least seq_len + 1 = {seq_len + 1}")

    def __len__(self) -> int:
        return len(self.anchors)

    def plan(self, i: int) -> tuple[int, list[int], bool]:
        """(anchor, linked target ids in placement order, plain?) of sequence ``i``."""
        if not 0 <= i < len(self.anchors):
            raise IndexError(f"sequence {i}: expected 0 <= i < {len(self.anchors)}")
        a = int(self.anchors[i])
        rng = np.random.default_rng([self.seed, i])
        plain = rng.random() < self.plain_share
        targets = [t for t in self.links[a] if t < self.n_documents]
        if plain or not targets:
            return a, [], True
        k = min(self.max_linked, len(targets))
        return a, [int(targets[j]) for j in rng.choice(len(targets), size=k, replace=False)], False

    def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Sequence ``i``: tokens (seq_len + 1,) int64, doc_ids (seq_len + 1,) int64 and the edges
        ``[(anchor's id, target's id), ...]`` in those ids."""
        L = self.seq_len + 1
        anchor, targets, _ = self.plan(i)
        tokens = np.empty(L, dtype=np.int64)
        docs = np.empty(L, dtype=np.int64)
        pos, d = 0, 0
        share = int(L * self.budget_share) // len(targets) if targets else 0
        if share >= 1:
            for t in targets:
                pos += self._place(t, tokens, docs, pos, share, d)
                d += 1
        edges = [(d, j) for j in range(d)]  # the anchor (id d, placed next) sees every target
        doc = anchor
        while pos < L:
            pos += self._place(doc, tokens, docs, pos, L - pos, d)
            d += 1
            doc = (doc + 1) % self.n_documents
        return tokens, docs, edges

    def _place(self, doc: int, tokens, docs, pos: int, room: int, d: int) -> int:
        """Writes document ``doc`` (+ EOS when it fits whole) at ``pos``, at most ``room`` tokens."""
        body = self.corpus.document(doc)
        n = min(len(body), room)
        tokens[pos:pos + n] = body[:n]
        if n < room:
            tokens[pos + n] = self.eos_id
            n += 1
        docs[pos:pos + n] = d
        return n

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Sequences ``indices`` stacked: ``tokens``, ``targets``, ``doc_ids`` (B, seq_len) long and
        ``links`` (B, Dmax, Dmax) bool (Dmax = the most documents in a row)."""
        rows = [self.sequence(int(i)) for i in indices]
        if not rows:
            z = torch.zeros(0, self.seq_len, dtype=torch.long)
            return {"tokens": z, "targets": z.clone(), "doc_ids": z.clone(), "links": torch.zeros(0, 1, 1, dtype=torch.bool)}
        tok = torch.from_numpy(np.stack([r[0] for r in rows]))
        doc = torch.from_numpy(np.stack([r[1] for r in rows]))[:, :-1].contiguous()
        dmax = int(doc.max()) + 1
        links = torch.zeros(len(rows), dmax, dmax, dtype=torch.bool)
        for b, (_, _, edges) in enumerate(rows):
            for s, t in edges:
                if s < dmax and t < dmax:  # an anchor cut off by the window end has no tokens left
                    links[b, s, t] = True
        return {"tokens": tok[:, :-1].contiguous(), "targets": tok[:, 1:].contiguous(), "doc_ids": doc,
                "links": links}
