"""Fused SwiGLU: ``silu(gate) * up``, forward and backward, saving only the inputs.

Paths (picked per call by ``craft_kernels._backend.kernels_impl``; CRAFT_KERNELS_IMPL forces one):
- ``triton``: one kernel per direction, fp32 math whatever the storage dtype, int64 offsets,
  strided rows without a copy (the packed layout's halves are views). CUDA, or CPU under
  ``TRITON_INTERPRET=1``. float64 never goes through it: it takes the exact eager math in float64.
- CPU: eager math inside the custom op (backward recomputes sigmoid); the plain math compiled
  with ``torch.compile`` at the autograd level, so AOTAutograd derives one fused backward that
  also saves only gate and up (the compiled one-liner a competent user would write); or the C++
  kernel (``native``, fp32 and bf16: one pass each way, recomputes sigmoid, and writes outputs
  larger than the caches with non-temporal stores, which skip the read a plain store makes of each
  destination line; its outputs of 4 MiB and more ask for transparent huge pages, see
  ``craft_kernels.heap.advise_huge_pages``). Which of them runs is a per-machine choice per dtype
  (``craft_kernels._backend.choose``: calibrated once, cached; ``CRAFT_IMPL_SWIGLU=compiled|native|eager``
  forces one). The compiled function
  (one per dtype) sees 2-d ``(rows, F)`` views, specialised on the first shape and dynamic from the
  second, so new shapes never recompile again (and never reach Dynamo's recompile limit, past
  which it would run eager silently). Compilation happens on the
  first call; if it fails there (no C++ compiler, say), that call and every later one run another
  path and ``craft info`` says why. Tensors under 32k elements and fp64 always run eager
  (a compiled call's overhead would dominate; fp64 stays exact).
The custom ops (``craft::swiglu_fwd``/``swiglu_bwd``, fake kernels and autograd) let
``torch.compile(fullgraph=True)`` trace through the Triton path. Inside a graph compiled for CPU,
:func:`swiglu` emits the plain math, so Inductor fuses it with its neighbours (and still
recomputes sigmoid in backward).
"""
from __future__ import annotations

import functools
import shutil
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from craft_kernels import _backend
from craft_kernels.heap import advise_huge_pages
from craft_kernels._backend import triton_version, use_triton

_SMALL = 1 << 15

