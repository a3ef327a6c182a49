"""TransformEngine: executes a directive's instructions in order on a latent state and pours the
results into result slots with ``craft_kernels.act_accumulate``.

Each instruction is one application of the same step (so more instructions = more computation of
the same kind, the property that lets a halting model extrapolate to harder inputs). The context is
read by a **tape head**, a distribution over the items plus one "past the end" cell, starting on
the first item (a Neural Turing Machine's location addressing, without content addressing):

- **jump**: ``pi <- (1 - j) pi + j (f * first + (1 - f) * last)`` (gates ``j``, ``f``).
- **read**: ``read = sum_n pi_n value(item_n) + pi_end * null`` (a learned null vector).
- **update**: a GRU cell on ``[instruction, read, pi_end]`` updates ``z (B, D)``; an additive
  register ``acc (B, D)`` becomes ``keep * acc + write * read``: sums and copies of item values
  stay exact where a GRU would squash them.
- **move**: ``pi <- (1 - m) pi + m ((1 - d) shift_forward(pi) + d shift_back(pi))`` (gates ``m``,
  direction ``d``); mass that leaves the valid items (past the last one, before the first) lands in
  the end cell and stays there.
- **result**: ``MLP([z, read]) + acc`` (B, D).
- **feedback** ``[z, read, pi_end at the read, pi_end after the move, head on the first or last
  item after the move]`` (B, 2D + 3): what the decoder sees of the execution when it runs the engine step by
  step ("nothing left", "one item left").

Gates come from ``[z, instruction]``. Every operation is local (a shift by one item, the two ends),
so a step does the same thing on 3 items or 30, and the feedback is bounded: "nothing left to
read" looks the same for any input size. The initial biases make the default a forward scan (move
about 0.95, jump about 0.02).

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
    first: torch.Tensor  # (B, N + 1) one-hot head on the first item (the end cell for an empty row)
    last: torch.Tensor  # (B, N + 1) one-hot head on the last valid item

    def select(self, rows):
        return Memory(*(t[rows] for t in self))


class EngineState(NamedTuple):
    z: torch.Tensor  # (B, D)
    acc: torch.Tensor  # (B, D)
    head: torch.Tensor  # (B, N + 1): items, then the end cell

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
        self.gates = nn.Linear(2 * dim, 6)  # jump, jump-to-first, move, backwards, keep, write
        self.value = nn.Linear(dim, dim)
        self.null_value = nn.Parameter(torch.zeros(dim))
        self.cell = nn.GRUCell(2 * dim + 1, dim)
        self.result = nn.Sequential(nn.Linear(2 * dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim))
        with torch.no_grad():
            self.gates.bias.copy_(torch.tensor([-4.0, 0.0, 3.0, -4.0, 0.0, 0.0]))

    @property
    def feedback_dim(self) -> int:
        return 2 * self.dim + 3

    def start(self, context: torch.Tensor, context_mask: torch.Tensor | None = None):
        """context (B, N, D) (valid items first in each row) -> (Memory, EngineState): values of
        the items, the head on the first item, z from the items' mean."""
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
        mem = Memory(self.value(context), context_mask, first, last)
        return mem, EngineState(z, torch.zeros_like(z), first)

    def step(self, mem: Memory, st: EngineState, x: torch.Tensor, active: torch.Tensor | None = None):
        """Executes instruction ``x (B, D)`` -> (new state, result (B, D), feedback (B, 2D + 3)).
        Rows where ``active`` (B,) bool is False keep their state."""
        jump, to_first, move, back, keep, write = torch.sigmoid(self.gates(torch.cat([st.z, x], -1))).unbind(-1)
        fwd, back = move * (1 - back), move * back
        target = to_first[:, None] * mem.first + (1 - to_first[:, None]) * mem.last
        head = (1 - jump[:, None]) * st.head + jump[:, None] * target
        items, end = head[:, :-1], head[:, -1:]
        read = torch.einsum("bn,bnd->bd", items, mem.values) + end * self.null_value
        z = self.cell(torch.cat([x, read, end], -1), st.z)
        acc = keep[:, None] * st.acc + write[:, None] * read
        zero = items.new_zeros(items.shape[0], 1)
        moved = ((1 - fwd - back)[:, None] * items + fwd[:, None] * torch.cat([zero, items[:, :-1]], 1)
                 + back[:, None] * torch.cat([items[:, 1:], zero], 1))
        spilled = fwd * items[:, -1] + back * items[:, 0]  # off either end of the array
        valid = mem.mask.to(items.dtype)
        new_end = end + spilled[:, None] + (moved * (1 - valid)).sum(1, keepdim=True)  # past the last valid item
        head = torch.cat([moved * valid, new_end], 1)
        if active is not None:
            m = active[:, None]
            z, acc, head = torch.where(m, z, st.z), torch.where(m, acc, st.acc), torch.where(m, head, st.head)
        result = self.result(torch.cat([z, read], -1)) + acc
        edge = (mem.first[:, :-1] + mem.last[:, :-1]).clamp_max(1)  # the first and last items: one left either way
        on_edge = (head[:, :-1] * edge).sum(1, keepdim=True)
        return EngineState(z, acc, head), result, torch.cat([z, read, end, head[:, -1:], on_edge], -1)

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
