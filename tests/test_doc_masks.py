import random

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from craft_kernels import (
    MASK_KINDS, DocMaskState, doc_attention, doc_block_mask, doc_dense_mask, doc_ids_from_cu_seqlens,
    doc_ids_from_spans, doc_mask_mod, links_from_edges,
)


def _batch(T, seed=0, n_docs=4):
    rng = random.Random(seed)
    rows = []
    for _ in range(2):
        cuts = sorted(rng.sample(range(1, T), n_docs - 1))
        bounds = [0] + cuts + [T]
        spans = [(bounds[i], bounds[i + 1], i) for i in range(n_docs)]
        spans[-1] = (spans[-1][0], max(spans[-1][0], T - rng.randint(0, 9)), n_docs - 1)  # trailing padding
        rows.append(spans)
    ids = doc_ids_from_spans(rows, T)
    links = links_from_edges([[(2, 0), (3, 1)], [(1, 3), (0, 2)]], n_docs, batch_size=2)
    return ids, links


def _links(kind, links):
    return links if kind == "cross_doc_link" else None


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("T, block", [(256, 128), (300, 64), (77, 16), (129, 128)])
def test_block_mask_equals_create_block_mask(kind, T, block):
    ids, links = _batch(T, seed=T)
    L = _links(kind, links)
    ours = doc_block_mask(ids, kind, L, block_size=block)
    ref = create_block_mask(doc_mask_mod(kind, ids, L), 2, None, T, T, BLOCK_SIZE=block)
    assert torch.equal(ours.to_dense(), ref.to_dense())
    assert torch.equal(ours.full_kv_num_blocks, ref.full_kv_num_blocks)
    assert torch.equal(ours.kv_num_blocks, ref.kv_num_blocks)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_dense_mask_equals_mask_mod_everywhere(kind):
    T = 50
    ids, links = _batch(T, seed=3)
    L = _links(kind, links)
    dense = doc_dense_mask(ids, kind, L)
    mm = doc_mask_mod(kind, ids, L)
    b, q, k = torch.meshgrid(torch.arange(2), torch.arange(T), torch.arange(T), indexing="ij")
    assert torch.equal(dense[:, 0], mm(b, 0, q, k))
    # spot-check the definitions
    d = ids[0]
    i, j = 40, 5
    expect = {"causal": j <= i, "full": True, "doc_causal": d[i] == d[j], "doc_bidirectional": d[i] == d[j]}
    if kind in expect and d[i] >= 0 and d[j] >= 0:
        assert bool(dense[0, 0, i, j]) == bool(expect[kind])


def test_padding_never_attends_or_is_attended():
    ids = torch.tensor([[0, 0, -1, 1, 1, -1]])
    for kind in MASK_KINDS:
        m = doc_dense_mask(ids, kind, torch.ones(1, 2, 2, dtype=torch.bool) if kind == "cross_doc_link" else None)
        assert not m[0, 0, 2].any() and not m[0, 0, :, 2].any() and not m[0, 0, 5].any()


def test_cross_doc_link_sees_linked_document_everywhere():
    ids = torch.tensor([[0, 0, 1, 1, 2, 2]])
    links = links_from_edges([(1, 0), (1, 2)], 3)[None]
    m = doc_dense_mask(ids, "cross_doc_link", links)[0, 0]
    assert m[2, :2].all() and m[2, 4:].all() and m[2, 2] and not m[2, 3]
    assert not m[0, 2:].any()  # no reverse link


def _reference_attention(q, k, v, mask, scale=None):
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = (q @ k.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("hkv", [4, 2])
def test_doc_attention_cpu_vs_flex_eager_vs_float64(kind, hkv):
    torch.manual_seed(0)
    T = 70
    ids, links = _batch(T, seed=11)
    L = _links(kind, links)
    q = torch.randn(2, 4, T, 16, requires_grad=True)
    k = torch.randn(2, hkv, T, 16, requires_grad=True)
    v = torch.randn(2, hkv, T, 16, requires_grad=True)
    out = doc_attention(q, k, v, ids, kind, L)
    mask = doc_dense_mask(ids, kind, L)
    ref = _reference_attention(q, k, v, mask)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    flex = flex_attention(q.detach(), k.detach(), v.detach(), block_mask=doc_block_mask(ids, kind, L, block_size=32), enable_gqa=hkv != 4)
    rows = mask.any(-1, keepdim=True)  # compare rows that see something (flex has no CPU backward: forward only)
    torch.testing.assert_close(out.detach() * rows, flex.detach() * rows, rtol=1e-4, atol=1e-5)
    # backward vs float64 autograd
    do = torch.randn_like(out)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), do)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    rq, rk, rv = torch.autograd.grad(_reference_attention(*leaves, mask), leaves, do.double())
    for a, b in ((gq, rq), (gk, rk), (gv, rv)):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(gq).all() and torch.isfinite(gk).all()


