"""Document masks: direct BlockMask == create_block_mask, dense == mask_mod, helpers, bad inputs."""
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask

from craft_kernels import (
    MASK_KINDS, doc_block_mask, doc_dense_mask, doc_ids_from_cu_seqlens, doc_ids_from_spans, doc_mask_mod,
    links_from_edges,
)
from craft_kernels import doc_masks


def _packed(T, n_docs, B=2, seed=0, pad_every=0):
    """Packed rows: n_docs contiguous documents, trailing padding, optional padding inside."""
    rng = random.Random(seed)
    rows = []
    for _ in range(B):
        cuts = sorted(rng.sample(range(1, T), n_docs - 1)) if T > n_docs else list(range(1, n_docs))
        bounds = [0] + cuts + [T]
        spans = [(bounds[i], bounds[i + 1], i) for i in range(n_docs)]
        spans[-1] = (spans[-1][0], max(spans[-1][0], T - rng.randint(0, 9)), n_docs - 1)
        rows.append(spans)
    ids = doc_ids_from_spans(rows, T)
    if pad_every:
        ids[:, ::pad_every] = -1
    return ids


def _links(kind, B, D, seed=0, p=0.3):
    if kind != "cross_doc_link":
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, D, D, generator=g) < p


def _assert_same_block_mask(ids, kind, links, bs):
    B, T = ids.shape
    ours = doc_block_mask(ids, kind, links, block_size=bs)
    ref = create_block_mask(doc_mask_mod(ids, kind, links), B, None, T, T, BLOCK_SIZE=bs)
    assert torch.equal(ours.to_dense(), ref.to_dense())
    assert torch.equal(ours.kv_num_blocks, ref.kv_num_blocks)
    assert torch.equal(ours.full_kv_num_blocks, ref.full_kv_num_blocks)
    # the block lists name the same blocks (order within a row is free)
    for num, a, b in ((ours.kv_num_blocks, ours.kv_indices, ref.kv_indices),
                      (ours.full_kv_num_blocks, ours.full_kv_indices, ref.full_kv_indices)):
        assert num.dtype == torch.int32
        for bi in range(B):
            for qi in range(num.shape[2]):
                k = int(num[bi, 0, qi])
                assert sorted(a[bi, 0, qi, :k].tolist()) == sorted(b[bi, 0, qi, :k].tolist())
    return ours


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("T, block, pad_every", [(256, 128, 0), (300, 64, 0), (77, 16, 7), (129, 128, 0),
                                                  (40, 1, 5), (33, 3, 0)])
