"""ACT slot accumulation vs its baselines, forward + backward, in the same run."""
import pytest
import torch

from craft_kernels import act_accumulate
from craft_kernels.act import act_accumulate_reference


def act_loop_over_n(results, r, h, eps=1e-6):
    """The best plain-torch formulation without a custom scan: the recurrence batched over rows,
    a Python loop over N (clamp mode), autograd through it."""
    B, N, D = results.shape
    cum = results.new_zeros(B)
    halt = results.new_zeros(B)
    s = torch.zeros(B, dtype=torch.int64)
    ps, idx = [], []
    for n in range(N):
        p = r[:, n]
        p = torch.where(cum + p > 1 - eps, 1 - cum, p)
        p = torch.minimum(p, 1 - halt)
        ps.append(p), idx.append(s)
        cum = cum + p
        close = cum >= 1 - eps
        halt = torch.where(close, torch.clamp(halt + h[:, n], max=1.0), halt)
        s = s + close.long()
        cum = torch.where(close, torch.zeros_like(cum), cum)
    p = torch.stack(ps, 1)
    index = torch.stack(idx, 1)
    S = int(index.max()) + 1
    slots = results.new_zeros(B, S, D).scatter_add(1, index[..., None].expand(B, N, D), p[..., None] * results)
    return slots, halt


def _clamp_step(cum, halt, s, p, h, eps: float):
    """One step of the clamp-mode recurrence over a batch of rows (what a user would compile)."""
    p = torch.where(cum + p > 1 - eps, 1 - cum, p)
    p = torch.minimum(p, 1 - halt)
    cum = cum + p
    close = cum >= 1 - eps
    halt = torch.where(close, torch.clamp(halt + h, max=1.0), halt)
    return torch.where(close, torch.zeros_like(cum), cum), halt, s + close.long(), p


_compiled_clamp_step = torch.compile(_clamp_step, dynamic=False)


def act_loop_over_n_compiled(results, r, h, eps=1e-6):
    """:func:`act_loop_over_n` with its loop body compiled (``torch.compile`` of one step; compiling
    the whole unrolled loop over N = 1024 takes longer than any run), the final scatter eager."""
    B, N, D = results.shape
    cum, halt = results.new_zeros(B), results.new_zeros(B)
    s = torch.zeros(B, dtype=torch.int64)
    ps, idx = [], []
    for n in range(N):
        idx.append(s)
        cum, halt, s, p = _compiled_clamp_step(cum, halt, s, r[:, n], h[:, n], eps)
        ps.append(p)
    p, index = torch.stack(ps, 1), torch.stack(idx, 1)
    S = int(index.max()) + 1
    slots = results.new_zeros(B, S, D).scatter_add(1, index[..., None].expand(B, N, D), p[..., None] * results)
    return slots, halt


def act_carry_cumsum(results, r):
    """Carry mode without halting, fully vectorised: slot boundaries are where cumsum(r) crosses an
    integer (continuous integrate-and-fire); each step splits into at most two pieces."""
    B, N, D = results.shape
    c1 = torch.cumsum(r, 1)
    c0 = c1 - r
    s0 = torch.floor(c0.detach()).long()
    first = torch.minimum(c1, s0 + 1.0) - c0  # the part of r before the next integer
    rest = r - first
    S = int(torch.floor(c1.detach()[:, -1]).max()) + 2
    slots = results.new_zeros(B, S, D)
    slots = slots.scatter_add(1, s0[..., None].expand(B, N, D), first[..., None] * results)
    slots = slots.scatter_add(1, (s0 + 1)[..., None].expand(B, N, D), rest[..., None] * results)
    return slots


@pytest.mark.parametrize("B, N, D", [(64, 128, 256), (8, 1024, 512)])
@pytest.mark.parametrize("baseline", ["python_loop_reference", "torch_loop_over_n", "compiled_loop_over_n",
                                      "vectorised_cumsum_carry"])
def test_act_fwd_bwd(compare, B, N, D, baseline):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, D, generator=g, requires_grad=True)
    r = (torch.rand(B, N, generator=g) * 0.9 + 0.05).requires_grad_()
    h = (torch.rand(B, N, generator=g) * 0.2).requires_grad_() if baseline != "vectorised_cumsum_carry" else None
    mode = "carry" if baseline == "vectorised_cumsum_carry" else "clamp"

    def ours():
        o = act_accumulate(x, r, h, mode=mode)
        (o.slots.sum() + o.halting.sum()).backward()

    def base():
        if baseline == "python_loop_reference":
            o = act_accumulate_reference(x, r, h)
            (o.slots.sum() + o.halting.sum()).backward()
        elif baseline in ("torch_loop_over_n", "compiled_loop_over_n"):
            loop = act_loop_over_n if baseline == "torch_loop_over_n" else act_loop_over_n_compiled
            slots, halt = loop(x, r, h)
            (slots.sum() + halt.sum()).backward()
        else:
            act_carry_cumsum(x, r).sum().backward()

    reps = 1 if baseline == "python_loop_reference" else 3
    compare(ours, base, units=B * N, unit_name="steps", baseline_reps=reps, rounds=5, baseline_kind=baseline,
            mode=mode, shape=f"B={B},N={N},D={D}")
