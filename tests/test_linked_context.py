"""DocumentContext: slots, spans, rope positions, links and the KV-cache gather, checked against a
from-scratch rebuild after random operation sequences under both eviction policies."""
import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from craft.generation.linked.context import ContextFull, DocumentContext
from craft_kernels import doc_dense_mask


class Harness:
    """Drives a DocumentContext like the generator does and keeps an independent timeline of
    (document, position) per slot plus a real per-slot buffer standing in for the KV cache."""

    def __init__(self, rng, policy, kind, max_len=48, max_docs=6, per_doc=20):
        self.rng, self.policy = rng, policy
        self.cache = torch.full((max_len,), -1, dtype=torch.int64)
        self.ctx = DocumentContext(max_len, max_docs, policy, kind, per_doc, on_compact=self._gather)
        self.timeline = []  # (doc index, position in doc) per slot, in slot order
        self.explicit_evictions = 0

    def _gather(self, keep):
        kept = self.cache[keep].clone()
        self.cache.fill_(-1)
        self.cache[: len(keep)] = kept

    def _write(self, index, slots, rope):
        d = self.ctx.docs[index]
        for s, p in zip(slots.tolist(), rope.tolist()):
            self.cache[s] = d.tokens[p]
        self.timeline.extend((index, p) for p in rope.tolist())

    def _sync_evictions(self, before_active):
        gone = {i for i in before_active if not self.ctx.docs[i].active}
        if gone:
            self.timeline = [(d, p) for d, p in self.timeline if d not in gone]
        return gone

    def _tokens(self, n):
        return [self.rng.randrange(1000) for _ in range(n)]

    def step(self):
        ctx, rng = self.ctx, self.rng
        cur = ctx.current
        before = set(ctx.active_documents())
        protected = set(ctx.ancestors(cur))
        op = rng.choice(["append", "append", "child", "corpus", "back", "evict", "replace"])
        self.queryable = False  # True when the last thing done was placing tokens of the current document
        try:
            if op == "append" and ctx.room_in_document() > 0:
                slots, rope = ctx.append(self._tokens(rng.randint(1, min(4, ctx.room_in_document()))))
                self._write(cur, slots, rope)
                self.queryable = True
            elif op == "child" and len(ctx.active_documents()) < ctx.max_documents:
                i = ctx.add_document(f"doc{len(ctx.docs)}", cur, tokens=self._tokens(rng.randint(1, 3)))
                ctx.link(cur, i)
                if ctx.can_fit(len(ctx.docs[i].tokens), protect=[i]):
                    self._write(i, *ctx.place(i))
                    protected.add(i)
                    self.queryable = True
            elif op == "corpus" and len(ctx.active_documents()) < ctx.max_documents:
                i = ctx.add_document(f"doc{len(ctx.docs)}", cur, source="corpus", tokens=self._tokens(rng.randint(1, 12)))
                ctx.link(cur, i)
                self._write(i, *ctx.place(i))
                ctx.finish(i, "corpus")
                ctx.switch_to(cur)
            elif op == "back" and ctx.docs[cur].parent is not None:
                ctx.finish(cur, "eos")
                ctx.switch_to(ctx.docs[cur].parent)
            elif op == "evict":
                cands = [i for i in ctx.active_documents() if i not in protected]
                if cands:
                    ctx.evict(rng.choice(cands))
                    self.explicit_evictions += 1
            elif op == "replace":
                arch = ctx.archived_documents()
                if arch and len(ctx.active_documents()) < ctx.max_documents:
                    i = rng.choice(arch)
                    ctx.link(cur, i)
                    self._write(i, *ctx.place(i))
                    ctx.switch_to(cur)
        except ContextFull:
            assert ctx.active_documents() == sorted(before), "a refused operation must change nothing"
        gone = self._sync_evictions(before)
        assert not gone & protected, "the current document and its ancestors are never evicted"
        if self.policy == "drop_oldest" and op != "evict" and gone:
            survivors = [ctx.docs[i].activated_at for i in before - gone - protected]
            assert all(ctx.docs[g].activated_at < min(survivors, default=1 << 30) for g in gone), "oldest first"
        if self.policy == "stop_new" and op != "evict":
            assert not gone
        self.check()

    def check(self):
        ctx = self.ctx
        docs = [d for d, _ in self.timeline]
        assert ctx.slot_documents().tolist() == docs
        assert ctx.rope_positions().tolist() == [p for _, p in self.timeline]
        assert ctx.length == len(self.timeline)
        # the cache buffer, gathered by every compaction, holds exactly the rebuilt token sequence
        rebuilt = [ctx.docs[d].tokens[p] for d, p in self.timeline]
        assert self.cache[: ctx.length].tolist() == rebuilt
        toks, ids, rope = ctx.packed()
        assert toks.tolist() == rebuilt and rope.tolist() == [p for _, p in self.timeline]
        # every active document is whole and in order; spans are the runs of the timeline
        for d in ctx.docs:
            pos = [p for i, p in self.timeline if i == d.index]
            assert pos == (list(range(len(d.tokens))) if d.active else [])
        runs = []
        for s, i in enumerate(docs):
            if runs and runs[-1][2] == i:
                runs[-1] = (runs[-1][0], s + 1, i)
            else:
                runs.append((s, s + 1, i))
        assert ctx.spans() == runs
        # the mask state: ids per slot and the link matrix rebuilt from the documents
        mids = [ctx.docs[i].mask_id for i in docs]
        assert ctx.mask.doc_ids[: ctx.length].tolist() == mids
        assert (ctx.mask.doc_ids[ctx.length:] == -1).all()
        links = torch.zeros(ctx.max_documents, ctx.max_documents, dtype=torch.bool)
        for d in ctx.docs:
            for j in d.links:
                if d.active and ctx.docs[j].active:
                    links[d.mask_id, ctx.docs[j].mask_id] = True
        if ctx.mask_kind == "cross_doc_link":
            assert torch.equal(ctx.mask.links, links)
        if getattr(self, "queryable", False):  # the step's mask for the token just placed
            last = ctx.length - 1
            assert docs[last] == ctx.current
            full = torch.full((ctx.max_seq_len,), -1, dtype=torch.int64)
            full[: ctx.length] = torch.tensor(mids, dtype=torch.int64)
            dense = doc_dense_mask(full[None], ctx.mask_kind, links[None] if ctx.mask_kind == "cross_doc_link" else None)
            assert torch.equal(ctx.query_mask(1)[0, 0, 0], dense[0, 0, last])


