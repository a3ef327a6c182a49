"""The C++ span-attention kernel (CPU) against a float64 plain-PyTorch reference, forward and
backward: head dims 16..128, odd lengths, documents with padding, documents that resume after
another one, grouped-query heads, non-contiguous views, empty batches, fp16/bf16 inputs; its
routing from doc_attention and the model; torch.compile and opcheck. Every check runs each ISA
variant of the kernel this CPU has (AVX-512, AVX2, the portable default) against the same reference."""
import contextlib
import os

import pytest
import torch

from craft_kernels import doc_attention, doc_dense_mask
import craft_kernels as ck
from craft_kernels._backend import cpu_flags
from craft_kernels.native._dispatch import ext
from craft_kernels.span_attention import span_attention
from test_attention import reference_attention


@contextlib.contextmanager
def span_isa(isa: str):
    """Run the kernel's ``isa`` variant inside the block (CRAFT_SPAN_ISA, read by the kernel per call)."""
    before = os.environ.get("CRAFT_SPAN_ISA")
    os.environ["CRAFT_SPAN_ISA"] = isa
    try:
        yield
    finally:
        if before is None:
            del os.environ["CRAFT_SPAN_ISA"]
        else:
            os.environ["CRAFT_SPAN_ISA"] = before


def _runs_here(isa: str) -> bool:
    with span_isa(isa):
        try:
            return ext().span_attention_isa() == isa
        except ValueError:  # the CPU lacks it
            return False


ISAS = [isa for isa in ("avx512", "avx2", "default") if _runs_here(isa)]

