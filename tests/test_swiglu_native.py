"""The C++ SwiGLU kernel (the ``native`` CPU path): against float64, with strided rows, ragged
tails and streamed (non-temporal) stores; its place in the dispatch; and the opt-in heap setting
that stops per-step page faults."""
import os
import subprocess
import sys

import pytest
import torch

from craft_kernels import _backend, swiglu
from craft_kernels.swiglu import _native_ok
from test_swiglu import check  # forward and backward against float64, every SwiGLU path

_mod = sys.modules["craft_kernels.swiglu"]  # the module (craft_kernels.swiglu is the function)

pytestmark = pytest.mark.skipif(not _native_ok(torch.float32), reason="the C++ extension is not built")


@pytest.fixture
def native(monkeypatch, tmp_path):
    monkeypatch.setenv("CRAFT_IMPL_SWIGLU", "native")
    monkeypatch.setenv("CRAFT_CACHE_DIR", str(tmp_path))
    _backend.reset_dispatch()
    yield
    monkeypatch.undo()
    _backend.reset_dispatch()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 600), (9, 4097), (2, 130, 333), (1, 40000)])
def test_native_matches_float64(native, monkeypatch, dtype, shape, stream):
    # stream: every output written with non-temporal stores (aligned head, vector body, tail)
    monkeypatch.setattr(_mod, "_STREAM_BYTES", 0 if stream else 1 << 60)
    torch.manual_seed(2)
    g = torch.randn(shape) * 4
    g.view(-1)[:4] = torch.tensor([100.0, -100.0, 30.0, -30.0])  # sigmoid's clamped arguments
    check(g.to(dtype), torch.randn(shape).to(dtype), dtype, path="native")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_strided_rows_and_packed_halves(native, dtype):
    torch.manual_seed(3)
    gu = torch.randn(96, 2 * 700).to(dtype)
    check(gu[:, :700], gu[:, 700:], dtype, path="native")  # row stride 1400, offset halves (misaligned outputs too)
    base = torch.randn(600, 128).to(dtype)
    check(base.t()[:, 3:], torch.randn(128, 597).to(dtype), dtype, path="native")  # column stride != 1: copied first


def test_native_saves_only_inputs_and_runs_under_two_threads(native):
    g = torch.randn(512, 256, requires_grad=True)
    u = torch.randn(512, 256, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = swiglu(g, u)
    assert len(saved) == 2 and {s.data_ptr() for s in saved} == {g.data_ptr(), u.data_ptr()}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = swiglu(g, u)
        torch.set_num_threads(1)
        one = swiglu(g, u)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two) and torch.equal(out, one)


def test_native_is_a_dispatch_candidate(monkeypatch):
    assert "native" in _backend.OPS["swiglu"]
    # where torch.compile cannot run, the kernel (fp32, bf16) is calibrated against eager instead
    monkeypatch.setattr(_mod, "_compile_error", "RuntimeError: no compiler")
    assert set(_mod._candidates(torch.float32)) == {"native", "eager"} == set(_mod._candidates(torch.bfloat16))
    assert set(_mod._candidates(torch.float16)) == {"eager"}  # the kernel stores fp32 and bf16 only
    assert _mod._detect(torch.float16)[0] == "eager" and _mod._detect(torch.float32)[0] == "native"


