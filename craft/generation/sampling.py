"""Sampling the next token: greedy, temperature, top-k, top-p, and logits processors.

A logits processor is ``fn(logits (B, V) float, ids (B, t) long) -> logits (B, V)``; ``ids`` is the
sequence so far (prompt and generated tokens). Processors mask tokens by setting them to ``-inf``.
A row that filtering leaves with nothing to sample (every logit ``-inf`` or NaN) falls back to its
top token before filtering, so a sampler never crashes on an empty distribution.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"{name}: expected a (B, V) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor, got {logits.dtype}")


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raises ValueError for a negative temperature, top_k < 1 or top_p outside (0, 1]."""
    if not isinstance(temperature, (int, float)) or temperature < 0 or temperature != temperature:
        raise ValueError(f"temperature: expected a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")


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


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None, fallback_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Next token per row: logits (B, V) → (B,) long.

    ``temperature == 0`` is greedy (argmax). Otherwise logits / temperature, then top-k, then
    top-p, then a multinomial draw (``generator`` for reproducibility). Rows left empty by
    filtering get the argmax of ``fallback_logits`` (default: ``logits`` itself).
    """
    _check_logits(logits)
    check_sampling_args(temperature, top_k, top_p)
    fb = logits if fallback_logits is None else fallback_logits
    x = logits.float()
    if temperature == 0:
        out = x.argmax(-1)
        empty = ~torch.isfinite(x).any(-1) if not torch.isfinite(x).all() else None
    else:
        x = torch.nan_to_num(x / temperature, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        if top_k is not None:
            x = top_k_filter(x, top_k)
        if top_p is not None:
            x = top_p_filter(x, top_p)
        empty = torch.isneginf(x).all(-1)
        probs = torch.softmax(x.masked_fill(empty[:, None], 0.0), dim=-1)
        out = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if empty is not None and bool(empty.any()):
        top = torch.nan_to_num(fb.float(), nan=float("-inf"), posinf=float("inf"), neginf=float("-inf")).argmax(-1)
        out = torch.where(empty, top, out)
    return out


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
