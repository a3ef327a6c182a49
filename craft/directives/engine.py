"""TransformEngine: executes a directive's instructions in order on a latent state and pours the
results into result slots with ``craft_kernels.act_accumulate``.

Each instruction is one application of the same step (so more instructions = more computation of
the same kind, the property that lets a halting model extrapolate to harder inputs). The context is
read by a **tape head**, a distribution over the items plus two cells: ``end`` (past either end of
the items, absorbing) and ``start`` (where the head begins, before the items in both directions), a
Neural Turing Machine's location addressing without content addressing. One step:

- **jump**: ``pi <- (1 - j) pi + j start`` (gate ``j``: begin again).
- **move**: ``pi <- (1 - m) pi + m ((1 - d) forward(pi) + d backward(pi))`` (gates ``m``, direction
  ``d``). Forward, ``start`` goes to the first item; backward, to the last; mass that leaves the
  valid items lands in ``end`` and stays there. So a backward scan (reverse) is the forward scan
  with one gate flipped: no jump to the last item has to be discovered together with the direction.
- **read** (after the move): ``read = sum_n pi_n value(item_n) + (pi_end + pi_start) null``.
- **update**: a GRU cell on ``[instruction, read, pi_end]`` updates ``z (B, D)``; an additive
  register ``acc (B, D)`` becomes ``keep * acc + write * read``: sums and copies of item values
  stay exact where a GRU would squash them.
- **result**: ``MLP([z, read]) + acc`` (B, D).
- **lookahead**: each item gets a learned score ``s_n = sigmoid(w . value_n + u . z)`` (the state
  term lets a command choose what counts: every item, or only items of some kind, e.g. a positive
  key). ``ahead = min(sum_n s_n P(head before n), 3)`` and ``behind = min(sum_n s_n P(head after
  n), 3)`` (``start`` is before every item both ways, ``end`` after none): what is left to read
  forwards and backwards. Halting only happens where a slot closes, so a command whose last output
  is not at the last item (keep the items with a positive key) can only halt exactly if the state
  says whether anything it would output is left; the clamp keeps the feature bounded (0, 1, 2, "3
  or more" is all a count decision needs) for any input size.
- **feedback** ``[z, read, pi_end, ahead, behind]`` (B, 2D + 3): what the decoder sees of the
  execution when it runs the engine step by step ("nothing left", "one item left", "nothing of
  this kind left").

Gates come from ``[z, instruction]``. Every operation is local (a shift by one item, the two ends),
so a step does the same thing on 3 items or 30, and the feedback is bounded: "nothing left to
read" looks the same for any input size. The initial biases make the default a forward scan (move
about 0.95, backward and jump about 0.02).

Rows whose instruction is masked keep their state. ``forward`` runs the steps over a finished
directive; the decoder instead calls :meth:`start` / :meth:`step` inside its loop (feedback mode)
and :meth:`pour` at the end. Slot ``s`` is the return-probability-weighted sum of the results that
fell into it (clamp mode by default, carry mode as an option; see craft_kernels/act.py).
Everything is differentiable.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from craft.directives.directive import MODES, TransformDirective
from craft_kernels import act_accumulate


class EngineOutput(NamedTuple):
    slots: torch.Tensor  # (B, S, D)
    slot_fill: torch.Tensor  # (B, S)
    n_slots: torch.Tensor  # (B,) long, closed slots
    results: torch.Tensor  # (B, I, D) per-instruction results


class Memory(NamedTuple):
    values: torch.Tensor  # (B, N, D)
    mask: torch.Tensor  # (B, N) bool, valid items (a prefix of each row)
    first: torch.Tensor  # (B, N + 1) one-hot on the first item (on ``end`` for an empty row)
    last: torch.Tensor  # (B, N + 1) one-hot on the last valid item (on ``end`` for an empty row)
    score: torch.Tensor  # (B, N) the state-free part of each item's lookahead score (logit)

    def select(self, rows):
        return Memory(*(t[rows] for t in self))


class EngineState(NamedTuple):
    z: torch.Tensor  # (B, D)
    acc: torch.Tensor  # (B, D)
    head: torch.Tensor  # (B, N + 2): items, then the end cell, then the start cell

    def select(self, rows):
        return EngineState(*(t[rows] for t in self))


class TransformEngine(nn.Module):
    """``forward(directive, context (B, N, D), context_mask (B, N) bool = None) -> EngineOutput``;
    step-wise: ``start``, ``step``, ``pour`` (see the module docstring)."""

    def __init__(self, dim: int, hidden_dim: int | None = None, mode: str = "clamp"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        hidden_dim = hidden_dim or 2 * dim
        self.mode, self.dim = mode, dim
        self.init = nn.Linear(dim, dim)
        self.gates = nn.Linear(2 * dim, 5)  # jump, move, backwards, keep, write
        self.value = nn.Linear(dim, dim)
        self.null_value = nn.Parameter(torch.zeros(dim))
        self.cell = nn.GRUCell(2 * dim + 1, dim)
        self.result = nn.Sequential(nn.Linear(2 * dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim))
        self.score_item = nn.Linear(dim, 1)  # lookahead score: item part
        self.score_state = nn.Linear(dim, 1, bias=False)  # lookahead score: state part
        with torch.no_grad():
            # a forward scan by default. Tried: direction undecided (backward 0.5) so that reverse is
            # not first trained to ignore what a forward scan reads; every command's reads then stayed
            # blurred for longer (benchmarks/RESULTS.md, directives, counts)
            self.gates.bias.copy_(torch.tensor([-4.0, 3.0, -4.0, 0.0, 0.0]))
            self.score_item.bias.fill_(3.0)  # start by counting every item

    @property
    def feedback_dim(self) -> int:
        return 2 * self.dim + 3

    def start(self, context: torch.Tensor, context_mask: torch.Tensor | None = None):
        """context (B, N, D) (valid items first in each row) -> (Memory, EngineState): values of
        the items, the head on the start cell, z from the items' mean."""
        if context.dim() != 3 or context.shape[2] != self.dim:
            raise ValueError(f"context: expected (B, N, {self.dim}), got {tuple(context.shape)}")
        B, N, _ = context.shape
        if context_mask is None:
            context_mask = torch.ones(B, N, dtype=torch.bool, device=context.device)
        cm = context_mask.to(context.dtype)
        z = torch.tanh(self.init((context * cm[..., None]).sum(1) / cm.sum(1, keepdim=True).clamp_min(1)))
        n = context_mask.sum(1)
        cols = torch.arange(N + 1, device=context.device)[None]
        first = (cols == torch.where(n > 0, 0, N)[:, None]).to(context.dtype)
        last = (cols == torch.where(n > 0, n - 1, N)[:, None]).to(context.dtype)
        values = self.value(context)
        mem = Memory(values, context_mask, first, last, self.score_item(values).squeeze(-1))
        head = torch.zeros(B, N + 2, dtype=context.dtype, device=context.device)
        head[:, N + 1] = 1
        return mem, EngineState(z, torch.zeros_like(z), head)

    def step(self, mem: Memory, st: EngineState, x: torch.Tensor, active: torch.Tensor | None = None):
        """Executes instruction ``x (B, D)`` -> (new state, result (B, D), feedback (B, 2D + 3)).
        Rows where ``active`` (B,) bool is False keep their state."""
        jump, move, back, keep, write = torch.sigmoid(self.gates(torch.cat([st.z, x], -1))).unbind(-1)
        fwd, bwd = (move * (1 - back))[:, None], (move * back)[:, None]
        N = mem.values.shape[1]
        head = st.head * (1 - jump[:, None])
        items, end, begin = head[:, :N], head[:, N:N + 1], head[:, N + 1:] + jump[:, None]
        zero = items.new_zeros(items.shape[0], 1)
        moved = ((1 - fwd - bwd) * items + fwd * torch.cat([zero, items[:, :-1]], 1)
                 + bwd * torch.cat([items[:, 1:], zero], 1))
        spilled = fwd * items[:, -1:] + bwd * items[:, :1]  # off either end of the array
        entered = begin * (fwd * mem.first + bwd * mem.last)  # (B, N + 1): from the start cell
        valid = mem.mask.to(items.dtype)
        moved = moved + entered[:, :N]
        new_end = end + spilled + entered[:, N:] + (moved * (1 - valid)).sum(1, keepdim=True)
        head = torch.cat([moved * valid, new_end, begin * (1 - fwd - bwd)], 1)
        if active is not None:
            head = torch.where(active[:, None], head, st.head)
        at, end, begin = head[:, :N], head[:, N:N + 1], head[:, N + 1:]
        read = torch.einsum("bn,bnd->bd", at, mem.values) + (end + begin) * self.null_value
        z = self.cell(torch.cat([x, read, end], -1), st.z)
        acc = keep[:, None] * st.acc + write[:, None] * read
        if active is not None:
            m = active[:, None]
            z, acc = torch.where(m, z, st.z), torch.where(m, acc, st.acc)
        result = self.result(torch.cat([z, read], -1)) + acc
        score = torch.sigmoid(mem.score + self.score_state(z)) * valid  # (B, N)
        before = at.cumsum(1) - at + begin  # P(head before item n)
        after = at.flip(1).cumsum(1).flip(1) - at + begin  # P(head after item n), start counting as after
        ahead = (score * before).sum(1, keepdim=True).clamp_max(3.0)
        behind = (score * after).sum(1, keepdim=True).clamp_max(3.0)
        return EngineState(z, acc, head), result, torch.cat([z, read, end, ahead, behind], -1)

    def pour(self, results: torch.Tensor, directive: TransformDirective, eps: float = 1e-6) -> EngineOutput:
        """Slots from per-instruction results (B, I, D) and the directive's return probabilities."""
        out = act_accumulate(results, directive.return_probs, mask=directive.mask, eps=eps, mode=self.mode)
        return EngineOutput(out.slots, out.slot_fill, out.n_slots, results)

    def forward(self, directive: TransformDirective, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, eps: float = 1e-6) -> EngineOutput:
        inst, mask = directive.instructions, directive.mask
        B, I, D = inst.shape
        if context.dim() != 3 or context.shape[0] != B or context.shape[2] != D:
            raise ValueError(f"context: expected (B={B}, N, {D}), got {tuple(context.shape)}")
        mem, st = self.start(context, context_mask)
        results = []
        for n in range(I):
            st, res, _ = self.step(mem, st, inst[:, n], mask[:, n])
            results.append(res)
        results = torch.stack(results, 1) if I else inst.new_zeros(B, 0, D)
        return self.pour(results, directive, eps)
