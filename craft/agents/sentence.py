"""Agent 1, the sentence agent: the word vectors of a sentence -> one vector -> the word vectors
and the word count, decoded to text through Agent 0.

Same shape as :mod:`craft.agents.word` one level up, with attention at both ends:

- encoder: sentences are packed with ``join_pad`` into rows of ``row_len`` word positions;
  ``proj(word vector) + embed_pos(p)`` goes through ``layers`` blocks whose attention sees only
  the words of the same sentence (:class:`craft.agents.word.UnitBlock`); slot ``k`` sums the
  states of word positions ``k*g .. k*g + g - 1`` (``g = max_words / slots``), an embedding of
  the word count is added to every slot, and the slots, projected to ``dim // slots`` each and
  concatenated, are the sentence vector (``dim``, through the same parameter-free normalisation
  as Agent 0's vectors, :func:`craft.agents.word.unit_norm`);
- decoder: non-autoregressive *position queries*: word position ``p`` of a sentence starts as
  its own slot + ``embed_pos(p)``, attends over all the sentence vector's slots, then through
  ``layers`` blocks of within-sentence attention, to a word vector (``word_dim``,
  unit-normalised). A count head (1..max_words) decides how many positions are read out.

Why fixed slots: one pooled vector (a sum of per-word features) has to superpose all the words in
one space and learned to separate them too slowly; learned slot queries (cross-attention pooling)
started with a uniform softmax that made every slot the same average of the words and stayed
there. Slots tied to positions give each word a place from the first step, and the attention on
both sides lets any slot carry what its neighbours need.

Why decoding gives back the words: the loss is taken *after* the path decoding takes. Besides the
squared distance of each regenerated word vector to its target, the regenerated word vectors go
through the (frozen) word agent's byte and length heads, so a small vector error that would flip a
byte is trained away, and decoding runs that very computation (:meth:`SentenceAgent.decode` then
:meth:`WordAgent.decode`), no teacher forcing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from craft.agents.word import Packed, ResidualMLP, UnitBlock, WordAgent, pack_lengths, pack_units, unit_norm
from craft.models.transformer import RMSNorm, cached_attention


@dataclass
class SentenceAgentConfig:
    word_dim: int = 64        # Agent 0's vector
    dim: int = 1024           # the sentence vector (slots x dim // slots)
    slots: int = 16
    hidden_dim: int = 256
    heads: int = 4
    layers: int = 1           # within-sentence attention blocks of the encoder and of the decoder
    max_words: int = 16
    row_len: int = 64         # word positions of a packed row
    mse_weight: float = 1.0   # weight of the squared distance per word vector (summed over word_dim)

    def __post_init__(self):
        if self.dim % self.slots or self.slots > self.max_words:
            raise ValueError(f"slots={self.slots}: must divide the sentence vector dim={self.dim} and be at "
                             f"most max_words={self.max_words}")

    def to_dict(self) -> dict:
        return asdict(self)


def pack_sentences(sentence_offsets, row_len: int) -> Packed:
    """Sentences (offsets over words) packed into rows; ``ids`` hold word indices on content positions."""
    offsets = np.asarray(sentence_offsets, dtype=np.int64)
    return pack_units(np.arange(offsets[-1], dtype=np.int64), offsets, row_len)


class SlotAttention(nn.Module):
    """Cross-attention of each unit's queries over that unit's keys (the decoder's read of the slots).

    ``forward(q (N, Q, H), kv (N, K, H), key_mask (N, K) bool) -> (N, Q, H)``: the residual
    ``q + out(attn(RMSNorm(q), RMSNorm(kv)))``; N units, each query sees its unit's valid keys."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_norm, self.kv_norm = RMSNorm(dim), RMSNorm(dim)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wkv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, q, kv, key_mask=None):
        N, Q, D = q.shape
        K, h = kv.shape[1], self.heads
        qq = self.wq(self.q_norm(q)).view(N, Q, h, D // h).transpose(1, 2)
        k, v = self.wkv(self.kv_norm(kv)).view(N, K, 2, h, D // h).permute(2, 0, 3, 1, 4)
        mask = torch.ones(N, 1, 1, K, dtype=torch.bool) if key_mask is None else key_mask[:, None, None, :]
        y = cached_attention(qq, k, v, mask)  # matmul-softmax: SDPA's CPU kernel costs more at these sizes
        return q + self.out(y.transpose(1, 2).reshape(N, Q, D))


class SentenceAgent(nn.Module):
    def __init__(self, config: SentenceAgentConfig | None = None):
        super().__init__()
        c = self.config = config or SentenceAgentConfig()
        H = c.hidden_dim
        self.in_proj = nn.Linear(c.word_dim, H)
        self.enc_pos = nn.Embedding(c.max_words, H)
        self.enc_blocks = nn.ModuleList(UnitBlock(H, c.heads, 2 * H) for _ in range(c.layers))
        self.register_buffer("_slot_of", torch.arange(c.max_words) * c.slots // c.max_words, persistent=False)
        self.count_emb = nn.Embedding(c.max_words, H)
        self.pool_mlp = ResidualMLP(H, 2 * H)
        self.to_slot = nn.Sequential(RMSNorm(H), nn.Linear(H, c.dim // c.slots))
        self.from_slot = nn.Linear(c.dim // c.slots, H)
        self.slot_pos = nn.Parameter(torch.randn(c.slots, H))
        self.dec_pos = nn.Embedding(c.max_words, H)
        self.read = SlotAttention(H, c.heads)
        self.dec_blocks = nn.ModuleList(UnitBlock(H, c.heads, 2 * H) for _ in range(c.layers))
        self.dec_out = nn.Sequential(RMSNorm(H), nn.Linear(H, c.word_dim))
        self.count_head = nn.Sequential(nn.Linear(c.dim, H), nn.GELU(), nn.Linear(H, c.max_words + 1))

    # ---- encoder
    def encode_packed(self, word_vectors: torch.Tensor, p: Packed) -> torch.Tensor:
        """word_vectors (n_words, word_dim), rows from :func:`pack_sentences` -> (n_sentences, dim)."""
        c = self.config
        if len(word_vectors) == 0:
            return word_vectors.new_zeros(0, c.dim)
        m = p.mask
        x = self.in_proj(word_vectors)[p.ids.clamp(0, len(word_vectors) - 1)] + self.enc_pos(p.pos.clamp_min(0))
        for blk in self.enc_blocks:
            x = blk(x, p.unit)
        # slot k sums the states of word positions k*g .. k*g + g - 1 (g = max_words / slots); after
        # the attention blocks each state has seen the whole sentence
        s = x.new_zeros(p.n_units, c.slots, x.shape[-1]).index_put_(
            (p.unit[m], self._slot_of[p.pos[m]]), x[m], accumulate=True)
        # every slot carries the word count, so the count head reads it exactly
        s = s + self.count_emb(p.lengths.clamp(1, c.max_words) - 1)[:, None, :]
        s = self.to_slot(self.pool_mlp(s))  # (n, slots, dim // slots)
        return unit_norm(s.reshape(p.n_units, c.dim))

    def encode(self, word_vectors: torch.Tensor, sentence_offsets) -> torch.Tensor:
        self._check_offsets(sentence_offsets, len(word_vectors))
        return self.encode_packed(word_vectors, pack_sentences(sentence_offsets, self.config.row_len))

    # ---- decoder
    def predict_counts(self, z: torch.Tensor) -> torch.Tensor:
        return self.count_head(z)[:, 1:].argmax(-1) + 1

    def word_vectors_packed(self, z: torch.Tensor, p: Packed) -> torch.Tensor:
        """Regenerated word vectors (n_words, word_dim) in word order for the content positions of ``p``."""
        c = self.config
        slots = self.from_slot(z.view(len(z), c.slots, c.dim // c.slots)) + self.slot_pos.to(z.dtype)
        m = p.mask
        # position query p of a sentence: its own slot + embed_pos(p), then it reads all the slots
        q = slots[:, self._slot_of] + self.dec_pos.weight.to(slots.dtype)  # (n_sentences, max_words, H)
        q = self.read(q, slots)
        x = q.new_zeros(*p.unit.shape, q.shape[-1])
        x[m] = q[p.unit[m], p.pos[m]]
        for blk in self.dec_blocks:
            x = blk(x, p.unit)
        return unit_norm(self.dec_out(x[m]))  # join_pad keeps unit order and in-unit order: word order

    def loss(self, word_vectors: torch.Tensor, p: Packed, word_agent: WordAgent, bytes_packed: Packed):
        """Squared distance to the target word vectors + count CE + the word agent's byte/length loss
        on the regenerated vectors (``bytes_packed``: the sentences' word pieces packed for Agent 0).

        The vector term is the squared distance *per vector* (summed over its ``word_dim`` floats),
        not the mean over floats: the byte CE of the frozen word agent is taken per byte, and a word
        agent trained on mutated spellings decodes sharply, so off-target vectors early in training
        cost it 10+ nats with large gradients. With the per-float mean (``word_dim`` times smaller)
        that term took the clipped gradient and the vectors were pulled onto their targets far too
        slowly (benchmarks/RESULTS.md). The logged ``mse`` stays the per-float mean."""
        z = self.encode_packed(word_vectors, p)
        pred = self.word_vectors_packed(z, p)
        target = word_vectors[p.ids[p.mask]]
        sq = (pred.float() - target.float()).square().sum(-1)  # (n_words,) squared distance per vector
        counts = p.lengths.clamp_max(self.config.max_words)
        count_loss = F.cross_entropy(self.count_head(z).float(), counts)
        dec_loss, info = word_agent.decode_loss(pred, bytes_packed)
        loss = self.config.mse_weight * sq.mean() + count_loss + dec_loss
        return loss, {"mse": sq.mean().item() / pred.shape[-1], "count_loss": count_loss.item(), **info}

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
