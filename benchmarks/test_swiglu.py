"""SwiGLU forward + backward against what a competent user runs instead: the compiled one-liner
``torch.compile(lambda g, u: F.silu(g) * u)``, timed interleaved with ours. Also recorded: peak
memory of both (profiler allocation records), the share of the copy bandwidth measured in the same
run, and eager ``F.silu(g) * u`` as an extra column (not the headline).

Each step allocates its output and both gradients afresh. With glibc's default heap every one of
them is a new ``mmap`` that page-faults and zero-fills its pages each step (most of the step at
these sizes). Three settings: the default heap, where our C++ kernel's outputs ask for huge pages
(the one-liner's cannot: our advantage, named as such); ``_huge_pages_both``, torch's
``THP_MEM_ALLOC_ENABLE=1`` for both sides (a child process: torch reads it once), the kernels' own
margin; ``_retained_heap``, both sides under ``craft_kernels.retain_freed_memory()`` (the process
keeps freed blocks; restored afterwards)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _harness import file_timing, interleaved, peak_memory_bytes, record  # noqa: E402
from craft_kernels import _backend, retain_freed_memory, swiglu

_one_liner = torch.compile(lambda g, u: F.silu(g) * u)


CASES = [
    (16384, 1024, torch.float32),  # LLaMA-like activations on CPU
    (64 * 256, 512, torch.float32),  # tiny preset: batch 64 x 256 tokens, hidden_dim 512
    (16384, 1024, torch.bfloat16),
]


@pytest.mark.parametrize("rows, cols, dtype", CASES)
def test_swiglu_fwd_bwd_vs_compiled_one_liner(benchmark, rows, cols, dtype):
    _run(benchmark, rows, cols, dtype, heap="default (our C++ outputs ask for huge pages)")


@pytest.fixture
def retained_heap():
    if not retain_freed_memory():
        pytest.skip("the C library is not glibc")
    yield
    retain_freed_memory(False)


@pytest.mark.parametrize("rows, cols, dtype", CASES)
def test_swiglu_fwd_bwd_vs_compiled_one_liner_retained_heap(benchmark, retained_heap, rows, cols, dtype):
    _run(benchmark, rows, cols, dtype, heap="retained (both sides)")


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


def measure(rows, cols, dtype, rounds=7):
    """(timing, extra_info) of ours against the compiled one-liner on one case: interleaved timing,
    peak memory of both (profiler allocation records), eager as an extra column."""
    g, u, step = fwd_bwd_case(rows, cols, dtype)
    ours, base, eager = step(swiglu), step(_one_liner), step(lambda a, b: F.silu(a) * b)
    ours(), base()  # compile outside the timing
    torch.testing.assert_close(swiglu(g, u), _one_liner(g, u), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5,
                               atol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    peak_ours, peak_base = peak_memory_bytes(ours), peak_memory_bytes(base)
    eager_vs_ours = interleaved(ours, eager, rounds=3)["ratio"]
    timing = interleaved(ours, base, rounds=rounds)
    # fwd reads g, u and writes out; bwd reads grad, g, u and writes dg, du: 8 tensors of rows x cols
    moved = 8 * rows * cols * g.element_size()
    info = record({}, timing, units=rows, unit_name="tokens", bytes_moved=moved)
    info.update(baseline_kind="torch.compile(lambda g, u: F.silu(g) * u)", shape=f"{rows}x{cols}", dtype=str(dtype),
                peak_bytes=peak_ours, baseline_peak_bytes=peak_base,
                peak_memory_ratio=round(peak_ours / max(peak_base, 1), 3),
                speedup_vs_eager=round(eager_vs_ours, 3), path=_backend.paths_run.get("swiglu"))
    return timing, info


def _file(benchmark, timing, info):
    file_timing(benchmark, timing)
    benchmark.extra_info.update(info)


def _run(benchmark, rows, cols, dtype, heap):
    timing, info = measure(rows, cols, dtype)
    _file(benchmark, timing, {**info, "heap": heap})


@pytest.mark.parametrize("rows, cols, dtype", CASES)
def test_swiglu_fwd_bwd_vs_compiled_one_liner_huge_pages_both(benchmark, rows, cols, dtype):
    """Both sides with torch's own huge-page option (``THP_MEM_ALLOC_ENABLE=1``: every large CPU
    tensor, the one-liner's included, gets 2 MiB pages). torch reads it once per process, so the
    case runs in a child process; this is the kernels' margin without our outputs' page advantage."""
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    out = subprocess.run([sys.executable, __file__, str(rows), str(cols), str(dtype).split(".")[1]],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    _file(benchmark, res["timing"], {**res["info"], "heap": "default + THP_MEM_ALLOC_ENABLE=1 (both sides)"})


if __name__ == "__main__":  # the child of the huge-pages case: python test_swiglu.py ROWS COLS DTYPE
    r, c, dt = int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])
    timing, info = measure(r, c, dt)
    print(json.dumps({"timing": timing, "info": info}))
