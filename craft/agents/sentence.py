"""Agent 1, the sentence agent: the word vectors of a sentence -> one vector -> the word vectors
and the word count, decoded to text through Agent 0.

Same shape as :mod:`craft.agents.word` one level up: sentences are packed with ``join_pad`` into
rows of ``row_len`` word positions (a learned join vector sits between joined sentences); the
encoder sums ``SwiGLU(proj(word vector) + embed_pos(p))`` over a sentence's words; the decoder is
non-autoregressive, with a count head (1..max_words) that decides how many word vectors are read
out, and every regenerated word vector goes through the same parameter-free normalisation as
Agent 0's vectors (:func:`craft.agents.word.unit_norm`).

Why decoding gives back the words: the loss is taken *after* the path decoding takes. Besides the
vector MSE, the regenerated word vectors go through the (frozen) word agent's byte and length
heads, so a small vector error that would flip a byte is trained away, and decoding runs that
very computation (:meth:`SentenceAgent.decode` then :meth:`WordAgent.decode`), no teacher forcing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from craft.agents.word import Packed, ResidualMLP, WordAgent, pack_lengths, pack_units, unit_norm
from craft.models.transformer import RMSNorm


@dataclass
class SentenceAgentConfig:
    word_dim: int = 64        # Agent 0's vector
    dim: int = 256            # the sentence vector
    hidden_dim: int = 256
    max_words: int = 16
    row_len: int = 64         # word positions of a packed row
    mse_weight: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def pack_sentences(sentence_offsets, row_len: int) -> Packed:
    """Sentences (offsets over words) packed into rows; ``ids`` hold word indices on content positions."""
    offsets = np.asarray(sentence_offsets, dtype=np.int64)
    return pack_units(np.arange(offsets[-1], dtype=np.int64), offsets, row_len)


class SentenceAgent(nn.Module):
    def __init__(self, config: SentenceAgentConfig | None = None):
        super().__init__()
        c = self.config = config or SentenceAgentConfig()
        H = c.hidden_dim
        self.in_proj = nn.Linear(c.word_dim, H)
        self.join_vec = nn.Parameter(torch.zeros(H))
        self.enc_pos = nn.Embedding(c.max_words, H)
        self.enc_tok = ResidualMLP(H, 2 * H)
        self.enc_out = nn.Sequential(RMSNorm(H), ResidualMLP(H, 2 * H), nn.Linear(H, c.dim))
        self.dec_in = nn.Linear(c.dim, H)
        self.dec_pos = nn.Embedding(c.max_words, H)
        self.dec_tok = nn.Sequential(ResidualMLP(H, 2 * H), ResidualMLP(H, 2 * H), RMSNorm(H))
        self.dec_out = nn.Linear(H, c.word_dim)
        self.count_head = nn.Sequential(nn.Linear(c.dim, H), nn.GELU(), nn.Linear(H, c.max_words + 1))

    def encode_packed(self, word_vectors: torch.Tensor, p: Packed) -> torch.Tensor:
        """word_vectors (n_words, word_dim), rows from :func:`pack_sentences` -> (n_sentences, dim)."""
        m = p.mask
        x = self.in_proj(word_vectors)[p.ids.clamp(0, max(0, len(word_vectors) - 1))] if len(word_vectors) else None
        if x is None:
            return word_vectors.new_zeros(0, self.config.dim)
        join = (p.unit < 0) & (p.ids != 1)  # join positions (pads are id 1 from pack_units' pad_id)
        x = torch.where(m[..., None], x, torch.where(join[..., None], self.join_vec, torch.zeros_like(self.join_vec)))
        x = self.enc_tok(x + self.enc_pos(p.pos.clamp_min(0)))
        x = x * m[..., None]
        pooled = x.new_zeros(p.n_units, x.shape[-1]).index_add_(0, p.unit[m], x[m])
        return unit_norm(self.enc_out(pooled))

    def encode(self, word_vectors: torch.Tensor, sentence_offsets) -> torch.Tensor:
        self._check_offsets(sentence_offsets, len(word_vectors))
        return self.encode_packed(word_vectors, pack_sentences(sentence_offsets, self.config.row_len))

    def predict_counts(self, z: torch.Tensor) -> torch.Tensor:
        return self.count_head(z)[:, 1:].argmax(-1) + 1

    def word_vectors_packed(self, z: torch.Tensor, p: Packed) -> torch.Tensor:
        """Regenerated word vectors (n_words, word_dim) in word order for the content positions of ``p``."""
        h = self.dec_in(z)
        x = h[p.unit.clamp_min(0)] + self.dec_pos(p.pos.clamp_min(0))
        v = unit_norm(self.dec_out(self.dec_tok(x)))
        m = p.mask
        return v[m]  # join_pad keeps unit order and in-unit order, so this is word order

    def loss(self, word_vectors: torch.Tensor, p: Packed, word_agent: WordAgent, bytes_packed: Packed):
        """MSE to the target word vectors + count CE + the word agent's byte/length loss on the
        regenerated vectors (``bytes_packed``: the sentences' word pieces packed for Agent 0)."""
        z = self.encode_packed(word_vectors, p)
        pred = self.word_vectors_packed(z, p)
        target = word_vectors[p.ids[p.mask]]
        mse = F.mse_loss(pred.float(), target.float())
        counts = p.lengths.clamp_max(self.config.max_words)
        count_loss = F.cross_entropy(self.count_head(z).float(), counts)
        dec_loss, info = word_agent.decode_loss(pred, bytes_packed)
        loss = self.config.mse_weight * mse + count_loss + dec_loss
        return loss, {"mse": mse.item(), "count_loss": count_loss.item(), **info}

    @torch.no_grad()
    def decode(self, z: torch.Tensor, counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_sentences, dim) -> (word vectors (n_words, word_dim), counts (n_sentences,))."""
        if counts is None:
            counts = self.predict_counts(z)
        counts = counts.cpu().clamp(1, self.config.max_words)
        p = pack_lengths(counts, self.config.row_len)
        return self.word_vectors_packed(z, p), counts

    def _check_offsets(self, offsets, n_words):
        o = np.asarray(offsets)
        if o.ndim != 1 or o.size < 1 or o[0] != 0 or o[-1] != n_words or (np.diff(o) < 1).any():
            raise ValueError(f"sentence_offsets: expected increasing offsets from 0 to n_words={n_words} "
                             "with no empty sentence")
        if np.diff(o).max(initial=0) > self.config.max_words:
            raise ValueError(f"sentence_offsets: a sentence has {int(np.diff(o).max())} words, more than "
                             f"max_words={self.config.max_words}; split it (craft.agents.text does)")
