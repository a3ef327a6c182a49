"""ACT slot accumulation: step results poured, in order, into slots of one unit of probability.

Per row, over steps ``n`` where ``mask`` is true, with ``cum = 0``, ``halt = 0``, slot ``s = 0``:

1. ``p = return_probs[n]``; in ``clamp`` mode, if ``cum + p > 1 - eps`` then ``p = 1 - cum``.
2. ``p = min(p, 1 - halt)`` — once the halting probability is spent nothing more is returned.
3. ``slots[s] += p * results[n]``; ``cum += p``; ``clamped_probs[n] = p``; ``slot_index[n] = s``.
4. If ``cum >= 1 - eps``: the slot closes; ``halt = min(1, halt + halting_probs[n])``; ``s += 1``; ``cum = 0``.

In ``carry`` mode step 1 does not clamp: when ``p`` exceeds the slot's remainder ``1 - cum``, the
remainder fills and closes the slot (halting updates as in 4) and the excess opens the next slot
(integrate-and-fire), so every step's full probability is used; ``slot_index[n]`` is the slot
where the step started. Since ``p < 1``, a step touches at most two slots.

Implementation: the scalar recurrence (B x N) runs in C++ (``craft_kernels._C.act_scan_*``),
forward and reverse, recording its branch decisions; results are then poured into slots with one
``scatter_add`` per piece, so gradients reach ``results``, ``return_probs`` and ``halting_probs``
exactly as autograd through the sequential definition would (clamps included). On CUDA the B x N
scalars make one round trip to the host; results stay on the device. ``CRAFT_NATIVE=python`` uses
:func:`act_accumulate_reference`, the plain sequential definition.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from craft_kernels.native import _dispatch


class ACTOutput(NamedTuple):
    slots: torch.Tensor  # (B, S, D) results' dtype
    slot_fill: torch.Tensor  # (B, S) probability poured into each slot
    n_slots: torch.Tensor  # (B,) int64, closed slots
    clamped_probs: torch.Tensor  # (B, N) probability each step returned (0 where masked)
    slot_index: torch.Tensor  # (B, N) int64, slot of each step, -1 where masked
    halted: torch.Tensor  # (B,) bool, halting probability spent (>= 1 - eps)
    halting: torch.Tensor  # (B,) cumulative halting probability


def _check(results, return_probs, halting_probs, mask, eps, mode):
    if not isinstance(results, torch.Tensor) or results.dim() != 3:
        raise ValueError(f"results: expected a (B, N, D) tensor, got {getattr(results, 'shape', type(results))}")
    B, N, _ = results.shape
    if not results.is_floating_point():
        raise TypeError(f"results: expected a floating dtype, got {results.dtype}")
    if not isinstance(return_probs, torch.Tensor) or tuple(return_probs.shape) != (B, N):
        raise ValueError(f"return_probs: expected shape ({B}, {N}), got {getattr(return_probs, 'shape', None)}")
    if mode not in ("clamp", "carry"):
        raise ValueError(f"mode: expected 'clamp' or 'carry', got {mode!r}")
    if not 0 <= eps < 1:
        raise ValueError(f"eps: expected 0 <= eps < 1, got {eps}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, N) or mask.dtype != torch.bool):
        raise ValueError(f"mask: expected a bool tensor of shape ({B}, {N})")
    act = mask if mask is not None else torch.ones_like(return_probs, dtype=torch.bool)
    rp = return_probs.detach()[act]
    if rp.numel() and not bool(((rp > 0) & (rp < 1)).all()):
        raise ValueError("return_probs: every unmasked value must lie in (0, 1); squash logits with torch.sigmoid")
    if halting_probs is not None:
        if not isinstance(halting_probs, torch.Tensor) or tuple(halting_probs.shape) != (B, N):
            raise ValueError(f"halting_probs: expected shape ({B}, {N}), got {getattr(halting_probs, 'shape', None)}")
        hp = halting_probs.detach()[act]
        if hp.numel() and not bool(((hp >= 0) & (hp <= 1)).all()):
            raise ValueError("halting_probs: every unmasked value must lie in [0, 1]")


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, h, mask, eps, carry):
        ext = _dispatch.ext()
        w, slot, tape, halt, closed = ext.act_scan_forward(
            r.detach().double().cpu().numpy(), h.detach().double().cpu().numpy(),
            mask.cpu().numpy().astype("uint8"), float(eps), bool(carry))
        ctx.tape, ctx.carry = tape, carry
        ctx.set_materialize_grads(True)
        to = dict(device=r.device)
        w_t = torch.from_numpy(w).to(dtype=r.dtype, **to)
        halt_t = torch.from_numpy(halt).to(dtype=r.dtype, **to)
        slot_t = torch.from_numpy(slot).to(**to)
        closed_t = torch.from_numpy(closed).to(**to)
        ctx.mark_non_differentiable(slot_t, closed_t)
        return w_t, halt_t, slot_t, closed_t

    @staticmethod
    def backward(ctx, gw, ghalt, _gs, _gc):
        gr, gh = _dispatch.ext().act_scan_backward(
            ctx.tape, gw.detach().double().cpu().numpy(), ghalt.detach().double().cpu().numpy(), ctx.carry)
        dev, dt = gw.device, gw.dtype
        return torch.from_numpy(gr).to(dev, dt), torch.from_numpy(gh).to(dev, dt), None, None, None


def act_accumulate(results: torch.Tensor, return_probs: torch.Tensor, halting_probs: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, eps: float = 1e-6, mode: str = "clamp") -> ACTOutput:
    """Pour ``results (B, N, D)`` into slots by ``return_probs (B, N)`` in (0, 1), with optional
    ``halting_probs (B, N)`` in [0, 1] and ``mask (B, N)`` bool. See the module docstring for the rule."""
    _check(results, return_probs, halting_probs, mask, eps, mode)
    if not _dispatch.use_cpp():
        return act_accumulate_reference(results, return_probs, halting_probs, mask, eps, mode)
    B, N, D = results.shape
    h = halting_probs if halting_probs is not None else torch.zeros_like(return_probs)
    m = mask if mask is not None else torch.ones(B, N, dtype=torch.bool, device=results.device)
    w, halting, slot, closed = _Scan.apply(return_probs, h, m, eps, mode == "carry")
    S = int(slot.max()) + 1 if slot.numel() else 0
    idx = torch.where(slot < 0, S, slot)  # (B, N, 2); a dummy slot S collects nothing real
    w = w.to(results.dtype)
    slots = results.new_zeros(B, S + 1, D)
    fill = w.new_zeros(B, S + 1)
    for k in range(2):  # piece 0: where the step starts, piece 1: what carry mode spills over
        slots = slots.scatter_add(1, idx[..., k, None].expand(B, N, D), w[..., k, None] * results)
        fill = fill.scatter_add(1, idx[..., k], w[..., k])
    clamped = w.sum(-1)
    return ACTOutput(slots[:, :S], fill[:, :S], closed, clamped, slot[..., 0], halting >= 1 - eps, halting)


def act_accumulate_reference(results, return_probs, halting_probs=None, mask=None, eps=1e-6, mode="clamp") -> ACTOutput:
    """The sequential definition, step by step in Python (slow; the specification and the test oracle).
    A slot counts as opened once a step pours into it (S = the most slots any row opened)."""
    B, N, D = results.shape
    zero = results.new_zeros(())
    per_row = []
    for b in range(B):
        cum, halt, s = zero, zero, 0
        poured: dict[int, list] = {}  # slot -> [sum of p * result, sum of p]
        clamped, index = [], []
        for n in range(N):
            if mask is not None and not bool(mask[b, n]):
                clamped.append(zero), index.append(-1)
                continue
            p = return_probs[b, n].to(results.dtype)
            if mode == "clamp" and bool(cum + p > 1 - eps):
                p = 1 - cum
            if bool(p > 1 - halt):
                p = 1 - halt
            clamped.append(p), index.append(s)
            pieces = [1 - cum, p - (1 - cum)] if mode == "carry" and bool(p > 1 - cum) else [p]
            for piece in pieces:
                acc = poured.setdefault(s, [results.new_zeros(D), zero])
                acc[0] = acc[0] + piece * results[b, n]
                acc[1] = acc[1] + piece
                cum = cum + piece
                if bool(cum >= 1 - eps):
                    h = halting_probs[b, n].to(results.dtype) if halting_probs is not None else zero
                    halt = halt + h if bool(halt + h < 1) else results.new_ones(())
                    s, cum = s + 1, zero
        per_row.append((poured, s, clamped, index, halt))
    S = max((max(r[0]) + 1 for r in per_row if r[0]), default=0)
    slots, fill = [], []
    for poured, *_ in per_row:
        slots.append(torch.stack([poured[k][0] if k in poured else results.new_zeros(D) for k in range(S)])
                     if S else results.new_zeros(0, D))
        fill.append(torch.stack([poured[k][1] if k in poured else zero for k in range(S)]) if S else results.new_zeros(0))
    halting = torch.stack([r[4] for r in per_row]) if B else results.new_zeros(0)
    return ACTOutput(
        torch.stack(slots) if B else results.new_zeros(0, 0, D),
        torch.stack(fill) if B else results.new_zeros(0, 0),
        torch.tensor([r[1] for r in per_row], dtype=torch.int64),
        torch.stack([torch.stack(r[2]) if N else results.new_zeros(0) for r in per_row]) if B else results.new_zeros(0, N),
        torch.tensor([r[3] for r in per_row], dtype=torch.int64).reshape(B, N),
        halting >= 1 - eps, halting)
