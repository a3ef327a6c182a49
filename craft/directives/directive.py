"""TransformDirective and the per-step return-probability / slot-closing / halting arithmetic.

A directive is ``instructions (B, I, D)``, ``return_probs (B, I)`` (each active value strictly inside
(0, 1)) and ``mask (B, I)`` (bool, the instructions a row actually produced). The engine pours
instruction ``n``'s result, weighted by ``return_probs[n]``, into the current result slot; a slot
holds one unit of probability.

Per row, the state is ``fill`` (probability poured into the open slot), ``halt`` (cumulative halting
probability), ``n_closed`` and ``halted``. One step, given the raw return probability ``r`` in (0, 1)
and halting probability ``h`` in (0, 1) of the new instruction (:func:`directive_step`):

1. ``clamp`` mode: if ``fill + r >= 1 - eps`` then ``p = 1 - fill`` (the slot closes).
   ``carry`` mode: ``p = r``; when ``fill + p >= 1 - eps`` the slot closes and the excess
   ``fill + p - 1`` opens the next slot (integrate-and-fire).
2. ``p = min(p, 1 - halt)``: once halting probability has been produced, each step can return less,
   so a loss on the slots pushes the model to delay halting until it is ready.
3. When the slot closes, ``dh = min(h, 1 - halt)`` (the instruction's halting probability, clipped
   to what is left) is added to ``halt``. When that reaches ``1 - halt_eps`` (ACT's epsilon, 0.01)
   the row halts and ``dh`` is the remainder ``1 - halt`` (so the halting distribution sums to 1): it
   produces no more instructions and every later ``p`` is 0 (mask false). With ``halt_eps`` as small
   as ``eps`` a row could sit at ``halt = 1 - 1e-4``, returning at most 1e-4 per step, and close one
   more slot than its halting distribution says (a loophole training found). In carry mode a halting close returns
   exactly ``1 - fill`` (no excess), so nothing is poured after halting.
4. A row still running at the last allowed step is finished there: ``p = 1 - fill`` closes its slot
   and ``dh = 1 - halt`` halts it (ACT's remainder); a row whose slot is empty at that step halts
   without using it.

So every closed slot holds 1 (within eps) and a halted row's return probabilities sum to its number
of closed slots, a whole number. Raw probabilities are bounded to ``[min_prob, 1 - min_prob]`` by
the decoder with ``min_prob > eps``, so a slot is never filled by one instruction alone in clamp
mode (the notes require ``return_probs`` strictly inside (0, 1)); the second instruction of a slot
can return as little as ``min_prob``.

``dh`` per step, scattered by closed-slot number, is the row's halting distribution over its number
of outputs (it sums to 1 once the row halts): the count loss and the expected count use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

MODES = ("clamp", "carry")
HALT_EPS = 0.01  # ACT's epsilon: a row halts once its halting probability reaches 1 - HALT_EPS


@dataclass
class TransformDirective:
    """``instructions (B, I, D)``; ``return_probs (B, I)`` in (0, 1) where ``mask``, 0 elsewhere;
    ``mask (B, I)`` bool. Optional bookkeeping from generation: ``halting_probs (B, I)`` (``dh``: the
    halting probability each closing instruction added, 0 elsewhere), ``slot_index (B, I)`` long (slot
    each instruction starts in, -1 where masked), ``closes (B, I)`` bool, ``n_outputs (B,)`` long,
    ``results (B, I, D')``: the engine's per-instruction results when it ran inside generation;
    ``return_logits (B, I)``: the decoder's return-head logits (0 where masked), for losses that must
    keep a gradient where the return probability is saturated."""

    instructions: torch.Tensor
    return_probs: torch.Tensor
    mask: torch.Tensor
    halting_probs: torch.Tensor | None = None
    slot_index: torch.Tensor | None = None
    closes: torch.Tensor | None = None
    n_outputs: torch.Tensor | None = None
    results: torch.Tensor | None = None
    return_logits: torch.Tensor | None = None

    def __post_init__(self):
        i, r, m = self.instructions, self.return_probs, self.mask
        if not isinstance(i, torch.Tensor) or i.dim() != 3:
            raise ValueError(f"instructions: expected a (B, I, D) tensor, got {getattr(i, 'shape', type(i))}")
        B, n = i.shape[:2]
        if not isinstance(r, torch.Tensor) or tuple(r.shape) != (B, n):
            raise ValueError(f"return_probs: expected shape ({B}, {n}) like instructions, got {getattr(r, 'shape', None)}")
        if not isinstance(m, torch.Tensor) or tuple(m.shape) != (B, n) or m.dtype != torch.bool:
            raise ValueError(f"mask: expected a bool tensor of shape ({B}, {n})")

    @property
    def n_instructions(self) -> torch.Tensor:
        """(B,) long: instructions each row used."""
        return self.mask.sum(1)

    def output_count(self) -> torch.Tensor:
        """(B,): the sum of the return probabilities (the number of outputs: whole once halted)."""
        return self.return_probs.sum(1)


class DirectiveState(NamedTuple):
    fill: torch.Tensor  # (B,) probability in the open slot
    halt: torch.Tensor  # (B,) cumulative halting probability
    n_closed: torch.Tensor  # (B,) long
    halted: torch.Tensor  # (B,) bool

    @classmethod
    def start(cls, batch: int, dtype=torch.float32, device=None) -> "DirectiveState":
        z = torch.zeros(batch, dtype=dtype, device=device)
        return cls(z, z.clone(), torch.zeros(batch, dtype=torch.long, device=device),
                   torch.zeros(batch, dtype=torch.bool, device=device))

    def select(self, rows: torch.Tensor) -> "DirectiveState":
        return DirectiveState(*(t.index_select(0, rows) for t in self))


class StepOut(NamedTuple):
    p: torch.Tensor  # (B,) returned probability (0 where inactive)
    active: torch.Tensor  # (B,) bool: the row produced this instruction
    closes: torch.Tensor  # (B,) bool: a slot closed at this step
    dh: torch.Tensor  # (B,) halting probability added
    slot: torch.Tensor  # (B,) long slot the step started in (-1 inactive)


def directive_step(state: DirectiveState, r: torch.Tensor, h: torch.Tensor, eps: float = 1e-6,
                   mode: str = "clamp", last: bool = False, halt_eps: float = HALT_EPS) -> tuple[StepOut, DirectiveState]:
    """One step of the arithmetic in the module docstring for a batch of rows, all on device, no
    host sync. ``r``, ``h`` (B,) float; ``last``: this is the last allowed step (rule 4).
    Differentiable in ``r``, ``h`` and the state's floats."""
    fill, halt, n_closed, halted = state
    active = ~halted
    one = torch.ones_like(fill)
    if last:
        active = active & (fill > 0)
    if mode == "clamp":
        p = torch.where(fill + r >= 1 - eps, one - fill, r)
    elif mode == "carry":
        p = r
    else:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    p = torch.minimum(p, one - halt)
    if last:
        p = one - fill
    closes = active & (fill + p >= 1 - eps)
    dh = torch.minimum(h, one - halt)
    if last:
        dh = one - halt
    halts = closes & (halt + dh >= 1 - halt_eps)
    dh = torch.where(halts, one - halt, torch.where(closes, dh, torch.zeros_like(dh)))  # remainder at halting
    new_halt = halt + dh
    if mode == "carry":  # a halting close returns exactly what fills the slot
        p = torch.where(halts, one - fill, p)
    p = torch.where(active, p, torch.zeros_like(p))
    new_fill = fill + p
    zero = torch.zeros_like(fill)
    if mode == "clamp":
        new_fill = torch.where(closes, zero, new_fill)
    else:
        new_fill = torch.where(closes, torch.where(halts, zero, (new_fill - 1).clamp_min(0)), new_fill)
    slot = torch.where(active, n_closed, torch.full_like(n_closed, -1))
    new_halted = halted | halts | torch.full_like(halted, last)
    new = DirectiveState(new_fill, new_halt, n_closed + closes.long(), new_halted)
    return StepOut(p, active, closes, dh, slot), new


def run_directive(r: torch.Tensor, h: torch.Tensor, eps: float = 1e-6, mode: str = "clamp", halt_eps: float = HALT_EPS):
    """The step function over given raw probabilities ``r``, ``h`` (B, I) (the last column is the last
    allowed step) -> (p, mask, closes, dh, slot) each (B, I), and the final state."""
    B, n = r.shape
    state = DirectiveState.start(B, r.dtype, r.device)
    outs = []
    for t in range(n):
        o, state = directive_step(state, r[:, t], h[:, t], eps, mode, last=t == n - 1, halt_eps=halt_eps)
        outs.append(o)
    stack = [torch.stack(x, 1) for x in zip(*outs)] if outs else [r.new_zeros(B, 0)] * 5
    return StepOut(*stack), state


def _val(x: torch.Tensor) -> float:
    return float(x.detach())


def directive_reference(r: torch.Tensor, h: torch.Tensor, eps: float = 1e-6, mode: str = "clamp",
                        halt_eps: float = HALT_EPS):
    """The same arithmetic one row and one step at a time on float64 scalars (the test oracle;
    differentiable). Returns p (B, I) float64, mask (B, I) bool, n_closed (B,) long, dh (B, I) float64."""
    r, h = r.double(), h.double()
    B, n = r.shape
    zero = r.new_zeros(())
    P, M, K, H = [], [], [], []
    for b in range(B):
        fill, halt = zero, zero
        k, halted = 0, False
        prow, mrow, hrow = [], [], []
        for t in range(n):
            last = t == n - 1
            if halted or (last and _val(fill) == 0):
                prow.append(zero), mrow.append(False), hrow.append(zero)
                continue
            p = r[b, t]
            if mode == "clamp" and _val(fill + p) >= 1 - eps:
                p = 1 - fill
            p = torch.minimum(p, 1 - halt)
            dh = 1 - halt if last else torch.minimum(h[b, t], 1 - halt)
            if last:
                p = 1 - fill
            if _val(fill + p) >= 1 - eps:
                halts = _val(halt + dh) >= 1 - halt_eps
                if halts:
                    dh = 1 - halt
                halt = halt + dh
                if mode == "carry" and halts:
                    p = 1 - fill
                fill = zero if (mode == "clamp" or halts) else torch.clamp_min(fill + p - 1, 0)
                k, halted = k + 1, halts
                hrow.append(dh)
            else:
                fill = fill + p
                hrow.append(zero)
            prow.append(p), mrow.append(True)
        P.append(torch.stack(prow) if n else r.new_zeros(0)), M.append(mrow), K.append(k)
        H.append(torch.stack(hrow) if n else r.new_zeros(0))
    return (torch.stack(P) if B else r.new_zeros(0, n), torch.tensor(M, dtype=torch.bool).reshape(B, n),
            torch.tensor(K, dtype=torch.long), torch.stack(H) if B else r.new_zeros(0, n))
