"""Agent 0, the word agent: the bytes of a word piece -> one vector -> the bytes and the length.

Both directions work on *packed rows*: the output of ``craft_kernels.join_pad`` (``ids``,
``unit_index``, ``position``; (R, L) each, -1 on join and pad positions), so several words share a
row and the only padding is what is left at the end of each row. Every position is computed; the
join and pad positions are masked out.

Encoder: each byte at position p -> ``SwiGLU(embed(byte) + embed_pos(p))`` (residual), optionally
``encoder_layers`` pre-norm blocks whose attention sees only the positions of the same word
(HAT's byte encoder; ``craft_kernels.doc_attention(kind='doc_bidirectional')`` with the unit index
as document id), summed over the word's positions, then an MLP and a parameter-free LayerNorm:
the vector (``dim``) has zero mean and unit variance in every use (training, compression, the
sentence agent's targets) — one normalisation, applied in one place. The default is no attention
blocks: on one CPU thread they make a step much slower and lost at equal training time
(benchmarks/RESULTS.md); what made held-out spellings come back is training on mutated spellings
(:func:`craft.agents.train.mutate_piece`).

Decoder: non-autoregressive, so decoding runs the very computation the loss trains (no teacher
forcing to diverge from). Position queries ``proj(vector) + embed_pos(p)`` go through
``decoder_layers`` blocks of the same within-word attention (none by default), then per-position
MLPs. The length head classifies the vector's piece length (1..width) and is what decides
how many positions are read out: the byte loss covers only the positions inside the word, so the
logits past the end are untrained and only the length head knows where a word stops.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from craft_kernels import doc_attention, join_pad, pad_units
from craft.agents.text import JOIN_ID, PAD_ID, VOCAB_SIZE
from craft.models.transformer import RMSNorm


@dataclass
class WordAgentConfig:
    width: int = 16          # most ids in a word piece
    dim: int = 64            # the word vector
    hidden_dim: int = 128    # per-position width inside the agent
    vocab_size: int = VOCAB_SIZE
    row_len: int = 64        # positions of a packed join_pad row
    encoder_layers: int = 0  # within-word attention blocks (0: a sum of per-position features)
    decoder_layers: int = 0
    heads: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualMLP(nn.Module):
    """``x + down(silu(gate) * up)`` of ``RMSNorm(x)``, (..., dim) -> (..., dim).

    The SwiGLU of the craft blocks in eager math: the agents' row counts change every batch, and
    ``craft_kernels.SwiGLUMLP``'s compiled CPU kernel would recompile for new shapes (tens of
    seconds per process), which short agent runs and tests cannot amortise."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.gate_up = nn.Linear(dim, 2 * hidden_dim, bias=False)
        self.down = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x):
        g, u = self.gate_up(self.norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class UnitBlock(nn.Module):
    """``x + attn(RMSNorm(x))`` then :class:`ResidualMLP`, (R, L, dim) -> (R, L, dim); attention
    bidirectional inside each unit (``unit`` (R, L): unit index, -1 on join/pad positions, whose
    attention output is zero)."""

    def __init__(self, dim: int, heads: int, hidden_dim: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads}: must divide the hidden width {dim}")
        self.heads = heads
        self.norm = RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.mlp = ResidualMLP(dim, hidden_dim)

    def forward(self, x, unit):
        R, L, D = x.shape
        q, k, v = self.qkv(self.norm(x)).view(R, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = doc_attention(q, k, v, unit, kind="doc_bidirectional")
        return self.mlp(x + self.out(y.transpose(1, 2).reshape(R, L, D)))


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """The one normalisation of agent vectors: zero mean, unit variance over the last dim."""
    return F.layer_norm(x, x.shape[-1:])


class Packed:
    """Packed rows of units for one agent call: ``ids``/``unit``/``pos`` (R, L) long tensors,
    ``unit`` -1 off-unit; ``n_units`` units, ``lengths`` (n_units,) long."""

    def __init__(self, ids, unit, pos, n_units, lengths):
        self.ids, self.unit, self.pos = ids, unit, pos
        self.n_units, self.lengths = n_units, lengths
        self.mask = unit >= 0

    @property
    def padding_waste(self) -> float:
        """Share of computed positions that hold no unit content (pads and joins)."""
        return 1.0 - float(self.mask.sum()) / max(1, self.mask.numel())


def pack_units(tokens, offsets, row_len: int) -> Packed:
    """Units ``tokens[offsets[u]:offsets[u+1]]`` packed next-fit into rows of ``row_len`` with join_pad."""
    tokens = np.asarray(tokens, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    jp = join_pad(tokens, offsets, row_len, JOIN_ID, PAD_ID)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Packed(t(jp.ids), t(jp.unit_index), t(jp.position), len(offsets) - 1, t(np.diff(offsets)))


def pad_to_max(tokens, offsets, width: int) -> Packed:
    """The pad-to-max layout (the baseline of :func:`pack_units`): one row of ``width`` per unit, via pad_units."""
    tokens = np.asarray(tokens, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    ids = torch.from_numpy(pad_units(tokens, offsets, width, PAD_ID))
    lengths = torch.from_numpy(np.diff(offsets))
    pos = torch.arange(width).expand(n, width)
    inside = pos < lengths[:, None]
    unit = torch.where(inside, torch.arange(n)[:, None], -1)
    return Packed(ids, unit, torch.where(inside, pos, -1), n, lengths)


def pack_lengths(lengths: torch.Tensor, row_len: int) -> Packed:
    """Rows for decoding: unit u gets ``lengths[u]`` positions (ids are placeholders)."""
    lengths = lengths.to(torch.int64).clamp_min(1)
    offsets = np.concatenate([[0], np.cumsum(lengths.numpy())])
    return pack_units(np.full(int(offsets[-1]), PAD_ID, dtype=np.int64), offsets, row_len)


class WordAgent(nn.Module):
    def __init__(self, config: WordAgentConfig | None = None):
        super().__init__()
        c = self.config = config or WordAgentConfig()
        H = c.hidden_dim
        self.tok_emb = nn.Embedding(c.vocab_size, H)
        self.enc_pos = nn.Embedding(c.width, H)
        self.enc_tok = ResidualMLP(H, 2 * H)
        self.enc_blocks = nn.ModuleList(UnitBlock(H, c.heads, 2 * H) for _ in range(c.encoder_layers))
        self.enc_out = nn.Sequential(RMSNorm(H), ResidualMLP(H, 2 * H), nn.Linear(H, c.dim))
        self.dec_in = nn.Linear(c.dim, H)
        self.dec_pos = nn.Embedding(c.width, H)
        self.dec_blocks = nn.ModuleList(UnitBlock(H, c.heads, 2 * H) for _ in range(c.decoder_layers))
        self.dec_tok = nn.Sequential(ResidualMLP(H, 2 * H), ResidualMLP(H, 2 * H), RMSNorm(H))
        self.dec_out = nn.Linear(H, c.vocab_size)
        self.length_head = nn.Sequential(nn.Linear(c.dim, H), nn.GELU(), nn.Linear(H, c.width + 1))

    # ---- encoder
    def encode_packed(self, p: Packed) -> torch.Tensor:
        """Packed rows -> word vectors (n_units, dim), unit-normalised."""
        m = p.mask
        x = self.tok_emb(p.ids) + self.enc_pos(p.pos.clamp_min(0))
        x = self.enc_tok(x)
        for blk in self.enc_blocks:
            x = blk(x, p.unit)
        x = x * m[..., None]
        pooled = x.new_zeros(p.n_units, x.shape[-1]).index_add_(0, p.unit[m], x[m])
        return unit_norm(self.enc_out(pooled))

    def encode(self, words: list[list[int]]) -> torch.Tensor:
        """Token-id pieces (each <= width ids) -> (n, dim)."""
        self._check_pieces(words)
        offsets = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64)
        tokens = np.fromiter((t for w in words for t in w), dtype=np.int64, count=int(offsets[-1]))
        return self.encode_packed(pack_units(tokens, offsets, self.config.row_len))

    # ---- decoder
    def length_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.length_head(z)

    def predict_lengths(self, z: torch.Tensor) -> torch.Tensor:
        """(n, dim) -> (n,) long lengths in 1..width from the length head."""
        return self.length_logits(z)[:, 1:].argmax(-1) + 1

    def byte_logits(self, z: torch.Tensor, p: Packed) -> torch.Tensor:
        """Logits (R, L, vocab) of every packed position, unit ``p.unit`` read from ``z`` (n_units, dim)."""
        h = self.dec_in(z)
        x = h[p.unit.clamp_min(0)] + self.dec_pos(p.pos.clamp_min(0))
        for blk in self.dec_blocks:
            x = blk(x, p.unit)
        return self.dec_out(self.dec_tok(x))

    def loss(self, p: Packed) -> tuple[torch.Tensor, dict]:
        """Reconstruction of the packed words: byte cross-entropy inside the words + length cross-entropy."""
        z = self.encode_packed(p)
        return self.decode_loss(z, p)

    def decode_loss(self, z: torch.Tensor, p: Packed) -> tuple[torch.Tensor, dict]:
        logits = self.byte_logits(z, p)
        m = p.mask
        byte_loss = F.cross_entropy(logits[m].float(), p.ids[m])
        len_loss = F.cross_entropy(self.length_logits(z).float(), p.lengths)
        return byte_loss + len_loss, {"byte_loss": byte_loss.item(), "length_loss": len_loss.item()}

    @torch.no_grad()
    def decode(self, z: torch.Tensor, lengths: torch.Tensor | None = None) -> list[list[int]]:
        """(n, dim) -> token-id pieces. ``lengths`` default: the length head's prediction."""
        if z.numel() == 0:
            return []
        if lengths is None:
            lengths = self.predict_lengths(z)
        p = pack_lengths(lengths.cpu(), self.config.row_len)
        ids = self.byte_logits(z, p).argmax(-1)
        m = p.mask
        flat = ids[m]
        order = torch.argsort(p.unit[m] * self.config.width + p.pos[m], stable=True)
        flat = flat[order].tolist()
        out, i = [], 0
        for n in p.lengths.tolist():
            out.append(flat[i:i + n])
            i += n
        return out

    def _check_pieces(self, words):
        for i, w in enumerate(words):
            if not 1 <= len(w) <= self.config.width:
                raise ValueError(f"words[{i}]: has {len(w)} ids; pieces must hold 1..width={self.config.width} "
                                 "(cut long words with craft.agents.text.word_pieces)")
