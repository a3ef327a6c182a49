"""span_attention: causal attention inside document spans on CPU, from the C++ extension.

Query ``i`` of batch row ``b`` attends the keys ``j <= i`` with ``doc_ids[b, j] == doc_ids[b, i]``
(``doc_ids == -1``: padding, an output row of zeros; ids below -1 raise), i.e. ``doc_attention(kind='doc_causal')``; no
``doc_ids`` means plain causal attention. fp32 math whatever the input dtype (fp16/bf16 are
computed in fp32 and cast back). Head dims 16, 32, 64 and 128. The kernel is compiled for AVX-512,
AVX2 and a portable default, each over vectors of its own register width; the CPU's best runs
(``CRAFT_SPAN_ISA=avx512|avx2|default`` forces one, ``_C.span_attention_isa()`` names it).

Why: SDPA's CPU flash kernel issues one small GEMM per block with K = head_dim, which is slow at
the head dims of small models. Measured fwd+bwd at B=64, H=8, T=256, head_dim 16 on the 2-core dev
CPU: see benchmarks/test_doc_masks.py and benchmarks/RESULTS.md.

Both directions are ``torch.library`` custom ops (``craft::span_attention_fwd``/``_bwd``) with fake
kernels and autograd, so ``torch.compile(fullgraph=True)`` traces through them. The backward saves
q, k, v, the output and the row log-sum-exp (B, H, T) -- never the T x T probabilities.
The pure-PyTorch twin (``CRAFT_NATIVE=python``) is SDPA with the dense span mask
(``craft_kernels.doc_attention``).
"""
from __future__ import annotations

from typing import Optional

import torch

from craft_kernels.native import _dispatch

HEAD_DIMS = (16, 32, 64, 128)


def _np(t: torch.Tensor):
    return t.detach().numpy()


_I32_MAX = 2**31 - 1


def _dense_ids(ids: torch.Tensor) -> torch.Tensor:
    """int32 document ids for the C++ kernel from ids of any int dtype, without changing which
    positions share a document: ids that fit in int32 are cast, larger ones are replaced by their
    rank among the ids (-1 stays padding). Ids below -1 raise, as on every other path."""
    if ids.numel() == 0:
        return ids.to(torch.int32)
    lo, hi = torch.aminmax(ids)
    if int(lo) < -1:
        raise ValueError(f"doc_ids: must be >= 0, or -1 for padding; got {int(lo)}")
    if int(hi) <= _I32_MAX:
        return ids.to(torch.int32)
    _, rank = torch.unique(ids, return_inverse=True)  # sorted: -1, when present, has rank 0
    return (rank - int(int(lo) == -1)).to(torch.int32)


@torch.library.custom_op("craft::span_attention_fwd", mutates_args=())
def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ids: torch.Tensor, scale: float,
         starts: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = _dispatch.ext().span_attention_forward(_np(q), _np(k), _np(v), _np(_dense_ids(ids)), scale,
                                                      torch.get_num_threads(), _starts(starts))
    return torch.from_numpy(out), torch.from_numpy(lse)


@_fwd.register_fake
def _(q, k, v, ids, scale, starts=None):
    return torch.empty_like(q), q.new_empty(q.shape[:3])


@torch.library.custom_op("craft::span_attention_bwd", mutates_args=())
def _bwd(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
         lse: torch.Tensor, ids: torch.Tensor, scale: float, starts: Optional[torch.Tensor] = None
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _dispatch.ext().span_attention_backward(_np(q), _np(k), _np(v), _np(out), _np(grad), _np(lse),
                                                         _np(_dense_ids(ids)), scale, torch.get_num_threads(),
                                                         _starts(starts))
    return torch.from_numpy(dq), torch.from_numpy(dk), torch.from_numpy(dv)


@_bwd.register_fake
def _(grad, q, k, v, out, lse, ids, scale, starts=None):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _starts(starts):
    return None if starts is None else _np(starts.to(torch.int64).contiguous())


def _setup(ctx, inputs, output):
    q, k, v, ids, scale, starts = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, ids, starts)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, ids, starts = ctx.saved_tensors
    dq, dk, dv = _bwd(grad_out.contiguous(), q, k, v, out, lse, ids, ctx.scale, starts)
    return dq, dk, dv, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup)


def supports(q: torch.Tensor) -> bool:
    """Whether :func:`span_attention` takes q's case: CPU, the C++ path selected, a supported head dim."""
    return (q.device.type == "cpu" and q.dim() == 4 and q.shape[-1] in HEAD_DIMS and _dispatch.use_cpp()
            and q.dtype in (torch.float32, torch.float16, torch.bfloat16))


def span_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None = None,
                   scale: float | None = None, starts: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention within documents -> (B, H, T, hd) in q's dtype.

    q (B, H, T, hd), k/v (B, H_kv, T, hd) with H % H_kv == 0 (grouped-query K/V heads are repeated),
    CPU, hd in :data:`HEAD_DIMS`; ``doc_ids`` (B, T) int (-1 = padding, ids below -1 raise; any
    int64 id, ids beyond int32 are ranked, never wrapped) or None (one document);
    ``scale`` defaults to ``hd ** -0.5``. ``starts`` (B, T) int, optional, replaces the document
    rule: query ``i`` sees exactly the keys ``[starts[b, i], i]`` (``i + 1``: none, a zero row);
    :func:`craft_kernels.attention.link_windows` derives them for ``cross_doc_link`` packings.
    Differentiable in q, k, v. Prefer ``craft_kernels.doc_attention``, which checks its arguments
    and routes here when it can.
    """
    if not supports(q):
        raise ValueError(f"q: span_attention needs a CPU tensor (B, H, T, hd) with hd in {HEAD_DIMS}, "
                         f"fp32/fp16/bf16, and the C++ extension selected; got {tuple(q.shape)} {q.dtype} "
                         f"on {q.device} (use craft_kernels.doc_attention, which falls back to SDPA)")
    B, H, T, hd = q.shape
    if k.shape[1] != H:
        k = k.repeat_interleave(H // k.shape[1], dim=1)
        v = v.repeat_interleave(H // v.shape[1], dim=1)
    if doc_ids is None:
        ids = torch.zeros(B, T, dtype=torch.int64)
    else:
        if doc_ids.dtype.is_floating_point or doc_ids.dtype.is_complex or doc_ids.dtype == torch.bool:
            raise TypeError(f"doc_ids: expected an integer tensor, got {doc_ids.dtype}")
        ids = doc_ids.to(device="cpu", dtype=torch.int64).contiguous()  # checked and made int32 in the op
    if starts is not None:
        if starts.dtype.is_floating_point or starts.dtype.is_complex or starts.dtype == torch.bool:
            raise TypeError(f"starts: expected an integer tensor, got {starts.dtype}")
        starts = starts.to(device="cpu", dtype=torch.int64).contiguous()  # range-checked in the op
    dtype = q.dtype
    f32 = [t.to(torch.float32).contiguous() for t in (q, k, v)]
    out, _ = _fwd(*f32, ids, float(hd ** -0.5 if scale is None else scale), starts)
    return out.to(dtype)