if triton_version() is not None:
    import triton
    import triton.language as tl

    @triton.jit
    def _swiglu_fwd_kernel(g_ptr, u_ptr, o_ptr, n_cols, g_stride, u_stride, o_stride, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = cols < n_cols
        g = tl.load(g_ptr + row * g_stride + cols, mask=m, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + row * u_stride + cols, mask=m, other=0.0).to(tl.float32)
        out = g * tl.sigmoid(g) * u
        tl.store(o_ptr + row * o_stride + cols, out.to(o_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _swiglu_bwd_kernel(do_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, n_cols, do_stride, g_stride, u_stride,
                           dg_stride, du_stride, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = cols < n_cols
        do = tl.load(do_ptr + row * do_stride + cols, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + row * g_stride + cols, mask=m, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + row * u_stride + cols, mask=m, other=0.0).to(tl.float32)
        s = tl.sigmoid(g)
        silu = g * s
        dg = do * u * s * (1.0 + g * (1.0 - s))
        du = do * silu
        tl.store(dg_ptr + row * dg_stride + cols, dg.to(dg_ptr.dtype.element_ty), mask=m)
        tl.store(du_ptr + row * du_stride + cols, du.to(du_ptr.dtype.element_ty), mask=m)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A 2-d (rows, F) view with unit column stride; copies only when no such view exists."""
    t2 = t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t
    if t2.shape[-1] > 1 and t2.stride(-1) != 1:
        t2 = t2.contiguous()
    return t2


def _block(n_cols: int) -> int:
    return min(4096, max(16, triton.next_power_of_2(n_cols)))


def _fwd_triton(g, u, out):
    g2, u2, o2 = _rows(g), _rows(u), out.view(-1, out.shape[-1])
    n_rows, n_cols = g2.shape
    if n_rows and n_cols:
        b = _block(n_cols)
        _swiglu_fwd_kernel[(n_rows, triton.cdiv(n_cols, b))](g2, u2, o2, n_cols, g2.stride(0), u2.stride(0),
                                                              o2.stride(0), BLOCK=b)


def _bwd_triton(do, g, u, dg, du):
    do2, g2, u2 = _rows(do), _rows(g), _rows(u)
    dg2, du2 = dg.reshape(-1, dg.shape[-1]), du.reshape(-1, du.shape[-1])
    n_rows, n_cols = g2.shape
    if n_rows and n_cols:
        b = _block(n_cols)
        _swiglu_bwd_kernel[(n_rows, triton.cdiv(n_cols, b))](
            do2, g2, u2, dg2, du2, n_cols, do2.stride(0), g2.stride(0), u2.stride(0), dg2.stride(0), du2.stride(0),
            BLOCK=b)


def _acc(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 computed in fp32; fp32/fp64 in their own precision."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _fwd_math(g, u):
    gf = _acc(g)
    return (gf * torch.sigmoid(gf) * _acc(u)).to(g.dtype)


def _bwd_math(do, g, u):
    gf, uf, dof = _acc(g), _acc(u), _acc(do)
    s = torch.sigmoid(gf)
    dg = dof * uf * s * (1.0 + gf * (1.0 - s))
    du = dof * gf * s
    return dg.to(g.dtype), du.to(u.dtype)


@functools.lru_cache(maxsize=None)
def _compiled(dtype: torch.dtype):
    # the plain math compiled at the autograd level: AOTAutograd derives one fused backward that
    # recomputes sigmoid (saves only gate and up), as the compiled one-liner a user would write does.
    # One code object per dtype, so Dynamo's recompile limit (per code object) is never reached:
    # dynamic=None specialises on the first shape and marks the dims dynamic once a second shape
    # arrives, so a dtype holds at most 2 row layouts x (static + dynamic) = 4 graphs.
    code = _fwd_math.__code__.replace(co_name=f"_fwd_math_{str(dtype)[6:]}")
    return torch.compile(types.FunctionType(code, _fwd_math.__globals__, code.co_name), dynamic=None)


_compile_error: str | None = None  # why compilation failed in this process, if it did


class _CompileFailed(RuntimeError):
    pass


def _run_compiled(g, u):
    global _compile_error
    try:
        return _compiled(g.dtype)(_rows(g), _rows(u)).reshape(g.shape)
    except Exception as e:  # compile is lazy: a missing or broken toolchain shows up on the first call
        if _compile_error is None:
            msg = str(e).strip()
            _compile_error = f"{type(e).__name__}: {msg.splitlines()[0][:160] if msg else ''}"
            warnings.warn(f"swiglu: torch.compile failed ({_compile_error}); using the eager math", RuntimeWarning,
                          stacklevel=3)
        raise _CompileFailed(_compile_error) from e


def _native_ok(dtype: torch.dtype) -> bool:
    """The C++ kernel runs here for ``dtype``: fp32 or bf16, and the extension is built and enabled."""
    if dtype not in (torch.float32, torch.bfloat16) or _backend.native_mode() != "cpp":
        return False
    mod, _ = _backend._load_extension()
    return mod is not None and hasattr(mod, "swiglu_forward")


def _detect(dtype: torch.dtype = torch.float32):
    """(path, reason) when only one path can run here for ``dtype``, else None (calibrate)."""
    why = None
    if _compile_error is not None:
        why = f"torch.compile failed here: {_compile_error}"
    else:
        cxx = torch._inductor.config.cpp.cxx[-1]
        if cxx and shutil.which(cxx) is None:
            why = f"no C++ compiler for Inductor ({cxx!r} not found)"
    if why is None:
        return None
    if _native_ok(dtype):
        return "native", why + "; the C++ kernel runs instead"
    return "eager", why


# Tensors of at least this many bytes are always a fresh mapping from glibc (above its largest mmap
# threshold), so each step page-faults its outputs: a size class of its own in the dispatch, where
# the C++ kernel's huge-page outputs can win while smaller, cache-warm tensors favour another path.
_LARGE_BYTES = 32 << 20


def _calibration_rows(dtype: torch.dtype, large: bool) -> int:
    return -(-_LARGE_BYTES // (512 * dtype.itemsize)) if large else 4096


def _candidates(dtype: torch.dtype, large: bool = False) -> dict:
    rows = _calibration_rows(dtype, large)
    g, u = (torch.randn(rows, 512).to(dtype).requires_grad_() for _ in range(2))
    do = torch.randn(rows, 512).to(dtype)

    def compiled():
        _run_compiled(g, u).backward(do)

    def native():
        _run_native(g, u).backward(do)

    def eager():
        _swiglu_fwd(g, u).backward(do)

    out = {}
    if _detect(dtype) is None:
        compiled()  # compile before timing (raises _CompileFailed where it cannot)
        out["compiled"] = compiled
    if _native_ok(dtype):
        out["native"] = native
    out["eager"] = eager
    return out


def _cpu_path(g: torch.Tensor) -> str:
    """'compiled', 'native' or 'eager' for a CPU tensor of at least 32k elements in fp32/fp16/bf16;
    chosen per dtype and size class (``large``: at least 32 MiB, calibrated at that size)."""
    large = g.numel() * g.element_size() >= _LARGE_BYTES
    key = str(g.dtype).replace("torch.", "") + ("|large" if large else "")
    try:
        return _backend.choose("swiglu", key, lambda: _detect(g.dtype), lambda: _candidates(g.dtype, large))
    except _CompileFailed:  # now recorded: calibrate the paths that remain
        return _backend.choose("swiglu", key, lambda: _detect(g.dtype), lambda: _candidates(g.dtype, large))


# Outputs of at least this many bytes are written with non-temporal stores (they would not stay in
# the caches anyway; smaller ones are left in cache for the next op, the down projection).
_STREAM_BYTES = 1 << 24


def _as_numpy(t: torch.Tensor):
    """A NumPy view of a 2-d CPU tensor (bf16 as its int16 bits): no copy."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).detach().numpy()


class _Native(torch.autograd.Function):
    """The C++ kernel on 2-d ``(rows, F)`` views with unit column stride; saves only gate and up."""

    @staticmethod
    def forward(ctx, g2, u2):
        out = torch.empty(g2.shape, dtype=g2.dtype)
        advise_huge_pages(out)
        stream = out.numel() * out.element_size() >= _STREAM_BYTES
        _backend.extension().swiglu_forward(_as_numpy(g2), _as_numpy(u2), _as_numpy(out), stream,
                                            torch.get_num_threads())
        ctx.save_for_backward(g2, u2)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        g2, u2 = ctx.saved_tensors
        if do.dtype != g2.dtype or (do.shape[-1] > 1 and do.stride(-1) != 1):
            do = do.to(g2.dtype).contiguous()
        dg, du = torch.empty(g2.shape, dtype=g2.dtype), torch.empty(u2.shape, dtype=u2.dtype)
        advise_huge_pages(dg), advise_huge_pages(du)
        stream = dg.numel() * dg.element_size() >= _STREAM_BYTES
        _backend.extension().swiglu_backward(_as_numpy(do), _as_numpy(g2), _as_numpy(u2), _as_numpy(dg),
                                             _as_numpy(du), stream, torch.get_num_threads())
        return dg, du


def _run_native(g, u):
    return _Native.apply(_rows(g), _rows(u)).reshape(g.shape)


def _swiglu_cpu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if gate.numel() >= _SMALL and gate.dtype != torch.float64:
        path = _cpu_path(gate)
        if path == "native" and _native_ok(gate.dtype):
            _backend.paths_run["swiglu"] = f"native ({gate.dtype})"
            return _run_native(gate, up)
        if path == "compiled":
            try:
                out = _run_compiled(gate, up)
                _backend.paths_run["swiglu"] = f"compiled ({gate.dtype})"
                return out
            except _CompileFailed:
                _cpu_path(gate)  # records the choice without compilation and why
    _backend.paths_run["swiglu"] = f"eager ({gate.dtype}, {gate.numel()} elements)"
    return _swiglu_fwd(gate, up)


def _triton_ok(t: torch.Tensor) -> bool:
    """The Triton kernels compute in fp32: float64 takes the exact path instead."""
    return t.dtype != torch.float64 and use_triton(t)


@torch.library.custom_op("craft::swiglu_fwd", mutates_args=())
def _swiglu_fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if _triton_ok(gate):
        out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
        _fwd_triton(gate, up, out)
        return out
    return _fwd_math(gate, up)


@_swiglu_fwd.register_fake
def _(gate, up):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@torch.library.custom_op("craft::swiglu_bwd", mutates_args=())
def _swiglu_bwd(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if _triton_ok(gate):
        dg = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
        du = torch.empty(up.shape, dtype=up.dtype, device=up.device)
        _bwd_triton(grad, gate, up, dg, du)
        return dg, du
    return _bwd_math(grad, gate, up)


@_swiglu_bwd.register_fake
def _(grad, gate, up):
    return (torch.empty_like(gate, memory_format=torch.contiguous_format),
            torch.empty_like(up, memory_format=torch.contiguous_format))


def _setup(ctx, inputs, output):
    gate, up = inputs
    ctx.save_for_backward(gate, up)  # only the inputs: silu is recomputed in backward


def _backward(ctx, grad):
    gate, up = ctx.saved_tensors
    return _swiglu_bwd(grad.contiguous() if grad.stride(-1) != 1 else grad, gate, up)


_swiglu_fwd.register_autograd(_backward, setup_context=_setup)


def _check(gate: torch.Tensor, up: torch.Tensor) -> None:
    if not isinstance(gate, torch.Tensor) or not isinstance(up, torch.Tensor):
        raise TypeError("gate, up: expected torch tensors")
    if gate.shape != up.shape:
        raise ValueError(f"gate, up: shapes must match, got {tuple(gate.shape)} and {tuple(up.shape)}")
    if gate.dtype != up.dtype or not gate.is_floating_point():
        raise TypeError(f"gate, up: expected the same floating dtype, got {gate.dtype} and {up.dtype}")
    if gate.device != up.device:
        raise ValueError(f"gate, up: must be on one device, got {gate.device} and {up.device}")
    if gate.dim() == 0:
        raise ValueError("gate: expected at least 1 dimension, got a scalar")


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for any shape ``(..., F)``, fp32/fp16/bf16/fp64; output has gate's dtype."""
    _check(gate, up)
    if gate.device.type == "cpu" and not use_triton(gate):
        if torch.compiler.is_compiling():
            return _fwd_math(gate, up)
        return _swiglu_cpu(gate, up)
    return _swiglu_fwd(gate, up)


def swiglu_packed(gu: torch.Tensor) -> torch.Tensor:
    """SwiGLU of the fused layout ``(..., 2F)`` (gate half first, then up): ``(..., F)``. The halves
    are passed as strided views, never copied."""
    if gu.dim() == 0 or gu.shape[-1] % 2:
        raise ValueError(f"gu: last dimension must be even (gate and up halves), got shape {tuple(gu.shape)}")
    f = gu.shape[-1] // 2
    return swiglu(gu[..., :f], gu[..., f:])


class SwiGLUMLP(nn.Module):
    """LLaMA-style MLP ``down(silu(x W_g) * (x W_u))`` with one fused gate-up projection.

    x (..., dim) -> (..., dim); ``gate_up``: Linear(dim, 2*hidden_dim), ``down``: Linear(hidden_dim, dim).

    Inside a CPU graph compiled for training, the gate and up halves are two matmuls on the weight's
    row halves (the same parameters and values). With one fused matmul, the backward's gradient of
    the (..., 2F) product is a slice-backward of two halves that Inductor writes in two loops, so it
    stores ``sigmoid(gate)`` as a float32 (..., F) buffer between them: a fresh large allocation and
    two extra passes per layer. Two matmuls give two gradients, each one fused loop that recomputes
    the sigmoid. Eager code, inference and Triton keep the fused matmul (the kernels take the
    halves as strided views without a copy).
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.down = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_grad_enabled() and torch.compiler.is_compiling():
            f, w, b = self.down.in_features, self.gate_up.weight, self.gate_up.bias
            gate = F.linear(x, w[:f], None if b is None else b[:f])
            up = F.linear(x, w[f:], None if b is None else b[f:])
            return self.down(swiglu(gate, up))
        return self.down(swiglu_packed(self.gate_up(x)))