def test_block_mask_equals_create_block_mask(kind, T, block, pad_every):
    ids = _packed(T, 4, seed=T, pad_every=pad_every)
    _assert_same_block_mask(ids, kind, _links(kind, 2, 4, seed=T), block)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_block_mask_with_full_diagonal_blocks(kind):
    """Dense links (every document sees every other and itself) make diagonal blocks full."""
    ids = _packed(96, 3, B=3, seed=5)
    links = torch.ones(3, 3, 3, dtype=torch.bool) if kind == "cross_doc_link" else None
    bm = _assert_same_block_mask(ids, kind, links, 16)
    if kind in ("cross_doc_link", "full", "doc_bidirectional"):
        assert int(bm.full_kv_num_blocks.sum()) > 0


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_block_mask_non_monotone_and_fragmented_ids(kind):
    """Ids that are not sorted (a document resumed later) and ids that change every token (the
    position-by-position fallback) are handled exactly too."""
    ids = torch.tensor([[0] * 20 + [1] * 15 + [0] * 10 + [-1] * 3 + [2] * 30])
    _assert_same_block_mask(ids, kind, _links(kind, 1, 3, seed=1, p=0.5), 8)
    g = torch.Generator().manual_seed(2)
    noisy = torch.randint(-1, 3, (2, 70), generator=g)
    old = doc_masks._MIN_RUN_TABLE
    try:
        doc_masks._MIN_RUN_TABLE = 0  # ids with ~50 runs in 70 tokens: the fallback path
        _assert_same_block_mask(noisy, kind, _links(kind, 2, 3, seed=3, p=0.5), 8)
    finally:
        doc_masks._MIN_RUN_TABLE = old
    _assert_same_block_mask(noisy, kind, _links(kind, 2, 3, seed=3, p=0.5), 8)  # the run-table path


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_block_mask_random(data):
    B = data.draw(st.integers(1, 3))
    T = data.draw(st.integers(1, 70))
    D = data.draw(st.integers(1, 5))
    bs = data.draw(st.sampled_from([1, 2, 5, 8, 16, 32]))
    kind = data.draw(st.sampled_from(MASK_KINDS))
    ids = torch.tensor([data.draw(st.lists(st.integers(-1, D - 1), min_size=T, max_size=T)) for _ in range(B)])
    if data.draw(st.booleans()):
        ids = torch.where(ids < 0, ids, ids.sort(-1).values.clamp(min=0))  # packed-like: sorted ids
    links = None
    if kind == "cross_doc_link":
        links = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B * D * D, max_size=B * D * D))).view(B, D, D)
    _assert_same_block_mask(ids, kind, links, bs)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_dense_mask_equals_mask_mod_everywhere(kind):
    T = 50
    ids = _packed(T, 4, seed=3, pad_every=11)
    L = _links(kind, 2, 4, seed=4)
    dense = doc_dense_mask(ids, kind, L)
    assert dense.shape == (2, 1, T, T) and dense.dtype == torch.bool
    mm = doc_mask_mod(ids, kind, L)
    b, q, k = torch.meshgrid(torch.arange(2), torch.arange(T), torch.arange(T), indexing="ij")
    assert torch.equal(dense[:, 0], mm(b, 0, q, k))


def _rule(kind, dq, dk, q, k, links):
    """Plain-Python statement of each kind, for one pair."""
    if dq < 0 or dk < 0:
        return False
    return {"causal": k <= q, "full": True, "doc_causal": dq == dk and k <= q, "doc_bidirectional": dq == dk,
            "cross_doc_link": (dq == dk and k <= q) or bool(links[dq][dk])}[kind]


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_dense_mask_matches_the_definition(kind):
    ids = [0, 0, 1, -1, 1, 2, 2, 2, -1]
    links = [[False, False, False], [True, False, True], [False, False, True]]
    m = doc_dense_mask(torch.tensor([ids]), kind, torch.tensor([links]) if kind == "cross_doc_link" else None)[0, 0]
    expect = [[_rule(kind, ids[q], ids[k], q, k, links) for k in range(len(ids))] for q in range(len(ids))]
    assert m.tolist() == expect


def test_cross_doc_link_sees_linked_documents_in_full_earlier_and_later():
    ids = torch.tensor([[0, 0, 1, 1, 2, 2]])
    links = links_from_edges([(1, 0), (1, 2)], 3)[None]
    m = doc_dense_mask(ids, "cross_doc_link", links)[0, 0]
    assert m[2, :2].all() and m[2, 4:].all()  # doc 1 sees doc 0 (earlier) and doc 2 (later) entirely
    assert m[2, 2] and not m[2, 3]  # its own document stays causal
    assert not m[0, 2:].any() and not m[4, :4].any()  # links are one-way


def test_padding_never_attends_or_is_attended():
    ids = torch.tensor([[0, 0, -1, 1, 1, -1]])
    for kind in MASK_KINDS:
        L = torch.ones(1, 2, 2, dtype=torch.bool) if kind == "cross_doc_link" else None
        m = doc_dense_mask(ids, kind, L)[0, 0]
        assert not m[[2, 5]].any() and not m[:, [2, 5]].any()
        assert m[[0, 1, 3, 4]][:, [0, 1, 3, 4]].diagonal().all()


def test_links_2d_is_shared_by_the_batch_and_int_ids_accepted():
    ids = _packed(40, 3, B=2, seed=9).to(torch.int16)
    L = links_from_edges([(2, 0)], 3)
    a = doc_dense_mask(ids, "cross_doc_link", L)
    b = doc_dense_mask(ids.long(), "cross_doc_link", L.expand(2, 3, 3))
    assert torch.equal(a, b)
    assert torch.equal(doc_block_mask(ids, "cross_doc_link", L, 8).to_dense(),
                       doc_block_mask(ids.long(), "cross_doc_link", L.expand(2, 3, 3), 8).to_dense())


