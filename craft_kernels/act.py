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

Paths (``craft_kernels._backend.kernels_impl``; CRAFT_KERNELS_IMPL=torch|triton forces one):
- ``triton`` (CUDA default; CPU under ``TRITON_INTERPRET=1``): one program per (row, block of D)
  scans N in registers and pours into a register accumulator; the backward pass is one parallel
  pouring kernel plus a per-row reverse scan (craft_kernels/_act_triton.py). No host sync inside.
- ``torch`` (CPU default): the scalar recurrence (B x N) runs in C++ (``craft_kernels._C.act_scan_*``,
  one pass per row, forward and reverse, recording its branch decisions), and results are poured
  into slots in C++ too (``act_pour_*``: one pass over results, rows split over torch's threads) —
  no Python loop over N anywhere.
Both record the branch decisions, so gradients reach ``results``, ``return_probs`` and
``halting_probs`` exactly as autograd through the sequential definition would (clamps included).
Both are the ``torch.library`` custom ops ``craft::act_fwd`` / ``craft::act_bwd`` (the number of
slots S is a data-dependent size in the fake kernel), so ``torch.compile(fullgraph=True)`` traces
through them. ``CRAFT_NATIVE=python`` uses :func:`act_accumulate_reference`, the plain sequential
definition.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from craft_kernels._backend import use_triton
from craft_kernels.native import _dispatch


# Bits of the decision tape the forward scan records per step and the reverse scan replays: the one
# Python definition, used by the Triton kernels; csrc/act_scan.cpp defines the same enum and exports
# it as craft_kernels._C.act_tape_bits() (tests check they agree).
TAPE_BITS = {"clamped": 1, "capped": 2, "close": 4, "hsat": 8, "overflow": 16, "active": 32}


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
    if not return_probs.is_floating_point():
        raise TypeError(f"return_probs: expected a floating dtype, got {return_probs.dtype}")
    if mode not in ("clamp", "carry"):
        raise ValueError(f"mode: expected 'clamp' or 'carry', got {mode!r}")
    if not 1e-12 <= eps < 1:  # eps = 0: rounding of cum + (1 - cum) could leave a full slot open
        raise ValueError(f"eps: expected 1e-12 <= eps < 1, got {eps}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, N) or mask.dtype != torch.bool):
        raise ValueError(f"mask: expected a bool tensor of shape ({B}, {N})")
    if halting_probs is not None:
        if not isinstance(halting_probs, torch.Tensor) or tuple(halting_probs.shape) != (B, N):
            raise ValueError(f"halting_probs: expected shape ({B}, {N}), got {getattr(halting_probs, 'shape', None)}")
        if not halting_probs.is_floating_point():
            raise TypeError(f"halting_probs: expected a floating dtype, got {halting_probs.dtype}")
    for name, t in (("return_probs", return_probs), ("halting_probs", halting_probs), ("mask", mask)):
        if t is not None and t.device != results.device:
            raise ValueError(f"{name}: expected device {results.device} (results' device), got {t.device}")
    if torch.compiler.is_compiling():  # value checks would read data and break the graph
        return
    act = mask if mask is not None else torch.ones_like(return_probs, dtype=torch.bool)
    rp = return_probs.detach()[act]
    if rp.numel() and not bool(((rp > 0) & (rp < 1)).all()):
        raise ValueError("return_probs: every unmasked value must lie in (0, 1); squash logits with torch.sigmoid")
    if halting_probs is not None:
        hp = halting_probs.detach()[act]
        if hp.numel() and not bool(((hp >= 0) & (hp <= 1)).all()):
            raise ValueError("halting_probs: every unmasked value must lie in [0, 1]")


def _scan_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _n_slots_opened(idx: torch.Tensor) -> int:
    """S: the most slots any row opened (one host read of a scalar)."""
    return int(idx.max()) + 1 if idx.numel() else 0


def _fill(w: torch.Tensor, idx: torch.Tensor, S: int) -> torch.Tensor:
    """(B, S): the probability poured into each slot, from piece weights w (B, N, 2) at idx (B, N, 2)."""
    B, N = w.shape[:2]
    safe = torch.where(idx < 0, S, idx).reshape(B, 2 * N)
    return w.new_zeros(B, S + 1).scatter_add(1, safe, w.reshape(B, 2 * N))[:, :S].contiguous()


def _np(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A C-contiguous CPU NumPy view of ``t`` in ``dtype`` (a copy only where a cast or move is needed)."""
    return t.detach().to("cpu", dtype).contiguous().numpy()


def _fwd_torch(x, r, h, m, eps, carry):
    ext = _dispatch.ext()
    w, idx, tape, halt, closed = ext.act_scan_forward(
        r.detach().double().cpu().numpy(), h.detach().double().cpu().numpy(),
        m.cpu().numpy().astype("uint8"), float(eps), bool(carry))
    dev, sd = x.device, _scan_dtype(x.dtype)
    w = w.astype(np.float32) if sd == torch.float32 else w
    S = _n_slots_opened(torch.from_numpy(idx))
    # one pass over results in C++ (fp16/bf16 results are poured with fp32 accumulation)
    slots = ext.act_pour_forward(_np(x, sd), w, idx, S, torch.get_num_threads())
    slots = torch.from_numpy(slots).to(dev, x.dtype)
    w, idx = torch.from_numpy(w).to(dev), torch.from_numpy(idx).to(dev)
    return (slots, w, idx, torch.from_numpy(tape).to(dev),
            torch.from_numpy(halt).to(dev, x.dtype), torch.from_numpy(closed).to(dev))


def _block_d(D: int) -> int:
    import triton

    return min(1024, max(16, triton.next_power_of_2(max(D, 1))))


def _fwd_triton(x, r, h, m, eps, carry):
    import triton

    from craft_kernels import _act_triton as K

    B, N, D = x.shape
    sd = _scan_dtype(x.dtype)
    dev = x.device
    slots = x.new_zeros(B, N + 1, D)  # at most N slots open (p < 1); sliced to S below
    w = torch.zeros(B, N, 2, dtype=sd, device=dev)
    idx = torch.full((B, N, 2), -1, dtype=torch.int64, device=dev)
    tape = torch.zeros(B, N, dtype=torch.uint8, device=dev)
    halt = torch.zeros(B, dtype=torch.float64, device=dev)  # the scan runs in float64 (as in C++)
    closed = torch.zeros(B, dtype=torch.int64, device=dev)
    thr = torch.tensor(1 - eps, dtype=torch.float64, device=dev)
    m8 = m.view(torch.uint8)
    if B and N:
        bd = _block_d(D)
        K.act_fwd[(B, triton.cdiv(max(D, 1), bd))](
            x, r, h, m8, thr, slots, w, idx, tape, halt, closed, N, D, *x.stride(), *r.stride(), *h.stride(),
            *m8.stride(), slots.stride(0), slots.stride(1),
            CARRY=int(carry), ACC=_tl_dtype(sd), BLOCK_D=bd)
    S = _n_slots_opened(idx)
    return slots[:, :S].contiguous(), w, idx, tape, halt.to(x.dtype), closed


def _tl_dtype(dt: torch.dtype):
    import triton.language as tl

    return tl.float64 if dt == torch.float64 else tl.float32


@torch.library.custom_op("craft::act_fwd", mutates_args=())
def _act_fwd(results: torch.Tensor, return_probs: torch.Tensor, halting_probs: torch.Tensor, mask: torch.Tensor,
             eps: float, carry: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                               torch.Tensor, torch.Tensor]:
    """-> slots (B,S,D), slot_fill (B,S), w (B,N,2) piece weights (fp32; fp64 for fp64 results),
    idx (B,N,2) int64 piece slots (-1: none), tape (B,N) uint8 branch decisions, halting (B,), n_slots (B,) int64."""
    fwd = _fwd_triton if use_triton(results) else _fwd_torch
    slots, w, idx, tape, halt, closed = fwd(results, return_probs, halting_probs, mask, eps, carry)
    return slots, _fill(w, idx, slots.shape[1]).to(results.dtype), w, idx, tape, halt, closed


@_act_fwd.register_fake
def _(results, return_probs, halting_probs, mask, eps, carry):
    B, N, D = results.shape
    S = torch.library.get_ctx().new_dynamic_size()
    return (results.new_empty(B, S, D), results.new_empty(B, S),
            results.new_empty(B, N, 2, dtype=_scan_dtype(results.dtype)),
            results.new_empty(B, N, 2, dtype=torch.int64), results.new_empty(B, N, dtype=torch.uint8),
            results.new_empty(B), results.new_empty(B, dtype=torch.int64))


def _bwd_torch(gslots, gw, ghalt, x, w, idx, tape, carry):
    sd = w.dtype
    ext = _dispatch.ext()
    gx, gdot = ext.act_pour_backward(_np(gslots, sd), _np(x, sd), _np(w, sd), _np(idx, torch.int64),
                                     torch.get_num_threads())
    gw = gw.to(sd) + torch.from_numpy(gdot).to(gw.device)
    gr, gh = ext.act_scan_backward(
        tape.cpu().numpy(), gw.detach().double().cpu().numpy(), ghalt.detach().double().cpu().numpy(), bool(carry))
    return torch.from_numpy(gx).to(x.device, x.dtype), torch.from_numpy(gr).to(x.device), torch.from_numpy(gh).to(x.device)


def _bwd_triton(gslots, gw, ghalt, x, w, idx, tape, carry):
    import triton

    from craft_kernels import _act_triton as K

    B, N, D = x.shape
    sd = _scan_dtype(x.dtype)
    bd = _block_d(D)
    nb = triton.cdiv(max(D, 1), bd)
    gx = torch.empty(B, N, D, dtype=x.dtype, device=x.device)
    part = torch.zeros(B, N, 2, nb, dtype=sd, device=x.device)
    if B and N:
        K.act_pour_bwd[(B * N, nb)](gslots, x, w, idx, gx, part, N, D, nb, *gslots.stride(), *x.stride(),
                                    gx.stride(0), gx.stride(1), ACC=_tl_dtype(sd), BLOCK_D=bd)
    gw = (gw.to(sd) + part.sum(-1).to(sd)).contiguous()
    gr = torch.empty(B, N, dtype=sd, device=x.device)
    gh = torch.empty(B, N, dtype=sd, device=x.device)
    if B and N:
        K.act_scan_bwd[(B,)](tape, gw, ghalt.to(sd).contiguous(), gr, gh, N, CARRY=int(carry))
    return gx, gr, gh


@torch.library.custom_op("craft::act_bwd", mutates_args=())
def _act_bwd(gslots: torch.Tensor, gw: torch.Tensor, ghalt: torch.Tensor, results: torch.Tensor, w: torch.Tensor,
             idx: torch.Tensor, tape: torch.Tensor, carry: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (slots (B,S,D), piece weights w (B,N,2), halting (B,)) -> (results (B,N,D) contiguous,
    return_probs (B,N), halting_probs (B,N)); the last two in fp32 (fp64 for fp64 results)."""
    bwd = _bwd_triton if use_triton(results) else _bwd_torch
    gx, gr, gh = bwd(gslots, gw, ghalt, results, w, idx, tape, carry)
    sd = _scan_dtype(results.dtype)  # probabilities' gradients stay in fp32 (fp64) even for fp16/bf16 results
    return gx, gr.to(sd), gh.to(sd)


@_act_bwd.register_fake
def _(gslots, gw, ghalt, results, w, idx, tape, carry):
    B, N, _ = results.shape
    sd = _scan_dtype(results.dtype)
    return results.new_empty(results.shape), results.new_empty(B, N, dtype=sd), results.new_empty(B, N, dtype=sd)


def _setup(ctx, inputs, output):
    results, return_probs, halting_probs, _mask, _eps, carry = inputs
    _slots, _fill_, w, idx, tape, _halt, _closed = output
    ctx.save_for_backward(results, w, idx, tape)
    ctx.carry = carry
    ctx.dtypes = (return_probs.dtype, halting_probs.dtype)


def _backward(ctx, gslots, gfill, gw, _gidx, _gtape, ghalt, _gclosed):
    results, w, idx, tape = ctx.saved_tensors
    B, N, D = results.shape
    if gslots is None:
        gslots = results.new_zeros(B, gfill.shape[1] if gfill is not None else 0, D)
    S = gslots.shape[1]
    gw = torch.zeros_like(w) if gw is None else gw
    if gfill is not None:  # slot_fill[s] = sum of the pieces poured into s
        gf = torch.cat([gfill, gfill.new_zeros(B, 1)], 1)
        gw = gw + gf.to(w.dtype).gather(1, torch.where(idx < 0, S, idx).reshape(B, 2 * N)).reshape(B, N, 2)
    ghalt = results.new_zeros(B) if ghalt is None else ghalt
    gx, gr, gh = _act_bwd(gslots.contiguous(), gw.contiguous(), ghalt.contiguous(), results, w, idx, tape, ctx.carry)
    return gx, gr.to(ctx.dtypes[0]), gh.to(ctx.dtypes[1]), None, None, None


_act_fwd.register_autograd(_backward, setup_context=_setup)


def act_accumulate(results: torch.Tensor, return_probs: torch.Tensor, halting_probs: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, eps: float = 1e-6, mode: str = "clamp") -> ACTOutput:
    """Pour ``results (B, N, D)`` (fp16/bf16/fp32/fp64) into slots by ``return_probs (B, N)`` in (0, 1),
    with optional ``halting_probs (B, N)`` in [0, 1] and ``mask (B, N)`` bool. See the module docstring
    for the rule and :class:`ACTOutput` for the shapes. Differentiable in results, return_probs and
    halting_probs."""
    _check(results, return_probs, halting_probs, mask, eps, mode)
    if not _dispatch.use_cpp() and not use_triton(results):
        return act_accumulate_reference(results, return_probs, halting_probs, mask, eps, mode)
    B, N, _ = results.shape
    h = halting_probs if halting_probs is not None else torch.zeros_like(return_probs)
    m = mask if mask is not None else torch.ones(B, N, dtype=torch.bool, device=results.device)
    slots, fill, w, idx, _tape, halting, closed = _act_fwd(results, return_probs, h, m, float(eps), mode == "carry")
    return ACTOutput(slots, fill, closed, w.sum(-1).to(results.dtype), idx[..., 0], halting >= 1 - eps, halting)


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
