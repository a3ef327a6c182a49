"""Document masks: direct BlockMask vs create_block_mask, decode-step update vs rebuild, CPU attention."""
import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from craft_kernels import DocMaskState, doc_attention, doc_block_mask, doc_dense_mask, doc_ids_from_cu_seqlens, doc_mask_mod


def _ids(T, n_docs, B=1):
    g = torch.Generator().manual_seed(T + n_docs)
    cuts = torch.sort(torch.randperm(T - 1, generator=g)[: n_docs - 1] + 1).values
    cu = torch.cat([torch.tensor([0]), cuts, torch.tensor([T])])
    return doc_ids_from_cu_seqlens(cu, T)[None].expand(B, T).contiguous()


def _links(n_docs, B=1):
    L = torch.zeros(B, n_docs, n_docs, dtype=torch.bool)
    L[:, torch.arange(1, n_docs), torch.arange(n_docs - 1)] = True  # each document links to the previous one
    return L


@pytest.mark.parametrize("T, n_docs", [(1024, 8), (4096, 32), (8192, 64)])
@pytest.mark.parametrize("kind", ["doc_causal", "cross_doc_link"])
@pytest.mark.parametrize("baseline", ["eager", "compiled"])
def test_block_mask_construction(compare, T, n_docs, kind, baseline):
    ids = _ids(T, n_docs)
    L = _links(n_docs) if kind == "cross_doc_link" else None
    mm = doc_mask_mod(kind, ids, L)
    base = lambda: create_block_mask(mm, 1, None, T, T, _compile=baseline == "compiled")  # noqa: E731
    if baseline == "compiled":
        base()  # compile outside the timing
    reps = 1 if (baseline == "eager" and T >= 4096) else 3
    bm = doc_block_mask(ids, kind, L)
    compare(lambda: doc_block_mask(ids, kind, L), base, baseline_reps=reps, rounds=5, T=T, n_docs=n_docs, kind=kind,
            baseline_kind=baseline, kv_index_bytes=bm.kv_indices.numel() * 4,
            dense_mask_bytes=T * T)


def test_decode_step_mask_update_vs_rebuild(compare):
    T, n_docs = 4096, 32
    st = DocMaskState(T + 1, n_docs + 1, kind="cross_doc_link")
    per = T // n_docs
    for d in range(n_docs):
        st.start_document(d, links_to=[d - 1] if d else [])
        st.append(per)
    links = st.links[None]

    def step():  # what one decoding step needs: the next token's mask row
        st.append(1)
        m = st.query_mask(1)
        st.length -= 1  # undo, to time the same step every round
        st.doc_ids[st.length] = -1
        return m

    def rebuild():  # rebuild the whole T x T mask and slice the last row
        return doc_dense_mask(st.doc_ids[None, : T + 1].clone().clamp(min=-1), "cross_doc_link", links)[:, :, -1:]

    compare(step, rebuild, baseline_reps=3, rounds=20, T=T, n_docs=n_docs)


@pytest.mark.parametrize("T", [256, 512, 1024, 2048])
def test_cpu_attention_sdpa_vs_flex_eager(compare, T):
    torch.manual_seed(0)
    B, H, hd = 4, 8, 64
    q, k, v = (torch.randn(B, H, T, hd) for _ in range(3))
    ids = _ids(T, 8, B)
    bm = doc_block_mask(ids, "doc_causal")
    compare(lambda: doc_attention(q, k, v, ids), lambda: flex_attention(q, k, v, block_mask=bm),
            units=B * T, unit_name="tokens", baseline_reps=3, rounds=5, T=T)