def test_spans_and_cu_seqlens_helpers():
    assert doc_ids_from_cu_seqlens([0, 2, 5], T=7).tolist() == [0, 0, 1, 1, 1, -1, -1]
    assert doc_ids_from_cu_seqlens(torch.tensor([0, 0, 3])).tolist() == [1, 1, 1]  # empty document 0
    assert doc_ids_from_spans([(1, 3, 4), (3, 4, 0)], 6).tolist() == [-1, 4, 4, 0, -1, -1]
    batch = doc_ids_from_spans([[(0, 2, 0)], [(0, 1, 1), (2, 3, 0)]], 3)
    assert batch.tolist() == [[0, 0, -1], [1, -1, 0]]
    assert links_from_edges([[(0, 1)], []], 2, batch_size=2).tolist() == [[[False, True], [False, False]],
                                                                            [[False, False], [False, False]]]


@pytest.mark.parametrize("call, exc, match", [
    (lambda: doc_ids_from_spans([(0, 5, 0), (3, 8, 1)], 10), ValueError, "non-overlapping"),
    (lambda: doc_ids_from_spans([(4, 6, 0), (0, 2, 1)], 10), ValueError, "sorted"),
    (lambda: doc_ids_from_spans([(0, 12, 0)], 10), ValueError, r"within \[0, 10\]"),
    (lambda: doc_ids_from_spans([(0, 2)], 10), ValueError, r"expected \(start, end, doc\)"),
    (lambda: doc_ids_from_cu_seqlens([0, 3, 2]), ValueError, "non-decreasing"),
    (lambda: doc_ids_from_cu_seqlens([0, 3, 9], T=5), ValueError, "past T=5"),
    (lambda: doc_ids_from_cu_seqlens([0.0, 3.0]), TypeError, "integers"),
    (lambda: links_from_edges([(0, 3)], 3), ValueError, "outside"),
    (lambda: links_from_edges([[(0, 1)]], 3, batch_size=2), ValueError, "expected 2 edge lists"),
    (lambda: doc_dense_mask(torch.tensor([[0, 1, 2]]), "cross_doc_link", torch.zeros(1, 2, 2, dtype=torch.bool)),
     ValueError, "beyond links' Dmax=2"),
    (lambda: doc_block_mask(torch.tensor([[0, 1, 2]]), "cross_doc_link", torch.zeros(2, 2, dtype=torch.bool)),
     ValueError, "beyond links' Dmax=2"),
    (lambda: doc_dense_mask(torch.tensor([[0, 1]]), "cross_doc_link", torch.zeros(3, 2, 2, dtype=torch.bool)),
     ValueError, r"links: expected shape \(B=1"),
    (lambda: doc_dense_mask(torch.tensor([[0, 1]]), "cross_doc_link", torch.zeros(1, 2, 2)), TypeError, "links"),
    (lambda: doc_dense_mask(torch.tensor([[0, 1]]), "sliding"), ValueError, "kind: expected one of"),
    (lambda: doc_dense_mask(torch.tensor([[0, -2]]), "doc_causal"), ValueError, "doc_ids: must be >= 0"),
    (lambda: doc_dense_mask(torch.tensor([0, 1]), "doc_causal"), ValueError, r"doc_ids: expected shape \(B, T\)"),
    (lambda: doc_dense_mask(torch.tensor([[0.0, 1.0]]), "doc_causal"), TypeError, "doc_ids: expected an integer"),
    (lambda: doc_dense_mask(torch.tensor([[0, 1]]), "doc_causal", torch.zeros(1, 2, 2, dtype=torch.bool)),
     ValueError, "only the 'cross_doc_link' kind"),
    (lambda: doc_block_mask(torch.tensor([[0, 1]]), "doc_causal", block_size=0), ValueError, "block_size"),
    (lambda: doc_block_mask(torch.zeros(1, 0, dtype=torch.long), "doc_causal"), ValueError, "T >= 1"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
