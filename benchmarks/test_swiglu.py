"""SwiGLU forward + backward against what a competent user runs instead: the compiled one-liner
``torch.compile(lambda g, u: F.silu(g) * u)``, timed interleaved with ours. Also recorded: peak
memory of both (profiler allocation records), the share of the copy bandwidth measured in the same
run, and eager ``F.silu(g) * u`` as an extra column (not the headline).

Each step allocates its output and both gradients afresh. With glibc's default heap every one of
them is a new ``mmap`` that page-faults and zero-fills its pages each step (most of the step at
these sizes); the ``_retained_heap`` rows run both sides again under
``craft_kernels.retain_freed_memory()`` (the process keeps freed blocks), the same advantage for
both, and restore the default afterwards."""
import pytest
import torch
import torch.nn.functional as F

from _harness import interleaved, peak_memory_bytes
from craft_kernels import _backend, retain_freed_memory, swiglu

_one_liner = torch.compile(lambda g, u: F.silu(g) * u)


CASES = [
    (16384, 1024, torch.float32),  # LLaMA-like activations on CPU
    (64 * 256, 512, torch.float32),  # tiny preset: batch 64 x 256 tokens, hidden_dim 512
    (16384, 1024, torch.bfloat16),
]


@pytest.mark.parametrize("rows, cols, dtype", CASES)
def test_swiglu_fwd_bwd_vs_compiled_one_liner(compare, rows, cols, dtype):
    _run(compare, rows, cols, dtype, heap="default")


@pytest.fixture
def retained_heap():
    if not retain_freed_memory():
        pytest.skip("the C library is not glibc")
    yield
    retain_freed_memory(False)


@pytest.mark.parametrize("rows, cols, dtype", CASES)
def test_swiglu_fwd_bwd_vs_compiled_one_liner_retained_heap(compare, retained_heap, rows, cols, dtype):
    _run(compare, rows, cols, dtype, heap="retained (both sides)")


def fwd_bwd_case(rows, cols, dtype):
    """(g, u, step): the inputs of one case (seed 0) and ``step(fn)``, a closure running ``fn(g, u)``
    forward and backward with fresh gradients, as a training step does."""
    torch.manual_seed(0)
    g = torch.randn(rows, cols, dtype=dtype, requires_grad=True)
    u = torch.randn(rows, cols, dtype=dtype, requires_grad=True)
    do = torch.randn(rows, cols, dtype=dtype)

    def step(fn):
        def run():
            g.grad = u.grad = None
            fn(g, u).backward(do)
        return run

    return g, u, step


def _run(compare, rows, cols, dtype, heap):
    g, u, step = fwd_bwd_case(rows, cols, dtype)
    ours, base, eager = step(swiglu), step(_one_liner), step(lambda a, b: F.silu(a) * b)
    ours(), base()  # compile outside the timing
    torch.testing.assert_close(swiglu(g, u), _one_liner(g, u), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5,
                               atol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    peak_ours, peak_base = peak_memory_bytes(ours), peak_memory_bytes(base)
    eager_vs_ours = interleaved(ours, eager, rounds=3)["ratio"]
    # fwd reads g, u and writes out; bwd reads grad, g, u and writes dg, du: 8 tensors of rows x cols
    moved = 8 * rows * cols * g.element_size()
    compare(ours, base, units=rows, unit_name="tokens", rounds=7, bytes_moved=moved,
            baseline_kind="torch.compile(lambda g, u: F.silu(g) * u)", shape=f"{rows}x{cols}", dtype=str(dtype),
            peak_bytes=peak_ours, baseline_peak_bytes=peak_base,
            peak_memory_ratio=round(peak_ours / max(peak_base, 1), 3), heap=heap,
            speedup_vs_eager=round(eager_vs_ours, 3), path=_backend.paths_run.get("swiglu"))
