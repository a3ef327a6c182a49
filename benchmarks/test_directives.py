"""Transform directives: generation with the KV cache vs recomputing the prefix, and the halting
decoder's training step vs the fixed-N decoder's.

- Generation: ``DirectiveDecoder`` at batch 64 x 32 instructions, context of 8 items, no row halting
  early (halting bias -30: every row runs all 32 steps, the worst case for both), no autograd. Ours:
  the static KV cache (one block pass per instruction); baseline: ``cache="none"``, every step
  re-runs the blocks over context + command + all instructions so far. Same weights; the
  instructions are checked equal.
- Training step (forward + backward + AdamW) on the ``counts`` task at batch 64: the halting model
  (ACT ponder cost, count loss, return/halting heads, step arithmetic) vs the fixed-N baseline
  (``variant="fixed"``: each output read out at its N-th instruction, no halting) over the *same number of
  instructions* per row (the halting model's halting is held off until the fixed model's count), so
  the ratio is the halting machinery's overhead. A second figure times the halting model as
  initialised (rows run to ``max_instructions``), which is what a fresh run pays per step.

1 torch thread (the machine is shared; small matmuls gain nothing from 2 spinning threads).
"""

import pytest
import torch

from craft.directives.decoder import DirectiveDecoder
from craft.directives.tasks import CountsTask
from craft.directives.train import DirectiveModel, RunConfig


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("dim,n_layers", [(64, 2), (128, 4)])
def test_generation_kv_cache_vs_recompute(compare, dim, n_layers):
    torch.manual_seed(0)
    B, N, steps = 64, 8, 32
    dec = DirectiveDecoder(dim, n_layers, n_heads=4, max_seq_len=N + steps, halt_bias=-30.0).eval()
    cmd, ctx = torch.randn(B, dim), torch.randn(B, N, dim)

    def cached():
        with torch.no_grad():
            return dec(cmd, ctx, max_instructions=steps, cache="static")

    def recompute():
        with torch.no_grad():
            return dec(cmd, ctx, max_instructions=steps, cache="none")

    a, b = cached(), recompute()
    assert a.instructions.shape == (B, steps, dim)
    torch.testing.assert_close(a.instructions, b.instructions, atol=1e-4, rtol=1e-4)
    ratio = compare(cached, recompute, units=B * steps, unit_name="instructions", rounds=3, baseline_reps=2,
                    batch=B, steps=steps, dim=dim, n_layers=n_layers, goal_speedup=10)
    print(f"\ngeneration d{dim} L{n_layers}: KV cache {ratio:.1f}x recomputing the prefix")


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
    ratio = compare(_step_fn(act, batch), _step_fn(fixed, batch), rounds=3, baseline_reps=3, batch=64,
                    instructions=I, goal_ratio_at_most=1.2)
    print(f"\ntraining step, halting model / fixed-N at equal instructions: {1 / ratio:.2f}x")


def test_training_step_fresh_halting_model_vs_fixed_n(compare):
    batch, models = _batch_and_models()
    ratio = compare(_step_fn(models["act"], batch), _step_fn(models["fixed"], batch), rounds=2, baseline_reps=2,
                    batch=64, max_instructions=models["act"].max_instructions)
    print(f"\ntraining step, fresh halting model (rows run to max_instructions) / fixed-N: {1 / ratio:.2f}x")
