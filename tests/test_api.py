"""The public API of craft_kernels: what craft may import, the backend switches it publishes, and
the documented shape of the package (every public name is listed and importable)."""
import ast
from pathlib import Path

import pytest
import torch

import craft_kernels as ck

ROOT = Path(__file__).resolve().parents[1]

# files whose owners still import a private craft_kernels module; switch them to the public names
# (craft_kernels.bf16_is_fast, craft_kernels.format_backend_info) and empty this set
PENDING: set[str] = set()


def _private_imports(path: Path) -> list[str]:
    """``craft_kernels.<submodule>`` imports in one file (only ``craft_kernels`` itself is public)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("craft_kernels."):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("craft_kernels.")]
    return found


def test_craft_uses_only_the_public_craft_kernels_api():
    offenders = {}
    for path in sorted((ROOT / "craft").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel not in PENDING and (mods := _private_imports(path)):
            offenders[rel] = mods
    assert not offenders, f"import these names from craft_kernels instead: {offenders}"


def test_every_public_name_is_exported_and_documented():
    doc = ck.__doc__
    for name in ck.__all__:
        assert getattr(ck, name) is not None
        assert f"``{name}" in doc, f"craft_kernels.__doc__ does not list {name}"
    assert sorted(set(ck.__all__)) == sorted(ck.__all__)


def test_use_native_selects_the_implementation_and_restores_it():
    before = ck.native_impl()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(3))
    ids = ck.doc_ids_from_spans([[(0, 17, 0), (17, 40, 1)]], 40)
    outs = {}
    for impl in ("cpp", "python"):
        with ck.use_native(impl):
            assert ck.native_impl() == impl
            outs[impl] = ck.doc_attention(q, k, v, ids)
        assert ck.native_impl() == before
    torch.testing.assert_close(outs["cpp"], outs["python"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="'cpp' or 'python'"):
        with ck.use_native("rust"):
            pass


def test_bf16_is_fast_matches_the_cpu_flags():
    assert ck.bf16_is_fast("cpu") == ck.backend_info()["cpu"]["bf16"]["fast"]
    assert "extension:" in ck.format_backend_info()


@pytest.mark.parametrize("kind", ["doc_causal", "cross_doc_link"])
def test_doc_attention_computes_half_precision_in_fp32_on_cpu(kind):
    # every CPU path does fp32 math for fp16/bf16 (the span kernel always did; SDPA did bf16 math)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 33, 24, generator=g).bfloat16() for _ in range(3))  # head dim 24: SDPA path
    ids = ck.doc_ids_from_spans([[(0, 10, 0), (10, 33, 1)]] * 2, 33)
    links = torch.tensor([[False, False], [True, False]]).expand(2, 2, 2) if kind == "cross_doc_link" else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ck.doc_attention(q, k, v, ids, kind, links)
    want = ck.doc_attention(q.float(), k.float(), v.float(), ids, kind, links).bfloat16()
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want)
