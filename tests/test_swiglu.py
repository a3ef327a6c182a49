import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from craft_kernels import SwiGLUMLP, _backend, swiglu, swiglu_packed

# Tolerances vs a float64 golden computed from the same (rounded) inputs. The op computes in fp32
# and rounds once to the storage dtype, so the error is one rounding of the output (bf16: 2^-8
# relative, fp16: 2^-11) plus fp32 sigmoid/exp error (~1e-7 relative).
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-6), torch.bfloat16: (8e-3, 1e-5),
       torch.float16: (1e-3, 1e-5)}


def golden(g, u, do):
    g, u, do = g.double(), u.double(), do.double()
    s = torch.sigmoid(g)
    return g * s * u, do * u * s * (1 + g * (1 - s)), do * g * s


def check(g, u, dtype, path=None):
    """swiglu(g, u) forward and backward against float64 at ``dtype``'s tolerance; ``path``: the
    dispatch path that must have run (tests/test_swiglu_native.py checks the C++ kernel with it)."""
    g = g.detach().requires_grad_()
    u = u.detach().requires_grad_()
    out = swiglu(g, u)
    if path is not None:
        assert _backend.paths_run["swiglu"].startswith(path)
    assert out.dtype == dtype and out.shape == g.shape
    do = torch.randn(g.shape, dtype=torch.float32).to(dtype)
    out.backward(do)
    ref, rg, ru = golden(g, u, do)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(g.grad.double(), rg, rtol=rtol * 2, atol=atol * 2)
    torch.testing.assert_close(u.grad.double(), ru, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(0, 16), (1, 1), (3, 4097), (2, 256, 11008), (64, 1024)])
def test_forward_backward_vs_float64(dtype, shape):
    if shape == (2, 256, 11008) and dtype != torch.float32:
        shape = (2, 64, 11008)  # keep the large case to one dtype at full size
    torch.manual_seed(1)
    check(torch.randn(shape).to(dtype), torch.randn(shape).to(dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_views(dtype):
    base_g = torch.randn(64, 600).to(dtype)
    base_u = torch.randn(600, 64).to(dtype)
    check(base_g[::2, 10:522], base_u.t()[::2, 10:522], dtype)  # strided rows, transposed
    check(base_g[:, ::2], base_g[:, 1::2], dtype)  # column stride 2


def test_packed_equals_split_and_grad_layout():
    gu = torch.randn(5, 3, 2 * 37, dtype=torch.float64, requires_grad=True)
    out = swiglu_packed(gu)
    g, u = gu[..., :37], gu[..., 37:]
    torch.testing.assert_close(out, F.silu(g) * u)
    out.sum().backward()
    torch.testing.assert_close(gu.grad[..., 37:], F.silu(g).detach())


def test_gradcheck_float64():
    g = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    u = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu, (g, u))


def test_saves_only_inputs():
    g = torch.randn(32, 64, requires_grad=True)
    u = torch.randn(32, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        swiglu(g, u)
    assert len(saved) == 2 and all(s.data_ptr() in (g.data_ptr(), u.data_ptr()) for s in saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        F.silu(g) * u
    assert len(saved) == 3  # eager keeps silu(g) too


def test_module_matches_llama_mlp_and_compiles_fullgraph():
    # compiled for training on CPU, the gate and up halves run as two matmuls on the weight's
    # halves: same values and gradients as the fused eager path, bias halves included
    torch.manual_seed(0)
    m = SwiGLUMLP(32, 80, bias=True)
    x = torch.randn(3, 7, 32, requires_grad=True)
    w_g, w_u = m.gate_up.weight[:80], m.gate_up.weight[80:]
    b_g, b_u = m.gate_up.bias[:80], m.gate_up.bias[80:]
    ref = F.linear(F.silu(F.linear(x, w_g, b_g)) * F.linear(x, w_u, b_u), m.down.weight, m.down.bias)
    torch.testing.assert_close(m(x), ref)
    ref.square().sum().backward()
    grads = [t.grad.clone() for t in (x, m.gate_up.weight, m.gate_up.bias, m.down.weight)]
    for t in (x, *m.parameters()):
        t.grad = None
    compiled = torch.compile(m, fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, ref)
    y.square().sum().backward()
    for want, got in zip(grads, (x.grad, m.gate_up.weight.grad, m.gate_up.bias.grad, m.down.weight.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_compiled_training_graph_stores_no_float32_sigmoid():
    # with one fused gate-up matmul, Inductor wrote sigmoid(gate) to a float32 (rows, F) buffer
    # between the two halves' backward loops (under bf16 autocast: a fresh 32 MiB per layer of the
    # tiny preset, page-faulted every step); the split halves recompute it in each fused loop
    from torch._inductor.utils import run_and_get_code
    torch.manual_seed(0)
    m = SwiGLUMLP(32, 48)
    x = torch.randn(64, 48, 32, requires_grad=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.compile(m)(x)
        out.float().square().sum().backward()

    _, code = run_and_get_code(step)
    assert not any(f"(({64 * 48}, 48), (48, 1), torch.float32)" in c or "((64, 48, 48), (2304, 48, 1), torch.float32)" in c
                   for c in code), "a float32 (rows, F) buffer in the compiled graph"


def test_custom_op_compiles_fullgraph_and_passes_opcheck():
    # on CPU a compiled model lets Inductor fuse the math itself; the registered op (what eager and
    # CUDA graphs use) must still trace without a graph break and differentiate
    g = torch.randn(5, 40, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 40, dtype=torch.float64, requires_grad=True)
    y = torch.compile(lambda a, b: torch.ops.craft.swiglu_fwd(a, b), fullgraph=True)(g, u)
    ref_g, ref_u = g.detach().requires_grad_(), u.detach().requires_grad_()
    ref = F.silu(ref_g) * ref_u
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(g.grad, ref_g.grad)
    torch.testing.assert_close(u.grad, ref_u.grad)
    torch.library.opcheck(torch.ops.craft.swiglu_fwd.default, (torch.randn(3, 8), torch.randn(3, 8)))


def test_bad_inputs():
    with pytest.raises(ValueError, match="shapes must match"):
        swiglu(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(TypeError, match="floating dtype"):
        swiglu(torch.ones(2, dtype=torch.int64), torch.ones(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="last dimension must be even"):
        swiglu_packed(torch.randn(3, 5))


def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CRAFT_KERNELS_IMPL="triton")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/interpreted/check_swiglu_triton.py"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
