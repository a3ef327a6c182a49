import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from craft_kernels import Trie
import craft_kernels as ck
from craft_kernels.native.trie import _ARRAYS

seqs_st = st.lists(st.lists(st.integers(0, 6), min_size=0, max_size=5), max_size=30)
# token ranges that take each sort path of the C++ build: packed 64-bit keys, per-position counting
# sort (9 bits x up to 9 positions > 64 bits), comparison sort (31-bit tokens)
wide_st = st.sampled_from([6, 300, 2**31 - 1]).flatmap(
    lambda hi: st.lists(st.lists(st.sampled_from([0, 1, 2, hi // 2, hi]), min_size=0, max_size=9), max_size=40))


def _build(impl, seqs, ids=None):
    with ck.use_native(impl):
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


@settings(max_examples=80, deadline=None)
@given(wide_st, st.booleans())
def test_build_paths_match_reference(seqs, fixed):
    if fixed and seqs:  # an (M, L) array: pad every sequence to one length with a real token
        width = max(map(len, seqs))
        seqs = [s + [0] * (width - len(s)) for s in seqs]
        arg = np.array(seqs, dtype=np.int64).reshape(len(seqs), width)
    else:
        arg = seqs
    ids = list(range(100, 100 + len(seqs)))
    a, b = _build("cpp", arg, ids), _build("python", arg, ids)
    for name in _ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    for i, s in enumerate(seqs):
        assert 100 + i in a.lookup(s).tolist()


@settings(max_examples=60, deadline=None)
@given(seqs_st, st.lists(st.lists(st.integers(0, 6), max_size=4), max_size=8), st.sampled_from([None, 0, 1, 3]))
def test_batched_lookups_match_single_queries(seqs, probes, limit):
    for impl in ("cpp", "python"):
        with ck.use_native(impl):
            t = Trie(seqs)
            off, items = t.items_with_prefixes(probes, limit=limit)
            assert len(off) == len(probes) + 1
            for q, p in enumerate(probes):
                assert items[off[q]:off[q + 1]].tolist() == t.items_with_prefix(p, limit=limit).tolist()
            states, used = t.walk(probes)
            for q, p in enumerate(probes):
                assert used[q] == t.longest_prefix(p)
                walked = t.advance(t.root_states(1), p[:1]) if used[q] else t.root_states(1)
                for tok in p[1:used[q]]:
                    walked = t.advance(walked, [tok])
                assert states[q] == walked[0]


@settings(max_examples=60, deadline=None)
@given(seqs_st, st.integers(0, 2**32))
def test_batched_decoding_follows_only_existing_sequences(seqs, seed):
    rng = np.random.default_rng(seed)
    for impl in ("cpp", "python"):
        with ck.use_native(impl):
            t = Trie(seqs)
            states = t.root_states(4)
            prefixes = [[] for _ in range(4)]
            reused = np.ones((4, 8), dtype=bool)  # a foreign array first: cleared whole
            for _ in range(6):
                reused = t.allowed_mask(states, 8, out=reused)  # then refilled, clearing only what it set
                mask = reused.copy()
                for r in range(4):
                    allowed = {tuple(s[len(prefixes[r]):len(prefixes[r]) + 1]) for s in seqs
                               if s[:len(prefixes[r])] == prefixes[r] and len(s) > len(prefixes[r])} if states[r] >= 0 else set()
                    assert set(np.flatnonzero(mask[r]).tolist()) == {a[0] for a in allowed}
                    assert [x.tolist() for x in t.allowed(states[r:r + 1])][0] == sorted(a[0] for a in allowed)
                assert np.array_equal(t.allowed_mask(states, 8), mask)  # a fresh array agrees
                reused = t.allowed_mask(states, 8, out=reused)  # registered again (cleared whole: a fresh call came between)
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
    t.save(str(tmp_path / "trie") + "/")  # a trailing slash names the same directory; saving again replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trie"]
    u = Trie.load(str(tmp_path / "trie"), mmap=True)
    assert isinstance(u.child_tokens, np.memmap)
    assert sorted(u.lookup([3, 1, 4, 1]).tolist()) == [100, 101]
    assert u.items_with_prefix([3, 1], limit=2).tolist() == t.items_with_prefix([3, 1], limit=2).tolist()
    s = u.advance(u.root_states(1), [3])
    assert u.allowed(s)[0].tolist() == [1]


def _expected_masked(t, logits, states):
    out = logits.clone()
    out[~torch.from_numpy(t.allowed_mask(states, logits.shape[1]))] = float("-inf")
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_apply_to_logits_dtypes_and_layouts(native_impl, dtype):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 40, size=(200, 3))
    t = Trie(codes)
    states = t.advance(t.root_states(7), codes[:7, 0])
    states = np.array([0, *states[:5], states[5]])  # root (many children) and depth-1 states
    base = torch.randn(7, 37).to(dtype)  # V=37 < 40: children >= V are ignored
    want = _expected_masked(t, base, states)
    got = base.clone()
    empty = t.apply_to_logits(got, states, on_empty="keep")
    assert torch.equal(got, want) and empty.dtype == torch.bool and empty.shape == (7,)
    wide = torch.randn(37, 7).to(dtype).t()  # non-contiguous rows: the mask path
    want = _expected_masked(t, wide, states)
    t.apply_to_logits(wide, states, on_empty="keep")
    assert torch.equal(wide, want)
    strided = torch.randn(14, 37).to(dtype)[::2]  # row stride 2*V, unit column stride: the direct path
    want = _expected_masked(t, strided, states)
    t.apply_to_logits(strided, states, on_empty="keep")
    assert torch.equal(strided, want)


def test_apply_to_logits_children_beyond_vocab_count_as_empty(native_impl):
    t = Trie([[1, 50], [2, 60]])
    s = t.advance(t.root_states(2), [1, 2])
    logits = torch.zeros(2, 10)
    empty = t.apply_to_logits(logits, s, on_empty="eos", eos_id=9)
    assert empty.tolist() == [True, True]
    assert torch.isfinite(logits).sum(1).tolist() == [1, 1] and torch.isfinite(logits[:, 9]).all()


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


def test_allowed_mask_out_errors():
    t = Trie([[1, 2], [1, 3]])
    with pytest.raises(ValueError, match=r"out: expected a bool array of shape \(2, 4\)"):
        t.allowed_mask(t.root_states(2), 4, out=np.zeros((2, 5), dtype=bool))
    with pytest.raises(ValueError, match="out: expected a bool array"):
        t.allowed_mask(t.root_states(2), 4, out=np.zeros((2, 4), dtype=np.int64))


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
    with pytest.raises(ValueError, match="tokens must be < 2"):
        Trie([[2**31]])
    with pytest.raises(ValueError, match="eos_id"):
        t.apply_to_logits(torch.zeros(1, 3), [-1], on_empty="eos", eos_id=3)
    with pytest.raises(ValueError, match="one per logits row"):
        t.apply_to_logits(torch.zeros(2, 3), [0])
    with pytest.raises(ValueError, match="float tensor"):
        t.apply_to_logits(torch.zeros(1, 3, dtype=torch.long), [0])
    with pytest.raises(ValueError, match=r"states: node ids must be in"):
        t.allowed_mask(np.array([3], dtype=np.int64), 4)
    with pytest.raises(ValueError, match="limit"):
        t.items_with_prefix([1], limit=-1)
    with pytest.raises(ValueError, match=r"\(M, L\)"):
        Trie(np.zeros((2, 2, 2), dtype=np.int64))


def test_corrupt_saved_trie_raises(native_impl, tmp_path):
    t = Trie([[1, 2], [1, 3], [4]])
    t.save(tmp_path / "t")
    nodes = np.load(tmp_path / "t" / "child_nodes.npy")
    nodes[1] = 99  # an edge to a node that does not exist
    np.save(tmp_path / "t" / "child_nodes.npy", nodes)
    with pytest.raises(ValueError, match="corrupt"):
        Trie.load(tmp_path / "t")
    np.save(tmp_path / "t" / "child_nodes.npy", nodes.astype(np.int64))
    with pytest.raises(ValueError, match="expected 1-d int32"):
        Trie.load(tmp_path / "t")


def test_empty_and_single_sequence_tries(native_impl):
    t = Trie([])
    assert t.n_nodes == 1 and t.lookup([]).tolist() == [] and t.allowed_mask([0], 3).tolist() == [[False] * 3]
    t = Trie([[]], item_ids=[7])  # the empty sequence is an item at the root
    assert t.lookup([]).tolist() == [7] and t.is_terminal([0]).tolist() == [True]


def test_huge_limit_and_huge_tokens_are_safe(native_impl):
    # the C++ core computed start + limit, which overflowed for sys.maxsize and corrupted the heap:
    # run in a child so a crash fails the test
    from tests._isolated import run_isolated

    out = run_isolated(f"""
        import sys
        from craft_kernels import Trie
        import craft_kernels as ck
        with ck.use_native({native_impl!r}):
            t = Trie([[1, 2, 3], [1, 2, 4], [5]])
            off, items = t.items_with_prefixes([[1], [5], []], limit=sys.maxsize)
            print(off.tolist(), items.tolist(), t.items_with_prefix([1], limit=sys.maxsize).tolist())
        """)
    assert out.split("\n")[0] == "[0, 2, 3, 6] [0, 1, 2, 0, 1, 2] [0, 1]"


def test_malformed_sequences_raise_naming_the_argument(native_impl):
    with pytest.raises(ValueError, match=r"sequences\[0\]: expected a 1-d array"):
        Trie([[[1, 2, 3]], [[4, 5, 6]]])  # one level of nesting too many
    with pytest.raises(ValueError, match=r"sequences\[0\]: value 18446744073709551616 does not fit in int64"):
        Trie([[2**64]])  # was a bare StopIteration
    t = Trie([[1, 2]])
    with pytest.raises(ValueError, match="prefixes.*9223372036854775808 does not fit in int64"):
        t.items_with_prefixes([[2**63]])  # wrapped to -2**63
    with pytest.raises(ValueError, match="does not fit in int64"):
        t.lookup([2**63])


def test_public_arrays_are_read_only(native_impl, tmp_path):
    t = Trie([[1, 2], [1, 3]])
    for u in (t, Trie.load(_saved(t, tmp_path), mmap=False)):
        for name in _ARRAYS:
            with pytest.raises(ValueError, match="read-only"):
                getattr(u, name)[0] = 7


def _saved(t, tmp_path):
    t.save(tmp_path / "t")
    return tmp_path / "t"


def test_empty_batch_everywhere(native_impl):
    t = Trie([[1, 2], [1, 3]])
    none = np.zeros(0, dtype=np.int64)
    assert t.allowed_mask(none, 5).shape == (0, 5)
    out = t.allowed_mask(none, 5)
    assert t.allowed_mask(none, 5, out=out) is out
    assert t.advance(none, none).shape == (0,) and t.is_terminal(none).shape == (0,) and t.allowed(none) == []
    assert t.apply_to_logits(torch.zeros(0, 5), none).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("strided", [False, True])
def test_apply_to_logits_forces_the_constraint_on_neg_inf_rows(native_impl, dtype, strided):
    t = Trie([[1, 2], [1, 3], [4]])
    states = np.array([0, 1, 0], dtype=np.int64)  # root: {1, 4}; after 1: {2, 3}
    base = torch.randn(6 if strided else 3, 6).to(dtype)
    logits = base[::2] if strided else base  # strided: the masked_fill path
    logits[0, [1, 4]] = float("-inf")  # another processor already removed every allowed token
    logits[1, 2] = float("-inf")  # one of two: nothing to force
    t.apply_to_logits(logits, states)
    assert not torch.isneginf(logits).all(-1).any()
    assert logits[0].tolist() == [float("-inf"), 0.0, float("-inf"), float("-inf"), 0.0, float("-inf")]
    assert torch.isneginf(logits[1]).tolist() == [True, True, True, False, True, True]
    # on_empty='eos' rows whose eos logit was -inf get it back too
    lg = torch.full((1, 6), float("-inf"), dtype=dtype)
    t.apply_to_logits(lg, np.array([-1]), on_empty="eos", eos_id=5)
    assert lg[0, 5] == 0 and torch.softmax(lg.float(), -1).isfinite().all()


def test_save_replaces_only_an_earlier_save(native_impl, tmp_path):
    t = Trie([[1, 2]])
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a saved Trie"):
        t.save(folder)
    assert (folder / "keep.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a saved Trie"):
        t.save(tmp_path / "file")
    t.save(tmp_path / "t")
    (tmp_path / "t" / "extra.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        t.save(tmp_path / "t")
    (tmp_path / "t" / "extra.txt").unlink()
    Trie([[3]]).save(tmp_path / "t")  # an earlier save is replaced
    assert Trie.load(tmp_path / "t").lookup([3]).tolist() == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "notes", "t"]


@settings(max_examples=60, deadline=None)
@given(seqs_st, st.lists(st.integers(0, 6), max_size=40))
def test_single_lookups_take_any_sequence_form(seqs, probe):
    """lookup / items_with_prefix in C++ (a one-call path for tuples, lists of ints and int64 rows,
    the general one otherwise) agree with the Python twin for every form of the same probe: longer
    than the 32-token stack buffer, NumPy ints inside a tuple, non-contiguous and int32 arrays."""
    a, b = _build("cpp", seqs), _build("python", seqs)
    grid = np.array([probe, probe], dtype=np.int64)
    wide = np.repeat(np.array(probe, dtype=np.int64), 2)
    forms = [probe, tuple(probe), grid[1], np.array(probe, dtype=np.int32), wide[::2],
             tuple(np.int64(t) for t in probe)]
    with ck.use_native("python"):
        want = (b.lookup(probe).tolist(), b.items_with_prefix(probe).tolist())
    with ck.use_native("cpp"):
        for f in forms:
            assert (a.lookup(f).tolist(), a.items_with_prefix(f).tolist()) == want, type(f)


def test_single_lookup_rejects_what_the_general_path_rejects():
    t = _build("cpp", [[1, 2]])
    with ck.use_native("cpp"):
        for bad in ([1.5], (1, 2.0), ["a"], [[1, 2]]):
            with pytest.raises((TypeError, ValueError)):
                t.items_with_prefix(bad)
        assert t.items_with_prefix([True]).tolist() == t.items_with_prefix([1]).tolist() == [0]


@settings(max_examples=40, deadline=None)
@given(st.integers(16, 40), st.integers(0, 2**32), st.lists(st.lists(st.integers(-2, 45), max_size=4), max_size=40))
def test_wide_nodes_match_the_reference(width, seed, probes):
    """Nodes with >= 16 children over most of [0, max token] (semantic-ID codebooks) take the C++
    core's per-token child table; nodes with gaps or few children take the binary search. Every
    lookup form, on both kinds of node, with tokens inside gaps, past the table and negative, agrees
    with the Python twin (the table is built from the arrays, so an off-by-one there changes results)."""
    rng = np.random.default_rng(seed)
    full = [[a, b] for a in range(width) for b in range(width) if rng.random() < 0.7]  # dense-ish levels
    sparse = [[width + 5, int(t)] for t in rng.choice(1000, size=20, replace=False)]  # wide but sparse
    seqs = full + sparse + [[1], [2, 3, 4]]
    a, b = _build("cpp", seqs), _build("python", seqs)
    probes = probes + [[width + 5, int(sparse[0][1])], [width - 1, width - 1], [width, 0]]
    def every_lookup(t, mode):
        with ck.use_native(mode):
            singles = [(t.lookup(p).tolist(), t.items_with_prefix(p).tolist(), t.longest_prefix(p)) for p in probes]
            s, steps = t.root_states(len(probes)), []
            for d in range(4):
                s = t.advance(s, [p[d] if d < len(p) else 0 for p in probes])
                steps.append(s.tolist())
            return t.items_with_prefixes(probes), t.walk(probes), singles, steps

    got_batch, got_walk, got, steps_a = every_lookup(a, "cpp")
    want_batch, want_walk, want, steps_b = every_lookup(b, "python")
    assert got == want
    assert steps_a == steps_b
    for x, y in zip(got_batch + got_walk, want_batch + want_walk):
        assert x.tolist() == y.tolist()


def test_single_lookup_arguments_like_the_methods(native_impl):
    """The C++ single lookups are builtin functions bound to the core: they take the methods'
    arguments (positional or by name), send a limit or an odd input (swapped byte order, a list of
    NumPy ints) to the checked path, and raise like the methods on anything else."""
    t = Trie([[1, 2], [1, 3], [1, 2, 4], [5]])
    assert t.items_with_prefix(prefix=[1]).tolist() == [0, 2, 1]
    assert t.items_with_prefix([1], 2).tolist() == t.items_with_prefix([1], limit=2).tolist() == [0, 2]
    assert t.items_with_prefix(np.array([1, 2], dtype=">i8")).tolist() == [0, 2]
    assert t.lookup(seq=(1, 2)).tolist() == t.lookup(np.array([1, 2], dtype=">i8")).tolist() == [0]
    assert t.lookup([np.int64(1), np.int32(2)]).tolist() == [0]
    with pytest.raises(ValueError, match="limit"):
        t.items_with_prefix([1], limit=-1)
    with pytest.raises(TypeError):
        t.items_with_prefix([1], lim=2)
    with pytest.raises(TypeError):
        t.lookup([1], 2)
    with pytest.raises(TypeError):
        t.items_with_prefix()
    with pytest.raises(TypeError, match="prefix"):
        t.items_with_prefix(["a"])
