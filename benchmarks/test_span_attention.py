"""Span attention forward + backward (fp32) on CPU against what a user runs instead: SDPA with
``is_causal`` (one document per row) and SDPA with the dense document mask (8 documents per row),
timed interleaved, T = 256 ... 2048. The kernel is measured per ISA variant (``CRAFT_SPAN_ISA``:
the AVX-512 and AVX2 code paths of csrc/span_attention.cpp, each where the CPU has it). Also
recorded: which path ``doc_attention`` dispatch takes on this machine for the case, and its ratio
to the same baseline (the default path must never lose).

A fair AVX2 comparison restricts the baseline too: torch picks its vector kernels once, at import,
so run the file in a process started with torch held to AVX2 (the kernel's AVX2 variant alone
then runs, against an AVX2 SDPA)::

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python -m pytest benchmarks/test_span_attention.py --benchmark-only

On an AVX-512 CPU that is AVX2 emulated on an AVX-512 machine (same caches, clocks and memory),
not an AVX2 machine. Without the restriction the AVX2 rows are mixed (AVX2 kernel against
AVX-512 torch) and say so in ``comparison``."""
import os

import pytest
import torch
import torch.nn.functional as F

from _harness import interleaved
from craft_kernels import _backend, doc_attention, doc_dense_mask, doc_ids_from_cu_seqlens
from craft_kernels._backend import cpu_flags
from craft_kernels.native._dispatch import ext
from craft_kernels.span_attention import span_attention

B, H, HD = 4, 8, 16
TORCH_ISA = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
_ORDER = {"default": 0, "avx2": 1, "avx512": 2}
_TORCH_LEVEL = {"AVX512": 2, "AVX2": 1}.get(TORCH_ISA, 0)
# the kernel variants the CPU has, none above torch's own level when torch is held below the CPU's
ISAS = [i for i, flag in (("avx512", "avx512f"), ("avx2", "avx2")) if flag in cpu_flags()
        and (_ORDER[i] <= _TORCH_LEVEL or _TORCH_LEVEL == 0)]


def _comparison(isa: str) -> str:
    """How the kernel variant and the baseline's ISA compare, in words for the results table."""
    if _ORDER[isa] == _TORCH_LEVEL:
        emulated = isa == "avx2" and "avx512f" in cpu_flags()
        return f"fair: {isa} kernel vs torch {TORCH_ISA}" + (" (AVX2 emulated on an AVX-512 CPU)" if emulated else "")
    return f"mixed: {isa} kernel vs torch {TORCH_ISA}"


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
            docs=8 if docs else 1, isa_variant=span_isa, baseline_torch_isa=TORCH_ISA,
            comparison=_comparison(span_isa), load_avg_1min=round(os.getloadavg()[0], 2),
            baseline_kind="sdpa + dense document mask" if docs else "sdpa is_causal",
            dispatch_path=path, dispatch_speedup_vs_baseline=round(default_ratio, 3))


@pytest.mark.parametrize("T", [320, 1024])
def test_window_fwd_bwd_vs_sdpa_band_mask(compare, T):
    """``doc_attention(..., window=64)`` (the hierarchical LM's byte blocks: B 8, 2 heads of 32)
    against what a user writes instead: SDPA with the dense band mask, built once outside the timing."""
    Bw, Hw, HDw, W = 8, 2, 32, 64
    torch.manual_seed(0)
    q, k, v = (torch.randn(Bw, Hw, T, HDw, requires_grad=True) for _ in range(3))
    go = torch.randn(Bw, Hw, T, HDw)
    d = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    band = (d >= 0) & (d < W)

    def ours():
        torch.autograd.grad(doc_attention(q, k, v, None, "causal", window=W), (q, k, v), go)

    def sdpa():
        torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=band), (q, k, v), go)

    ours()
    path = _backend.paths_run["doc_attention"]
    compare(ours, sdpa, units=Bw * T, unit_name="tokens", rounds=7, shape=f"{Bw}x{Hw}x{T}x{HDw}", T=T,
            window=W, dispatch_path=path, load_avg_1min=round(os.getloadavg()[0], 2),
            baseline_kind="sdpa + dense band mask")
