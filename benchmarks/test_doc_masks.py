"""Document masks: direct BlockMask vs create_block_mask, decode-step mask vs rebuild, CPU attention paths."""
from conftest import best_time

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from craft_kernels import DocMaskState, doc_attention, doc_block_mask, doc_dense_mask, doc_ids_from_cu_seqlens, doc_mask_mod
from craft_kernels.native import _dispatch


def _ids(T, n_docs, B=1):
    g = torch.Generator().manual_seed(T + n_docs)
    cuts = torch.sort(torch.randperm(T - 1, generator=g)[: n_docs - 1] + 1).values
    cu = torch.cat([torch.tensor([0]), cuts, torch.tensor([T])])
    return doc_ids_from_cu_seqlens(cu, T)[None].expand(B, T).contiguous()


def _links(n_docs, B=1):
    L = torch.zeros(B, n_docs, n_docs, dtype=torch.bool)
    L[:, torch.arange(1, n_docs), torch.arange(n_docs - 1)] = True  # each document links to the previous one
    L[:, torch.arange(2, n_docs), 0] = True  # and to the first
    return L


_compiled_cbm = None


def _compiled_create_block_mask():
    global _compiled_cbm
    if _compiled_cbm is None:
        _compiled_cbm = torch.compile(create_block_mask)
    return _compiled_cbm


# compiled create_block_mask at T=8192 only: it compiles once per shape, which takes long on 2 cores
@pytest.mark.parametrize("T, n_docs, baseline", [(1024, 8, "eager"), (4096, 32, "eager"), (8192, 64, "eager"),
                                                 (8192, 64, "compiled")])
@pytest.mark.parametrize("kind", ["doc_causal", "cross_doc_link"])
def test_block_mask_construction(compare, T, n_docs, kind, baseline):
    ids = _ids(T, n_docs)
    L = _links(n_docs) if kind == "cross_doc_link" else None
    mm = doc_mask_mod(kind, ids, L)
    cbm = create_block_mask if baseline == "eager" else _compiled_create_block_mask()
    base = lambda: cbm(mm, 1, None, T, T, device="cpu")  # noqa: E731
    if baseline == "compiled":
        base()  # compile outside the timing
    bm = doc_block_mask(ids, kind, L)
    assert torch.equal(bm.to_dense(), base().to_dense())
    compare(lambda: doc_block_mask(ids, kind, L), base, baseline_reps=1 if T >= 4096 else 3, rounds=5,
            T=T, n_docs=n_docs, kind=kind, baseline_kind=f"create_block_mask {baseline}",
            block_mask_index_bytes=sum(t.numel() * t.element_size() for t in (bm.kv_indices, bm.full_kv_indices)),
            dense_mask_bytes=T * T)


@pytest.mark.parametrize("kind", ["doc_causal", "cross_doc_link"])
def test_block_mask_construction_32k(compare, kind):
    """T=32768, 64 documents: create_block_mask eager would materialise 32768^2 = 1 GiB of bool plus
    int64 index temporaries several times that, so the baseline here is the compiled one."""
    T, n_docs = 32768, 64
    ids = _ids(T, n_docs)
    L = _links(n_docs) if kind == "cross_doc_link" else None
    mm = doc_mask_mod(kind, ids, L)
    cbm = _compiled_create_block_mask()
    base = lambda: cbm(mm, 1, None, T, T, device="cpu")  # noqa: E731
    base()  # compile outside the timing
    bm = doc_block_mask(ids, kind, L)
    compare(lambda: doc_block_mask(ids, kind, L), base, baseline_reps=1, rounds=3, T=T, n_docs=n_docs, kind=kind,
            baseline_kind="create_block_mask compiled (eager infeasible)",
            block_mask_index_bytes=sum(t.numel() * t.element_size() for t in (bm.kv_indices, bm.full_kv_indices)),
            dense_mask_bytes=T * T)


