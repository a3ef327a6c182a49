"""LanguageModel: a LLaMA-style decoder in gpt-fast style.

Pre-norm blocks ``x + Attention(RMSNorm(x))``, ``x + SwiGLUMLP(RMSNorm(x))``; rotary position
embeddings (half-split layout) computed from position tensors; grouped-query attention via
``n_kv_heads``; fused QKV and gate-up projections; optional tied input/output embeddings.

Attention paths: training / full forward uses ``craft_kernels.doc_attention(kind='doc_causal')``
(causal within each document when ``doc_ids`` are given, plain causal otherwise; on CPU the C++ span
kernel, fp32 math), or ``kind='cross_doc_link'`` when ``links`` are given (linked packing); cached decoding (``forward_step``) uses :func:`cached_attention` over the static
KV cache with a boolean mask.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from craft_kernels import SwiGLUMLP, doc_attention
from craft.models.kv_cache import KVCache
from craft.models.base import GenerativeModel
from craft.models.config import ModelConfig


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension, computed in fp32, returned in x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight.type_as(x)


def rope_angles(pos: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, head_dim/2) fp32 for positions ``pos`` (T,) long."""
    ang = pos.to(torch.float32)[:, None] * inv_freq[None, :]
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x (B, T, H, hd) by the angles cos/sin (T, hd/2); half-split pairs (i, i + hd/2)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of q (B, H, T, hd) over the whole cache k/v (B, H_kv, S, hd) with a bool mask
    broadcastable to (B, 1, T, S); (B, H, T, hd). Plain matmul-softmax-matmul: for the few query rows
    of a decode step it avoids the fixed per-call cost of SDPA's CPU flash kernel, and Inductor fuses
    it. Query heads are grouped over their shared K/V head."""
    B, H, T, hd = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    s = torch.matmul(q.reshape(B, Hkv, G * T, hd), k.transpose(-1, -2)).view(B, Hkv, G, T, S)
    s = s.float().mul_(hd ** -0.5).masked_fill_(~mask[:, :, None], float("-inf"))
    p = torch.softmax(s, dim=-1).to(v.dtype).view(B, Hkv, G * T, S)
    return torch.matmul(p, v).view(B, H, T, hd)


class Attention(nn.Module):
    """Multi-head (or grouped-query) self-attention with a fused QKV projection.

    ``forward(x (B, T, D), cos, sin, doc_ids, input_pos, mask, links)``: with ``input_pos`` (T,) the
    new keys/values are written into ``kv_cache`` at those slots (``mask`` is then required); with a
    bool ``mask`` (broadcastable to (B, 1, T, S)) attention is :func:`cached_attention` over the cache
    or, without ``input_pos``, over this call's own keys; with neither, ``doc_attention`` (``window``:
    its sliding causal window, keys per query)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wqkv = nn.Linear(config.dim, (config.n_heads + 2 * config.n_kv_heads) * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, doc_ids=None, input_pos=None, mask=None, links=None, window=None):
        B, T, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.wqkv(x).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        q = apply_rope(q.view(B, T, H, hd), cos, sin).transpose(1, 2)
        k = apply_rope(k.view(B, T, Hkv, hd), cos, sin).transpose(1, 2)
        v = v.view(B, T, Hkv, hd).transpose(1, 2)
        if input_pos is not None:  # write this step's keys/values at their cache slots, attend over the cache
            if mask is None:
                raise ValueError("mask: cached attention (input_pos given) needs a bool mask over the cache "
                                 "slots, broadcastable to (B, 1, T, S); LanguageModel.forward_step builds one")
            k, v = self.kv_cache.update(input_pos, k, v)
        if mask is not None:  # masked attention: a decode step, or a prefix recomputed without a cache
            y = cached_attention(q, k.to(q.dtype), v.to(q.dtype), mask)
        else:
            y = doc_attention(q, k, v, doc_ids, kind="doc_causal" if links is None else "cross_doc_link",
                              links=links, window=window)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * hd))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = SwiGLUMLP(config.dim, config.hidden_dim)
        self.dropout = config.dropout  # residual dropout of both branches, training mode only

    def forward(self, x, cos, sin, doc_ids=None, input_pos=None, mask=None, links=None, window=None):
        a = self.attention(self.attention_norm(x), cos, sin, doc_ids, input_pos, mask, links, window)
        if self.dropout and self.training:
            a = F.dropout(a, self.dropout, True)
        x = x + a
        m = self.feed_forward(self.ffn_norm(x))
        if self.dropout and self.training:
            m = F.dropout(m, self.dropout, True)
        return x + m