# fp32 kernel math (accumulation over <= 128 keys): outputs and gradients within 2e-5 of float64
TOL = {torch.float32: dict(rtol=1e-4, atol=2e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
       torch.float16: dict(rtol=2e-3, atol=2e-3)}


def _ids(B, T, pattern):
    if pattern is None:
        return None
    if pattern == "packed":  # three documents and trailing padding
        row = [0] * (T // 3) + [1] * (T // 3) + [2] * (T // 6) + [-1] * (T - T // 3 * 2 - T // 6)
    elif pattern == "resumed":  # document 0 resumes after document 1: the window is not one run
        row = [0] * (T // 4) + [1] * (T // 4) + [0] * (T - 2 * (T // 4))
    elif pattern == "padding_first":
        row = [-1] * (T // 2) + [5] * (T - T // 2)
    else:
        raise ValueError(pattern)
    return torch.tensor([row] * B)


def _check(B, H, Hkv, T, hd, pattern, dtype=torch.float32, transpose=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if transpose:  # (B, T, H, hd) storage seen as (B, H, T, hd): non-contiguous views
        q = torch.randn(B, T, H, hd, generator=g).to(dtype).transpose(1, 2)
        k = torch.randn(B, T, Hkv, hd, generator=g).to(dtype).transpose(1, 2)
        v = torch.randn(B, T, Hkv, hd, generator=g).to(dtype).transpose(1, 2)
    else:
        q = torch.randn(B, H, T, hd, generator=g).to(dtype)
        k = torch.randn(B, Hkv, T, hd, generator=g).to(dtype)
        v = torch.randn(B, Hkv, T, hd, generator=g).to(dtype)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    ids = _ids(B, T, pattern)
    mask = doc_dense_mask(torch.zeros(B, T, dtype=torch.long) if ids is None else ids, "doc_causal")
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))  # the same (rounded) inputs
    ref = reference_attention(q64, k64, v64, mask)
    go = torch.randn(B, H, T, hd, generator=g).to(dtype)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), go.double())
    tol = TOL[dtype]
    for isa in ISAS:  # each ISA variant against the same reference
        with span_isa(isa):
            out = span_attention(q, k, v, ids)
            grads = torch.autograd.grad(out, (q, k, v), go)
        assert out.dtype == dtype and out.shape == (B, H, T, hd)
        torch.testing.assert_close(out.double(), ref, **tol, msg=lambda m: f"{isa} out: {m}")
        for name, a, b in zip("qkv", grads, ref_grads):
            torch.testing.assert_close(a.double(), b, **tol, msg=lambda m: f"{isa} d{name}: {m}")


def test_every_isa_variant_of_this_cpu_is_checked():
    """The checks below run the AVX2 code path wherever the CPU has AVX2 (and AVX-512 where it has
    it), not only the CPU's best variant."""
    flags = cpu_flags()
    assert "default" in ISAS
    assert ("avx2" in ISAS) == ({"avx2", "fma"} <= flags)
    assert ("avx512" in ISAS) == ({"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags)


@pytest.mark.parametrize("hd", [16, 32, 64, 128])
@pytest.mark.parametrize("T", [1, 5, 37, 70])
@pytest.mark.parametrize("pattern", [None, "packed", "resumed"])
def test_matches_float64_reference(hd, T, pattern):
    _check(2, 3, 3, T, hd, pattern if T >= 4 else None)


@pytest.mark.parametrize("case", ["gqa", "transposed", "padding_first", "long"])
def test_layouts_and_edges(case):
    if case == "gqa":
        _check(2, 4, 2, 45, 32, "packed")
    elif case == "transposed":
        _check(2, 3, 3, 33, 16, "packed", transpose=True)
    elif case == "padding_first":
        _check(1, 2, 2, 20, 16, "padding_first")  # padding rows: zeros out, zero gradients, no NaN
    else:
        _check(1, 2, 2, 300, 16, "resumed", seed=3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_computed_in_fp32(dtype):
    _check(2, 2, 2, 40, 16, "packed", dtype=dtype)


def test_empty_batch():
    q = torch.randn(0, 2, 7, 16, requires_grad=True)
    out = span_attention(q, q, q)
    assert out.shape == (0, 2, 7, 16)
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_doc_attention_routes_here_and_matches_python_twin():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 50, 16, generator=g) for _ in range(3))
    ids = _ids(2, 50, "packed")
    with ck.use_native("cpp"):
        fast = doc_attention(q, k, v, ids, kind="doc_causal")
        causal = doc_attention(q, k, v, None, kind="causal")
    with ck.use_native("python"):  # SDPA with the dense span mask
        slow = doc_attention(q, k, v, ids, kind="doc_causal")
        causal_ref = doc_attention(q, k, v, None, kind="causal")
    torch.testing.assert_close(fast, slow, **TOL[torch.float32])
    torch.testing.assert_close(causal, causal_ref, **TOL[torch.float32])


def test_unsupported_head_dim():
    q = torch.randn(1, 2, 9, 24)
    with pytest.raises(ValueError, match="q: span_attention needs"):
        span_attention(q, q, q)
    out = doc_attention(q, q, q, None, kind="doc_causal")  # falls back to SDPA
    torch.testing.assert_close(out.double(), reference_attention(q, q, q, doc_dense_mask(
        torch.zeros(1, 9, dtype=torch.long), "doc_causal")), **TOL[torch.float32])


def test_bad_ids_shape_is_a_clear_error():
    q = torch.randn(1, 2, 9, 16)
    with pytest.raises(ValueError, match="ids: expected"):
        torch.ops.craft.span_attention_fwd(q, q, q, torch.zeros(1, 8, dtype=torch.int32), 0.25)


def test_compiles_fullgraph_and_passes_opcheck():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 33, 16, generator=g, requires_grad=True) for _ in range(3))
    ids = _ids(2, 33, "packed")
    fn = torch.compile(lambda a, b, c: span_attention(a, b, c, ids), fullgraph=True)
    out = fn(q, k, v)
    ref = span_attention(q, k, v, ids)
    torch.testing.assert_close(out, ref)
    gq = torch.autograd.grad(out.sum(), q)[0]
    torch.testing.assert_close(gq, torch.autograd.grad(ref.sum(), q)[0])
    torch.library.opcheck(torch.ops.craft.span_attention_fwd.default,
                          (q.detach(), k.detach(), v.detach(), ids.int(), 0.25))


@pytest.mark.parametrize("base", [2**31, 2**32, 2**40, -(2**0)])
def test_int64_document_ids_keep_their_identity(base):
    """Ids beyond int32 used to be cast: 2**32 merged with document 0 and 2**31 became padding."""
    g = torch.Generator().manual_seed(3)
    B, H, T, hd = 2, 2, 24, 16
    q, k, v = (torch.randn(B, H, T, hd, generator=g, dtype=torch.float64) for _ in range(3))
    row = [0] * 6 + [base + 1] * 6 + [0] * 6 + [base] * 6 if base > 0 else [0] * 6 + [-1] * 6 + [7] * 12
    ids = torch.tensor([row, row[::-1]], dtype=torch.int64)
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    out = span_attention(qf, kf, vf, ids)
    q64, k64, v64 = (t.requires_grad_() for t in (q, k, v))
    ref = reference_attention(q64, k64, v64, doc_dense_mask(ids, "doc_causal"))
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])
    go = torch.randn(out.shape, generator=g)
    for a, b in zip(torch.autograd.grad(out, (qf, kf, vf), go), torch.autograd.grad(ref, (q64, k64, v64), go.double())):
        torch.testing.assert_close(a.double(), b, **TOL[torch.float32])


