"""The hierarchical language model (HAT's design) and the flat byte model it is compared with.

Words. The text's bytes are cut into words at whitespace, the whitespace run going in front of
the word it precedes (``"Hello, world!"`` -> ``"Hello,"``, ``" world!"``); a trailing run is a
word of its own; a word longer than ``max_word_len`` bytes is cut into pieces of that length.
Every byte belongs to exactly one word, so predicting every word predicts the whole text.

The stream. Each word of ``n`` bytes takes ``n + 1`` stream positions: inputs
``[WORD, b0, ..., b(n-1)]`` and targets ``[b0, ..., b(n-1), WORD]`` (id 256 marks the start of a
word on the input side and its end on the target side). The end target is what makes the
segmentation part of the model's probability: the total cross-entropy over the stream is the
code length of the text, bytes *and* word boundaries, and bits/byte divides it by the text's bytes,
the same definition as the flat model's (which predicts bytes only).

The model (``HierarchicalLM``), three stacks of ``craft.models`` blocks (RMSNorm, rotary
attention, SwiGLU):

- encoder (byte level, ``byte_dim``): attention causal over the row (``encoder_context="row"``,
  the default), over a sliding window of the last ``byte_window`` positions (64 by default, about
  ten words; 0: the whole row), or causal *inside each word* (``"word"``: ``doc_attention`` with
  the word index as document id); the state at a word's last position has seen the whole word (and, with "row",
  the words before it) and becomes its word vector (projected to ``word_dim``);
- backbone (word level, ``word_dim``): causal over ``[start, v0, ..., v(N-2)]``, so its output at
  word ``t`` has seen words ``< t`` only: the prediction for word ``t``;
- decoder (byte level): the encoder's states of word ``t`` (position ``j`` has seen ``b0..b(j-1)``)
  plus the backbone's prediction for word ``t``, attention causal over the row or inside the word
  (``decoder_context``), then the byte head (tied to the byte embedding). Position ``j`` predicts
  ``b(j)``, the last one the end.

The backbone runs once per word instead of once per byte: that is where the throughput comes
from. The encoder and decoder run on every stream position with small blocks. Attending over the
row lets them see the bytes just before the word directly (a word's first bytes are the hardest to
predict from one backbone vector alone); the sliding window keeps that local view and bounds the
byte attention's cost (a causal pass over a whole row of ``max_seq_len`` positions costs ~ L^2 / 2
per head; a window, ``byte_window * L``), since longer context is the backbone's job.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from craft.models import LanguageModel, ModelConfig
from craft.models.transformer import Block, RMSNorm, rope_angles

WORD_ID = 256          # input: start of a word; target: end of a word
VOCAB = 257
IGNORE = -100


# --------------------------------------------------------------------------- words and the stream
def split_words(data: bytes, max_word_len: int = 16) -> np.ndarray:
    """Word offsets (n_words + 1,) int64 into ``data``: a word starts at 0, where a whitespace run
    begins, and every ``max_word_len`` bytes inside a longer word."""
    if max_word_len < 1:
        raise ValueError(f"max_word_len: expected >= 1, got {max_word_len}")
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(1, dtype=np.int64)
    ws = np.isin(b, np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8))
    starts = np.flatnonzero(np.concatenate([[True], ws[1:] & ~ws[:-1]]))
    lens = np.diff(np.append(starts, b.size))
    n_pieces = (lens + max_word_len - 1) // max_word_len
    first = np.repeat(starts, n_pieces)
    k = np.arange(n_pieces.sum()) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    return np.append(first + k * max_word_len, b.size).astype(np.int64)


@dataclass
class WordStream:
    """A text as the hierarchical model's stream: ``inputs``/``targets``/``word`` (S,) int64 (the
    word index of each position) and ``offsets`` (n_words + 1,) into the stream; ``n_bytes``."""
    inputs: np.ndarray
    targets: np.ndarray
    word: np.ndarray
    offsets: np.ndarray
    n_bytes: int


def word_stream(data: bytes, max_word_len: int = 16) -> WordStream:
    """The stream of ``data`` (see the module docstring): ``len(data) + n_words`` positions."""
    wo = split_words(data, max_word_len)
    b = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    n_words = len(wo) - 1
    lens = np.diff(wo) + 1
    so = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    word = np.repeat(np.arange(n_words), lens)
    inputs = np.full(int(so[-1]), WORD_ID, dtype=np.int64)
    targets = np.full(int(so[-1]), WORD_ID, dtype=np.int64)
    # stream position of byte i of word w: so[w] + (i - wo[w]); inputs are shifted one further
    w_of_byte = np.repeat(np.arange(n_words), np.diff(wo))
    byte_pos = so[w_of_byte] + (np.arange(b.size) - wo[w_of_byte])
    targets[byte_pos] = b
    inputs[byte_pos + 1] = b
    return WordStream(inputs, targets, word, so, int(b.size))


def stream_windows(offsets: np.ndarray, seq_len: int) -> np.ndarray:
    """Consecutive windows of whole words, each at most ``seq_len`` positions: (n_windows + 1,)
    word indices (every word falls in exactly one window)."""
    if int(np.diff(offsets).max(initial=0)) > seq_len:
        raise ValueError(f"seq_len={seq_len}: shorter than a word's positions; raise it above max_word_len + 1")
    cuts, w = [0], 0
    n = len(offsets) - 1
    while w < n:
        w = int(np.searchsorted(offsets, offsets[w] + seq_len, side="right")) - 1
        cuts.append(w)
    return np.asarray(cuts, dtype=np.int64)


@dataclass
class StreamBatch:
    """Rows of whole words: ``inputs``/``targets`` (B, L) (pad: input 0, target -100), ``doc``
    (B, L) word index inside the row (-1 pad), ``last`` (B, N) the stream position of each word's
    last position (0 for missing words), ``n_bytes`` text bytes in the batch."""
    inputs: torch.Tensor
    targets: torch.Tensor
    doc: torch.Tensor
    last: torch.Tensor
    n_bytes: int


def make_batch(s: WordStream, word_ranges, seq_len: int) -> StreamBatch:
    """Rows from word ranges ``[(w0, w1), ...]`` of ``s`` (each at most ``seq_len`` positions)."""
    B = len(word_ranges)
    n_max = max(w1 - w0 for w0, w1 in word_ranges)
    inp = np.zeros((B, seq_len), dtype=np.int64)
    tgt = np.full((B, seq_len), IGNORE, dtype=np.int64)
    doc = np.full((B, seq_len), -1, dtype=np.int64)
    last = np.zeros((B, max(1, n_max)), dtype=np.int64)
    n_bytes = 0
    for r, (w0, w1) in enumerate(word_ranges):
        a, b = int(s.offsets[w0]), int(s.offsets[w1])
        if b - a > seq_len:
            raise ValueError(f"word_ranges[{r}]: {b - a} positions, more than seq_len={seq_len}")
        inp[r, : b - a] = s.inputs[a:b]
        tgt[r, : b - a] = s.targets[a:b]
        doc[r, : b - a] = s.word[a:b] - w0
        last[r, : w1 - w0] = s.offsets[w0 + 1: w1 + 1] - a - 1
        n_bytes += int(b - a - (w1 - w0))
    t = torch.from_numpy
    return StreamBatch(t(inp), t(tgt), t(doc), t(last), n_bytes)


# --------------------------------------------------------------------------- the model
@dataclass
class HierarchicalLMConfig:
    byte_dim: int = 64
    byte_heads: int = 2
    byte_hidden_dim: int = 192
    encoder_layers: int = 1
    decoder_layers: int = 2
    word_dim: int = 160
    word_heads: int = 5
    word_hidden_dim: int = 400
    backbone_layers: int = 3
    max_word_len: int = 16      # bytes of a word piece
    max_seq_len: int = 320      # stream positions of a training/eval row
    encoder_context: str = "row"   # byte encoder's attention: "row" causal over the row, "word" inside the word
    decoder_context: str = "row"   # the same for the byte decoder
    byte_window: int = 64          # "row" contexts: each byte position sees this many (0: the whole row)
    init_std: float = 0.02
    dropout: float = 0.0           # training only: share of the byte embeddings and of every block's
    #                                attention/MLP outputs zeroed (as ModelConfig.dropout); 0 adds no op

    def to_dict(self) -> dict:
        return asdict(self)

    def _blocks(self, dim, heads, hidden, max_len) -> ModelConfig:
        return ModelConfig(vocab_size=VOCAB, dim=dim, n_layers=1, n_heads=heads, hidden_dim=hidden, max_seq_len=max_len,
                           dropout=self.dropout)


class HierarchicalLM(nn.Module):
    """``forward(batch: StreamBatch) -> (logits (B, L, 257), loss)``: mean cross-entropy over the
    stream positions of the batch (``loss * n_positions`` is its code length in nats)."""

    def __init__(self, config: HierarchicalLMConfig | None = None):
        super().__init__()
        c = self.config = config or HierarchicalLMConfig()
        for name in ("encoder_context", "decoder_context"):
            if getattr(c, name) not in ("word", "row"):
                raise ValueError(f"{name}: expected 'word' or 'row', got {getattr(c, name)!r}")
        if isinstance(c.byte_window, bool) or not isinstance(c.byte_window, int) or c.byte_window < 0:
            raise ValueError(f"byte_window: expected an int >= 0 (0: the whole row), got {c.byte_window!r}")
        if c.max_seq_len < c.max_word_len + 1:
            raise ValueError(f"max_seq_len={c.max_seq_len}: must hold one word piece (max_word_len + 1 = "
                             f"{c.max_word_len + 1})")
        bc = c._blocks(c.byte_dim, c.byte_heads, c.byte_hidden_dim, c.max_seq_len)
        wc = c._blocks(c.word_dim, c.word_heads, c.word_hidden_dim, c.max_seq_len)
        self.embed = nn.Embedding(VOCAB, c.byte_dim)
        self.encoder = nn.ModuleList(Block(bc) for _ in range(c.encoder_layers))
        self.to_word = nn.Sequential(RMSNorm(c.byte_dim), nn.Linear(c.byte_dim, c.word_dim, bias=False))
        self.start = nn.Parameter(torch.zeros(c.word_dim))
        self.backbone = nn.ModuleList(Block(wc) for _ in range(c.backbone_layers))
        self.from_word = nn.Sequential(RMSNorm(c.word_dim), nn.Linear(c.word_dim, c.byte_dim, bias=False))
        self.decoder = nn.ModuleList(Block(bc) for _ in range(c.decoder_layers))
        self.norm = RMSNorm(c.byte_dim)
        for name, dim, heads in (("byte", c.byte_dim, c.byte_heads), ("word", c.word_dim, c.word_heads)):
            hd = dim // heads
            inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            cos, sin = rope_angles(torch.arange(c.max_seq_len), inv)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """craft's scheme: Normal(0, init_std), residual output projections / sqrt(2 n_layers)."""
        std = self.config.init_std
        n = self.config.encoder_layers + self.config.backbone_layers + self.config.decoder_layers
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".0.weight") and p.dim() == 1:
                p.fill_(1.0)
            elif name == "start":
                p.normal_(0.0, 1.0)
            elif name.endswith("wo.weight") or name.endswith("down.weight"):
                p.normal_(0.0, std / math.sqrt(2 * n))
            else:
                p.normal_(0.0, std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, batch: StreamBatch):
        B, L = batch.inputs.shape
        if L > self.config.max_seq_len:
            raise ValueError(f"batch: {L} positions per row, more than max_seq_len={self.config.max_seq_len}")
        bc, bs = self.byte_cos[:L], self.byte_sin[:L]
        x = self.embed(batch.inputs)
        if self.config.dropout and self.training:
            x = F.dropout(x, self.config.dropout, True)
        win = self.config.byte_window if 0 < self.config.byte_window < L else None
        doc = batch.doc if self.config.encoder_context == "word" else None
        for blk in self.encoder:
            x = blk(x, bc, bs, doc, window=None if doc is not None else win)
        N = batch.last.shape[1]
        v = self.to_word(x.gather(1, batch.last[..., None].expand(B, N, x.shape[-1])))
        h = torch.cat([self.start.to(v.dtype).expand(B, 1, -1), v[:, :-1]], dim=1)  # word t sees words < t
        wc, ws = self.word_cos[:N], self.word_sin[:N]
        for blk in self.backbone:
            h = blk(h, wc, ws)
        ctx = self.from_word(h)
        y = x + ctx.gather(1, batch.doc.clamp_min(0)[..., None].expand(B, L, ctx.shape[-1]))
        doc = batch.doc if self.config.decoder_context == "word" else None
        for blk in self.decoder:
            y = blk(y, bc, bs, doc, window=None if doc is not None else win)
        logits = F.linear(self.norm(y), self.embed.weight)
        loss = F.cross_entropy(logits.reshape(B * L, -1).float(), batch.targets.reshape(-1), ignore_index=IGNORE)
        return logits, loss


