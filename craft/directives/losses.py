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
- :func:`halt_margin`: ACT's threshold seen by the count loss: a row halts only once its cumulative
  halting probability reaches ``1 - halt_eps``; :func:`count_nll` scores a row whose halting at the
  right close is 0.98 as 98% right, though it goes on and makes one output too many. This hinge
  pushes the cumulative halting at the right close past the threshold, in log-odds (a gradient of
  order 1 on the halting logit where the NLL's is ``1 - h``, about 0.02).
- :func:`return_credit`: per target slot, the instruction whose own result is best (of those the
  slot spans, an earlier one preferred unless a later one is better by ``prefer_earlier``) is the
  one that should return: a cross-entropy on the return-head *logits* (target 1 there, 0 on the
  slot's instructions before it). The expected result loss moves a return probability only through
  its sigmoid, so a head saturated at 0.999 keeps its rhythm whatever the results say; this loss
  keeps a gradient of order 1 where the rhythm is wrong.
- :func:`ponder_cost`: per slot, its return probabilities are an ACT halting distribution over the
  slot's instructions. ``act``: Graves' ``N + R`` (instructions used plus, per slot, the
  remainder returned by its closing instruction, which carries the gradient). ``pondernet``:
  ``KL(p || Geometric(lambda_p))`` over each slot's instructions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from craft.directives.directive import HALT_EPS, TransformDirective

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


def halt_margin(d: TransformDirective, target_count: torch.Tensor, halt_eps: float = HALT_EPS,
                margin: float = 0.5) -> torch.Tensor:
    """Mean over rows of ``relu(log(1 - c_n) - log(margin * halt_eps))``, ``c_n`` the cumulative halting
    probability once the row's n-th slot closed (n = the target count): zero where the row halts at
    its n-th close (``c_n`` = 1) or would with room to spare (``1 - c_n <= margin * halt_eps``).
    Rows that closed fewer than n slots count zero (the quantity loss and :func:`count_nll` bring
    them there). ``d.halting_probs`` (B, I), ``d.closes`` (B, I), ``target_count`` (B,) long >= 1."""
    if not 0 < margin <= 1:
        raise ValueError(f"margin: expected 0 < margin <= 1 (a fraction of halt_eps), got {margin!r}")
    n = target_count.to(torch.long)[:, None]
    rank = d.closes.long().cumsum(1)  # closes up to and including each instruction
    c = torch.where(rank <= n, d.halting_probs, torch.zeros_like(d.halting_probs)).sum(1)
    reached = d.n_outputs >= target_count
    gap = (1 - c).clamp_min(1e-9).log() - math.log(margin * halt_eps)
    return torch.where(reached, gap.clamp_min(0), torch.zeros_like(gap)).mean()


def return_credit(d: TransformDirective, per_loss: torch.Tensor, eligible: torch.Tensor,
                  prefer_earlier: float = 0.02) -> torch.Tensor:
    """Cross-entropy on ``d.return_logits`` (B, I) that credits, in each slot, the instruction whose
    result loss ``per_loss`` (B, I) (detached here) is lowest after adding ``prefer_earlier`` per
    position in the slot: target 1 there, 0 on the slot's instructions before it, no loss after it
    (a closing remainder is clamped anyway). ``eligible`` (B, I) bool: instructions of closed target
    slots. Summed over instructions, divided by the slots credited."""
    if d.return_logits is None:
        raise ValueError("return_credit: the directive has no return_logits; generate it with the decoder")
    B, I = per_loss.shape
    pos = position_in_slot(d)
    slot = d.slot_index.clamp_min(0)
    key = torch.where(eligible, per_loss.detach() + prefer_earlier * pos.to(per_loss.dtype),
                      torch.full_like(per_loss, float("inf")))
    best_key = key.new_full((B, I), float("inf")).scatter_reduce(1, slot, key, "amin")
    is_best = eligible & (key == best_key.gather(1, slot))
    big = torch.full_like(pos, I)
    best_pos = big.scatter_reduce(1, slot, torch.where(is_best, pos, big), "amin").gather(1, slot)
    target = (pos == best_pos).to(per_loss.dtype)
    w = eligible & (pos <= best_pos)
    bce = F.binary_cross_entropy_with_logits(d.return_logits, target, reduction="none")
    n_slots = (eligible & (pos == best_pos)).sum().clamp_min(1)
    return torch.where(w, bce, torch.zeros_like(bce)).sum() / n_slots


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
