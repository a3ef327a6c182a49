import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from craft_kernels import act_accumulate
from craft_kernels.act import act_accumulate_reference
import craft_kernels as ck


def _inputs(seed, B, N, D, masked, halting, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(B, N, generator=g, dtype=dtype) * 0.98 + 0.01
    h = torch.rand(B, N, generator=g, dtype=dtype) * 0.6 if halting else None
    m = torch.rand(B, N, generator=g) > 0.25 if masked else None
    x = torch.randn(B, N, D, generator=g, dtype=dtype)
    return x, r, h, m


def _outputs(o):
    return o.slots, o.slot_fill, o.clamped_probs, o.halting


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 4), st.integers(0, 12), st.integers(1, 5), st.booleans(),
       st.booleans(), st.sampled_from(["clamp", "carry"]), st.sampled_from([1e-6, 1e-3, 0.05]))
def test_matches_sequential_reference_values_and_grads(seed, B, N, D, masked, halting, mode, eps):
    x, r, h, m = _inputs(seed, B, N, D, masked, halting)
    leaves = [t.clone().requires_grad_() for t in (x, r) + ((h,) if h is not None else ())]
    args = lambda ls: (ls[0], ls[1], ls[2] if h is not None else None, m)  # noqa: E731
    with ck.use_native("cpp"):
        a = act_accumulate(*args(leaves), eps=eps, mode=mode)
    b = act_accumulate_reference(*args(leaves), eps=eps, mode=mode)
    for f in a._fields:
        ta, tb = getattr(a, f), getattr(b, f)
        assert ta.shape == tb.shape, f
        torch.testing.assert_close(ta, tb, rtol=1e-12, atol=1e-12, msg=f)
    if B and N and bool(a.slot_index.ge(0).any()):
        wts = [torch.randn(t.shape, dtype=torch.float64) for t in _outputs(a)]
        loss = lambda o: sum((t * w).sum() for t, w in zip(_outputs(o), wts))  # noqa: E731
        ga = torch.autograd.grad(loss(a), leaves, allow_unused=True)
        gb = torch.autograd.grad(loss(b), leaves, allow_unused=True)
        for p, q in zip(ga, gb):
            torch.testing.assert_close(p if p is not None else torch.zeros_like(q), q if q is not None else torch.zeros_like(p),
                                       rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["clamp", "carry"])
def test_gradcheck_float64(mode):
    x, r, h, m = _inputs(3, 2, 11, 3, True, True)
    f = lambda x_, r_, h_: _outputs(act_accumulate(x_, r_, h_, m, mode=mode))  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(t.requires_grad_() for t in (x, r, h)))


@pytest.mark.parametrize("mode", ["clamp", "carry"])
def test_invariants(mode):
    eps = 1e-6
    x, r, h, m = _inputs(7, 6, 200, 4, True, True)
    o = act_accumulate(x, r, h, m, eps=eps, mode=mode)
    for b in range(6):
        k = int(o.n_slots[b])
        assert torch.all(o.slot_fill[b, :k] >= 1 - eps) and torch.all(o.slot_fill[b, :k] <= 1 + 1e-12)
        torch.testing.assert_close(o.clamped_probs[b].sum(), o.slot_fill[b].sum())
        assert torch.all(o.slot_index[b][~m[b]] == -1) and torch.all(o.clamped_probs[b][~m[b]] == 0)
        idx = o.slot_index[b][m[b]]
        assert torch.all(idx[1:] >= idx[:-1])
    # once halted, every later step returns nothing
    x, r, h, _ = _inputs(9, 4, 60, 2, False, True)
    o = act_accumulate(x, r, torch.full_like(h, 0.45), mode=mode)
    assert bool(o.halted.all())
    for b in range(4):
        closed = int(o.n_slots[b])
        assert closed >= 3 and torch.all(o.slot_fill[b, 3:] == 0) if mode == "clamp" else closed >= 3
    if mode == "clamp":
        assert torch.all(o.slot_index[:, -5:] == 3) and torch.all(o.clamped_probs[:, -5:] == 0)


def test_clamp_example_by_hand():
    x = torch.tensor([[[1.0], [10.0], [100.0], [1000.0]]], dtype=torch.float64)
    r = torch.tensor([[0.6, 0.6, 0.5, 0.7]], dtype=torch.float64)
    o = act_accumulate(x, r, mode="clamp")
    # slot 0: 0.6*1 + 0.4*10 (clamped); slot 1: 0.5*100 + 0.5*1000 (0.7 clamped to the remaining 0.5)
    assert o.clamped_probs[0].tolist() == pytest.approx([0.6, 0.4, 0.5, 0.5])
    assert o.slots[0, :, 0].tolist() == pytest.approx([0.6 + 4.0, 50.0 + 500.0])
    assert o.n_slots.tolist() == [2]
    c = act_accumulate(x, r, mode="carry")
    # carry: 0.6 | 0.4 closes slot 0, 0.2 spills into slot 1 with 0.5 and 0.3 of the last; 0.4 into slot 2
    assert c.slot_fill[0].tolist() == pytest.approx([1.0, 1.0, 0.4])
    assert c.slots[0, :, 0].tolist() == pytest.approx([0.6 + 4.0, 2.0 + 50.0 + 300.0, 400.0])
    assert c.clamped_probs[0].tolist() == pytest.approx([0.6, 0.6, 0.5, 0.7])


