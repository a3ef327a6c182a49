"""TransformEngine: executes a directive's instructions in order on a latent state and pours the
results into result slots with ``craft_kernels.act_accumulate``.

Each instruction is one application of the same step (so more instructions = more computation of
the same kind, the property that lets a halting model extrapolate to harder inputs). The context is
read by **two tape heads**, a forward one and a backward one, each a distribution over the items
plus two cells: ``end`` (past either end of the items, absorbing) and ``start`` (where the heads
begin, before the items in both directions), a Neural Turing Machine's location addressing without
content addressing. Each item has a **score** ``s_n = sigmoid(w . value_n + u . [z, x])`` in
[0, 1) (``x`` the instruction): is it of the kind the computation looks for (the state and
instruction term lets a command choose, from its first step: every item, or only, say, items with
a positive key). One step:

- **jump**: ``pi <- (1 - j) pi + j start`` for both heads (gate ``j``: begin again).
- **move** (gate ``m``): ``pi <- (1 - m) pi + m seek(pi)``: a **seek** takes the head's mass to the
  next item in its direction that is taken, each independently with probability ``s_n``
  (``s_j prod_{i<l<j} (1 - s_l)`` from item ``i``); what passes every item lands in ``end``. With
  every score 1 it is a shift by one item. Forward, ``start`` seeks from before the first item;
  backward, from after the last. So keeping the items of one kind is a scan that skips the others,
  and its slots close at the pace of a copy.
- **read** (after the move): the direction gate ``d`` mixes the heads,
  ``pi = (1 - d) pi_forward + d pi_backward``; ``read = sum_n pi_n value(item_n) + (pi_end + pi_start) null``.
  Both heads always move, so each stays sharp while ``d`` is undecided and ``d`` gets the gradient
  of "which order was right" directly (one head whose mass split both ways blurred every read).
- **update**: a GRU cell on ``[instruction, read, pi_end]`` updates ``z (B, D)``; an additive
  register ``acc (B, D)`` becomes ``keep * acc + write * read``: sums and copies of item values
  stay exact where a GRU would squash them.
- **result**: ``MLP([z, read]) + acc`` (B, D).
- **lookahead**: ``left`` = scored items (the lookahead's score; the seek may have its own,
  ``seek_score``) each head has still to read in its own direction
  (``start`` counts every item as still to read), ``done`` = scored items it has passed, each mixed
  by ``d`` and clamped at 3. In the direction of travel, so a backward scan looks like a forward
  one to the heads that read the feedback. Halting only happens where a slot closes, so a command
  whose last output is not at the last item (keep the items with a positive key) can only halt
  exactly if the state says whether anything it would output is left; the clamp keeps the feature
  bounded (0, 1, 2, "3 or more" is all a count decision needs) for any input size.
- **feedback** ``[z, read, pi_end, left, done]`` (B, 2D + 3): what the decoder sees of the
  execution when it runs the engine step by step ("nothing left", "one item left", "nothing of
  this kind left").

Gates come from ``[z, instruction]``, the scores of a step's seek from the state before it, those
of the lookahead from the state after it. Every
operation is local to the items in order (a seek, the two ends), so a step does the same thing on
3 items or 30, and the feedback is bounded: "nothing left to read" looks the same for any input
size. The initial biases make the default a scan (move about 0.95, jump about 0.02, scores about
0.98), its direction set by ``direction_bias``.

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
    score: torch.Tensor  # (B, N) the state-free part of each item's score (logit)
    score_feat: torch.Tensor  # (B, N, G) item features the state's gains multiply (G = score_gains, may be 0)
    seek: torch.Tensor  # (B, N, 1 + G) the seek score's item part and features; (B, N, 0) when the seek uses ``score``

    def select(self, rows):
        return Memory(*(t[rows] for t in self))


class EngineState(NamedTuple):
    z: torch.Tensor  # (B, D)
    acc: torch.Tensor  # (B, D)
    head: torch.Tensor  # (B, 2, N + 2): forward and backward heads; items, then the end cell, then the start cell

    def select(self, rows):
        return EngineState(*(t[rows] for t in self))


def _seek(items: torch.Tensor, begin: torch.Tensor, s: torch.Tensor):
    """One forward seek of a head: the mass at item ``i`` (or on the start cell, before item 0) goes to
    the first later item ``j`` that is "taken" (independently with probability ``s_j``):
    ``s_j prod_{i<l<j} (1 - s_l)``; what passes every item goes to the end cell. items (B, N),
    begin (B, 1), s (B, N) in [0, 1) (0 on padding) -> (mass on items (B, N), mass to the end (B, 1)).
    With ``s = 1`` everywhere it is a shift by one item."""
    a = torch.log1p(-s)  # (B, N) log(1 - s), <= 0
    incl = a.cumsum(1)
    excl = incl - a  # sum_{l<j} a_l
    N = items.shape[1]
    later = torch.ones(N, N, dtype=torch.bool, device=items.device).triu(1)  # [i, j]: j > i
    log_pass = (excl[:, None, :] - incl[:, :, None]).masked_fill(~later, float("-inf"))  # sum_{i<l<j} a_l
    moved = (torch.einsum("bi,bij->bj", items, log_pass.exp()) + begin * excl.exp()) * s
    total = incl[:, -1:]
    to_end = (items * (total - incl).exp()).sum(1, keepdim=True) + begin * total.exp()
    return moved, to_end


class TransformEngine(nn.Module):
    """``forward(directive, context (B, N, D), context_mask (B, N) bool = None, command (B, D) = None) -> EngineOutput``;
    step-wise: ``start``, ``step``, ``pour`` (see the module docstring). ``direction_bias``: initial
    logit of the direction gate (0: undecided, the two heads read half each; negative: forwards).
    ``hold_at_end``: ``z`` and ``acc`` change only in proportion to the heads' mass not on the end
    cell, so once everything is read the state (and the result) stays what the scan made of it,
    however many instructions follow: a late slot close gets the same result as an early one.
    ``seek_score``: the seek has its own item score (initialised to take every item), apart from the
    lookahead's: a command that must read every item (pairwise sums) keeps its seeks whole while
    the count losses move the lookahead's score. ``score_gains`` G > 0: each score's logit adds
    ``sum_g f_g(value_n) * u_g . [z, x]``: the state and instruction set the gain of G item features,
    so one command can filter sharply on an item feature (the key's sign) while another's gain stays
    0 and takes every item; with only the additive term, a sharp filter (a large ``w``) would need
    every other command's state term to outgrow it. Gains start at 0 (the scores start as without).
    ``lookahead_seek`` (needs ``seek_score``): the lookahead counts the items the seek would take (its
    score at the new state, without gradient from the count losses), so "nothing left" means "nothing
    the scan will visit": the filter the result loss teaches the seek is the one halting needs.
    ``command_state``: ``z`` starts as ``tanh(init(mean item) + C command)`` (``C`` starts at 0), so
    the heads that read the feedback can tell the commands apart from the first step."""

    def __init__(self, dim: int, hidden_dim: int | None = None, mode: str = "clamp", direction_bias: float = 0.0,
                 hold_at_end: bool = False, seek_score: bool = False, score_gains: int = 0,
                 lookahead_seek: bool = False, command_state: bool = False):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        hidden_dim = hidden_dim or 2 * dim
        if not isinstance(score_gains, int) or score_gains < 0:
            raise ValueError(f"score_gains: expected an int >= 0 (item features a state can gate), got {score_gains!r}")
        self.mode, self.dim, self.hold_at_end = mode, dim, hold_at_end
        if lookahead_seek and not seek_score:
            raise ValueError("lookahead_seek: counts the items the seek's own score takes; pass seek_score=True too")
        self.seek_score, self.score_gains, self.lookahead_seek = seek_score, score_gains, lookahead_seek
        self.command_state = nn.Linear(dim, dim, bias=False) if command_state else None
        self.init = nn.Linear(dim, dim)
        self.gates = nn.Linear(2 * dim, 5)  # jump, move, backwards, keep, write
        self.value = nn.Linear(dim, dim)
        self.null_value = nn.Parameter(torch.zeros(dim))
        self.cell = nn.GRUCell(2 * dim + 1, dim)
        self.result = nn.Sequential(nn.Linear(2 * dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim))
        self.score_item = nn.Linear(dim, 1)  # item score: item part
        self.score_state = nn.Linear(2 * dim, 1, bias=False)  # item score: state and instruction part
        G = score_gains
        if G:  # the lookahead score's gated features (names kept apart so older checkpoints still load)
            self.score_feat = nn.Linear(dim, G)
            self.score_gain = nn.Linear(2 * dim, G, bias=False)
        if seek_score:  # column 0: additive, as the lookahead's; columns 1..G: gated features
            self.seek_item = nn.Linear(dim, 1 + G)
            self.seek_state = nn.Linear(2 * dim, 1 + G, bias=False)
        with torch.no_grad():
            # moving by default, and (with direction_bias 0) reading both ways half each: two sharp
            # heads mixed, not one head whose mass splits (tried: one head with a backward gate at
            # 0.5 blurred every command's reads, benchmarks/RESULTS.md, directives, counts)
            self.gates.bias.copy_(torch.tensor([-4.0, 3.0, direction_bias, 0.0, 0.0]))
            # start by taking every item (s about 0.98: a seek is almost a shift by one)
            self.score_item.bias.fill_(4.0)
            if G:
                self.score_gain.weight.zero_()
            if seek_score:
                self.seek_item.bias.zero_()
                self.seek_item.bias[0] = 4.0
                self.seek_state.weight[1:].zero_()
            if command_state:
                self.command_state.weight.zero_()

    @property
    def feedback_dim(self) -> int:
        return 2 * self.dim + 3

    def start(self, context: torch.Tensor, context_mask: torch.Tensor | None = None,
              command: torch.Tensor | None = None):
        """context (B, N, D) (valid items first in each row), command (B, D) (used with
        ``command_state``) -> (Memory, EngineState): values of the items, both heads on the start
        cell, z from the items' mean (and the command)."""
        if context.dim() != 3 or context.shape[2] != self.dim:
            raise ValueError(f"context: expected (B, N, {self.dim}), got {tuple(context.shape)}")
        B, N, _ = context.shape
        if context_mask is None:
            context_mask = torch.ones(B, N, dtype=torch.bool, device=context.device)
        cm = context_mask.to(context.dtype)
        z = self.init((context * cm[..., None]).sum(1) / cm.sum(1, keepdim=True).clamp_min(1))
        if self.command_state is not None:
            if command is None or tuple(command.shape) != (B, self.dim):
                raise ValueError(f"command: expected (B={B}, {self.dim}) for an engine with command_state, got "
                                 f"{None if command is None else tuple(command.shape)}")
            z = z + self.command_state(command)
        z = torch.tanh(z)
        values = self.value(context)
        empty = values.new_zeros(B, N, 0)
        mem = Memory(values, context_mask, self.score_item(values).squeeze(-1),
                     self.score_feat(values) if self.score_gains else empty,
                     self.seek_item(values) if self.seek_score else empty)
        head = torch.zeros(B, 2, N + 2, dtype=context.dtype, device=context.device)
        head[:, :, N + 1] = 1
        return mem, EngineState(z, torch.zeros_like(z), head)

    def score(self, mem: Memory, z: torch.Tensor, x: torch.Tensor, seek: bool = False) -> torch.Tensor:
        """(B, N) in [0, 1 - 1e-6], 0 on padding: whether each item is of the kind the state ``z`` (B, D)
        and instruction ``x`` (B, D) look for (``sigmoid(w . value + u . [z, x] + sum_g f_g(value) u_g . [z, x])``).
        ``seek``: the seek's score (its own when the engine has ``seek_score``, else the lookahead's)."""
        zx = torch.cat([z, x], -1)
        if seek and self.seek_score:
            st = self.seek_state(zx)  # (B, 1 + G)
            logit = mem.seek[..., 0] + st[:, :1] + torch.einsum("bng,bg->bn", mem.seek[..., 1:], st[:, 1:])
        else:
            logit = mem.score + self.score_state(zx)
            if self.score_gains:
                logit = logit + torch.einsum("bng,bg->bn", mem.score_feat, self.score_gain(zx))
        return torch.sigmoid(logit).clamp_max(1 - 1e-6) * mem.mask.to(z.dtype)

    def step(self, mem: Memory, st: EngineState, x: torch.Tensor, active: torch.Tensor | None = None):
        """Executes instruction ``x (B, D)`` -> (new state, result (B, D), feedback (B, 2D + 3)).
        Rows where ``active`` (B,) bool is False keep their state."""
        jump, move, back, keep, write = torch.sigmoid(self.gates(torch.cat([st.z, x], -1))).unbind(-1)
        N = mem.values.shape[1]
        s = self.score(mem, st.z, x, seek=True)
        head = st.head * (1 - jump[:, None, None])
        items, end, begin = head[..., :N], head[..., N:N + 1], head[..., N + 1:]
        begin = begin + jump[:, None, None]
        f_items, f_end = _seek(items[:, 0], begin[:, 0], s)
        b_items, b_end = _seek(items[:, 1].flip(1), begin[:, 1], s.flip(1))
        m = move[:, None, None]
        moved = torch.stack([f_items, b_items.flip(1)], 1)
        head = torch.cat([(1 - m) * items + m * moved, end + m * torch.stack([f_end, b_end], 1), (1 - m) * begin], 2)
        if active is not None:
            head = torch.where(active[:, None, None], head, st.head)
        w = torch.stack([1 - back, back], 1)[..., None]  # (B, 2, 1): how much each head is read
        mixed = (w * head).sum(1)
        at, end, begin = mixed[:, :N], mixed[:, N:N + 1], mixed[:, N + 1:]
        read = torch.einsum("bn,bnd->bd", at, mem.values) + (end + begin) * self.null_value
        z = self.cell(torch.cat([x, read, end], -1), st.z)
        acc = keep[:, None] * st.acc + write[:, None] * read
        if self.hold_at_end:  # the state changes only by the mass of the head still on the items or the start
            z, acc = st.z + (1 - end) * (z - st.z), st.acc + (1 - end) * (acc - st.acc)
        if active is not None:
            a = active[:, None]
            z, acc = torch.where(a, z, st.z), torch.where(a, acc, st.acc)
        result = self.result(torch.cat([z, read], -1)) + acc
        # lookahead: scored items each head has still to read in its own direction of travel, and has read
        sc = (self.score(mem, z, x, seek=True).detach() if self.lookahead_seek else self.score(mem, z, x))[:, None]  # (B, 1, N)
        h_at, h_begin = head[..., :N], head[..., N + 1:]
        before = h_at.cumsum(2) - h_at  # P(head strictly before item n, among the items)
        after = h_at.flip(2).cumsum(2).flip(2) - h_at
        to_read = torch.stack([before[:, 0], after[:, 1]], 1) + h_begin  # the start cell: all still to read
        done = torch.stack([after[:, 0], before[:, 1]], 1)
        left = (w[..., 0] * (sc * to_read).sum(2)).sum(1, keepdim=True).clamp_max(3.0)
        read_so_far = (w[..., 0] * (sc * done).sum(2)).sum(1, keepdim=True).clamp_max(3.0)
        return EngineState(z, acc, head), result, torch.cat([z, read, end, left, read_so_far], -1)

    def pour(self, results: torch.Tensor, directive: TransformDirective, eps: float = 1e-6) -> EngineOutput:
        """Slots from per-instruction results (B, I, D) and the directive's return probabilities."""
        out = act_accumulate(results, directive.return_probs, mask=directive.mask, eps=eps, mode=self.mode)
        return EngineOutput(out.slots, out.slot_fill, out.n_slots, results)

    def forward(self, directive: TransformDirective, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, eps: float = 1e-6,
                command: torch.Tensor | None = None) -> EngineOutput:
        inst, mask = directive.instructions, directive.mask
        B, I, D = inst.shape
        if context.dim() != 3 or context.shape[0] != B or context.shape[2] != D:
            raise ValueError(f"context: expected (B={B}, N, {D}), got {tuple(context.shape)}")
        mem, st = self.start(context, context_mask, command)
        results = []
        for n in range(I):
            st, res, _ = self.step(mem, st, inst[:, n], mask[:, n])
            results.append(res)
        results = torch.stack(results, 1) if I else inst.new_zeros(B, 0, D)
        return self.pour(results, directive, eps)
