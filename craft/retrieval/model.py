"""TIGER's sequence-to-sequence recommender on craft's pieces (RMSNorm, SwiGLU MLP).

The encoder reads a user's history as semantic-ID tokens, H items x L codes flattened to H*L
tokens (left-padded; token id 0 = padding). Each token's embedding is the sum of a code embedding
(one table, codes of level l offset by the sizes of the levels before it), an item-position
embedding (0 = most recent item) and a code-position embedding (the level). Attention is
bidirectional over the non-padding tokens.

The decoder reads ``[BOS, c_0, …, c_{L-2}]`` and predicts ``c_0 … c_{L-1}`` of the next item with
causal self-attention, cross-attention to the encoder output and one output head per level
(level l has ``codebook_sizes[l]`` logits). For decoding, :meth:`encode` returns the cross-attention
keys/values of every decoder layer once per user and :meth:`decode_step` extends a small self-attention
KV cache by one position for many beams per user (rows ``user * beams + beam``).
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

    def forward(self, x, mem_k, mem_v, mem_mask):
        h = self.self_norm(x)
        k, v = self.self_attn.keys_values(h)
        x = x + self.drop(self.self_attn(h, k, v, is_causal=True))
        x = x + self.drop(self.cross_attn(self.cross_norm(x), mem_k, mem_v, mem_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Tiger(nn.Module):
    """``forward(history_codes (B, H, L) long, -1 = padding item; target_codes (B, L) long)`` ->
    mean cross-entropy over the L levels (fp32)."""

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

    def encode(self, history_codes: torch.Tensor):
        """history_codes (B, H, L) long (-1 rows = padding, left-padded) -> (memory keys/values per
        decoder layer: list of (k, v) (B, heads, H*L, hd), key mask (B, 1, 1, H*L) bool)."""
        self._check_codes(history_codes, "history_codes")
        B, H, L = history_codes.shape
        if H > self.config.max_history:
            raise ValueError(f"history_codes: {H} items, the model was built for max_history={self.config.max_history}")
        pad = history_codes[..., 0] < 0  # (B, H)
        tok = torch.where(pad[..., None], torch.zeros_like(history_codes), history_codes + self.offsets)
        pos_item = torch.arange(H - 1, -1, -1, device=tok.device)  # 0 = most recent
        x = self.code_emb(tok) + self.item_pos(pos_item)[None, :, None] + self.code_pos.weight[None, None]
        x = self.drop(x.reshape(B, H * L, -1))
        keep = (~pad).repeat_interleave(L, dim=1)
        keep[:, -1] |= ~keep.any(1)  # an empty history still attends to something
        mask = keep[:, None, None, :]
        for layer in self.encoder:
            x = layer(x, mask)
        mem = self.enc_norm(x)
        return [layer.cross_attn.keys_values(mem) for layer in self.decoder], mask

    # ------------------------------------------------------------------------------ training
    def decoder_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, T) of levels 0..T-1 -> decoder tokens (N, T + 1): BOS then the codes."""
        tok = codes + self.offsets[: codes.shape[1]]
        return torch.cat([torch.zeros_like(tok[:, :1]), tok], dim=1)

    def decode_full(self, memory, mem_mask, dec_tokens: torch.Tensor) -> list:
        """Teacher-forced decoder over dec_tokens (N, T <= L); memory rows must match N.
        Returns per-level logits [(N, K_l) for l < T]."""
        N, T = dec_tokens.shape
        x = self.drop(self.dec_emb(dec_tokens) + self.dec_pos.weight[:T])
        for layer, (k, v) in zip(self.decoder, memory):
            x = layer(x, k, v, mem_mask)
        h = self.dec_norm(x)
        return [self.heads[l](h[:, l]) for l in range(T)]

    def forward(self, history_codes: torch.Tensor, target_codes: torch.Tensor) -> torch.Tensor:
        self._check_codes(target_codes, "target_codes")
        memory, mask = self.encode(history_codes)
        logits = self.decode_full(memory, mask, self.decoder_inputs(target_codes[:, :-1]))
        losses = [F.cross_entropy(lg.float(), target_codes[:, l]) for l, lg in enumerate(logits)]
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------------------ decoding
    def decode_step(self, memory, mem_mask, cache: list, token: torch.Tensor, level: int, beams: int) -> torch.Tensor:
        """One decoder position for B*beams rows (row = user * beams + beam).

        token (B*beams,) long decoder token at position ``level`` (BOS = 0 at level 0); ``cache``: per
        decoder layer a list [k, v] of the earlier positions (B*beams, heads, level, hd) or None,
        extended in place. Memory k/v (B, heads, S, hd) are shared by a user's beams (no copy: the
        beams are extra query rows). Returns logits (B*beams, K_level) fp32."""
        N = token.shape[0]
        B = N // beams
        x = self.dec_emb(token)[:, None] + self.dec_pos.weight[level]
        for i, (layer, (mk, mv)) in enumerate(zip(self.decoder, memory)):
            h = layer.self_norm(x)
            k, v = layer.self_attn.keys_values(h)
            if cache[i] is not None:
                k = torch.cat([cache[i][0], k], dim=2)
                v = torch.cat([cache[i][1], v], dim=2)
            cache[i] = [k, v]
            x = x + layer.self_attn(h, k, v)
            hq = layer.cross_norm(x).view(B, beams, -1)  # beams of a user as query rows
            a = layer.cross_attn
            q = a.q(hq).view(B, beams, a.h, a.hd).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, mk, mv, attn_mask=mem_mask)
            x = x + a.o(y.transpose(1, 2).reshape(N, 1, -1))
            x = x + layer.mlp(layer.mlp_norm(x))
        return self.heads[level](self.dec_norm(x[:, 0])).float()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