def _decode_state(T=4096, n_docs=32, room=160):
    """A cross_doc_link cache of T slots, filled to T - room with n_docs linked documents."""
    st = DocMaskState(T, n_docs + 1, kind="cross_doc_link")
    per = (T - room) // n_docs
    for d in range(n_docs):
        st.start_document(d, links_to=[d - 1] if d else [])
        st.append(per)
    st.start_document(n_docs, links_to=[0, n_docs - 1])
    st.append(1)
    return st


def test_decode_step_row_vs_rebuild(compare):
    """CPU path, one decoding step: append a token and get its mask row, vs rebuilding the dense
    mask of the whole cache from doc ids and slicing the row."""
    st = _decode_state()

    def step():
        st.append(1)
        return st.query_mask(1)

    def rebuild():
        return doc_dense_mask(st.doc_ids[None], "cross_doc_link", st.links[None])[:, :, st.length - 1:st.length]

    assert torch.equal(step(), rebuild())
    compare(step, rebuild, baseline_reps=5, rounds=50, T=st.max_len, n_docs=32, path="SDPA row")


def test_decode_step_block_mask_vs_rebuild(compare):
    """CUDA path (measured on CPU tensors), one decoding step: append a token and get its one-row
    BlockMask, vs rebuilding the cache's BlockMask with create_block_mask (eager) for that row."""
    st = _decode_state()
    ids, links = st.doc_ids, st.links

    def step():
        st.append(1)
        return st.block_mask(1)

    def rebuild():
        q = st.length - 1
        mm = doc_mask_mod("cross_doc_link", ids[None], links[None])
        return create_block_mask(lambda b, h, qi, kv: mm(b, h, qi + q, kv), 1, None, 1, st.max_len, device="cpu")

    assert torch.equal(step().to_dense(), rebuild().to_dense())
    t_full = best_time(lambda: doc_block_mask(ids[None], "cross_doc_link", links[None]), 3)
    compare(step, rebuild, baseline_reps=5, rounds=50, T=st.max_len, n_docs=32, path="flex BlockMask",
            full_doc_block_mask_s=round(t_full, 6))


@pytest.mark.parametrize("T", [256, 512, 1024, 2048])
def test_cpu_attention_sdpa_vs_flex_eager(compare, T):
    """doc_attention on CPU (the C++ span kernel at head_dim 64) vs eager flex_attention with our
    BlockMask (built outside the timing); forward only."""
    torch.manual_seed(0)
    B, H, hd = 2, 8, 64
    q, k, v = (torch.randn(B, H, T, hd) for _ in range(3))
    ids = _ids(T, 8, B)
    bm = doc_block_mask(ids, "doc_causal")
    compare(lambda: doc_attention(q, k, v, ids), lambda: flex_attention(q, k, v, block_mask=bm),
            units=B * T, unit_name="tokens", baseline_reps=1 if T >= 1024 else 3, rounds=5 if T < 2048 else 3,
            T=T, B=B, H=H, head_dim=hd, baseline_kind="flex_attention eager")


@pytest.mark.parametrize("shape", [(64, 8, 256, 16), (16, 6, 512, 64)], ids=["tiny_64x8x256x16", "small_16x6x512x64"])
@pytest.mark.parametrize("docs", [False, True], ids=["causal", "doc_causal"])
def test_cpu_span_kernel_fwd_bwd_vs_sdpa(compare, shape, docs):
    """Training attention (forward + backward, fp32): the C++ span kernel vs SDPA's CPU flash kernel,
    is_causal without documents, the dense span mask with 8 documents per row (the Python twin)."""
    torch.manual_seed(0)
    B, H, T, hd = shape
    q, k, v = (torch.randn(B, H, T, hd, requires_grad=True) for _ in range(3))
    go = torch.randn(B, H, T, hd)
    ids = _ids(T, 8, B) if docs else None

    def run(impl):
        def step():
            with _dispatch.use(impl):
                out = doc_attention(q, k, v, ids, kind="doc_causal")
            torch.autograd.grad(out, (q, k, v), go)
        return step

    compare(run("cpp"), run("python"), units=B * T, unit_name="tokens", baseline_reps=3, rounds=5,
            shape="x".join(map(str, shape)), docs=8 if docs else 1,
            baseline_kind="sdpa + dense span mask" if docs else "sdpa is_causal")