def test_kernel_rejects_bad_arrays():
    import numpy as np
    ext = _backend.extension()
    a = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="same shape and dtype"):
        ext.swiglu_forward(a, np.zeros((4, 9), np.float32), np.zeros((4, 8), np.float32), False, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        ext.swiglu_forward(a, a, np.zeros((4, 16), np.float32)[:, :8], False, 1)
    with pytest.raises(TypeError, match="float32 arrays"):
        ext.swiglu_forward(a.astype(np.float64), a, a, False, 1)


def test_retain_freed_memory_serves_large_blocks_from_the_heap():
    # glibc's default serves a 64 MiB block with mmap (freed with munmap: every step faults afresh);
    # retained, it comes from the heap; disabled again, mmap as before
    code = (
        "import ctypes, torch\n"
        "from craft_kernels import retain_freed_memory, freed_memory_retained\n"
        "class MI(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena ordblks smblks hblks hblkhd usmblks fsmblks '\n"
        "                                                'uordblks fordblks keepcost').split()]\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.mallinfo2.restype = MI\n"
        "def mapped():\n"
        "    t = torch.empty(1 << 24); m = libc.mallinfo2().hblkhd; del t; return m >= 1 << 26\n"
        "before = mapped()\n"
        "assert retain_freed_memory() and freed_memory_retained()\n"
        "during = mapped()\n"
        "assert retain_freed_memory(False) and not freed_memory_retained()\n"
        "print(before, during, mapped())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, THP_MEM_ALLOC_ENABLE="0"))
    if "libc.so.6" in r.stderr and "OSError" in r.stderr:
        pytest.skip("not glibc")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "False", "True"]
    with pytest.raises(TypeError, match="enable"):
        from craft_kernels import retain_freed_memory
        retain_freed_memory("yes")


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_narrower_isa_variants_match_float64(isa, tmp_path):
    # the AVX2 and portable builds of the kernel (this CPU may run AVX-512 by default)
    code = (
        "import sys, torch\n"
        "import craft_kernels\n"
        "from craft_kernels import swiglu, _backend\n"
        "sys.modules['craft_kernels.swiglu']._STREAM_BYTES = 0\n"
        "for dt, tol in ((torch.float32, 1e-5), (torch.bfloat16, 8e-3)):\n"
        "    g = (torch.randn(9, 4097) * 4).to(dt).requires_grad_(); u = torch.randn(9, 4097).to(dt).requires_grad_()\n"
        "    do = torch.randn(9, 4097).to(dt)\n"
        "    out = swiglu(g, u); out.backward(do)\n"
        "    assert _backend.paths_run['swiglu'].startswith('native'), _backend.paths_run\n"
        "    G, U, D = g.detach().double(), u.detach().double(), do.double(); s = torch.sigmoid(G)\n"
        "    torch.testing.assert_close(out.double(), G * s * U, rtol=tol, atol=1e-5)\n"
        "    torch.testing.assert_close(g.grad.double(), D * U * s * (1 + G * (1 - s)), rtol=2 * tol, atol=2e-5)\n"
        "    torch.testing.assert_close(u.grad.double(), D * G * s, rtol=tol, atol=1e-5)\n"
        "print(_backend.extension().span_attention_isa())\n")
    env = dict(os.environ, CRAFT_SPAN_ISA=isa, CRAFT_IMPL_SWIGLU="native", CRAFT_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if "this CPU does not support it" in r.stderr:
        pytest.skip(f"no {isa} here")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == isa


def test_large_outputs_take_huge_pages_and_fault_far_less(native, monkeypatch):
    # each fresh 64 MiB output (above glibc's largest mmap threshold, so always a fresh mapping)
    # faults once per 4 KiB page (16,384 per tensor) unless the kernel asks for 2 MiB pages before
    # writing it; the values are the same either way
    import resource

    from craft_kernels.heap import _thp_madvise_useful, advise_huge_pages
    if not _thp_madvise_useful():
        pytest.skip("this kernel gives no transparent huge pages on request")
    g = torch.randn(4096, 4096, requires_grad=True)
    u = torch.randn(4096, 4096, requires_grad=True)
    do = torch.randn(4096, 4096)

    def faults(flag):
        monkeypatch.setenv("CRAFT_HUGE_PAGES", flag)
        g.grad = u.grad = None
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out = swiglu(g, u)
        out.backward(do)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, out.detach(), g.grad, u.grad

    faults("1")  # warm-up: dispatch, autograd
    plain, huge = faults("0"), faults("1")
    assert plain[0] >= 3 * 16384 * 0.9  # out, dg, du faulted page by page
    assert huge[0] < plain[0] / 4
    for a, b in zip(plain[1:], huge[1:]):
        assert torch.equal(a, b)
    assert not advise_huge_pages(torch.empty(1000))  # small tensors: no advice


def test_large_tensors_are_a_size_class_of_their_own_in_the_dispatch(monkeypatch, tmp_path):
    # tensors above glibc's largest mmap threshold page-fault their outputs every step, so the
    # dispatch calibrates them apart (at that size) from cache-sized ones; the class boundary is
    # lowered here to keep the calibration short
    monkeypatch.setenv("CRAFT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CRAFT_IMPL_SWIGLU", raising=False)
    monkeypatch.setattr(_mod, "_LARGE_BYTES", 1 << 20)
    _backend.reset_dispatch()
    try:
        for rows in (128, 1024):  # 256 KiB and 2 MiB of float32
            g = torch.randn(rows, 512, requires_grad=True)
            swiglu(g, torch.randn(rows, 512)).sum().backward()
        report = _backend.dispatch_report()["swiglu"]
        assert set(report) == {"float32", "float32|large"}, report
        assert _mod._calibration_rows(torch.float32, True) == 512 and _mod._calibration_rows(torch.bfloat16, True) == 1024
    finally:
        _backend.reset_dispatch()
