"""doc_attention: attention restricted by document spans (and links), one call for CPU and CUDA.

CUDA: compiled FlexAttention with a BlockMask built directly from the ids (:func:`doc_block_mask`).
CPU: SDPA with the dense span mask (FlexAttention has no CPU backward in torch 2.13, and compiled
flex is slower than SDPA at short lengths there). Rows with nothing to attend to (padding) give
zeros on both paths, never NaN, in forward and backward.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from craft_kernels.doc_masks import doc_block_mask, doc_dense_mask


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def _check(q, k, v, doc_ids):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v: expected (B, H, T, head_dim) tensors, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, H, T, _ = q.shape
    if k.shape[0] != B or k.shape[:3] != v.shape[:3] or k.shape[2] != T:
        raise ValueError(f"k, v: expected (B={B}, H_kv, T={T}, head_dim) matching q, got {tuple(k.shape)}, {tuple(v.shape)}")
    if H % k.shape[1]:
        raise ValueError(f"k: its {k.shape[1]} heads must divide q's {H} heads (grouped-query attention)")
    if doc_ids is not None and tuple(doc_ids.shape) != (B, T):
        raise ValueError(f"doc_ids: expected shape (B={B}, T={T}), got {tuple(doc_ids.shape)}")


def doc_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None = None,
                  kind: str = "doc_causal", links: torch.Tensor | None = None, block_mask: BlockMask | None = None,
                  scale: float | None = None) -> torch.Tensor:
    """Attention over packed documents. q (B, H, T, hd), k/v (B, H_kv, T, hd) with H % H_kv == 0;
    ``doc_ids (B, T)`` int (-1 = padding; None = one document, i.e. plain ``kind`` over positions);
    ``links (B, Dmax, Dmax)`` for ``cross_doc_link``; ``block_mask`` reuses a prebuilt BlockMask on
    CUDA. Returns (B, H, T, hd) in q's dtype."""
    _check(q, k, v, doc_ids)
    B, H, T, _ = q.shape
    gqa = k.shape[1] != H
    if doc_ids is None:
        if kind in ("causal", "doc_causal") and links is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        doc_ids = torch.zeros(B, T, dtype=torch.int64, device=q.device)
    if q.is_cuda:
        if block_mask is None:
            block_mask = doc_block_mask(doc_ids, kind, links)
        return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    mask = doc_dense_mask(doc_ids, kind, links)  # (B, 1, T, T)
    empty = ~mask.any(-1, keepdim=True)  # rows with nothing to see: attend anywhere, then zero
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty, scale=scale, enable_gqa=gqa)
    return out.masked_fill(empty, 0.0)