def test_empty_and_float32():
    o = act_accumulate(torch.zeros(0, 5, 3), torch.full((0, 5), 0.5))
    assert o.slots.shape == (0, 0, 3) and o.n_slots.shape == (0,)
    x, r, _, _ = _inputs(1, 3, 40, 8, False, False, dtype=torch.float32)
    a = act_accumulate(x, r)
    b = act_accumulate_reference(x.double(), r.double())
    torch.testing.assert_close(a.slots.double(), b.slots, rtol=1e-5, atol=1e-5)


def test_python_impl_is_the_reference():
    x, r, h, m = _inputs(2, 2, 10, 3, True, True)
    with ck.use_native("python"):
        a = act_accumulate(x, r, h, m)
    b = act_accumulate_reference(x, r, h, m)
    torch.testing.assert_close(a.slots, b.slots)


@pytest.mark.parametrize("kw, match", [
    (dict(results=torch.zeros(2, 3)), r"results: expected a \(B, N, D\)"),
    (dict(return_probs=torch.full((2, 4), 0.5)), r"return_probs: expected shape \(2, 3\)"),
    (dict(return_probs=torch.full((2, 3), 1.0)), r"return_probs: every unmasked value must lie in \(0, 1\)"),
    (dict(halting_probs=torch.full((2, 3), 1.5)), r"halting_probs: every unmasked value must lie in \[0, 1\]"),
    (dict(mask=torch.ones(2, 3)), "mask: expected a bool tensor"),
    (dict(mode="fire"), "mode: expected 'clamp' or 'carry'"),
    (dict(eps=1.0), "eps: expected"),
    (dict(eps=0.0), "eps: expected"),
])
def test_bad_inputs(kw, match):
    args = dict(results=torch.zeros(2, 3, 4), return_probs=torch.full((2, 3), 0.5))
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        act_accumulate(**args)


def test_non_contiguous_inputs():
    x, r, h, m = _inputs(4, 6, 30, 10, True, True)
    xt, rt, ht, mt = x.transpose(0, 1).contiguous().transpose(0, 1)[::2, :, ::3], r[::2], h.t().contiguous().t()[::2], m[::2]
    a = act_accumulate(xt, rt, ht, mt, mode="carry")
    b = act_accumulate_reference(xt.contiguous(), rt.contiguous(), ht.contiguous(), mt, mode="carry")
    for f in a._fields:
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=1e-12, atol=1e-12, msg=f)


def test_custom_op_registration():
    x, r, h, m = _inputs(6, 3, 9, 4, True, True)
    # schema, autograd registration and the fake kernel; opcheck's aot_dispatch_dynamic check cannot
    # return an unbacked size (S) as a graph output, which test_compiles_fullgraph covers instead
    torch.library.opcheck(torch.ops.craft.act_fwd.default, (x.requires_grad_(), r.requires_grad_(), h, m, 1e-6, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("mode", ["clamp", "carry"])
def test_compiles_fullgraph(mode):
    def f(x, r, h, m):
        o = act_accumulate(x, r, h, m, mode=mode)
        return o.slots.sum(1) * 2, o.slot_fill.sum(-1), o.clamped_probs, o.halting, o.n_slots

    x, r, h, m = _inputs(8, 4, 30, 8, True, True)
    x.requires_grad_(), r.requires_grad_(), h.requires_grad_()
    torch._dynamo.reset()
    a = torch.compile(f, fullgraph=True)(x, r, h, m)
    b = f(x, r, h, m)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q)
    loss = lambda o: o[0].sum() + (o[1] * 3).sum() + (o[2] ** 2).sum() + o[3].sum()  # noqa: E731
    for p, q in zip(torch.autograd.grad(loss(a), (x, r, h)), torch.autograd.grad(loss(b), (x, r, h))):
        torch.testing.assert_close(p, q)


def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CRAFT_KERNELS_IMPL="triton")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/interpreted/check_act_triton.py"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout


