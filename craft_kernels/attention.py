"""doc_attention (foundation placeholder: SDPA with a dense document mask; the attention issue replaces this file)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def doc_attention(q, k, v, doc_ids=None, kind: str = "doc_causal", links=None, block_mask=None, scale=None):
    """q (B, H, T, hd), k/v (B, Hkv, S, hd); doc_ids (B, T) or None (plain causal)."""
    T, S = q.shape[-2], k.shape[-2]
    i = torch.arange(T, device=q.device)[:, None] + (S - T)
    j = torch.arange(S, device=q.device)[None, :]
    mask = (j <= i)[None, None]
    if doc_ids is not None and kind == "doc_causal":
        mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :]) & (doc_ids[:, None, :, None] >= 0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out.nan_to_num(0.0)
