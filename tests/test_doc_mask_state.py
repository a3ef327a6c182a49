"""DocMaskState: incremental masks after any append/start/evict/compact == masks rebuilt from scratch."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from torch.nn.attention.flex_attention import flex_attention

from craft_kernels import MASK_KINDS, DocMaskState, doc_dense_mask, links_from_edges

MAX_LEN, MAX_DOCS, BS = 37, 5, 8  # a tail block past max_seq_len, several blocks


def rebuilt_rows(kind, slots, edges, n):
    """Rows of the last n slots, from doc_dense_mask over the whole cache rebuilt from scratch."""
    ids = torch.tensor([slots + [-1] * (MAX_LEN - len(slots))])
    links = links_from_edges(sorted(edges), MAX_DOCS)[None] if kind == "cross_doc_link" else None
    return doc_dense_mask(ids, kind, links)[0, 0, len(slots) - n:len(slots)]


def check_masks(state, kind, slots, edges, n):
    rows = rebuilt_rows(kind, slots, edges, n)
    assert torch.equal(state.query_mask(n), rows[None, None])
    bm = state.block_mask(n)
    # block flags from the rebuilt rows; the query block holds only the n real rows, so (unlike
    # create_block_mask, which pads q to a whole block) a kv block all of whose n rows are visible is full
    nb = -(-MAX_LEN // BS)
    padded = torch.zeros(n, nb * BS, dtype=torch.bool)
    padded[:, :MAX_LEN] = rows
    blocks = padded.view(n, nb, BS)
    anyb, allb = blocks.any(-1).any(0), blocks.all(-1).all(0)
    assert torch.equal(bm.to_dense()[0, 0, 0], anyb)
    full_set = set(bm.full_kv_indices[0, 0, 0, :int(bm.full_kv_num_blocks)].tolist())
    part_set = set(bm.kv_indices[0, 0, 0, :int(bm.kv_num_blocks)].tolist())
    assert full_set == set(torch.nonzero(allb).flatten().tolist())
    assert part_set == set(torch.nonzero(anyb & ~allb).flatten().tolist())
    # the BlockMask's mask mod evaluates to the same rows inside partial blocks
    q, kv = torch.meshgrid(torch.arange(n), torch.arange(MAX_LEN), indexing="ij")
    assert torch.equal(bm.mask_mod(0, 0, q, kv), rows)


class StateMachine(RuleBasedStateMachine):
    kind = "cross_doc_link"

    def __init__(self):
        super().__init__()
        self.state = DocMaskState(MAX_LEN, MAX_DOCS, kind=self.kind, block_size=BS)
        self.slots: list[int] = []  # doc of every slot in use (-1 = evicted, not yet compacted)
        self.edges: set[tuple[int, int]] = set()
        self.current = None
        self.n_last = 0

    @rule(doc=st.integers(0, MAX_DOCS - 1), links_to=st.lists(st.integers(0, MAX_DOCS - 1), max_size=3))
    def start(self, doc, links_to):
        self.state.start_document(doc, links_to)
        self.edges |= {(doc, t) for t in links_to}
        self.current, self.n_last = doc, 0

    @precondition(lambda self: self.current is not None)
    @rule(n=st.integers(1, 6))
    def append(self, n):
        if len(self.slots) + n > MAX_LEN:
            with pytest.raises(ValueError, match="do not fit"):
                self.state.append(n)
            return
        got = self.state.append(n)
        assert got.tolist() == list(range(len(self.slots), len(self.slots) + n))
        self.slots += [self.current] * n
        self.n_last = n

    @rule(doc=st.integers(0, MAX_DOCS - 1))
    def evict(self, doc):
        self.state.evict(doc)
        self.slots = [-1 if d == doc else d for d in self.slots]
        self.edges = {(a, b) for a, b in self.edges if doc not in (a, b)}
        if self.current == doc:
            self.current, self.n_last = None, 0

    @rule()
    def compact(self):
        keep = self.state.compact()
        assert keep.tolist() == [i for i, d in enumerate(self.slots) if d >= 0]
        self.n_last = sum(d >= 0 for d in self.slots[len(self.slots) - self.n_last:])
        self.slots = [d for d in self.slots if d >= 0]

    @invariant()
    def masks_match_rebuild(self):
        st_ = self.state
        assert st_.length == len(self.slots) and st_.current_doc == self.current
        assert st_.doc_ids.tolist() == self.slots + [-1] * (MAX_LEN - len(self.slots))
        for n in sorted({1, self.n_last}):
            if 1 <= n <= self.n_last:
                check_masks(st_, self.kind, self.slots, self.edges, n)
        if self.n_last == 0:
            with pytest.raises(ValueError, match="n_query"):
                st_.query_mask(1)


for _kind in MASK_KINDS:
    _cls = type(f"Machine_{_kind}", (StateMachine,), {"kind": _kind})
    _case = _cls.TestCase
    _case.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
    globals()[f"TestDocMaskState_{_kind}"] = _case
del _kind, _cls, _case


def test_decode_attention_sdpa_row_equals_flex_block_mask():
    """One decoding step: SDPA with query_mask == eager flex with block_mask over the same cache."""
    st_ = DocMaskState(64, 4, kind="cross_doc_link", block_size=16)
    st_.start_document(0)
    st_.append(20)
    st_.start_document(1, links_to=[0])
    st_.append(9)
    st_.evict(0)
    st_.start_document(2, links_to=[1])
    st_.append(12)
    st_.append(3)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 8, generator=g)
    k, v = torch.randn(1, 2, 64, 8, generator=g), torch.randn(1, 2, 64, 8, generator=g)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=st_.query_mask(3))
    flex = flex_attention(q, k, v, block_mask=st_.block_mask(3))
    torch.testing.assert_close(sdpa, flex, rtol=1e-5, atol=1e-6)


def test_block_mask_mod_is_one_function_across_steps():
    """The BlockMask's mask mod is the same object every step (a compiled kernel never recompiles)."""
    st_ = DocMaskState(32, 2, block_size=8)
    st_.start_document(0)
    st_.append(3)
    a = st_.block_mask(1).mask_mod
    st_.append(1)
    st_.start_document(1, [0])
    st_.append(2)
    assert st_.block_mask(2).mask_mod is a


def test_state_errors():
    st_ = DocMaskState(4, 2, block_size=2)
    with pytest.raises(RuntimeError, match="start_document"):
        st_.append(1)
    st_.start_document(0)
    with pytest.raises(ValueError, match="n: must be >= 1"):
        st_.append(0)
    st_.append(4)
    with pytest.raises(ValueError, match="do not fit"):
        st_.append(1)
    with pytest.raises(ValueError, match="outside"):
        st_.start_document(5)
    with pytest.raises(ValueError, match="links_to: document 7"):
        st_.start_document(1, links_to=[7])
    with pytest.raises(ValueError, match=r"n_query: must be an int in \[1, 4\]"):
        st_.query_mask(5)
    with pytest.raises(ValueError, match="at most block_size=2"):
        st_.block_mask(3)
    with pytest.raises(ValueError, match="kind"):
        DocMaskState(4, 2, kind="sliding")
    with pytest.raises(ValueError, match="max_seq_len"):
        DocMaskState(0, 2)
