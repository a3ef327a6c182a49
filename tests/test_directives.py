"""Return-probability, slot-closing and halting arithmetic of transform directives
(craft/directives/directive.py) and the decoder loop that produces them."""
import numpy as np
import pytest
import torch

from craft.directives import TransformDirective, directive_reference, run_directive
from craft.directives.decoder import DirectiveDecoder
from craft_kernels import act_accumulate

EPS = 1e-6


def _random_probs(B, n, seed, dtype=torch.float32):
    """Raw probabilities as the decoder bounds them, with a mix of small and near-1 values and
    halting probabilities from tiny to large, so rows close slots and halt at every step count."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(1e-3, 1 - 1e-3, (B, n))
    near_one = rng.random((B, n)) < 0.3
    r[near_one] = 1 - 10 ** rng.uniform(-3, -1, near_one.sum())
    h = rng.uniform(0, 1, (B, n)) ** rng.uniform(0.3, 4, (B, 1))
    return torch.tensor(r, dtype=dtype), torch.tensor(h, dtype=dtype)


@pytest.mark.parametrize("mode", ["clamp", "carry"])
def test_invariants_on_100k_rows(mode):
    r, h = _random_probs(100_000, 24, seed=1)
    out, state = run_directive(r, h, EPS, mode)
    p, active = out.p, out.active
    assert bool(state.halted.all())  # the last step finishes every row
    # strictly inside (0, 1) where active, 0 elsewhere
    assert bool(((p[active] > 0) & (p[active] < 1)).all()) and bool((p[~active] == 0).all())
    # no return probability after halting: once a row is inactive it stays inactive
    assert not bool((active[:, 1:] & ~active[:, :-1]).any())
    # count = sum of return probabilities, a whole number
    count = p.double().sum(1)
    assert torch.allclose(count, state.n_closed.double(), atol=1e-5)
    # every closed slot holds 1 within 1e-6 (carry: pieces split at closes, via act_accumulate's pouring)
    res = act_accumulate(torch.ones(*p.shape, 1, dtype=torch.float64), p.double().clamp_min(1e-300),
                         mask=active, mode=mode, eps=EPS)
    k = int(state.n_closed.max())
    closed = torch.arange(res.slot_fill.shape[1])[None] < state.n_closed[:, None]
    assert res.slot_fill.shape[1] >= k and bool(((res.slot_fill[closed] - 1).abs() <= 1e-6).all())
    assert torch.equal(res.n_slots, state.n_closed)
    # halting distribution: dh over closes sums to 1 for rows that halted by halting probability
    assert bool((out.dh.sum(1) <= 1 + 1e-6).all())
    assert bool((out.dh[~out.closes] == 0).all())


@pytest.mark.parametrize("mode", ["clamp", "carry"])
def test_step_matches_sequential_float64(mode):
    r, h = _random_probs(300, 16, seed=2, dtype=torch.float64)
    out, state = run_directive(r, h, EPS, mode)
    P, M, K, H = directive_reference(r, h, EPS, mode)
    assert torch.equal(out.active, M) and torch.equal(state.n_closed, K)
    torch.testing.assert_close(out.p, P, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.dh, H, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["clamp", "carry"])
def test_step_gradients_match_sequential_float64(mode):
    r, h = _random_probs(40, 12, seed=3, dtype=torch.float64)
    w = torch.randn(40, 12, dtype=torch.float64)
    u = torch.randn(40, 12, dtype=torch.float64)
    a, b = r.float().requires_grad_(), h.float().requires_grad_()  # the batched step in float32
    o = run_directive(a, b, EPS, mode)[0]
    ((o.p.double() * w).sum() + (o.dh.double() * u).sum()).backward()
    ar, br = r.clone().requires_grad_(), h.clone().requires_grad_()  # the scalar loop in float64
    P, _, _, H = directive_reference(ar, br, EPS, mode)
    ((P * w).sum() + (H * u).sum()).backward()
    grads = [(a.grad.double(), b.grad.double()), (ar.grad, br.grad)]
    (gr, gh), (gr_ref, gh_ref) = grads
    assert gr_ref.abs().sum() > 0 and gh_ref.abs().sum() > 0
    torch.testing.assert_close(gr, gr_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gh, gh_ref, atol=1e-5, rtol=1e-5)


def _decoder_inputs(B=6, N=5, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    cmd, ctx = torch.randn(B, D, generator=g), torch.randn(B, N, D, generator=g)
    cm = torch.rand(B, N, generator=g) > 0.3
    cm[:, 0] = True
    return cmd, ctx, cm


def _decoder(**kw):
    torch.manual_seed(0)
    dec = DirectiveDecoder(dim=32, n_layers=2, n_heads=4, **kw)
    with torch.no_grad():
        dec.halt_head.bias.fill_(0.0)  # halt within a few slots so rows leave at different steps
        dec.return_head.bias.fill_(1.0)
    return dec


def test_decoder_batched_loop_gradients_match_per_row_float64():
    """Batched generation (growing cache, halted rows compacted away every 2 steps) against each row
    alone in float64, recomputing the prefix every step."""
    dec = _decoder()
    cmd, ctx, cm = _decoder_inputs()
    d = dec(cmd, ctx, cm, max_instructions=14, compact_every=2)
    n_used = d.n_instructions
    assert len(set(n_used.tolist())) > 1, "rows should halt at different steps"
    w = torch.randn(d.instructions.shape, generator=torch.Generator().manual_seed(1))
    ((d.instructions * w).sum() + (d.return_probs * torch.arange(d.return_probs.shape[1])).sum()).backward()
    g_batched = {n: p.grad.clone() for n, p in dec.named_parameters()}
    ref = _decoder().double()
    for b in range(cmd.shape[0]):
        db = ref(cmd[b:b + 1].double(), ctx[b:b + 1].double(), cm[b:b + 1], max_instructions=14, cache="none")
        k = db.instructions.shape[1]
        assert torch.equal(db.mask[0], d.mask[b, :k]) and not bool(d.mask[b, k:].any())
        torch.testing.assert_close(db.return_probs[0].float(), d.return_probs[b, :k], atol=1e-5, rtol=1e-4)
        ((db.instructions[0] * w[b, :k].double()).sum() + (db.return_probs[0] * torch.arange(k)).sum()).backward()
    for n, p in ref.named_parameters():
        torch.testing.assert_close(g_batched[n].double(), p.grad, atol=2e-4, rtol=2e-3, msg=n)


def test_decoder_cache_paths_agree_and_rows_halt_whole():
    dec = _decoder()
    cmd, ctx, cm = _decoder_inputs(B=8)
    with torch.no_grad():
        outs = {c: dec(cmd, ctx, cm, max_instructions=12, cache=c) for c in ("static", "growing", "none")}
    base = outs["static"]
    for c in ("growing", "none"):
        assert torch.equal(outs[c].mask, base.mask)
        torch.testing.assert_close(outs[c].instructions, base.instructions, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base.output_count(), base.n_outputs.float(), atol=1e-5, rtol=0)


def test_decoder_halting_bias_starts_negative_and_inputs_checked():
    dec = DirectiveDecoder(dim=32, n_layers=1, n_heads=4)
    assert float(dec.halt_head.bias.detach()) == -3.0
    cmd, ctx, cm = _decoder_inputs()
    with pytest.raises(ValueError, match="context_mask"):
        dec(cmd, ctx, cm.float())
    with pytest.raises(ValueError, match="command"):
        dec(cmd[:, :8], ctx)
    with pytest.raises(ValueError, match="max_instructions"):
        dec(cmd, ctx, max_instructions=500)
    with pytest.raises(ValueError, match="return_probs"):
        TransformDirective(torch.zeros(2, 3, 4), torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.bool))


def test_rows_halt_at_act_epsilon_with_the_remainder():
    """A close that brings the halting probability to >= 0.99 halts the row and adds the remainder,
    so the hard count equals the halting distribution's (no row parked at halt = 0.9998)."""
    r = torch.full((2, 8), 0.6)
    h = torch.tensor([[0.995] * 8, [0.98] * 8])
    out, state = run_directive(r, h)
    assert state.n_closed.tolist() == [1, 2]
    torch.testing.assert_close(out.dh.sum(1), torch.ones(2))
    assert out.active[0].tolist() == [True, True] + [False] * 6
