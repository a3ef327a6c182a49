"""TransformEngine: executes a directive's instructions in order on a latent state and pours the
results into result slots with ``craft_kernels.act_accumulate``.

The latent state ``z (B, D)`` starts from the masked mean of the context. Instruction ``n`` reads
the context by attention (query from ``[z, instruction]``), updates ``z`` with a GRU cell on
``[instruction, read]`` (rows whose instruction is masked keep their state), and emits a result
``MLP([z, read]) (B, D)``. The results are poured by the directive's return probabilities: slot ``s``
is the return-probability-weighted sum of the results that fell into it (clamp mode by default,
carry mode as an option; see craft_kernels/act.py). Everything is differentiable.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from craft.directives.directive import MODES, TransformDirective
from craft_kernels import act_accumulate


class EngineOutput(NamedTuple):
    slots: torch.Tensor  # (B, S, D)
    slot_fill: torch.Tensor  # (B, S)
    n_slots: torch.Tensor  # (B,) long, closed slots
    results: torch.Tensor  # (B, I, D) per-instruction results


class TransformEngine(nn.Module):
    """``forward(directive, context (B, N, D), context_mask (B, N) bool = None) -> EngineOutput``."""

    def __init__(self, dim: int, hidden_dim: int | None = None, mode: str = "clamp"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        hidden_dim = hidden_dim or 2 * dim
        self.mode = mode
        self.init = nn.Linear(dim, dim)
        self.query = nn.Linear(2 * dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.cell = nn.GRUCell(2 * dim, dim)
        self.result = nn.Sequential(nn.Linear(2 * dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim))

    def forward(self, directive: TransformDirective, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, eps: float = 1e-6) -> EngineOutput:
        inst, mask = directive.instructions, directive.mask
        B, I, D = inst.shape
        if context.dim() != 3 or context.shape[0] != B or context.shape[2] != D:
            raise ValueError(f"context: expected (B={B}, N, {D}), got {tuple(context.shape)}")
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        cm = context_mask.to(context.dtype)
        z = torch.tanh(self.init((context * cm[..., None]).sum(1) / cm.sum(1, keepdim=True).clamp_min(1)))
        keys, values = self.key(context), self.value(context)
        results = []
        for n in range(I):
            x = inst[:, n]
            q = self.query(torch.cat([z, x], -1))
            s = torch.einsum("bd,bnd->bn", q, keys) / math.sqrt(D)
            a = torch.einsum("bn,bnd->bd", F.softmax(s.masked_fill(~context_mask, float("-inf")), -1), values)
            z = torch.where(mask[:, n, None], self.cell(torch.cat([x, a], -1), z), z)
            results.append(self.result(torch.cat([z, a], -1)))
        results = torch.stack(results, 1) if I else inst.new_zeros(B, 0, D)
        out = act_accumulate(results, directive.return_probs, mask=mask, eps=eps, mode=self.mode)
        return EngineOutput(out.slots, out.slot_fill, out.n_slots, results)