def _check_tokens(tokens: torch.Tensor, name: str = "tokens") -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.LongTensor (B, T), got {type(tokens).__name__}")
    if tokens.dim() != 2:
        raise ValueError(f"{name}: expected shape (B, T), got {tuple(tokens.shape)}; add a batch dimension")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got {tokens.dtype}")


class LanguageModel(GenerativeModel):
    """Decoder-only LM. ``forward(tokens (B, T) long, doc_ids=None, targets=None)`` → logits
    (B, T, V) or ``(logits, loss)``; ``forward_step`` decodes over the KV cache set up by
    ``setup_cache``."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        hd = config.head_dim
        inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # angles of positions 0..max_seq_len-1, computed once: a compiled forward reads them
        # instead of recomputing cos/sin inside every fused rope kernel
        cos, sin = rope_angles(torch.arange(config.max_seq_len), inv_freq)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("_slots", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("_head_t", torch.zeros(0), persistent=False)  # output weight (dim, V) for decoding
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2 n_layers)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("wo.weight") or name.endswith("down.weight"):
                p.normal_(0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                p.normal_(0.0, std)

    def embedding_parameters(self):
        ps = [self.tok_embeddings.weight]
        if not self.config.tie_embeddings:
            ps.append(self.output.weight)
        return ps

    def _logits(self, x, cos, sin, doc_ids=None, input_pos=None, mask=None, links=None):
        for layer in self.layers:
            x = layer(x, cos, sin, doc_ids, input_pos, mask, links)
        h = self.norm(x)
        if input_pos is not None and self._head_t.numel():
            # decoding: the (dim, V) copy made by setup_cache; on CPU a one-row product streams that
            # layout faster than Linear's (V, dim) one
            return h @ self._head_t
        return self.output(h)

    def forward(self, tokens: torch.Tensor, doc_ids: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                links: torch.Tensor | None = None):
        """tokens (B, T) int; doc_ids (B, T) int (-1 = padding) restricts attention to each document;
        targets (B, T) long (-100 ignored); links (B, Dmax, Dmax) bool (with doc_ids): attention
        ``cross_doc_link`` instead of ``doc_causal``, document i also sees every document j with
        ``links[b, i, j]`` (place linked documents first to stay causal). Returns logits (B, T, V) in the compute dtype, or
        ``(logits, loss)`` with the mean fp32 cross-entropy when targets are given."""
        _check_tokens(tokens)
        B, T = tokens.shape
        if doc_ids is not None and tuple(doc_ids.shape) != (B, T):
            raise ValueError(f"doc_ids: expected shape (B={B}, T={T}) like tokens, got {tuple(doc_ids.shape)}")
        if targets is not None and tuple(targets.shape) != (B, T):
            raise ValueError(f"targets: expected shape (B={B}, T={T}) like tokens, got {tuple(targets.shape)}")
        if T <= self.rope_cos.shape[0]:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        else:
            cos, sin = rope_angles(torch.arange(T, device=tokens.device), self.inv_freq)
        if links is not None and doc_ids is None:
            raise ValueError("links: cross-document links need doc_ids (B, T); pass both or neither")
        x = self.tok_embeddings(tokens)
        if self.config.dropout and self.training:
            x = F.dropout(x, self.config.dropout, True)
        logits = self._logits(x, cos, sin, doc_ids, links=links)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.reshape(B * T, -1).float(), targets.reshape(B * T).long(), ignore_index=-100)
        return logits, loss

    def forward_inference(self, tokens: torch.Tensor, doc_ids: torch.Tensor | None = None,
                          links: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) of :meth:`forward` without building autograd state."""
        with torch.no_grad():
            return self.forward(tokens, doc_ids, links=links)

    # ---- cached decoding -------------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_seq_len: int, dtype=None, device=None) -> None:
        """Allocates (or keeps, when already that size) a static KV cache per layer:
        (batch_size, n_kv_heads, max_seq_len, head_dim) in ``dtype`` (default: the parameters')."""
        dtype = self.dtype if dtype is None else dtype
        device = self.device if device is None else torch.device(device)
        self._refresh_decode_head()
        c = self.layers[0].attention.kv_cache
        if (c is not None and c.k_cache.shape[0] == batch_size and c.max_seq_len == max_seq_len
                and c.k_cache.dtype == dtype and c.k_cache.device == device):
            return
        cfg = self.config
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch_size, cfg.n_kv_heads, max_seq_len, cfg.head_dim, dtype, device)
        self._slots = torch.arange(max_seq_len, device=device)

    @torch.no_grad()
    def _refresh_decode_head(self) -> None:
        """Copies the output weight, transposed, into ``_head_t`` (in place when the shape, dtype and
        device still match, so a compiled decode step keeps its buffer)."""
        w = self.output.weight
        t = self._head_t
        if t.shape == (w.shape[1], w.shape[0]) and t.dtype == w.dtype and t.device == w.device:
            t.copy_(w.t())
        else:
            self._head_t = w.detach().t().contiguous()

    def clear_cache(self) -> None:
        """Frees the KV caches (and the decoding copy of the output weight)."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        self._slots = torch.zeros(0, dtype=torch.long, device=self.inv_freq.device)
        self._head_t = torch.zeros(0, device=self.inv_freq.device)

    @property
    def cache_len(self) -> int:
        """Slots of the current KV cache (0 when none is set up)."""
        return self._slots.numel()

    def compact_cache(self, keep: torch.Tensor) -> None:
        """Moves the cache slots ``keep`` to the front in every layer (see ``KVCache.compact``)."""
        if self.cache_len == 0:
            raise ValueError("compact_cache: no KV cache; call setup_cache first")
        for layer in self.layers:
            layer.attention.kv_cache.compact(keep)

    def forward_step(self, tokens: torch.Tensor, input_pos: torch.Tensor, mask: torch.Tensor | None = None,
                     rope_pos: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) at cache slots ``input_pos`` (T,) long → logits (B, T, V).

        Writes their keys/values into the cache. The logits use the output weight as of the last
        ``setup_cache`` (a transposed copy; call it again after changing the weights). ``mask`` bool broadcastable to (B, 1, T, max_seq_len)
        (True = may attend; None = slots <= input_pos); ``rope_pos`` (T,) positions for the rotary
        embeddings (default: ``input_pos``).
        """
        _check_tokens(tokens)
        S = self.cache_len
        if S == 0:
            raise ValueError("forward_step: no KV cache; call setup_cache(batch_size, max_seq_len) first")
        B, T = tokens.shape
        if input_pos.dim() != 1 or input_pos.shape[0] != T:
            raise ValueError(f"input_pos: expected shape (T={T},), got {tuple(input_pos.shape)}")
        if B != self.layers[0].attention.kv_cache.batch_size:
            raise ValueError(f"tokens: batch {B} differs from the cache's "
                             f"{self.layers[0].attention.kv_cache.batch_size}; call setup_cache again")
        if mask is None:
            mask = (self._slots[None, :] <= input_pos[:, None])[None, None]
        elif mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[-1] != S or mask.shape[-2] not in (1, T):
            raise ValueError(f"mask: expected a bool tensor broadcastable to (B, 1, T={T}, {S}), "
                             f"got {tuple(mask.shape)} {mask.dtype}")
        cos, sin = rope_angles(input_pos if rope_pos is None else rope_pos, self.inv_freq)
        return self._logits(self.tok_embeddings(tokens), cos, sin, None, input_pos, mask)