def test_forcing_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("CRAFT_KERNELS_IMPL", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        act_accumulate(torch.randn(1, 2, 3), torch.full((1, 2), 0.5))


def test_bfloat16_results_with_float32_probs():
    # bf16 storage: slots are one bf16 rounding (2^-8 relative) of a float64-exact pour
    x, r, h, m = _inputs(12, 3, 25, 16, True, True)
    xb = x.to(torch.bfloat16).requires_grad_()
    rf, hf = r.float().requires_grad_(), h.float()
    rd = rf.detach().double().requires_grad_()
    o = act_accumulate(xb, rf, hf, m)
    ref = act_accumulate_reference(xb.detach().double(), rd, hf.double(), m)
    assert o.slots.dtype == torch.bfloat16
    torch.testing.assert_close(o.slots.double(), ref.slots, rtol=8e-3, atol=1e-2)
    torch.testing.assert_close(o.clamped_probs.double(), ref.clamped_probs, rtol=2**-8, atol=2**-9)  # stored as bf16
    w = torch.randn(ref.slots.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gr = torch.autograd.grad((o.slots.double() * w).sum(), rf)[0]
    assert gr.dtype == torch.float32
    gref = torch.autograd.grad((ref.slots * w).sum(), rd)[0]
    # the slots' gradient arrives rounded to bf16, so each term w[s, d] * x[n, d] of d r[n] is off by at
    # most 2^-9 of its size: bound the error by that sum over every slot and dimension (a worst case;
    # the largest error/bound seen over 300 draws of w was 0.40)
    bound = 2**-9 * torch.einsum("bsd,bnd->bn", w.abs(), xb.detach().double().abs())
    err = (gr.double() - gref).abs()
    assert (err <= bound + 1e-7).all(), f"d return_probs off by {float((err / (bound + 1e-7)).max()):.2f}x the bound"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["clamp", "carry"])
def test_cpu_pour_matches_reference(threads, mode):
    """The C++ pour (forward and backward), on one thread and with rows split over two (B*N*D is
    above the size at which the pour splits rows)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_pour_against_reference(mode)
    finally:
        torch.set_num_threads(old)


def _check_pour_against_reference(mode):
    x, r, h, m = _inputs(21, 4, 100, 400, True, True)
    x[~m] = float("nan")  # masked steps must never touch the slots, whatever they hold
    leaves = [t.clone().requires_grad_() for t in (x, r, h)]
    a = act_accumulate(*leaves, m, mode=mode)
    b = act_accumulate_reference(*leaves, m, mode=mode)
    for f in a._fields:
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=1e-12, atol=1e-12, msg=f)
    wts = [torch.randn(t.shape, dtype=torch.float64) for t in _outputs(a)]
    loss = lambda o: sum((t * w).sum() for t, w in zip(_outputs(o), wts))  # noqa: E731
    ga = torch.autograd.grad(loss(a), leaves)
    gb = torch.autograd.grad(loss(b), leaves)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_pour_rejects_bad_slot_indices_and_shapes():
    """The C++ pour checks every piece's slot before any thread reads with it, and the shapes."""
    from craft_kernels.native import _dispatch

    ext = _dispatch.ext()
    x, w = np.zeros((1, 2, 3)), np.ones((1, 2, 2))
    for bad in (2, -2):  # past the S = 2 slots, below the -1 of "no piece"
        idx = np.array([[[0, -1], [bad, -1]]], dtype=np.int64)
        with pytest.raises(ValueError, match="slot index"):
            ext.act_pour_forward(x, w, idx, 2, 1)
        with pytest.raises(ValueError, match="slot index"):
            ext.act_pour_backward(np.zeros((1, 2, 3)), x, w, idx, 1)
    ok = np.array([[[0, -1], [1, -1]]], dtype=np.int64)
    with pytest.raises(ValueError, match="expected"):
        ext.act_pour_forward(x, w[:, :1], ok, 2, 1)
    with pytest.raises(ValueError, match="expected"):
        ext.act_pour_backward(np.zeros((1, 2, 4)), x, w, ok, 1)
    assert np.array_equal(ext.act_pour_forward(x + 1, w, ok, 2, 1), np.ones((1, 2, 3)))


def test_tape_bits_have_one_meaning():
    """The Triton kernels take the tape bits from act.TAPE_BITS; the C++ scan must use the same."""
    from craft_kernels.act import TAPE_BITS
    from craft_kernels.native import _dispatch

    assert _dispatch.ext().act_tape_bits() == TAPE_BITS
    assert sorted(TAPE_BITS.values()) == [1 << k for k in range(len(TAPE_BITS))]


@pytest.mark.parametrize("mode", ["clamp", "carry"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_result_stays_in_its_slot(mode, bad):
    """0 * inf in the matmul pour spread NaN into every slot of the row; the definition keeps it in
    the slot its step pours into."""
    x = torch.ones(1, 4, 3)
    x[0, 0, 1] = bad
    r = torch.tensor([[0.6, 0.6, 0.5, 0.5]])
    o = act_accumulate(x, r, mode=mode)
    ref = act_accumulate_reference(x, r, mode=mode)
    torch.testing.assert_close(o.slots, ref.slots, equal_nan=True)
    assert torch.isfinite(o.slots[0, 1:]).all() and torch.isfinite(o.slots[0, :, [0, 2]]).all()
