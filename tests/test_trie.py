import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from craft_kernels import Trie
from craft_kernels.native import _dispatch
from craft_kernels.native.trie import _ARRAYS

seqs_st = st.lists(st.lists(st.integers(0, 6), min_size=0, max_size=5), max_size=30)


def _build(impl, seqs, ids=None):
    with _dispatch.use(impl):
        return Trie(seqs, ids)


@settings(max_examples=100, deadline=None)
@given(seqs_st, st.lists(st.integers(0, 6), max_size=6))
def test_cpp_matches_reference_and_a_dict(seqs, probe):
    a, b = _build("cpp", seqs), _build("python", seqs)
    for name in _ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    truth = {}
    for i, s in enumerate(seqs):
        truth.setdefault(tuple(s), []).append(i)
    assert sorted(a.lookup(probe).tolist()) == sorted(truth.get(tuple(probe), []))
    under = sorted(i for i, s in enumerate(seqs) if s[:len(probe)] == probe)
    assert sorted(a.items_with_prefix(probe).tolist()) == under
    lp = max((k for k in range(len(probe) + 1) if any(s[:k] == probe[:k] for s in seqs)), default=0)
    assert a.longest_prefix(probe) == (lp if seqs else 0)


@settings(max_examples=60, deadline=None)
@given(seqs_st, st.integers(0, 2**32))
def test_batched_decoding_follows_only_existing_sequences(seqs, seed):
    rng = np.random.default_rng(seed)
    for impl in ("cpp", "python"):
        with _dispatch.use(impl):
            t = Trie(seqs)
            states = t.root_states(4)
            prefixes = [[] for _ in range(4)]
            for _ in range(6):
                mask = t.allowed_mask(states, 8)
                for r in range(4):
                    allowed = {tuple(s[len(prefixes[r]):len(prefixes[r]) + 1]) for s in seqs
                               if s[:len(prefixes[r])] == prefixes[r] and len(s) > len(prefixes[r])} if states[r] >= 0 else set()
                    assert set(np.flatnonzero(mask[r]).tolist()) == {a[0] for a in allowed}
                    assert [x.tolist() for x in t.allowed(states[r:r + 1])][0] == sorted(a[0] for a in allowed)
                tokens = rng.integers(0, 8, size=4)
                states = t.advance(states, tokens)
                for r in range(4):
                    prefixes[r].append(int(tokens[r]))
                    assert (states[r] >= 0) == any(s[:len(prefixes[r])] == prefixes[r] for s in seqs)
                term = t.is_terminal(states)
                assert term.tolist() == [any(s == p for s in seqs) for p in prefixes]
            perm = rng.permutation(4)  # beam reordering is plain indexing
            assert np.array_equal(t.advance(states[perm], np.zeros(4, dtype=np.int64)),
                                  t.advance(states, np.zeros(4, dtype=np.int64))[perm])


def test_semantic_ids_with_collisions_save_load(native_impl, tmp_path):
    codes = np.array([[3, 1, 4, 1], [3, 1, 4, 1], [3, 1, 5, 9], [2, 6, 5, 3]], dtype=np.int16)
    t = Trie(codes, item_ids=[100, 101, 102, 103])
    assert sorted(t.lookup([3, 1, 4, 1]).tolist()) == [100, 101]
    t.save(str(tmp_path / "trie"))
    u = Trie.load(str(tmp_path / "trie"), mmap=True)
    assert isinstance(u.child_tokens, np.memmap)
    assert sorted(u.lookup([3, 1, 4, 1]).tolist()) == [100, 101]
    assert u.items_with_prefix([3, 1], limit=2).tolist() == t.items_with_prefix([3, 1], limit=2).tolist()
    s = u.advance(u.root_states(1), [3])
    assert u.allowed(s)[0].tolist() == [1]


def test_apply_to_logits_policies(native_impl):
    t = Trie([[1, 2], [1, 3]])
    logits = torch.zeros(3, 6)
    states = np.array([0, 1, -1])
    with pytest.raises(ValueError, match=r"rows \[2\] have no allowed token"):
        t.apply_to_logits(logits.clone(), states)
    out = logits.clone()
    empty = t.apply_to_logits(out, states, on_empty="eos", eos_id=5)
    assert empty.tolist() == [False, False, True]
    assert torch.isfinite(out[0]).tolist() == [False, True, False, False, False, False]
    assert torch.isfinite(out[1]).tolist() == [False, False, True, True, False, False]
    assert torch.isfinite(out[2]).tolist() == [False] * 5 + [True]
    assert not torch.isnan(torch.softmax(out, -1)).any()
    kept = logits.clone()
    t.apply_to_logits(kept, states, on_empty="keep")
    assert torch.isfinite(kept[2]).all()


def test_bad_inputs(native_impl):
    t = Trie([[1, 2]])
    with pytest.raises(ValueError, match="item_ids: expected 1 ids"):
        Trie([[1, 2]], item_ids=[1, 2])
    with pytest.raises(TypeError, match="sequences"):
        Trie(5)
    with pytest.raises(ValueError, match="tokens must be >= 0"):
        Trie([[1, -2]])
    with pytest.raises(TypeError, match="integer array"):
        Trie([[1.5]])
    with pytest.raises(ValueError, match=r"states: node ids must be in \[-1, 3\)"):
        t.advance([7], [1])
    with pytest.raises(ValueError, match="tokens: expected shape"):
        t.advance([0, 0], [1])
    with pytest.raises(ValueError, match="on_empty"):
        t.apply_to_logits(torch.zeros(1, 3), [0], on_empty="skip")
    with pytest.raises(FileNotFoundError, match="not a saved Trie"):
        Trie.load("/nonexistent")
