"""doc_attention: attention restricted by document spans (and links), one call for CPU and CUDA.

CUDA: compiled FlexAttention with a BlockMask built directly from the ids (:func:`doc_block_mask`).
CPU: ``causal``/``doc_causal`` go to the C++ span-attention kernel (:mod:`craft_kernels.span_attention`)
or to SDPA, whichever is faster on this machine for the case (head dim, T rounded up to a power of
two, documents or not, dtype): a per-machine choice, calibrated once and cached
(``craft_kernels._backend.choose``; ``CRAFT_IMPL_DOC_ATTENTION=span|sdpa`` forces one). The span
kernel needs the extension (``CRAFT_NATIVE=cpp``) and head dim 16/32/64/128. ``cross_doc_link``
takes the same kernel, with explicit windows, when every query's visible keys form one window
(:func:`link_windows`: linked packing does), in eager mode where the span kernel wins with
documents. Other cases use SDPA with the dense span mask (FlexAttention has no CPU backward in torch 2.13). Rows with nothing to
attend to (padding) give zeros on every path, never NaN, in forward and backward. On CPU,
fp16/bf16 inputs are computed in fp32 on every path (autocast off) and cast back.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from craft_kernels import _backend
from craft_kernels.doc_masks import _check_kind, _prepare, doc_block_mask, doc_dense_mask
from craft_kernels.span_attention import span_attention, supports as span_supports


def _bucket(T) -> int:
    b = 128
    while b < T and b < 4096:  # comparisons only: traceable with symbolic T
        b *= 2
    return b


_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
# where nothing was calibrated (inside torch.compile tracing): the span kernel has AVX-512 and AVX2
# code paths (benchmarks/RESULTS.md: ahead of SDPA on both); on CPUs with neither, SDPA is the safe
# default (read once here: tracing cannot read files)
_SPAN_DEFAULT = "span" if "avx512f" in _backend.cpu_flags() or {"avx2", "fma"} <= _backend.cpu_flags() else "sdpa"


def _span_key(q, docs: bool) -> str:
    return f"hd{q.shape[-1]}|T{_bucket(q.shape[2])}|{'docs' if docs else 'causal'}|{_DTYPE_NAMES.get(q.dtype, 'other')}"


def _calibration_cases(hd: int, T: int, docs: bool, dtype: torch.dtype) -> dict:
    """span vs SDPA fwd+bwd on random data of the case's shape (B=2, H=8), documents of T/4 tokens.
    Gradients w.r.t. a fixed output gradient (no ``.sum().backward()``): only the two paths' own work
    is timed, not small torch ops around them, which on a busy machine wait for torch's worker
    threads to wake and would rank the paths by that wait."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 8, T, hd, generator=g).to(dtype).requires_grad_() for _ in range(3))
    go = torch.randn(2, 8, T, hd, generator=g).to(dtype)
    ids = (torch.arange(T) // max(1, T // 4)).expand(2, T).contiguous() if docs else None

    def span():
        torch.autograd.grad(span_attention(q, k, v, ids), (q, k, v), go)

    def sdpa():
        torch.autograd.grad(_sdpa(q, k, v, ids, "doc_causal" if docs else "causal", None, None), (q, k, v), go)

    return {"span": span, "sdpa": sdpa}


def _span_wins(q: torch.Tensor, docs: bool) -> bool:
    hd, T, dtype = q.shape[-1], _bucket(q.shape[2]), q.dtype
    return _backend.choose("doc_attention", _span_key(q, docs),
                           candidates=lambda: _calibration_cases(hd, T, docs, dtype), default=_SPAN_DEFAULT) == "span"


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
                  scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """Attention over packed documents -> ``(B, H, T, hd)`` in q's dtype.

    q ``(B, H, T, hd)``, k/v ``(B, H_kv, T, hd)`` with ``H % H_kv == 0`` (grouped-query), floating;
    ``doc_ids (B, T)`` int (-1 = padding) or None (one document: plain ``kind`` over positions);
    ``kind`` one of :data:`~craft_kernels.doc_masks.MASK_KINDS`; ``links (B, Dmax, Dmax)`` bool
    for ``cross_doc_link``; ``block_mask`` reuses a prebuilt BlockMask on CUDA (e.g. the same
    one for every layer; ignored on CPU); ``scale`` defaults to ``hd ** -0.5``. ``window`` (int >= 1,
    causal kinds without ``doc_ids`` only): query ``i`` sees the keys ``[i - window + 1, i]`` (a
    sliding window; on CPU the span kernel's explicit windows, whose cost grows with the window,
    not with T)."""
    _check_kind(kind)
    _check(q, k, v, doc_ids, block_mask)
    if window is not None:
        return _windowed(q, k, v, doc_ids, kind, links, scale, window)
    spans = kind == "doc_causal" or (kind == "causal" and doc_ids is None)
    use_span = spans and links is None and span_supports(q) and _span_wins(q, doc_ids is not None)
    starts = None
    if (kind == "cross_doc_link" and span_supports(q) and not torch.compiler.is_compiling()
            and _span_wins(q, True)):  # windows read the data: eager only
        starts = link_windows(doc_ids, links, q.shape[0], q.shape[2])
        use_span = starts is not None
    if not torch.compiler.is_compiling() and q.device.type == "cpu":
        _backend.paths_run["doc_attention"] = f"{'span' if use_span else 'sdpa'} ({kind}, T={q.shape[2]})"
    if use_span:
        return span_attention(q, k, v, doc_ids, scale, starts)  # CPU: the C++ kernel (see span_attention.py)
    return _sdpa(q, k, v, doc_ids, kind, links, block_mask, scale)


def link_windows(doc_ids: torch.Tensor | None, links: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
    """Window starts (B, T) int64 under which ``cross_doc_link`` is "query i sees the keys
    [starts[b, i], i]", or None when some query's visible keys are not such a window.

    That holds for linked packing (documents placed right after the documents they link to): a
    document's visible keys are its linked documents, contiguous and just before it, then its own
    prefix. It fails for a link to a later document, a self link (a bidirectional document), a gap
    between linked documents, or a document resumed after another; :func:`doc_attention` then uses
    SDPA with the dense mask. Works on runs (maximal spans of one id), so it costs O(B * (T + R^2))
    for R runs per row, never O(T^2). Padding (-1) gets ``i + 1``: an empty window."""
    ids = torch.zeros(B, T, dtype=torch.int64) if doc_ids is None else doc_ids
    ids, links = _prepare(ids.cpu(), "cross_doc_link", None if links is None else links.cpu())
    if T == 0 or B == 0:
        return torch.zeros(B, T, dtype=torch.int64)
    pos = torch.arange(T).expand(B, T)
    new_run = torch.ones(B, T, dtype=torch.bool)
    new_run[:, 1:] = ids[:, 1:] != ids[:, :-1]
    run = new_run.cumsum(1) - 1  # (B, T): run index of each position
    R = int(run.max()) + 1
    run_doc = torch.full((B, R), -1, dtype=torch.int64).scatter_(1, run, ids)  # unused runs stay -1
    run_start = torch.full((B, R), T, dtype=torch.int64).scatter_reduce_(1, run, pos, "amin")
    valid = run_doc >= 0
    d = run_doc.clamp(min=0)
    vis = links[torch.arange(B)[:, None, None], d[:, :, None], d[:, None, :]]  # (B, Rq, Rk)
    vis &= valid[:, :, None] & valid[:, None, :]
    r = torch.arange(R)
    before = r[None, :] < r[:, None]  # (Rq, Rk): the key run lies before the query run
    one = torch.zeros(B, R, dtype=torch.int64).scatter_add_(1, run, torch.ones_like(run)) == 1
    vis.diagonal(dim1=1, dim2=2).logical_and_(~one)  # a self-linked run of one position sees only itself
    if (vis & ~before).any():  # a link to a later run or to itself: seen beyond the query
        return None
    same = (run_doc[:, :, None] == run_doc[:, None, :]) & valid[:, :, None]
    seen = (vis | same) & before
    n = seen.sum(-1)  # runs seen before the query's run: they must be the n runs just before it
    if not torch.equal(seen, before & (r[None, None, :] >= r[None, :, None] - n[:, :, None])):
        return None
    starts = run_start.gather(1, (r - n).clamp(min=0)).gather(1, run)
    return torch.where(ids >= 0, starts, pos + 1)


def _windowed(q, k, v, doc_ids, kind, links, scale, window):
    """Sliding-window causal attention (see :func:`doc_attention`'s ``window``)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window: expected an int >= 1 (keys per query, the query's own included), got {window!r}")
    if kind not in ("causal", "doc_causal") or doc_ids is not None or links is not None:
        raise ValueError(f"window: only plain causal attention slides a window (kind 'causal' or 'doc_causal' "
                         f"without doc_ids or links); got kind={kind!r} with doc_ids "
                         f"{'given' if doc_ids is not None else 'None'}; drop window or the documents")
    B, _, T, _ = q.shape
    pos = torch.arange(T, device=q.device)
    if span_supports(q):
        if not torch.compiler.is_compiling():
            _backend.paths_run["doc_attention"] = f"span (causal window {window}, T={T})"
        return span_attention(q, k, v, None, scale, (pos - (window - 1)).clamp_min(0).expand(B, T).contiguous())
    if not torch.compiler.is_compiling() and q.device.type == "cpu":
        _backend.paths_run["doc_attention"] = f"sdpa (causal window {window}, T={T})"
    if q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16):  # fp32 math, as in _sdpa
        with torch.autocast("cpu", enabled=False):
            return _windowed(q.float(), k.float(), v.float(), None, kind, None, scale, window).to(q.dtype)
    d = pos[:, None] - pos[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=(d >= 0) & (d < window), scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


def _sdpa(q, k, v, doc_ids, kind, links, block_mask, scale=None):
    if q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16):
        # fp32 math on CPU, as in the span kernel: SDPA's half-precision CPU backward is its slow part
        with torch.autocast("cpu", enabled=False):
            out = _sdpa(q.float(), k.float(), v.float(), doc_ids, kind, links, block_mask, scale)
        return out.to(q.dtype)
    B, H, T, _ = q.shape
    gqa = k.shape[1] != H
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
