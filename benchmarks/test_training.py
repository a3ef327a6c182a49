"""Training throughput: tokens/sec of the ``tiny`` preset against the same architecture written
plainly (benchmarks/baseline_model.py), compiled-vs-compiled and eager-vs-eager under the same
autocast, with the share of the matmul throughput measured in the same run in that dtype."""
import sys
from pathlib import Path

import pytest
import torch

from craft.models import LanguageModel, ModelConfig
from craft_kernels._backend import bf16_is_fast, calibrate_common, dispatch_report

sys.path.insert(0, str(Path(__file__).parent))
from baseline_model import BaselineLM  # noqa: E402

VOCAB = 258  # the byte tokenizer's vocabulary
BATCH, SEQ = 64, 256


def tiny_config() -> ModelConfig:
    return ModelConfig.preset("tiny", vocab_size=VOCAB)


def train_flops_per_token(cfg: ModelConfig, T: int) -> float:
    """6N + 12·L·T·d, N = the block weights plus the output head (the input lookup costs no FLOPs)."""
    n = cfg.num_parameters(embeddings=False) + cfg.vocab_size * cfg.dim
    return 6 * n + 12 * cfg.n_layers * T * cfg.dim


def make_train_step(model, tokens, targets, bf16: bool = False, compile: bool = False, lr: float = 1e-3):
    """One optimiser step (AdamW) on fixed tokens/targets (B, T): forward under bf16 autocast when
    asked, backward, step, zero_grad. ``compile`` compiles the model's forward+backward."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    fwd = torch.compile(model) if compile else model

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = fwd(tokens, targets=targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def _steps(compile: bool, bf16: bool):
    cfg = tiny_config()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    y = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    torch.manual_seed(0)
    ours = make_train_step(LanguageModel(cfg), x, y, bf16=bf16, compile=compile)
    torch.manual_seed(0)
    base = make_train_step(BaselineLM(cfg), x, y, bf16=bf16, compile=compile)
    return cfg, ours, base


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled_vs_compiled", "eager_vs_eager"])
def test_train_tiny(compare, compiled):
    """One AdamW step of the tiny preset, 64x256 tokens: ours against the same architecture written
    plainly (benchmarks/baseline_model.py), both compiled or both eager, under the same autocast
    (the dtype this machine's dispatch picks). Matmul share: model FLOP/s over the matmul
    throughput measured in this run in that dtype."""
    bf16 = bf16_is_fast("cpu")
    calibrate_common(head_dim=tiny_config().head_dim, seq_len=SEQ)  # dispatch choices before tracing
    cfg, ours, base = _steps(compiled, bf16)
    ours(), base()  # compile / first-call allocations outside the timing
    per_tok = train_flops_per_token(cfg, SEQ)
    compare(ours, base, units=BATCH * SEQ, unit_name="tokens", rounds=3, warmup=1,
            flops=per_tok * BATCH * SEQ, flops_dtype=torch.bfloat16 if bf16 else torch.float32,
            preset="tiny", batch=f"{BATCH}x{SEQ}", compile=compiled, autocast="bf16" if bf16 else "fp32",
            baseline_kind=f"plain model, {'compiled' if compiled else 'eager'}, same autocast",
            dispatch=str(dispatch_report()["doc_attention"]))
