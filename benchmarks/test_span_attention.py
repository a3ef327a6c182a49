"""Span attention forward + backward (fp32) on CPU against what a user runs instead: SDPA with
``is_causal`` (one document per row) and SDPA with the dense document mask (8 documents per row),
timed interleaved, T = 256 ... 2048. The kernel is measured per ISA variant (``CRAFT_SPAN_ISA``:
the AVX-512 and AVX2 code paths of csrc/span_attention.cpp, each where the CPU has it). Also
recorded: which path ``doc_attention`` dispatch takes on this machine for the case, and its ratio
to the same baseline (the default path must never lose)."""
import pytest
import torch
import torch.nn.functional as F

from _harness import interleaved
from craft_kernels import _backend, doc_attention, doc_dense_mask, doc_ids_from_cu_seqlens
from craft_kernels._backend import cpu_flags
from craft_kernels.native._dispatch import ext
from craft_kernels.span_attention import span_attention

B, H, HD = 4, 8, 16
ISAS = [i for i, flag in (("avx512", "avx512f"), ("avx2", "avx2")) if flag in cpu_flags()]


def _ids(T, n_docs, batch):
    g = torch.Generator().manual_seed(T + n_docs)
    cuts = torch.sort(torch.randperm(T - 1, generator=g)[: n_docs - 1] + 1).values
    cu = torch.cat([torch.tensor([0]), cuts, torch.tensor([T])])
    return doc_ids_from_cu_seqlens(cu, T)[None].expand(batch, T).contiguous()


@pytest.fixture
def span_isa(request, monkeypatch):
    monkeypatch.setenv("CRAFT_SPAN_ISA", request.param)
    assert ext().span_attention_isa() == request.param
    return request.param


@pytest.mark.parametrize("span_isa", ISAS, indirect=True)
@pytest.mark.parametrize("docs", [False, True], ids=["causal", "docs"])
@pytest.mark.parametrize("T", [256, 512, 1024, 2048])
def test_span_fwd_bwd_vs_sdpa(compare, span_isa, docs, T):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, HD, requires_grad=True) for _ in range(3))
    go = torch.randn(B, H, T, HD)
    ids = _ids(T, 8, B) if docs else None
    mask = doc_dense_mask(ids, "doc_causal") if docs else None  # built once, outside the timing

    def grads(out):
        torch.autograd.grad(out, (q, k, v), go)

    def ours():
        grads(span_attention(q, k, v, ids))

    def sdpa():
        grads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not docs))

    # what doc_attention picks here for this case (calibrated with this ISA variant), and how it fares
    _backend.reset_dispatch()  # the cache is keyed by CRAFT_SPAN_ISA too

    def default_path():
        grads(doc_attention(q, k, v, ids, kind="doc_causal"))

    default_path()
    path = _backend.paths_run["doc_attention"].split()[0]
    default_ratio = interleaved(default_path, sdpa, rounds=3)["ratio"]
    rounds = 5 if T <= 512 else 3
    compare(ours, sdpa, units=B * T, unit_name="tokens", rounds=rounds, shape=f"{B}x{H}x{T}x{HD}", T=T,
            docs=8 if docs else 1, isa_variant=span_isa,
            baseline_kind="sdpa + dense document mask" if docs else "sdpa is_causal",
            dispatch_path=path, dispatch_speedup_vs_baseline=round(default_ratio, 3))