@pytest.mark.parametrize("impl", ["cpp", "python"])
def test_ids_below_minus_one_raise_on_every_path(impl):
    q = torch.randn(1, 2, 6, 16)
    ids = torch.tensor([[0, 0, -2, 1, 1, 1]])
    with ck.use_native(impl), pytest.raises(ValueError, match="doc_ids: must be >= 0, or -1 for padding; got -2"):
        doc_attention(q, q, q, ids, kind="doc_causal")
    with pytest.raises(ValueError, match="got -5"):
        span_attention(q, q, q, torch.tensor([[0, -5, 0, 0, 0, 0]], dtype=torch.int32))


# ----------------------------------------------------------------- cross_doc_link as windows
def _random_packing(g, B, T, max_docs=5, linked_first=True):
    """(ids (B, T), links (B, D, D)): rows of random document lengths and trailing padding; with
    ``linked_first`` each document links to some documents just before it (linked packing's
    layout), else links are random (often not a window)."""
    D = max_docs
    ids = torch.full((B, T), -1)
    links = torch.zeros(B, D, D, dtype=torch.bool)
    for b in range(B):
        cuts = sorted(torch.randint(0, T + 1, (D,), generator=g).tolist())
        for d, (s, e) in enumerate(zip([0] + cuts[:-1], cuts)):
            ids[b, s:e] = d
        for d in range(D):
            if linked_first:
                n = int(torch.randint(0, d + 1, (1,), generator=g))
                links[b, d, d - n:d] = True
            else:
                links[b, d] = torch.rand(D, generator=g) < 0.3
    return ids, links


def _is_window(row: torch.Tensor, i: int) -> bool:
    seen = row.nonzero().flatten()
    return len(seen) == 0 or (int(seen[-1]) == i and len(seen) == i - int(seen[0]) + 1)


@pytest.mark.parametrize("linked_first", [True, False])
def test_link_windows_are_the_dense_mask_exactly_or_none(linked_first):
    """Either every row of the cross_doc_link dense mask is the window [starts[i], i] (an empty row:
    starts[i] = i + 1), or link_windows says None and some row is not a window: the kernel path is
    taken exactly when it is exact."""
    from craft_kernels.attention import link_windows
    g = torch.Generator().manual_seed(3)
    taken = 0
    for trial in range(60):
        B, T = 2, int(torch.randint(1, 40, (1,), generator=g))
        ids, links = _random_packing(g, B, T, linked_first=linked_first)
        mask = doc_dense_mask(ids, "cross_doc_link", links)[:, 0]  # (B, T, T)
        starts = link_windows(ids, links, B, T)
        windows = all(_is_window(mask[b, i], i) for b in range(B) for i in range(T))
        assert (starts is not None) == windows, (ids, links)
        if starts is not None:
            taken += 1
            j = torch.arange(T)
            expect = (j[None, None, :] >= starts[:, :, None]) & (j[None, None, :] <= j[None, :, None])
            assert torch.equal(expect, mask)
    assert taken > (40 if linked_first else 0)


@pytest.mark.parametrize("hd", [16, 64])
def test_cross_doc_link_through_the_kernel_matches_float64(hd, monkeypatch):
    """Linked packings take the span kernel with windows (forward and backward against a float64
    reference on the dense mask); non-window links fall back to SDPA with the same result."""
    from craft_kernels import _backend
    monkeypatch.setenv("CRAFT_IMPL_DOC_ATTENTION", "span")
    _backend.reset_dispatch()
    g = torch.Generator().manual_seed(4)
    for linked_first in (True, False):
        ids, links = _random_packing(g, 3, 45, linked_first=linked_first)
        q, k, v = (torch.randn(3, 4, 45, hd, generator=g).requires_grad_() for _ in range(3))
        with ck.use_native("cpp"):
            out = doc_attention(q, k, v, ids, kind="cross_doc_link", links=links)
            path = ck.backend_info()["paths_run"].get("doc_attention", "")
        mask = doc_dense_mask(ids, "cross_doc_link", links)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref = reference_attention(q64, k64, v64, mask)
        go = torch.randn(out.shape, generator=g)
        grads = torch.autograd.grad(out, (q, k, v), go)
        ref_grads = torch.autograd.grad(ref, (q64, k64, v64), go.double())
        torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a.double(), b, **TOL[torch.float32])
        assert path.startswith("span" if linked_first else "sdpa"), path
    monkeypatch.delenv("CRAFT_IMPL_DOC_ATTENTION")
    _backend.reset_dispatch()


def test_bad_window_starts_are_a_clear_error():
    q = torch.randn(1, 2, 9, 16)
    ids = torch.zeros(1, 9, dtype=torch.int32)
    with pytest.raises(ValueError, match="starts: each window start must lie in"):
        torch.ops.craft.span_attention_fwd(q, q, q, ids, 0.25, torch.full((1, 9), 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="starts: expected"):
        torch.ops.craft.span_attention_fwd(q, q, q, ids, 0.25, torch.zeros(1, 8, dtype=torch.int64))
