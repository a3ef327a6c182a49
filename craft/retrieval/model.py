"""TIGER's sequence-to-sequence recommender on craft's pieces (RMSNorm, SwiGLU MLP).

The encoder reads a user's history as semantic-ID tokens, H items x L codes flattened to H*L
tokens (items first, oldest first, then padding; token id 0 = padding). Each token's embedding is
the sum of a code embedding (one table, codes of level l offset by the sizes of the levels before
it), an item-position embedding (0 = oldest item of the window) and a code-position embedding (the
level). Attention is block-causal over items: a token sees every code of its own item and of the
items before it, never a later item.

The decoder reads ``[BOS, c_0, …, c_{L-2}]`` and predicts ``c_0 … c_{L-1}`` of the next item with
causal self-attention, cross-attention to the encoder output and one output head per level
(level l has ``codebook_sizes[l]`` logits). Cross-attention adds a learned per-layer, per-head
bias by recency (how many items back the key's item is from the target) and never sees items at
or after the target.

Why block-causal: the encoder states of items ``0..t-1`` are the same whichever later target they
serve, so :meth:`window_loss` trains every target of a user's window (up to ``max_history + 1``
items) in one pass — the same loss as one :meth:`forward` per prefix, for a fraction of the
encoder work. For decoding, :meth:`encode` returns the cross-attention keys/values of every
decoder layer once per user and :meth:`decode_step` extends a small self-attention KV cache by one
position for many beams per user (rows ``user * beams + beam``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from craft.models.transformer import RMSNorm
from craft_kernels import SwiGLUMLP, check_int


@dataclass
class TigerConfig:
    """``codebook_sizes``: codes per level (the last level numbers colliding items)."""

    codebook_sizes: list
    max_history: int = 20
    dim: int = 128
    n_heads: int = 4
    hidden_dim: int = 512
    n_encoder_layers: int = 4
    n_decoder_layers: int = 4
    dropout: float = 0.1
    init_std: float = 0.02

    def __post_init__(self):
        self.codebook_sizes = [int(k) for k in self.codebook_sizes]
        if not self.codebook_sizes or min(self.codebook_sizes) < 1:
            raise ValueError(f"codebook_sizes: expected positive sizes, got {self.codebook_sizes}")
        for name in ("max_history", "dim", "n_heads", "hidden_dim", "n_encoder_layers", "n_decoder_layers"):
            check_int(getattr(self, name), name, 1)
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim}: must be a multiple of n_heads={self.n_heads}")

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, cross: bool):
        super().__init__()
        self.h, self.hd = n_heads, dim // n_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.cross = cross

    def heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, hd)
        B, T, _ = x.shape
        return x.view(B, T, self.h, self.hd).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x, k, v, mask=None, is_causal=False):
        """x (B, T, D) queries over k/v (B, H, S, hd); mask bool broadcastable to (B, H, T, S), True = attend."""
        B, T, D = x.shape
        y = F.scaled_dot_product_attention(self.heads(self.q(x)), k, v, attn_mask=mask, is_causal=is_causal)
        return self.o(y.transpose(1, 2).reshape(B, T, D))


class EncoderLayer(nn.Module):
    def __init__(self, c: TigerConfig):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(c.dim), _Attention(c.dim, c.n_heads, False)
        self.mlp_norm, self.mlp = RMSNorm(c.dim), SwiGLUMLP(c.dim, c.hidden_dim)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, mask):
        h = self.attn_norm(x)
        k, v = self.attn.keys_values(h)
        x = x + self.drop(self.attn(h, k, v, mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: TigerConfig):
        super().__init__()
        self.self_norm, self.self_attn = RMSNorm(c.dim), _Attention(c.dim, c.n_heads, False)
        self.cross_norm, self.cross_attn = RMSNorm(c.dim), _Attention(c.dim, c.n_heads, True)
        self.mlp_norm, self.mlp = RMSNorm(c.dim), SwiGLUMLP(c.dim, c.hidden_dim)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, mem_k, mem_v, mem_bias, self_mask=None):
        """self_mask: bool (T, T) True = attend, or None for plain causal."""
        h = self.self_norm(x)
        k, v = self.self_attn.keys_values(h)
        x = x + self.drop(self.self_attn(h, k, v, self_mask, is_causal=self_mask is None))
        x = x + self.drop(self.cross_attn(self.cross_norm(x), mem_k, mem_v, mem_bias))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


def _block_causal(n_items: int, levels: int, device=None) -> torch.Tensor:
    """bool (n_items*L, n_items*L): token of item i may attend to tokens of items <= i."""
    item = torch.arange(n_items, device=device).repeat_interleave(levels)
    return item[:, None] >= item[None, :]


class Tiger(nn.Module):
    """``forward(history_codes (B, H, L) long, -1 = padding item; target_codes (B, L) long)`` ->
    mean cross-entropy over the L levels (fp32). ``window_loss(windows (B, W, L))`` -> the mean of the
    same loss over every target of each window."""

    def __init__(self, config: TigerConfig):
        super().__init__()
        c = self.config = config
        sizes = torch.tensor(c.codebook_sizes)
        self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes + 1, persistent=False)  # token = off + code
        n_tok = int(sizes.sum()) + 1
        self.code_emb = nn.Embedding(n_tok, c.dim)  # encoder tokens (0 = padding)
        self.dec_emb = nn.Embedding(n_tok, c.dim)  # decoder tokens (0 = BOS)
        self.item_pos = nn.Embedding(c.max_history, c.dim)
        self.code_pos = nn.Embedding(c.levels, c.dim)
        self.dec_pos = nn.Embedding(c.levels, c.dim)
        # cross-attention bias per decoder layer and head by recency (0 = the item just before the target)
        self.recency = nn.Parameter(torch.zeros(c.n_decoder_layers, c.n_heads, c.max_history))
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_encoder_layers))
        self.enc_norm = RMSNorm(c.dim)
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_decoder_layers))
        self.dec_norm = RMSNorm(c.dim)
        self.heads = nn.ModuleList(nn.Linear(c.dim, k, bias=False) for k in c.codebook_sizes)
        self.drop = nn.Dropout(c.dropout)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name == "recency":
                    p.zero_()
                elif name.endswith(".o.weight") or name.endswith("down.weight"):
                    p.normal_(0.0, c.init_std / math.sqrt(2 * (c.n_encoder_layers + c.n_decoder_layers)))
                else:
                    p.normal_(0.0, c.init_std)

    # ------------------------------------------------------------------------------ encoder
    def _check_codes(self, codes: torch.Tensor, name: str) -> None:
        L = self.config.levels
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long or codes.shape[-1] != L:
            raise ValueError(f"{name}: expected a long tensor (..., {L}) of codes, got "
                             f"{getattr(codes, 'dtype', type(codes).__name__)} {tuple(getattr(codes, 'shape', ()))}")

    def _encode_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, H, L) items first, -1 rows after -> encoder output (B, H*L, D), block-causal."""
        B, H, L = codes.shape
        if H > self.config.max_history:
            raise ValueError(f"history: {H} items, the model was built for max_history={self.config.max_history}")
        pad = codes[..., 0] < 0
        tok = torch.where(pad[..., None], torch.zeros_like(codes), codes + self.offsets)
        x = self.code_emb(tok) + self.item_pos.weight[:H, None] + self.code_pos.weight[None, None]
        x = self.drop(x.reshape(B, H * L, -1))
        mask = _block_causal(H, L, x.device)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x)

    def _recency_bias(self, dist: torch.Tensor, levels: int) -> torch.Tensor:
        """dist (..., Q, H) long items back from the target (< 0 = not visible) -> float
        (..., layers, heads, Q, H*L) additive cross-attention bias (-inf where not visible)."""
        d = dist.clamp(0, self.config.max_history - 1)
        b = self.recency[:, :, d]  # (layers, heads, ..., Q, H)
        b = b.movedim((0, 1), (-4, -3)).masked_fill((dist < 0)[..., None, None, :, :], float("-inf"))
        return b.repeat_interleave(levels, dim=-1)

    def encode(self, history_codes: torch.Tensor):
        """history_codes (B, H, L) long: each row's items first (oldest first), then -1 rows ->
        (memory keys/values per decoder layer: list of (k, v) (B, heads, H*L, hd), cross-attention
        bias (B, layers, heads, 1, H*L) float, -inf on padding). The target is the item after the last."""
        self._check_codes(history_codes, "history_codes")
        B, H, L = history_codes.shape
        n = (history_codes[..., 0] >= 0).sum(1)  # (B,) items per row
        mem = self._encode_tokens(history_codes)
        dist = n[:, None] - 1 - torch.arange(H, device=n.device)[None]  # (B, H)
        dist[:, 0] = dist[:, 0].clamp_min(0)  # an empty history still attends to something
        bias = self._recency_bias(dist[:, None], L)  # (B, layers, heads, 1, H*L)
        return [layer.cross_attn.keys_values(mem) for layer in self.decoder], bias

    # ------------------------------------------------------------------------------ training
    def decoder_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, T) of levels 0..T-1 -> decoder tokens (N, T + 1): BOS then the codes."""
        tok = codes + self.offsets[: codes.shape[1]]
        return torch.cat([torch.zeros_like(tok[:, :1]), tok], dim=1)

    def decode_full(self, memory, mem_bias, dec_tokens: torch.Tensor) -> list:
        """Teacher-forced decoder over dec_tokens (N, T <= L); memory and mem_bias rows must match N.
        Returns per-level logits [(N, K_l) for l < T]."""
        N, T = dec_tokens.shape
        x = self.drop(self.dec_emb(dec_tokens) + self.dec_pos.weight[:T])
        for i, (layer, (k, v)) in enumerate(zip(self.decoder, memory)):
            x = layer(x, k, v, mem_bias[:, i])
        h = self.dec_norm(x)
        return [self.heads[l](h[:, l]) for l in range(T)]

    def forward(self, history_codes: torch.Tensor, target_codes: torch.Tensor) -> torch.Tensor:
        self._check_codes(target_codes, "target_codes")
        memory, bias = self.encode(history_codes)
        logits = self.decode_full(memory, bias, self.decoder_inputs(target_codes[:, :-1]))
        losses = [F.cross_entropy(lg.float(), target_codes[:, l]) for l, lg in enumerate(logits)]
        return torch.stack(losses).mean()

    def window_loss(self, windows: torch.Tensor) -> torch.Tensor:
        """windows (B, W, L) long: each row a user's items (oldest first, then -1 rows), W <=
        max_history + 1. Item t >= 1 of a row is a target whose history is items 0..t-1; returns the
        mean over levels of the mean cross-entropy over all targets — :meth:`forward` over every
        prefix, with one encoder pass per window."""
        self._check_codes(windows, "windows")
        B, W, L = windows.shape
        if W < 2:
            raise ValueError(f"windows: need at least 2 items per window (a history and a target), got {W}")
        hist, tgt = windows[:, :-1], windows[:, 1:]  # (B, T, L), target t's history: items 0..t
        T = W - 1
        mem = self._encode_tokens(hist)
        t = torch.arange(T, device=windows.device)
        bias = self._recency_bias((t[:, None] - t[None, :])[None], L)  # (1, layers, heads, T, T*L), shared
        bias = bias.repeat_interleave(L, dim=-2)  # one row per decoder token
        tok = self.decoder_inputs(tgt[..., :-1].clamp_min(0).reshape(B * T, L - 1)).view(B, T * L)
        x = self.drop(self.dec_emb(tok) + self.dec_pos.weight.repeat(T, 1))
        tgt_id = torch.arange(T, device=windows.device).repeat_interleave(L)
        lvl = torch.arange(L, device=windows.device).repeat(T)
        self_mask = (tgt_id[:, None] == tgt_id[None, :]) & (lvl[:, None] >= lvl[None, :])
        for i, layer in enumerate(self.decoder):
            k, v = layer.cross_attn.keys_values(mem)
            x = layer(x, k, v, bias[:, i], self_mask)
        h = self.dec_norm(x).view(B, T, L, -1)
        valid = tgt[..., 0] >= 0  # (B, T)
        hv = h[valid]  # (N, L, D)
        tv = tgt[valid]  # (N, L)
        losses = [F.cross_entropy(self.heads[l](hv[:, l]).float(), tv[:, l]) for l in range(L)]
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------------------ decoding
    def decode_step(self, memory, mem_bias, cache: list, token: torch.Tensor, level: int, beams: int) -> torch.Tensor:
        """One decoder position for B*beams rows (row = user * beams + beam).

        token (B*beams,) long decoder token at position ``level`` (BOS = 0 at level 0); ``cache``: per
        decoder layer a list [k, v] of the earlier positions (B*beams, heads, level, hd) or None,
        extended in place. Memory k/v (B, heads, S, hd) and mem_bias (B, layers, heads, 1, S) are
        shared by a user's beams (no copy: the beams are extra query rows). Returns logits
        (B*beams, K_level) fp32.

        Attention is written out (scores, softmax, weighted sum) rather than through
        ``scaled_dot_product_attention``: with one query per row over <= L cached keys, or a user's
        beams over its S memory tokens, the fused kernel's per-(row, head) setup costs more than the
        arithmetic; the result is the same attention (tested against :meth:`decode_full`)."""
        N = token.shape[0]
        B = N // beams
        x = self.dec_emb(token)[:, None] + self.dec_pos.weight[level]
        for i, (layer, (mk, mv)) in enumerate(zip(self.decoder, memory)):
            h = layer.self_norm(x)
            a = layer.self_attn
            k, v = a.keys_values(h)  # (N, heads, 1, hd)
            if cache[i] is not None:
                k = torch.cat([cache[i][0], k], dim=2)
                v = torch.cat([cache[i][1], v], dim=2)
            cache[i] = [k, v]
            q = a.q(h).view(N, a.h, 1, a.hd)
            p = torch.softmax((q * k).sum(-1) * a.hd ** -0.5, dim=-1)  # (N, heads, T)
            y = (p[..., None] * v).sum(2)  # (N, heads, hd)
            x = x + a.o(y.view(N, 1, -1))
            hq = layer.cross_norm(x).view(B, beams, -1)  # beams of a user as query rows
            a = layer.cross_attn
            q = a.q(hq).view(B, beams, a.h, a.hd).transpose(1, 2)  # (B, heads, beams, hd)
            s = torch.matmul(q, mk.transpose(-1, -2)).mul_(a.hd ** -0.5).add_(mem_bias[:, i])
            y = torch.matmul(torch.softmax(s, dim=-1), mv)  # (B, heads, beams, hd)
            x = x + a.o(y.transpose(1, 2).reshape(N, 1, -1))
            x = x + layer.mlp(layer.mlp_norm(x))
        return self.heads[level](self.dec_norm(x[:, 0])).float()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
