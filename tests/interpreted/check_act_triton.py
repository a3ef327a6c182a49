"""Run only in a subprocess with TRITON_INTERPRET=1 CRAFT_KERNELS_IMPL=triton (see tests/test_act.py):
the Triton kernels of act_accumulate against the plain sequential reference."""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from craft_kernels import act_accumulate
from craft_kernels.act import act_accumulate_reference
from craft_kernels._backend import kernels_impl

assert os.environ.get("TRITON_INTERPRET") == "1" and kernels_impl("cpu") == "triton"


def _inputs(seed, B, N, D, dtype, masked=True):
    g = torch.Generator().manual_seed(seed)
    r = (torch.rand(B, N, generator=g, dtype=torch.float64) * 0.98 + 0.01).to(dtype)
    h = (torch.rand(B, N, generator=g, dtype=torch.float64) * 0.6).to(dtype)
    m = torch.rand(B, N, generator=g) > 0.25 if masked else None
    x = torch.randn(B, N, D, generator=g, dtype=torch.float64).to(dtype)
    return x, r, h, m


def _diff(x, r, h, m, mode, tol, eps=1e-6):
    """Values and gradients of our op (x's dtype) vs the reference in float64 on the same inputs."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, r, h)]
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, r, h)]
    a = act_accumulate(*leaves, m, eps=eps, mode=mode)
    b = act_accumulate_reference(*ref_leaves, m, eps=eps, mode=mode)
    rtol, atol = tol
    for f in a._fields:
        ta, tb = getattr(a, f), getattr(b, f)
        assert ta.shape == tb.shape, f
        if ta.is_floating_point():
            torch.testing.assert_close(ta.double(), tb, rtol=rtol, atol=atol, msg=f)
        else:
            assert torch.equal(ta, tb), f
    outs = lambda o: (o.slots, o.slot_fill, o.clamped_probs, o.halting)  # noqa: E731
    wts = [torch.randn(t.shape, dtype=torch.float64) for t in outs(b)]
    if not (a.slot_index >= 0).any():
        return  # nothing poured: no graph to differentiate
    ga = torch.autograd.grad(sum((t.double() * w).sum() for t, w in zip(outs(a), wts)), leaves, allow_unused=True)
    gb = torch.autograd.grad(sum((t * w).sum() for t, w in zip(outs(b), wts)), ref_leaves, allow_unused=True)
    # d return_probs / d halting_probs are dot products over D of values rounded to x's dtype:
    # their error grows like sqrt(D) times one rounding
    gatol = atol * max(10.0, 2 * x.shape[-1] ** 0.5)
    for p, q, leaf in zip(ga, gb, leaves):
        p = torch.zeros_like(leaf) if p is None else p
        q = torch.zeros_like(leaf, dtype=torch.float64) if q is None else q
        torch.testing.assert_close(p.double(), q, rtol=rtol, atol=gatol)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 3), st.integers(0, 9), st.integers(1, 6),
       st.sampled_from(["clamp", "carry"]), st.sampled_from([1e-6, 1e-3, 0.05]))
def test_float64_matches_reference_exactly(seed, B, N, D, mode, eps):
    x, r, h, m = _inputs(seed, B, N, D, torch.float64)
    _diff(x, r, h, m, mode, (1e-12, 1e-12), eps=eps)


# fp32: the scan runs in fp64 (as in C++), results are poured with fp32 accumulation (~1e-7 relative per add,
# N <= 20 adds); fp16: slots are stored in fp16 (2^-11 relative) after fp32 accumulation.
@pytest.mark.parametrize("dtype, tol", [(torch.float32, (2e-5, 2e-6)), (torch.float16, (2e-3, 2e-3))])
@pytest.mark.parametrize("mode", ["clamp", "carry"])
@pytest.mark.parametrize("B, N, D", [(1, 1, 1), (3, 20, 33), (2, 6, 1500)])
def test_low_precision_vs_float64(dtype, tol, mode, B, N, D):
    x, r, h, m = _inputs(B * N + D, B, N, D, dtype)
    _diff(x, r, h, m, mode, tol)


@pytest.mark.parametrize("mode", ["clamp", "carry"])
def test_strided_inputs_without_copy(mode):
    x, r, h, m = _inputs(5, 6, 12, 40, torch.float32)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)[::2, :, ::2]  # every stride non-unit
    _diff(xt, r.t().contiguous().t()[::2], h[::2], m[::2], mode, (2e-5, 2e-6))


def test_empty_rows_and_no_mask():
    o = act_accumulate(torch.zeros(0, 4, 3), torch.full((0, 4), 0.5))
    assert o.slots.shape == (0, 0, 3) and o.slot_index.shape == (0, 4)
    x, r, h, _ = _inputs(2, 2, 7, 5, torch.float32, masked=False)
    _diff(x, r, h, None, "clamp", (2e-5, 2e-6))


@pytest.mark.parametrize("mode", ["clamp", "carry"])
def test_threshold_is_exact_in_float32(mode):
    """fp32 steps summing to fp32(1 - eps) (17 ulps below 1, under the true 1 - 1e-6) keep the slot
    open by the definition; a scan in fp32 against an fp32 threshold closed it."""
    r = torch.tensor([[0.5, 0.5 - 17 * 2.0**-24, 0.3, 0.25]], dtype=torch.float32)
    assert float(r[0, :2].double().sum()) == float(torch.tensor(1 - 1e-6, dtype=torch.float32))
    x = torch.randn(1, 4, 5)
    h = torch.full((1, 4), 0.2)
    _diff(x, r, h, None, mode, (2e-6, 1e-7), eps=1e-6)


@pytest.mark.parametrize("mode", ["clamp", "carry"])
def test_triton_and_cpp_paths_agree(mode, monkeypatch, dtype=torch.float32):
    """Same decisions (slot of every step, closed slots) and values within fp32 rounding."""
    x, r, h, m = _inputs(7, 3, 24, 8, dtype)
    a = act_accumulate(x, r, h, m, mode=mode)
    monkeypatch.setenv("CRAFT_KERNELS_IMPL", "torch")  # the C++ scan
    b = act_accumulate(x, r, h, m, mode=mode)
    assert torch.equal(a.slot_index, b.slot_index) and torch.equal(a.n_slots, b.n_slots)
    assert torch.equal(a.halted, b.halted)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    for f in ("slots", "slot_fill", "clamped_probs", "halting"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), **tol, msg=f)