def test_padding_rows_give_zeros_not_nan():
    ids = torch.tensor([[0, 0, 0, -1, -1]])
    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    out = doc_attention(q, q.detach(), q.detach(), ids)
    assert torch.isfinite(out).all() and out[0, :, 3:].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_cu_seqlens_helper():
    assert doc_ids_from_cu_seqlens([0, 2, 5], T=7).tolist() == [0, 0, 1, 1, 1, -1, -1]


@pytest.mark.parametrize("call, match", [
    (lambda: doc_ids_from_spans([(0, 5, 0), (3, 8, 1)], 10), "non-overlapping"),
    (lambda: doc_ids_from_spans([(0, 12, 0)], 10), r"within \[0, 10\]"),
    (lambda: doc_dense_mask(torch.tensor([[0, 1, 2]]), "cross_doc_link", torch.zeros(1, 2, 2, dtype=torch.bool)),
     "beyond links' Dmax=2"),
    (lambda: doc_dense_mask(torch.tensor([[0, 1]]), "sliding"), "kind: expected one of"),
    (lambda: doc_dense_mask(torch.tensor([[0, -2]]), "doc_causal"), "doc_ids: must be >= 0"),
    (lambda: doc_attention(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4),
                           torch.zeros(1, 6, dtype=torch.long)), r"doc_ids: expected shape \(B=1, T=5\)"),
    (lambda: doc_attention(torch.randn(1, 3, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)), "must divide"),
    (lambda: doc_dense_mask(torch.tensor([[0, 1]]), "doc_causal", torch.zeros(1, 2, 2, dtype=torch.bool)),
     "only the 'cross_doc_link' kind"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------ incremental state for decoding
@pytest.mark.parametrize("kind", ["cross_doc_link", "doc_causal", "causal"])
@pytest.mark.parametrize("seed", range(6))
def test_state_matches_rebuild_after_random_operations(kind, seed):
    rng = random.Random(seed)
    max_len, max_docs = 96, 8
    st = DocMaskState(max_len, max_docs, kind=kind, block_size=32)
    seq: list[int] = []  # doc of every live slot, rebuilt from scratch
    edges: set[tuple[int, int]] = set()
    live, next_doc = [], 0
    for _ in range(40):
        op = rng.random()
        if (st.current_doc is None or op < 0.25) and next_doc < max_docs:
            links_to = rng.sample(live, min(len(live), rng.randint(0, 2)))
            st.start_document(next_doc, links_to)
            edges |= {(next_doc, t) for t in links_to}
            live.append(next_doc)
            next_doc += 1
        elif op < 0.35 and len(live) > 1:
            d = rng.choice([x for x in live if x != st.current_doc] or live)
            st.evict(d)
            live.remove(d)
            edges = {(a, b) for a, b in edges if d not in (a, b)}
            seq = [x if x != d else -1 for x in seq]
            keep = st.compact()
            assert keep.tolist() == [i for i, x in enumerate(seq) if x >= 0]
            seq = [x for x in seq if x >= 0]
            continue
        if st.current_doc is None:
            continue
        n = rng.randint(1, 4)
        if st.length + n > max_len:
            break
        slots = st.append(n)
        assert slots.tolist() == list(range(len(seq), len(seq) + n))
        seq += [st.current_doc] * n
        ids = torch.tensor([seq + [-1] * (max_len - len(seq))])
        links = links_from_edges(sorted(edges), max_docs)[None] if kind == "cross_doc_link" else None
        full = doc_dense_mask(ids, kind, links)[0, 0]
        qm = st.query_mask(n)[0, 0]
        assert torch.equal(qm, full[len(seq) - n:len(seq)])
        bm = st.block_mask(n)
        dense_blocks = full[len(seq) - n:len(seq)].view(n, -1, 32).any(-1).any(0)
        assert torch.equal(bm.to_dense()[0, 0, 0], dense_blocks)


def test_state_errors():
    st = DocMaskState(4, 2)
    with pytest.raises(RuntimeError, match="start_document"):
        st.append(1)
    st.start_document(0)
    st.append(4)
    with pytest.raises(ValueError, match="do not fit"):
        st.append(1)
    with pytest.raises(ValueError, match="outside"):
        st.start_document(5)
