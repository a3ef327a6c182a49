"""The C++ span-attention kernel at the lengths training uses it at (T up to 2048) against float64
SDPA with a document mask, forward and backward, and bitwise the same on 1 and 2 threads (the
kernel splits (batch, head) pairs between torch's intra-op threads), for each ISA variant the CPU has."""
import pytest
import torch
import torch.nn.functional as F

import craft_kernels as ck
from test_span_attention import ISAS, span_isa

# fp32 accumulation over up to 2048 keys; inputs rounded to fp32 first, so only the kernel's math differs
TOL = dict(rtol=2e-4, atol=5e-5)


def _doc_ids(T: int, seed: int) -> torch.Tensor:
    """Documents of very different lengths (one longer than half the row), a resumed document and
    trailing padding."""
    g = torch.Generator().manual_seed(seed)
    long = T // 2 + 17
    rest = T - long - 9
    cuts = sorted(torch.randperm(rest - 1, generator=g)[:6].add(1).tolist())
    lengths = [b - a for a, b in zip([0, *cuts], [*cuts, rest])]
    row = []
    for d, n in enumerate(lengths[:3]):
        row += [d + 1] * n
    row += [0] * long
    for d, n in enumerate(lengths[3:]):
        row += [d + 4] * n
    row[len(row) - lengths[-1]:] = [1] * lengths[-1]  # document 1 resumes at the end
    return torch.tensor([row + [-1] * 9])


def _reference(q, k, v, ids):
    """float64 SDPA with the dense document mask; padding rows give zeros."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    mask = ck.doc_dense_mask(ids, "doc_causal")
    empty = ~mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                         attn_mask=mask | empty).masked_fill(empty, 0.0)
    return out, (q, k, v)


def _run(q, k, v, ids, go, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with ck.use_native("cpp"):
            out = ck.doc_attention(q, k, v, ids, kind="doc_causal")
            grads = torch.autograd.grad(out, (q, k, v), go)
    finally:
        torch.set_num_threads(before)
    return out, grads


@pytest.mark.parametrize("T,hd", [(2048, 16), (1031, 64)])
def test_long_rows_match_float64_sdpa_and_do_not_depend_on_threads(T, hd):
    g = torch.Generator().manual_seed(T)
    H, Hkv = 4, 2
    q = torch.randn(1, H, T, hd, generator=g, requires_grad=True)
    k = torch.randn(1, Hkv, T, hd, generator=g, requires_grad=True)
    v = torch.randn(1, Hkv, T, hd, generator=g, requires_grad=True)
    ids = _doc_ids(T, seed=T)
    go = torch.randn(1, H, T, hd, generator=g)

    ref, leaves = _reference(q, k, v, ids)
    ref_grads = torch.autograd.grad(ref, leaves, go.double())
    for isa in ISAS:  # each ISA variant of the kernel this CPU has
        with span_isa(isa):
            out1, grads1 = _run(q, k, v, ids, go, threads=1)
            out2, grads2 = _run(q, k, v, ids, go, threads=2)
        assert torch.equal(out1, out2), isa
        for a, b in zip(grads1, grads2):
            assert torch.equal(a, b), isa
        torch.testing.assert_close(out1.double(), ref, **TOL, msg=lambda m: f"{isa} out: {m}")
        for name, a, b in zip("qkv", grads1, ref_grads):
            torch.testing.assert_close(a.double(), b, **TOL, msg=lambda m: f"{isa} d{name}: {m}")
        assert (out1[0, :, -9:] == 0).all()  # padding rows
