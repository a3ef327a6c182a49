"""Transform directives: generation with the KV cache vs recomputing the prefix, and the halting
decoder's training step vs the fixed-N decoder's.

- Generation: ``DirectiveDecoder`` at batch 64 x 32 instructions, context of 8 items, no row halting
  early (halting bias -30: every row runs all 32 steps, the worst case for both), no autograd. Ours:
  the static KV cache (one block pass per instruction); baseline: ``cache="none"``, every step
  re-runs the blocks over context + command + all instructions so far. Headline: both compiled
  (``compile=True``: ours one static-shape step, the baseline its recomputing step with the
  sequence length dynamic); beside it both eager. The four are timed interleaved in one process
  (compilation and warm-up outside the timing). Same weights; the instructions are checked equal,
  and the compiled path is checked against the eager one again with rows halting at different steps.
- Training step (forward + backward + AdamW) on the ``counts`` task at batch 64: the halting model
  (ACT ponder cost, count loss, return/halting heads, step arithmetic) vs the fixed-N baseline
  (``variant="fixed"``: each output read out at its N-th instruction, no halting) over the *same number of
  instructions* per row (the halting model's halting is held off until the fixed model's count), so
  the ratio is the halting machinery's overhead. A second figure times the halting model as
  initialised (rows run to ``max_instructions``), which is what a fresh run pays per step.

1 torch thread (the machine is shared; small matmuls gain nothing from 2 spinning threads).
"""

import sys
from pathlib import Path

import pytest
import torch

from craft.directives.decoder import DirectiveDecoder
from craft.directives.tasks import CountsTask
from craft.directives.train import DirectiveModel, RunConfig

sys.path.insert(0, str(Path(__file__).parent))
from _harness import interleaved_many, run_info  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("dim,n_layers", [(64, 2), (128, 4)])
def test_generation_kv_cache_vs_recompute(benchmark, dim, n_layers):
    torch.manual_seed(0)
    B, N, steps = 64, 8, 32
    dec = DirectiveDecoder(dim, n_layers, n_heads=4, max_seq_len=N + steps, halt_bias=-30.0).eval()
    cmd, ctx = torch.randn(B, dim), torch.randn(B, N, dim)

    def gen(cache, compile):
        def run():
            with torch.no_grad():
                return dec(cmd, ctx, max_instructions=steps, cache=cache, compile=compile)
        return run

    fns = {"cache_compiled": gen("static", True), "recompute_compiled": gen("none", True),
           "cache_eager": gen("static", False), "recompute_eager": gen("none", False)}
    ref = fns["cache_eager"]()
    assert ref.instructions.shape == (B, steps, dim)
    for k, f in fns.items():  # compile and warm up outside the timing
        f()
        torch.testing.assert_close(f().instructions, ref.instructions, atol=1e-4, rtol=1e-4, msg=k)
    t = interleaved_many(fns, rounds=5)
    benchmark.pedantic(fns["cache_compiled"], rounds=1, iterations=1)
    with torch.no_grad():  # Inductor's step against the eager loop, rows halting at different steps
        dec.halt_head.bias.fill_(0.0)
        eager = dec(cmd, ctx, max_instructions=steps, compact_every=2)
        compiled = dec(cmd, ctx, max_instructions=steps, compact_every=2, compile=True)
    assert len(set(eager.n_instructions.tolist())) > 2
    assert torch.equal(compiled.mask, eager.mask) and torch.equal(compiled.closes, eager.closes)
    torch.testing.assert_close(compiled.instructions, eager.instructions, atol=1e-4, rtol=1e-4)
    info = benchmark.extra_info
    info.update(run_info(), batch=B, steps=steps, context=N, dim=dim, n_layers=n_layers, rounds=5, goal_speedup=10)
    for k, (med, lo, hi) in t.items():
        info[f"{k}_ms"] = [round(1e3 * med, 1), round(1e3 * lo, 1), round(1e3 * hi, 1)]  # median, min, max
    info["speedup_compiled"] = round(t["recompute_compiled"][0] / t["cache_compiled"][0], 2)
    info["speedup_eager"] = round(t["recompute_eager"][0] / t["cache_eager"][0], 2)
    print(f"\ngeneration d{dim} L{n_layers} (load {info['load_avg_1min']:.1f}): KV cache "
          f"{info['speedup_compiled']:.1f}x recomputing the prefix, both compiled "
          f"({info['cache_compiled_ms']} vs {info['recompute_compiled_ms']} ms, median [min, max]); "
          f"eager {info['speedup_eager']:.1f}x ({info['cache_eager_ms']} vs {info['recompute_eager_ms']} ms)")


def _batch_and_models():
    task = CountsTask()
    batch = task.sample(64, torch.Generator().manual_seed(0))
    models = {}
    for variant in ("act", "fixed"):
        torch.manual_seed(0)
        models[variant] = DirectiveModel(task, RunConfig(task="counts", variant=variant))
    return batch, models


def _step_fn(model, batch):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss, _ = model.losses(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def test_training_step_vs_fixed_n(compare):
    batch, models = _batch_and_models()
    act, fixed = models["act"], models["fixed"]
    I = act.task.fixed_steps * int(batch.count.max())
    # same instruction count per row: halting only by the schedule's count, as the fixed model
    schedule_r = torch.full((64, I), 0.5)
    t = torch.arange(I)
    schedule_h = (((t + 1) % 2 == 0) & ((t + 1) // 2 == batch.count[:, None])).float()
    act.max_instructions = I
    orig = act.decoder.forward

    def forward_same_count(*a, **k):  # keep the heads' cost (computed, then replaced) and the losses
        return orig(*a, **{**k, "schedule": (schedule_r, schedule_h)})

    act.decoder.forward = forward_same_count
    ratio = compare(_step_fn(act, batch), _step_fn(fixed, batch), rounds=15, batch=64,
                    instructions=I, goal_ratio_at_most=1.2)
    print(f"\ntraining step, halting model / fixed-N at equal instructions: {1 / ratio:.2f}x")


def test_training_step_fresh_halting_model_vs_fixed_n(compare):
    batch, models = _batch_and_models()
    ratio = compare(_step_fn(models["act"], batch), _step_fn(models["fixed"], batch), rounds=5,
                    batch=64, max_instructions=models["act"].max_instructions)
    print(f"\ntraining step, fresh halting model (rows run to max_instructions) / fixed-N: {1 / ratio:.2f}x")
