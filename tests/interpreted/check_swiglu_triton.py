"""Run only in a subprocess with TRITON_INTERPRET=1 CRAFT_KERNELS_IMPL=triton (see tests/test_swiglu.py)."""
import os

import pytest
import torch

from craft_kernels import swiglu, swiglu_packed
from craft_kernels._backend import kernels_impl

assert os.environ.get("TRITON_INTERPRET") == "1" and kernels_impl("cpu") == "triton"

TOL = {torch.float32: (1e-5, 1e-6), torch.float16: (2e-3, 1e-4)}


def golden(g, u):
    g, u = g.double(), u.double()
    s = torch.sigmoid(g)
    return g * s * u, s, g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (3, 4097), (2, 5, 33)])
def test_triton_fwd_bwd_vs_float64(dtype, shape):
    torch.manual_seed(0)
    g = torch.randn(shape).to(dtype).requires_grad_()
    u = torch.randn(shape).to(dtype).requires_grad_()
    out = swiglu(g, u)
    ref, s, gd = golden(g, u)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    do = torch.randn(shape).to(dtype)
    out.backward(do)
    dod = do.double()
    torch.testing.assert_close(g.grad.double(), dod * u.double() * s * (1 + gd * (1 - s)), rtol=rtol, atol=atol)
    torch.testing.assert_close(u.grad.double(), dod * gd * s, rtol=rtol, atol=atol)


def test_triton_packed_strided_rows():
    gu = torch.randn(7, 2 * 40, requires_grad=True)
    out = swiglu_packed(gu)
    ref, _, _ = golden(gu[:, :40], gu[:, 40:])
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert gu.grad.shape == gu.shape and gu.grad.abs().sum() > 0


def test_float64_is_computed_in_float64():
    """The Triton kernels compute in fp32: float64 must not go through them (gradcheck, and
    values beyond fp32's range)."""
    g = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    u = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu, (g, u))
    big = torch.tensor([[3e38, 1e-300, -2.5]], dtype=torch.float64)
    out = swiglu(big, torch.full_like(big, 4.0))
    ref, _, _ = golden(big, torch.full_like(big, 4.0))
    torch.testing.assert_close(out, ref, rtol=1e-15, atol=0)
