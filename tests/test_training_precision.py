"""bf16 autocast training stays within a stated bound of fp32 training: same data, same seed, same
steps; the losses differ only by bf16 rounding of the matmuls (the span kernel, RMSNorm, softmax and
the loss stay fp32)."""
import pytest

from craft.data import pretokenize
from craft.training import TrainConfig, Trainer
from tests._training_helpers import SMALL_MODEL, write_corpus

STEPS = 20
# bounds ~10x the largest gaps measured on an AVX512-BF16 CPU over 30 steps (per-step train loss
# 1.7e-4 relative, final eval loss 1.2e-3 nats), room for other bf16 matmul kernels' summation orders
STEP_REL = 2e-3
EVAL_ABS = 0.01


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(corpus, out, precision):
    cfg = TrainConfig(model_overrides=dict(SMALL_MODEL, dim=64, n_heads=4), tokens_per_step=512,
                      micro_batch_tokens=256, warmup_steps=3, max_steps=STEPS, lr=3e-3, log_every=1,
                      eval_every=STEPS, eval_windows=8, sample_every=0, checkpoint_every=0, precision=precision,
                      tensorboard=False, progress=False, seed=0)
    tr = Trainer(cfg, corpus, out)
    summary = tr.train()
    return [h["loss"] for h in tr.history if h["event"] == "train"], summary["eval_loss"], tr.use_bf16


def test_bf16_training_tracks_fp32(tmp_path):
    corpus = pretokenize(write_corpus(tmp_path / "src", repeat=6), tmp_path / "pre", "byte")
    fp32, eval32, bf = _run(corpus, tmp_path / "fp32", "fp32")
    bf16, eval16, bf_on = _run(corpus, tmp_path / "bf16", "bf16")
    assert not bf and bf_on
    assert len(fp32) == len(bf16) == STEPS
    assert fp32[-1] < 0.8 * fp32[0]  # it learned something, so the comparison means something
    gaps = [abs(a - b) / a for a, b in zip(fp32, bf16)]
    assert max(gaps) < STEP_REL, f"per-step relative gap {max(gaps):.4f} (step {gaps.index(max(gaps)) + 1})"
    assert abs(eval16 - eval32) < EVAL_ABS, (eval32, eval16)
    assert fp32 != bf16  # autocast really ran in bf16
