"""Document masks: direct BlockMasks vs create_block_mask(_compile=True); a DocMaskState decoding step vs
computing the row from the ids. (CPU attention kernels: benchmarks/test_span_attention.py.)"""
from _harness import interleaved

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from craft_kernels import DocMaskState, doc_block_mask, doc_dense_mask, doc_ids_from_cu_seqlens, doc_mask_mod


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


@pytest.mark.parametrize("T, n_docs", [(1024, 8), (8192, 64)])
@pytest.mark.parametrize("kind", ["doc_causal", "cross_doc_link"])
def test_block_mask_vs_create_block_mask_compiled(compare, T, n_docs, kind):
    """doc_block_mask against create_block_mask(..., _compile=True) for the same mask mod; the eager
    create_block_mask is an extra column."""
    ids = _ids(T, n_docs)
    L = _links(n_docs) if kind == "cross_doc_link" else None
    mm = doc_mask_mod(ids, kind, L)
    base = lambda: create_block_mask(mm, 1, None, T, T, device="cpu", _compile=True)  # noqa: E731
    base()  # compile outside the timing
    bm = doc_block_mask(ids, kind, L)
    assert torch.equal(bm.to_dense(), base().to_dense())
    ours = lambda: doc_block_mask(ids, kind, L)  # noqa: E731
    eager = interleaved(ours, lambda: create_block_mask(mm, 1, None, T, T, device="cpu"), rounds=3)["ratio"]
    compare(ours, base, rounds=5, T=T, n_docs=n_docs, kind=kind, baseline_kind="create_block_mask(_compile=True)",
            speedup_vs_eager_create_block_mask=round(eager, 3),
            block_mask_index_bytes=sum(t.numel() * t.element_size() for t in (bm.kv_indices, bm.full_kv_indices)),
            dense_mask_bytes=T * T)


@pytest.mark.parametrize("kind", ["doc_causal", "cross_doc_link"])
def test_block_mask_construction_32k(compare, kind):
    """T=32768, 64 documents: create_block_mask eager would materialise 32768^2 = 1 GiB of bool plus
    int64 index temporaries several times that, so the baseline here is the compiled one."""
    T, n_docs = 32768, 64
    ids = _ids(T, n_docs)
    L = _links(n_docs) if kind == "cross_doc_link" else None
    mm = doc_mask_mod(ids, kind, L)
    base = lambda: create_block_mask(mm, 1, None, T, T, device="cpu", _compile=True)  # noqa: E731
    base()  # compile outside the timing
    bm = doc_block_mask(ids, kind, L)
    compare(lambda: doc_block_mask(ids, kind, L), base, rounds=3, T=T, n_docs=n_docs, kind=kind,
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


def test_decode_step_row_vs_row_from_ids(compare):
    """CPU path, decoding steps at T=4096: append a token and get its mask row, vs what a user would
    write instead: the one row computed from the doc ids and links (O(T), no T x T mask). Each timed
    call runs STEPS steps on both sides (a generated segment): one step takes microseconds, and timed
    alone right after the harness's gc.collect() it mostly measures refilling the caches that the
    collection evicted. That cold single step is recorded too (``speedup_single_step_after_gc``)."""
    STEPS = 64
    st = _decode_state(room=2900)  # room for every step of both sides: (2 warm-up + 15 rounds) x 64 x 2 + 2 x 12
    slots = torch.arange(st.max_seq_len)

    def step():
        st.append(1)
        return st.query_mask(1)

    def row_from_ids():
        st.length += 1  # the same bookkeeping: one more token of the current document
        st.doc_ids[st.length - 1] = st.current_doc
        q = st.length - 1
        ids, d = st.doc_ids, st.doc_ids[q]
        valid = ids >= 0
        row = valid & (((ids == d) & (slots <= q)) | st.links[d, ids.clamp(min=0)])
        return row[None, None, None]

    def rebuild():  # extra column: the dense T x T mask rebuilt, one row kept
        return doc_dense_mask(st.doc_ids[None], "cross_doc_link", st.links[None])[:, :, st.length - 1:st.length]

    def steps(fn):
        def run():
            for _ in range(STEPS):
                fn()
        return run

    assert torch.equal(step(), rebuild())
    st.length -= 1
    st.doc_ids[st.length] = -1
    assert torch.equal(row_from_ids(), rebuild())
    # 1 torch thread for both sides: ops on 4,096 elements gain nothing from a second thread, and on a
    # loaded machine each op of the baseline waited ~20 ms for OpenMP's worker to wake (a 4,000x
    # "speed-up" measured at load 8.5 that says nothing about the step)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dense = interleaved(step, rebuild, rounds=10)["ratio"]
        single = interleaved(step, row_from_ids, rounds=10)["ratio"]
        compare(steps(step), steps(row_from_ids), units=STEPS, unit_name="steps", rounds=15, warmup=2,
                T=st.max_seq_len, n_docs=32, path="SDPA row", steps_per_call=STEPS,
                speedup_single_step_after_gc=round(single, 2),
                baseline_kind="the row computed from the ids (O(T))", speedup_vs_dense_rebuild=round(dense, 2))
    finally:
        torch.set_num_threads(threads)
