"""The decoder's static-shape generation (``compile=True``) against the eager generation.

The compiled path keeps every row in the batch (halted rows masked, not compacted), attends over the
whole static cache with a mask, and keeps that cache between calls. These tests run its loop with
the compiler disabled (the same Python code, eagerly: a real compile costs tens of seconds);
``benchmarks/test_directives.py`` compiles it with Inductor and checks the same equality there."""
import pytest
import torch

from craft.directives.decoder import DirectiveDecoder
from craft.directives.engine import TransformEngine

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: a second spinning thread only adds contention

FIELDS = ("mask", "closes", "slot_index", "n_outputs")


def _inputs(B, N, D, seed):
    g = torch.Generator().manual_seed(seed)
    cmd, ctx = torch.randn(B, D, generator=g), torch.randn(B, N, D, generator=g)
    cm = torch.rand(B, N, generator=g) > 0.3
    cm[:, 0] = True
    return cmd, ctx, cm


def _assert_same(a, b):
    assert a.instructions.shape == b.instructions.shape
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    torch.testing.assert_close(b.instructions, a.instructions, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.return_probs, a.return_probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.halting_probs, a.halting_probs, atol=1e-6, rtol=1e-5)
    if a.results is not None:
        torch.testing.assert_close(b.results, a.results, atol=1e-5, rtol=1e-5)


@pytest.fixture
def no_compiler():
    with torch._dynamo.config.patch(disable=True), torch.no_grad():
        yield


@pytest.mark.parametrize("cache", ["static", "none"])
def test_static_shape_generation_equals_eager_with_rows_halting_at_different_steps(no_compiler, cache):
    torch.manual_seed(0)
    dec = DirectiveDecoder(dim=32, n_layers=2, n_heads=4)
    with torch.no_grad():
        dec.halt_head.bias.fill_(0.0)  # rows halt within a few slots, at different steps
        dec.return_head.bias.fill_(1.0)
    for seed, I, every in ((1, 14, 2), (2, 14, 8), (3, 14, 2)):  # same shapes twice: the kept cache's old slots
        cmd, ctx, cm = _inputs(12, 5, 32, seed)
        eager = dec(cmd, ctx, cm, max_instructions=I, compact_every=every)
        n_used = eager.n_instructions
        assert len(set(n_used.tolist())) > 2, "rows should halt at different steps"
        _assert_same(eager, dec(cmd, ctx, cm, max_instructions=I, compact_every=every, cache=cache, compile=True))
    # every row halted before the last step: both loops end at the same host check
    with torch.no_grad():
        dec.halt_head.bias.fill_(6.0)  # each row halts at its first close
    cmd, ctx, cm = _inputs(12, 5, 32, 4)
    eager = dec(cmd, ctx, cm, max_instructions=30, compact_every=2)
    assert eager.instructions.shape[1] < 30
    _assert_same(eager, dec(cmd, ctx, cm, max_instructions=30, compact_every=2, cache=cache, compile=True))


def test_static_shape_generation_equals_eager_with_engine_feedback_and_schedule(no_compiler):
    torch.manual_seed(0)
    D = 16
    eng = TransformEngine(D)
    dec = DirectiveDecoder(D, n_layers=1, n_heads=2, max_seq_len=32, feedback_dim=eng.feedback_dim)
    with torch.no_grad():
        dec.halt_head.bias.fill_(1.0)  # with the two-head engine's feedback: rows halt after 8-10 instructions
        dec.return_head.bias.fill_(0.0)
    cmd, ctx, cm = _inputs(8, 6, D, 5)
    eager = dec(cmd, ctx, cm, max_instructions=12, compact_every=2, engine=eng)
    assert len(set(eager.n_instructions.tolist())) > 1
    _assert_same(eager, dec(cmd, ctx, cm, max_instructions=12, compact_every=2, engine=eng, compile=True))
    g = torch.Generator().manual_seed(6)
    schedule = (torch.rand(8, 10, generator=g) * 0.9 + 0.05, torch.rand(8, 10, generator=g))
    eager = dec(cmd, ctx, cm, max_instructions=10, schedule=schedule, engine=eng)
    _assert_same(eager, dec(cmd, ctx, cm, max_instructions=10, schedule=schedule, engine=eng, compile=True))


def test_compiled_generation_refuses_autograd_and_the_growing_cache():
    dec = DirectiveDecoder(dim=16, n_layers=1, n_heads=2)
    cmd, ctx, cm = _inputs(2, 3, 16, 0)
    with pytest.raises(ValueError, match="no_grad"):
        dec(cmd, ctx, cm, max_instructions=4, compile=True)
    with torch.no_grad(), pytest.raises(ValueError, match="growing"):
        dec(cmd, ctx, cm, max_instructions=4, cache="growing", compile=True)