@pytest.mark.parametrize("policy", ["drop_oldest", "stop_new"])
@pytest.mark.parametrize("kind", ["cross_doc_link", "doc_causal"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_operations_match_rebuild(policy, kind, seed):
    rng = random.Random(seed)
    h = Harness(rng, policy, kind)
    root = h.ctx.add_document("root", None, tokens=h._tokens(rng.randint(1, 6)))
    h._write(root, *h.ctx.place(root))
    h.check()
    for _ in range(60):
        h.step()


def test_drop_oldest_evicts_oldest_and_keeps_ancestors():
    keep_log = []
    ctx = DocumentContext(10, 4, "drop_oldest", on_compact=keep_log.append)
    root = ctx.add_document("root", None, tokens=[1, 2])
    ctx.place(root)
    a = ctx.add_document("A", root, source="corpus", tokens=[3, 4, 5])
    ctx.link(root, a)
    ctx.place(a)
    ctx.switch_to(root)
    b = ctx.add_document("B", root, tokens=[6, 7])
    ctx.link(root, b)
    ctx.place(b)
    assert ctx.length == 7 and ctx.spans() == [(0, 2, root), (2, 5, a), (5, 7, b)]
    # B (current) needs 4 more slots: only A (oldest non-ancestor) may go
    slots, rope = ctx.append([8, 9, 10, 11])
    assert ctx.docs[a].archived and not ctx.docs[a].active and ctx.n_evictions == 1
    assert keep_log[-1].tolist() == [0, 1, 5, 6]
    assert slots.tolist() == [4, 5, 6, 7] and rope.tolist() == [2, 3, 4, 5]
    assert ctx.spans() == [(0, 2, root), (2, 8, b)]
    assert ctx.archived_documents() == [a]
    # nothing left to evict: the root and B are protected
    with pytest.raises(ContextFull):
        ctx.append([1, 2, 3])
    # back to the root; A can come back (placed again at the end) and the root sees it
    ctx.finish(b, "eos")
    ctx.switch_to(root)
    ctx.link(root, a)
    slots, rope = ctx.place(a)  # 8 of 10 slots used: B (finished, not an ancestor) is evicted for A
    assert ctx.docs[b].archived and ctx.n_evictions == 2
    assert slots.tolist() == [2, 3, 4] and rope.tolist() == [0, 1, 2]
    assert ctx.spans() == [(0, 2, root), (2, 5, a)]
    ctx.switch_to(root)
    assert ctx.mask.links[ctx.docs[root].mask_id, ctx.docs[a].mask_id]


def test_stop_new_refuses_instead_of_evicting():
    ctx = DocumentContext(6, 3, "stop_new")
    root = ctx.add_document("root", None, tokens=[1, 2, 3])
    ctx.place(root)
    a = ctx.add_document("A", root, source="corpus", tokens=[4, 5, 6, 7])
    assert not ctx.can_fit(4, protect=[a])
    with pytest.raises(ContextFull):
        ctx.place(a)
    assert ctx.active_documents() == [root] and ctx.length == 3
    ctx.append([9, 9])
    b = ctx.add_document("B", root, source="corpus", tokens=[8])
    ctx.place(b)
    ctx.switch_to(root)
    with pytest.raises(ContextFull):
        ctx.append([1])
    assert ctx.length == 6 and ctx.active_documents() == [root, b]
    assert ctx.n_evictions == 0


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="eviction_policy"):
        DocumentContext(8, 2, "lru")
    with pytest.raises(ValueError, match="mask_kind"):
        DocumentContext(8, 2, mask_kind="full")
    with pytest.raises(ValueError, match="max_tokens_per_document"):
        DocumentContext(8, 2, max_tokens_per_document=9)
    ctx = DocumentContext(8, 2, max_tokens_per_document=4)
    root = ctx.add_document("root", None, tokens=[1, 2])
    with pytest.raises(ValueError, match="title"):
        ctx.add_document("root", root)
    with pytest.raises(ValueError, match="parent"):
        ctx.add_document("x", None)
    with pytest.raises(ValueError, match="tokens"):
        ctx.add_document("y", root, tokens=[1] * 5)
    ctx.place(root)
    with pytest.raises(ValueError, match="max_tokens_per_document"):
        ctx.append([1, 2, 3])
    with pytest.raises(ValueError, match="ancestors"):
        ctx.evict(root)
