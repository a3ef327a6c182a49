"""The throughput baseline: the same LLaMA-style architecture as craft.models.LanguageModel written
in plain PyTorch the way a tutorial would — separate q/k/v and gate/up/down projections, unfused
SiLU-times-up, eager, ``F.scaled_dot_product_attention``. Weights have the same shapes (the fused
projections' rows are split), so both models do the same arithmetic."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, H, Hkv, hd = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.H, self.Hkv, self.hd = H, Hkv, hd
        self.norm1, self.norm2 = RMSNorm(d, cfg.norm_eps), RMSNorm(d, cfg.norm_eps)
        self.wq = nn.Linear(d, H * hd, bias=False)
        self.wk = nn.Linear(d, Hkv * hd, bias=False)
        self.wv = nn.Linear(d, Hkv * hd, bias=False)
        self.wo = nn.Linear(H * hd, d, bias=False)
        self.gate = nn.Linear(d, cfg.hidden_dim, bias=False)
        self.up = nn.Linear(d, cfg.hidden_dim, bias=False)
        self.down = nn.Linear(cfg.hidden_dim, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        h = self.norm1(x)
        q = rotate(self.wq(h).view(B, T, self.H, self.hd), cos, sin).transpose(1, 2)
        k = rotate(self.wk(h).view(B, T, self.Hkv, self.hd), cos, sin).transpose(1, 2)
        v = self.wv(h).view(B, T, self.Hkv, self.hd).transpose(1, 2)
        if self.Hkv != self.H:
            k = k.repeat_interleave(self.H // self.Hkv, 1)
            v = v.repeat_interleave(self.H // self.Hkv, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(a.transpose(1, 2).reshape(B, T, -1))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class BaselineLM(nn.Module):
    """tokens (B, T) → logits (B, T, V), or (logits, loss) with targets. ``cfg``: a craft ModelConfig."""

    def __init__(self, cfg):
        super().__init__()
        self.emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.emb.weight
        hd = cfg.head_dim
        self.register_buffer("inv_freq", 1.0 / cfg.rope_base ** (torch.arange(0, hd, 2).float() / hd), persistent=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, 0.0, cfg.init_std)

    def forward(self, tokens, targets=None):
        T = tokens.shape[1]
        ang = torch.arange(T, device=tokens.device).float()[:, None] * self.inv_freq[None]
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        x = self.emb(tokens)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
