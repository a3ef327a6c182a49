"""doc_attention: attention restricted by document spans (and links), one call for CPU and CUDA.

CUDA: compiled FlexAttention with a BlockMask built directly from the ids (:func:`doc_block_mask`).
CPU: ``causal``/``doc_causal`` go to the C++ span-attention kernel (:mod:`craft_kernels.span_attention`)
when the extension is selected and the head dim is 16/32/64/128; other kinds (and
``CRAFT_NATIVE=python``) use SDPA with the dense span mask (FlexAttention has no CPU backward in
torch 2.13, and SDPA with a dense mask is faster there; see benchmarks/test_doc_masks.py). On CPU,
fp16/bf16 inputs are computed in fp32 on every path (autocast off) and cast back. Rows with
nothing to attend to (padding) give zeros on every path, never NaN, in forward and backward.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from craft_kernels.doc_masks import _check_kind, doc_block_mask, doc_dense_mask
from craft_kernels.span_attention import span_attention, supports as span_supports


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def _check(q, k, v, doc_ids, block_mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected shape (B, heads, T, head_dim), got {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating dtype, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v: must share dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} on "
                         f"{q.device}/{k.device}/{v.device}")
    B, H, T, hd = q.shape
    if k.shape[0] != B or k.shape[2] != T or k.shape[3] != hd or k.shape != v.shape:
        raise ValueError(f"k, v: expected equal shapes (B={B}, H_kv, T={T}, head_dim={hd}), got "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[1] < 1 or H % k.shape[1]:
        raise ValueError(f"k: its {k.shape[1]} heads must divide q's {H} heads (grouped-query attention)")
    if doc_ids is not None:
        if not isinstance(doc_ids, torch.Tensor):
            raise TypeError(f"doc_ids: expected a (B, T) int tensor or None, got {type(doc_ids).__name__}")
        if tuple(doc_ids.shape) != (B, T):
            raise ValueError(f"doc_ids: expected shape (B={B}, T={T}) to match q, got {tuple(doc_ids.shape)}")
    if block_mask is not None:
        if not isinstance(block_mask, BlockMask):
            raise TypeError(f"block_mask: expected a BlockMask (see doc_block_mask), got {type(block_mask).__name__}")
        if tuple(block_mask.seq_lengths) != (T, T):
            raise ValueError(f"block_mask: built for lengths {tuple(block_mask.seq_lengths)}, q/k have T={T}")


def doc_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None = None,
                  kind: str = "doc_causal", links: torch.Tensor | None = None, block_mask: BlockMask | None = None,
                  scale: float | None = None) -> torch.Tensor:
    """Attention over packed documents -> ``(B, H, T, hd)`` in q's dtype.

    q ``(B, H, T, hd)``, k/v ``(B, H_kv, T, hd)`` with ``H % H_kv == 0`` (grouped-query), floating;
    ``doc_ids (B, T)`` int (-1 = padding) or None (one document: plain ``kind`` over positions);
    ``kind`` one of :data:`~craft_kernels.doc_masks.MASK_KINDS`; ``links (B, Dmax, Dmax)`` bool
    for ``cross_doc_link``; ``block_mask`` reuses a prebuilt BlockMask on CUDA (e.g. the same
    one for every layer; ignored on CPU); ``scale`` defaults to ``hd ** -0.5``."""
    _check_kind(kind)
    _check(q, k, v, doc_ids, block_mask)
    B, H, T, _ = q.shape
    gqa = k.shape[1] != H
    spans = kind == "doc_causal" or (kind == "causal" and doc_ids is None)
    if spans and links is None and span_supports(q):
        return span_attention(q, k, v, doc_ids, scale)  # CPU: the C++ kernel (see span_attention.py)
    if q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16):
        # fp32 math on CPU, as in the span kernel: SDPA's half-precision CPU backward is its slow part
        with torch.autocast("cpu", enabled=False):
            out = doc_attention(q.float(), k.float(), v.float(), doc_ids, kind, links, block_mask, scale)
        return out.to(q.dtype)
    if doc_ids is None and block_mask is None and links is None and kind != "cross_doc_link":
        if kind in ("causal", "doc_causal"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    doc_ids = torch.zeros(B, T, dtype=torch.int64, device=q.device) if doc_ids is None else doc_ids.to(q.device)
    if q.is_cuda:
        if block_mask is None:
            block_mask = doc_block_mask(doc_ids, kind, links)
        # flex gives 0 for rows whose every key is masked
        return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    mask = doc_dense_mask(doc_ids, kind, links)  # (B, 1, T, T)
    empty = ~mask.any(-1, keepdim=True)  # rows with nothing to see: let them attend anywhere, then zero
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty, scale=scale, enable_gqa=gqa)
    return out.masked_fill(empty, 0.0)
