"""The agent stack: text -> DVT of vectors (compress) -> text (decompress), level by level.

``compress(text)`` builds the tree with ``craft.data.dvt.DvtBatch`` (levels: bytes, word pieces,
sentences, paragraphs, one document root), embeds the leaves with ``realize`` (Agent 0's byte
embedding), then realises every word node with one batched Agent 0 call and every sentence node
with one batched Agent 1 call. ``decompress`` starts from the sentence vectors only: Agent 1
regenerates the word vectors and counts, Agent 0 the bytes and lengths; the tree contributes the
paragraph structure (which sentences form a paragraph).

Word and sentence vectors have other widths than the leaves' embedding, and ``DvtBatch.vectors`` is
one (n_nodes, d) tensor, so they are kept per level in :class:`Compressed` (rows in the order of
``arrays.level_nodes[level]``) and their nodes marked realized in the batch.

Batching by memory budget: :func:`budget_batches` packs a level's units with ``join_pad`` rows
(the same next-fit as ``greedy_join``) and puts as many rows in a batch as the activation memory
allows, ``budget_bytes // (row_len * bytes_per_position)``. ``bytes_per_position`` is measured once
per agent by :func:`activation_bytes` (the bytes autograd saves for backward in a training step),
since every position of a row is computed, pads included.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from craft_kernels import greedy_join
from craft.agents.sentence import SentenceAgent, pack_sentences
from craft.agents.text import text_to_units, units_to_text
from craft.agents.word import WordAgent, pack_units
from craft.data.dvt import DvtBatch, DvtTree, realize

WORD_LEVEL, SENTENCE_LEVEL = 1, 2  # node levels in the DVT (0 = bytes)


@dataclass
class Compressed:
    """A compressed text: ``tree`` (its DvtTree; leaves realized) and ``vectors`` {node level:
    (n_nodes_of_level, dim)} for the word (1) and sentence (2) levels."""
    tree: DvtTree
    vectors: dict


class AgentStack:
    def __init__(self, word_agent: WordAgent, sentence_agent: SentenceAgent | None = None):
        self.word_agent, self.sentence_agent = word_agent.eval(), sentence_agent
        if sentence_agent is not None:
            sentence_agent.eval()

    @property
    def width(self) -> int:
        return self.word_agent.config.width

    @property
    def max_words(self) -> int:
        return self.sentence_agent.config.max_words if self.sentence_agent else 16

    @torch.no_grad()
    def compress(self, text: str) -> Compressed:
        if self.sentence_agent is None:
            raise ValueError("compress: the stack has no sentence agent; train level 1 first")
        u = text_to_units(text, self.width, self.max_words)
        batch = DvtBatch(u.tokens, u.level_offsets)
        realize(batch, self.word_agent.tok_emb)
        words = self.word_agent.encode_packed(pack_units(u.tokens, u.level_offsets[0], self.word_agent.config.row_len))
        sents = self.sentence_agent.encode_packed(words, pack_sentences(u.level_offsets[1], self.sentence_agent.config.row_len))
        for lvl in (WORD_LEVEL, SENTENCE_LEVEL):
            batch.realized[batch.arrays.level_nodes[lvl]] = True
        return Compressed(batch.trees[0], {WORD_LEVEL: words, SENTENCE_LEVEL: sents})

    @torch.no_grad()
    def decompress(self, c: Compressed) -> str:
        tree = c.tree
        sent_nodes = tree.level_nodes[SENTENCE_LEVEL]
        if not sent_nodes:
            return ""
        word_vecs, counts = self.sentence_agent.decode(c.vectors[SENTENCE_LEVEL])
        pieces = self.word_agent.decode(word_vecs)
        para_sizes = [len(p.children) for p in tree.level_nodes[SENTENCE_LEVEL + 1]]
        return units_to_text(pieces, counts.tolist(), para_sizes)

    def roundtrip(self, text: str) -> str:
        return self.decompress(self.compress(text))


def activation_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves while ``fn()`` runs (a training step's activations)."""
    seen: dict = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        except RuntimeError:
            key = id(t)
        if not (isinstance(t, torch.nn.Parameter) or t.requires_grad and t.is_leaf):
            seen[key] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@dataclass
class BudgetPlan:
    """Batches of one level: ``batches`` = list of (unit_start, unit_stop) ranges, ``rows_per_batch``;
    padding waste (share of computed positions that are pad) of the join_pad rows and of padding
    every unit to ``width`` (pad-to-max); ``join_share``: share of join_pad positions holding a join
    id (separators, computed but not pad)."""
    batches: list
    rows_per_batch: int
    join_pad_waste: float
    pad_to_max_waste: float
    join_share: float


def budget_batches(lengths, row_len: int, width: int, bytes_per_position: float, budget_bytes: int) -> BudgetPlan:
    """Plans batches of consecutive units whose packed rows (``row_len`` positions each) fit
    ``budget_bytes`` of activations at ``bytes_per_position``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if budget_bytes < row_len * bytes_per_position:
        raise ValueError(f"budget_bytes={budget_bytes}: below one row ({row_len} positions x "
                         f"{bytes_per_position:.0f} bytes); raise it or lower row_len")
    rows_per_batch = int(budget_bytes // (row_len * bytes_per_position))
    groups = greedy_join(lengths, row_len).offsets
    n_rows = len(groups) - 1
    batches = [(int(groups[r]), int(groups[min(r + rows_per_batch, n_rows)])) for r in range(0, n_rows, rows_per_batch)]
    content, joins, total = int(lengths.sum()), len(lengths) - n_rows, max(1, n_rows * row_len)
    return BudgetPlan(batches, rows_per_batch, 1 - (content + joins) / total,
                      1 - content / max(1, len(lengths) * width), joins / total)