def flat_config(max_seq_len: int = 256) -> ModelConfig:
    """The flat byte model: craft's LanguageModel over bytes (nanoGPT's CPU shape: 4 layers, 128-d)."""
    return ModelConfig(vocab_size=256, dim=128, n_layers=4, n_heads=4, hidden_dim=512, max_seq_len=max_seq_len)


def flat_model(config: ModelConfig | None = None) -> LanguageModel:
    return LanguageModel(config or flat_config())


def byte_windows(data: bytes, seq_len: int):
    """(inputs, targets) of the flat model over consecutive windows: every byte but the first is a
    target once; window ``k`` reads bytes ``[k*seq_len, (k+1)*seq_len]``."""
    b = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))
    n = (b.numel() - 1 + seq_len - 1) // seq_len
    x = torch.zeros(n, seq_len, dtype=torch.long)
    y = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    for k in range(n):
        seg = b[k * seq_len: (k + 1) * seq_len + 1]
        x[k, : seg.numel() - 1] = seg[:-1]
        y[k, : seg.numel() - 1] = seg[1:]
    return x, y


# --------------------------------------------------------------------------- bits per byte
@torch.no_grad()
def hierarchical_bits_per_byte(model: HierarchicalLM, data: bytes, rows: int = 32, autocast: bool = False) -> float:
    """Code length of ``data`` (every byte and every word end) / its bytes, in bits; consecutive
    windows of whole words, each predicted from the start vector alone (no context across windows)."""
    c = model.config
    s = word_stream(data, c.max_word_len)
    cuts = stream_windows(s.offsets, c.max_seq_len)
    ranges = list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))
    was = model.training
    model.eval()
    nats = 0.0
    for i in range(0, len(ranges), rows):
        batch = make_batch(s, ranges[i:i + rows], c.max_seq_len)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits, _ = model(batch)
        m = batch.targets != IGNORE
        nats += float(F.cross_entropy(logits[m].float(), batch.targets[m], reduction="sum"))
    model.train(was)
    return nats / math.log(2) / max(1, s.n_bytes)


@torch.no_grad()
def flat_bits_per_byte(model: LanguageModel, data: bytes, rows: int = 32, autocast: bool = False) -> float:
    """Code length of ``data``'s bytes after the first / its bytes, in bits (windows of
    ``max_seq_len`` predicted from scratch). The first byte of the text is given (one byte in the
    whole validation text)."""
    x, y = byte_windows(data, model.config.max_seq_len)
    was = model.training
    model.eval()
    nats = 0.0
    for i in range(0, len(x), rows):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x[i:i + rows])
        m = y[i:i + rows] != IGNORE
        nats += float(F.cross_entropy(logits[m].float(), y[i:i + rows][m], reduction="sum"))
    model.train(was)
    return nats / math.log(2) / max(1, len(data))
