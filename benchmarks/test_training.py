"""Training throughput: tokens/sec of the ``tiny`` preset against a plain-PyTorch baseline of the
same architecture (benchmarks/baseline_model.py) and against the fp32 roofline of a matmul measured
in the same run."""
import sys
from pathlib import Path

import torch

from craft.models import LanguageModel, ModelConfig
from craft_kernels._backend import bf16_is_fast

sys.path.insert(0, str(Path(__file__).parent))
from baseline_model import BaselineLM  # noqa: E402
from conftest import best_time  # noqa: E402

VOCAB = 258  # the byte tokenizer's vocabulary
BATCH, SEQ = 64, 256
# Fastest training settings measured on the dev CPU (see the module docstring of make_train_step).
BEST_COMPILE, BEST_BF16 = True, bf16_is_fast("cpu")


def tiny_config() -> ModelConfig:
    return ModelConfig.preset("tiny", vocab_size=VOCAB)


def matmul_flops_per_s(n: int = 1024, reps: int = 15) -> float:
    """fp32 matmul rate of this machine now (best of reps): the roofline's ceiling."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_time(lambda: torch.mm(a, b), reps)


def train_flops_per_token(cfg: ModelConfig, T: int) -> float:
    """6N + 12·L·T·d, N = the block weights plus the output head (the input lookup costs no FLOPs)."""
    n = cfg.num_parameters(embeddings=False) + cfg.vocab_size * cfg.dim
    return 6 * n + 12 * cfg.n_layers * T * cfg.dim


def make_train_step(model, tokens, targets, bf16: bool = False, compile: bool = False, lr: float = 1e-3):
    """One optimiser step (AdamW) on fixed tokens/targets (B, T): forward under bf16 autocast when
    asked, backward, step, zero_grad. ``compile`` compiles the model's forward+backward.
    Measured on the 2-core dev CPU (tiny, 64x256): compiled + bf16 is the fastest setting."""
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


def test_train_tiny_vs_baseline(compare, benchmark):
    cfg = tiny_config()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    y = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    torch.manual_seed(0)
    fast = make_train_step(LanguageModel(cfg), x, y, bf16=BEST_BF16, compile=BEST_COMPILE)
    base = make_train_step(BaselineLM(cfg), x, y)
    base()  # first-call allocations outside the timing
    flops = matmul_flops_per_s()
    per_tok = train_flops_per_token(cfg, SEQ)
    compare(fast, base, units=BATCH * SEQ, unit_name="tokens", baseline_reps=2, rounds=3,
            preset="tiny", batch=f"{BATCH}x{SEQ}", compile=BEST_COMPILE, bf16=BEST_BF16)
    info = benchmark.extra_info
    info["matmul_fp32_gflops"] = round(flops / 1e9, 1)
    info["flop_per_token"] = per_tok
    info["fp32_roofline_tokens_per_s"] = round(flops / per_tok)
    info["roofline_share"] = round(info["tokens_per_s"] * per_tok / flops, 3)
    info["baseline_roofline_share"] = round(info["baseline_tokens_per_s"] * per_tok / flops, 3)
