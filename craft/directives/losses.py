"""Losses of a directive and its engine's slots.

- :func:`result_loss`: the task's per-slot loss over the target slots (slots a row did not fill
  count as zero vectors), averaged over target slots.
- :func:`count_loss`: CIF's quantity loss ``|n_hat - n|``. In clamp mode the sum of the return
  probabilities is a whole number with no gradient (each closed slot sums to exactly 1), so
  ``n_hat`` is its expectation under the halting distribution: ``sum_k k * P(halt at close k)``.
  Lowering early halting probabilities raises ``n_hat``; this is the loss that teaches a row to
  delay halting until it has produced its outputs.
- :func:`count_nll`: the negative log-likelihood of the target count under the halting
  distribution (optional, beside the quantity loss).
- :func:`ponder_cost`: per slot, its return probabilities are an ACT halting distribution over the
  slot's instructions. ``act``: Graves' ``N + R`` (instructions used plus, per slot, the
  remainder returned by its closing instruction, which carries the gradient). ``pondernet``:
  ``KL(p || Geometric(lambda_p))`` over each slot's instructions.
"""
from __future__ import annotations

import math

import torch

from craft.directives.directive import TransformDirective

PONDER = ("act", "pondernet", "none")


def halting_distribution(d: TransformDirective) -> torch.Tensor:
    """(B, I): probability that the row halts at its k-th close (k = 0..I-1), from the halting
    probability added at each close; a row finished without halting probability left for its last
    close gets the remainder there."""
    B, I = d.return_probs.shape
    idx = torch.where(d.closes, d.slot_index, torch.zeros_like(d.slot_index)).clamp(0, I - 1)
    dist = d.return_probs.new_zeros(B, I).scatter_add(1, idx, torch.where(d.closes, d.halting_probs, 0.0))
    rest = (1 - dist.sum(1)).clamp_min(0)
    last = (d.n_outputs - 1).clamp(0, I - 1)
    return dist.scatter_add(1, last[:, None], rest[:, None])


def expected_count(d: TransformDirective) -> torch.Tensor:
    """(B,): expected number of outputs under :func:`halting_distribution`."""
    dist = halting_distribution(d)
    return (dist * torch.arange(1, dist.shape[1] + 1, dtype=dist.dtype, device=dist.device)).sum(1)


def count_loss(d: TransformDirective, target_count: torch.Tensor) -> torch.Tensor:
    return (expected_count(d) - target_count.to(d.return_probs.dtype)).abs().mean()


def count_nll(d: TransformDirective, target_count: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Mean over rows of ``-log P(halt at close n)`` under :func:`halting_distribution` (n = the target
    count, >= 1). Where :func:`count_loss` only says "halt later" or "halt sooner" (the sign of
    ``n_hat - n`` reaches every close alike), this raises the halting probability at the right close
    (and where the row halts there with ACT's remainder ``1 - halt``, lowers the earlier ones). A row
    that closed fewer than n slots has no probability there (floored, no gradient): the quantity loss
    and the result loss must bring it to n closes first."""
    dist = halting_distribution(d)
    idx = (target_count.to(torch.long) - 1).clamp(0, dist.shape[1] - 1)
    return -dist.gather(1, idx[:, None]).squeeze(1).clamp_min(floor).log().mean()


def position_in_slot(d: TransformDirective) -> torch.Tensor:
    """(B, I) long: index of each instruction within its slot (0 for the slot's first)."""
    B, I = d.mask.shape
    t = torch.arange(I, device=d.mask.device).expand(B, I)
    prev = torch.cat([torch.full_like(d.slot_index[:, :1], -2), d.slot_index[:, :-1]], 1)
    start = torch.where(d.slot_index != prev, t, torch.zeros_like(t))
    return t - start.cummax(1).values


def ponder_cost(d: TransformDirective, kind: str = "act", lambda_p: float = 0.5) -> torch.Tensor:
    """Mean over rows of the ponder cost per output (see the module docstring)."""
    if kind not in PONDER:
        raise ValueError(f"ponder: expected one of {PONDER}, got {kind!r}")
    p = d.return_probs
    per_out = d.n_outputs.clamp_min(1).to(p.dtype)
    if kind == "none":
        return p.new_zeros(())
    if kind == "act":
        n = d.mask.sum(1).to(p.dtype)
        remainder = torch.where(d.closes, p, torch.zeros_like(p)).sum(1)
        return ((n + remainder) / per_out).mean()
    j = position_in_slot(d).to(p.dtype)
    log_prior = math.log(lambda_p) + j * math.log(1 - lambda_p)
    kl = torch.where(d.mask, p * (torch.log(p.clamp_min(1e-12)) - log_prior), torch.zeros_like(p))
    return (kl.sum(1) / per_out).mean()


def pad_slots(slots: torch.Tensor, n_slots: torch.Tensor, K: int) -> torch.Tensor:
    """(B, K, D): the first K closed slots, zero where a row closed fewer."""
    B, S, D = slots.shape
    out = slots[:, :K] if S >= K else torch.cat([slots, slots.new_zeros(B, K - S, D)], 1)
    keep = torch.arange(K, device=slots.device)[None] < n_slots[:, None]
    return out * keep[..., None].to(out.dtype)
