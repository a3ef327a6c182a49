"""doc_attention on CPU == eager flex_attention (same mask) == float64 plain-PyTorch reference."""
import random

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from craft_kernels import MASK_KINDS, doc_attention, doc_block_mask, doc_dense_mask, doc_ids_from_spans

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _ids(T, B=2, n_docs=4, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(B):
        cuts = sorted(rng.sample(range(1, T), n_docs - 1))
        bounds = [0] + cuts + [T]
        spans = [(bounds[i], bounds[i + 1], i) for i in range(n_docs)]
        spans[-1] = (spans[-1][0], max(spans[-1][0], T - rng.randint(1, 9)), n_docs - 1)  # trailing padding
        rows.append(spans)
    return doc_ids_from_spans(rows, T)


def _links(kind, B=2, D=4):
    if kind != "cross_doc_link":
        return None
    L = torch.zeros(B, D, D, dtype=torch.bool)
    L[0, 2, 0] = L[0, 3, 1] = L[1, 1, 3] = L[1, 0, 2] = True  # row 1 links to later documents
    return L


def reference_attention(q, k, v, mask, scale=None):
    """float64 softmax attention in plain PyTorch; rows with no visible key give zeros."""
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


def _qkv(B, H, Hkv, T, hd, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, hd, generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, Hkv, T, hd, generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, Hkv, T, hd, generator=g).to(dtype).requires_grad_()
    return q, k, v


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_cpu_equals_flex_eager_and_float64_forward_backward(kind, hkv):
    T = 70
    ids, L = _ids(T, seed=11), _links(kind)
    q, k, v = _qkv(2, 4, hkv, T, 16, seed=hkv)
    out = doc_attention(q, k, v, ids, kind, L)
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    mask = doc_dense_mask(ids, kind, L)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, mask), **TOL[torch.float32])
    # eager flex with our BlockMask (flex has no CPU backward in torch 2.13: forward only)
    flex = flex_attention(q.detach(), k.detach(), v.detach(), block_mask=doc_block_mask(ids, kind, L, block_size=32),
                          enable_gqa=hkv != 4)
    torch.testing.assert_close(out.detach(), flex, **TOL[torch.float32])
    # backward vs float64 autograd
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(reference_attention(*leaves, mask), leaves, do.double())
    for a, b in zip(grads, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtypes_and_scale(dtype):
    T = 33
    ids = _ids(T, seed=2)
    q, k, v = _qkv(2, 2, 2, T, 8, dtype=dtype, seed=3)
    out = doc_attention(q, k, v, ids, "cross_doc_link", _links("cross_doc_link"), scale=0.3)
    assert out.dtype == dtype
    ref = reference_attention(q, k, v, doc_dense_mask(ids, "cross_doc_link", _links("cross_doc_link")), scale=0.3)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])


def test_non_contiguous_inputs():
    T = 40
    ids = _ids(T, seed=4)
    base = torch.randn(2, T, 4, 8)  # (B, T, H, hd) layout, transposed to (B, H, T, hd): not contiguous
    q = base.transpose(1, 2)
    kv = torch.randn(2, T, 2, 8).transpose(1, 2)
    assert not q.is_contiguous()
    out = doc_attention(q, kv, kv, ids)
    ref = reference_attention(q, kv, kv, doc_dense_mask(ids, "doc_causal"))
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_no_doc_ids_is_one_document(kind):
    q, k, v = _qkv(1, 2, 1, 19, 8, seed=5)
    out = doc_attention(q, k, v, None, kind, torch.zeros(1, 1, 1, dtype=torch.bool) if kind == "cross_doc_link" else None)
    ref = reference_attention(q, k, v, doc_dense_mask(torch.zeros(1, 19, dtype=torch.long), kind,
                                                      None if kind != "cross_doc_link" else torch.zeros(1, 1, 1, dtype=torch.bool)))
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])


@pytest.mark.parametrize("hd", [16, 8], ids=["span", "sdpa"])  # the span kernel takes head dim 16, not 8
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_window_sees_exactly_the_last_window_keys_forward_backward(hd, dtype):
    """``window=W``: query i attends keys i-W+1..i (fewer at the start), grouped-query heads too;
    outputs and gradients equal the float64 reference with that band mask. A window that covers
    the row is plain causal attention."""
    T, W = 37, 5
    q, k, v = _qkv(2, 4, 2, T, hd, dtype, seed=7)
    go = torch.randn(2, 4, T, hd, generator=torch.Generator().manual_seed(8)).to(dtype)
    pos = torch.arange(T)
    d = pos[:, None] - pos[None, :]
    for window, mask in ((W, (d >= 0) & (d < W)), (T, d >= 0)):
        out = doc_attention(q, k, v, None, "causal", window=window)
        grads = torch.autograd.grad(out, (q, k, v), go)
        ref = reference_attention(q, k, v, mask)
        ref_grads = torch.autograd.grad(ref, (q, k, v), go.double())
        torch.testing.assert_close(out.double(), ref, **TOL[dtype])
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g.double(), r.double(), **{k_: 4 * t for k_, t in TOL[dtype].items()})


@pytest.mark.parametrize("window, ids, match", [(0, None, "window: expected an int >= 1"),
                                                (2.0, None, "window: expected an int >= 1"),
                                                (3, torch.zeros(1, 5, dtype=torch.long), "drop window")])
def test_window_bad_inputs(window, ids, match):
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match=match):
        doc_attention(q, q, q, ids, "causal", window=window)


def test_padding_rows_give_zeros_not_nan_forward_and_backward():
    ids = torch.tensor([[0, 0, 0, -1, -1], [-1, -1, -1, -1, -1]])  # the second row is all padding
    q, k, v = _qkv(2, 2, 2, 5, 8, seed=6)
    out = doc_attention(q, k, v, ids)
    assert torch.isfinite(out).all()
    assert out[0, :, 3:].abs().max() == 0 and out[1].abs().max() == 0
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert q.grad[0, :, 3:].abs().max() == 0 and k.grad[0, :, 3:].abs().max() == 0 and q.grad[1].abs().max() == 0


def test_empty_batch():
    q, k, v = _qkv(0, 2, 2, 6, 8)
    out = doc_attention(q, k, v, torch.zeros(0, 6, dtype=torch.long))
    assert out.shape == (0, 2, 6, 8)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: doc_attention(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4),
                           torch.zeros(1, 6, dtype=torch.long)), ValueError, r"doc_ids: expected shape \(B=1, T=5\)"),
    (lambda: doc_attention(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)),
     ValueError, "T=5"),
    (lambda: doc_attention(torch.randn(1, 3, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)),
     ValueError, "must divide"),
    (lambda: doc_attention(torch.randn(2, 5, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4)), ValueError, "q: expected"),
    (lambda: doc_attention(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4).double(), torch.randn(1, 2, 5, 4)),
     ValueError, "share dtype"),
    (lambda: doc_attention(torch.ones(1, 1, 2, 2, dtype=torch.long), torch.ones(1, 1, 2, 2, dtype=torch.long),
                           torch.ones(1, 1, 2, 2, dtype=torch.long)), TypeError, "floating"),
    (lambda: doc_attention(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4),
                           torch.zeros(1, 5, dtype=torch.long), kind="sliding"), ValueError, "kind"),
    (lambda: doc_attention(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4),
                           torch.zeros(1, 5, dtype=torch.long), block_mask="x"), TypeError, "block_mask"),
    (lambda: doc_attention(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4),
                           torch.zeros(1, 5, dtype=torch.long),
                           block_mask=doc_block_mask(torch.zeros(1, 6, dtype=torch.long))), ValueError, "lengths"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
