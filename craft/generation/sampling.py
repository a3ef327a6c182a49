"""Sampling the next token: greedy, temperature, top-k, top-p, and logits processors.

The one sampler of the library: ``craft.generation.generate`` (batched, its decode step compiled with
the sampling inside) and linked generation both call :func:`sample`, so one seed gives the same tokens
through either.

A draw is an inverse-CDF lookup: one uniform per row (drawn by :func:`draw_uniform`, or passed in
as ``uniform`` so a compiled step needs no generator), a cumulative sum of the filtered
probabilities and a binary search. It is exact, needs one random number per row whatever the
vocabulary size, and has no data-dependent control flow, so it compiles into a decode step without
a host synchronisation.

A logits processor is ``fn(logits (B, V) float, ids (B, t) long) -> logits (B, V)``; ``ids`` is the
sequence so far (prompt and generated tokens). Processors mask tokens by setting them to ``-inf``.
A row that filtering or processors leave with nothing to sample (every logit ``-inf`` or NaN) takes
the argmax of ``fallback_logits`` (the model's logits before any processor), so a sampler never
crashes and never draws a token it was told is impossible on purpose from an arbitrary index.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch

from craft_kernels import check_float, check_int

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"{name}: expected a (B, V) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor, got {logits.dtype}")


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """The one check of sampling arguments (plain and linked generation): TypeError for a wrong type,
    ValueError for a negative or non-finite temperature, ``top_k < 1`` or ``top_p`` outside (0, 1]."""
    check_float(temperature, "temperature", 0, hint=" (0 = greedy)")
    if top_k is not None:
        check_int(top_k, "top_k", 1, hint=" (or None)")
    if top_p is not None:
        check_float(top_p, "top_p", 0, 1, min_open=True, hint=" (or None)")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keeps the k largest logits of each row (ties at the k-th value kept), the rest ``-inf``."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keeps the smallest set of top tokens whose probability reaches ``p`` (at least
    one token), the rest ``-inf``."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above
    drop_sorted = before >= p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_processors(logits: torch.Tensor, ids: torch.Tensor, processors: Iterable[LogitsProcessor]) -> torch.Tensor:
    """Runs every processor in order; each must return a (B, V) tensor."""
    for fn in processors:
        out = fn(logits, ids)
        if not isinstance(out, torch.Tensor) or out.shape != logits.shape:
            raise ValueError(f"logits processor {fn!r}: must return a tensor of shape {tuple(logits.shape)}")
        logits = out
    return logits


def draw_uniform(batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """The random numbers one :func:`sample` call uses: (batch_size,) fp32 in [0, 1)."""
    return torch.rand(batch_size, generator=generator, device=device)


def _finite_or_neginf(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def sample_unchecked(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                     uniform: torch.Tensor | None, fallback_logits: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`sample` without argument checks or random draws, for use inside a compiled decode step:
    ``uniform`` (B,) in [0, 1) (None when ``temperature == 0``). No host synchronisation."""
    x = _finite_or_neginf(logits.float())
    if temperature == 0:
        out = x.argmax(-1)
        if fallback_logits is None:  # an emptied row's fallback is this same argmax
            return out
    else:
        x = x / temperature
        if top_k is not None:
            x = top_k_filter(x, top_k)
        if top_p is not None:
            x = top_p_filter(x, top_p)
        # fp64 sums: u * total stays strictly below total, so a zero-probability tail is never drawn
        cdf = torch.cumsum(torch.softmax(x, dim=-1).double(), dim=-1)  # NaN on an emptied row: replaced below
        target = (uniform.double() * cdf[:, -1])[:, None]
        out = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=x.shape[-1] - 1)
    empty = torch.isneginf(x).all(-1)
    fb = x if fallback_logits is None else _finite_or_neginf(fallback_logits.float())
    return torch.where(empty, fb.argmax(-1), out)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None, fallback_logits: torch.Tensor | None = None,
           uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Next token per row: logits (B, V) → (B,) long.

    ``temperature == 0`` is greedy (argmax; no random number drawn). Otherwise logits / temperature,
    then top-k, then top-p, then an inverse-CDF draw with ``uniform`` (B,) in [0, 1) (default:
    :func:`draw_uniform` with ``generator``). Rows left empty get the argmax of ``fallback_logits``
    (default: ``logits`` itself).
    """
    _check_logits(logits)
    check_sampling_args(temperature, top_k, top_p)
    if fallback_logits is not None and fallback_logits.shape != logits.shape:
        raise ValueError(f"fallback_logits: expected shape {tuple(logits.shape)}, got {tuple(fallback_logits.shape)}")
    if temperature != 0 and uniform is None:
        uniform = draw_uniform(logits.shape[0], generator, logits.device)
    return sample_unchecked(logits, temperature, top_k, top_p, uniform, fallback_logits)


def suppress_tokens(token_ids: Sequence[int]) -> LogitsProcessor:
    """A processor that forbids ``token_ids`` (sets their logits to ``-inf``)."""
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)

    def fn(logits: torch.Tensor, _ids: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, ids.to(logits.device), float("-inf"))

    return fn


def repetition_penalty(penalty: float) -> LogitsProcessor:
    """A processor dividing positive (multiplying negative) logits of already-seen tokens by ``penalty``."""
    if not penalty > 0:
        raise ValueError(f"penalty: expected a number > 0, got {penalty!r}")

    def fn(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        seen = logits.gather(-1, ids)
        seen = torch.where(seen > 0, seen / penalty, seen * penalty)
        return logits.scatter(-1, ids, seen)

    return fn
