import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import craft_kernels as ck
from craft_kernels.native import _dispatch
from craft_kernels.native.dataprep import pad_units_reference

lengths_st = st.lists(st.integers(0, 12), max_size=40)


def _csr(lengths):
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def _both(fn):
    with ck.use_native("cpp"):
        a = fn()
    with ck.use_native("python"):
        b = fn()
    return a, b


def _assert_same(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- seed examples
def test_seed_greedy_join(native_impl):
    assert ck.greedy_join([3, 6, 4, 7, 5, 4], 10).tolist() == [[0, 1], [2], [3], [4, 5]]


def test_seed_join_pad_sentences(native_impl):
    # the notes' example: words as units, "I am me" + "you are you" joined into one row
    words = [[3], [4, 5], [5, 6], [7, 8, 9], [10, 11, 12], [7, 8, 9]]
    tokens = np.concatenate(words)
    r = ck.join_pad(tokens, _csr([len(w) for w in words]), budget=20, join_id=3, pad_id=1)
    assert r.ids.shape == (1, 20)
    assert r.ids[0, :19].tolist() == [3, 3, 4, 5, 3, 5, 6, 3, 7, 8, 9, 3, 10, 11, 12, 3, 7, 8, 9]
    assert r.ids[0, 19] == 1
    assert r.unit_index[0, :4].tolist() == [0, -1, 1, 1] and r.position[0, :4].tolist() == [0, -1, 0, 1]
    assert r.cu_seqlens.tolist() == [0, 19] and r.cu_seqlens.dtype == np.int32


def test_seed_join_pad_layout(native_impl):
    lengths = [3, 6, 4, 7, 5, 4]
    tokens = np.arange(100, 129)
    r = ck.join_pad(tokens, _csr(lengths), 10, join_id=-3 + 6, pad_id=1)
    assert r.group_offsets.tolist() == [0, 2, 3, 4, 6]
    assert r.ids[0].tolist() == [100, 101, 102, 3] + list(range(103, 109))
    assert r.ids[1].tolist() == list(range(109, 113)) + [1] * 6
    assert r.cu_seqlens.tolist() == [0, 10, 14, 21, 31]


def test_seed_flatten_two_paragraphs_of_three_sentences(native_impl):
    # 2 paragraphs x 3 sentences x 2 words x 2 tokens
    tokens = np.arange(24)
    words, sents, paras = _csr([2] * 12), _csr([2] * 6), _csr([3, 3])
    f = ck.flatten_level(tokens, [words, sents, paras], level=1)
    assert len(f.unit_token_offsets) - 1 == 6
    assert f.unit_token_offsets.tolist() == [0, 4, 8, 12, 16, 20, 24]
    assert len(f.level_offsets) == 2
    assert len(ck.flatten_level(tokens, [words, sents, paras], level=2).unit_token_offsets) - 1 == 2


def test_pad_units_example(native_impl):
    out = ck.pad_units(np.array([5, 6, 7, 8], dtype=np.int16), [0, 1, 1, 4], width=3, pad_id=1)
    assert out.tolist() == [[5, 1, 1], [1, 1, 1], [6, 7, 8]]
    assert out.dtype == np.int64


# ---------------------------------------------------------------- differential (C++ vs reference)
@settings(max_examples=80, deadline=None)
@given(lengths_st, st.integers(1, 20), st.booleans())
def test_pad_units_matches_reference(lengths, width, truncate):
    """Widths 1-16 take the fixed-width kernels (AVX-512 where the CPU has it), wider ones the loop."""
    tokens = np.arange(sum(lengths)) * 7 % 50
    if not truncate and lengths and max(lengths) > width:
        with pytest.raises(ValueError, match="longer than width"):
            ck.pad_units(tokens, _csr(lengths), width, 0)
        return
    _assert_same(*_both(lambda: ck.pad_units(tokens, _csr(lengths), width, 0, truncate=truncate)))
    # the portable kernel, which CPUs without AVX-512 run
    portable = _dispatch.ext().pad_units(tokens.astype(np.int64), _csr(lengths), width, 0, truncate, avx512=False)
    _assert_same(portable, pad_units_reference(tokens.tolist(), _csr(lengths).tolist(), width, 0))


@pytest.mark.parametrize("width", [8, 16, 12])
def test_pad_units_large_matches_numpy(width):
    """Past 2**20 output ids, widths 8 and 16 use streaming stores into 64-byte-aligned rows."""
    rng = np.random.default_rng(width)
    lengths = rng.integers(0, width + 3, size=(1 << 20) // width + 7)
    tokens = rng.integers(0, 1000, size=int(lengths.sum()))
    cut = np.minimum(lengths, width)
    want = np.full((len(lengths), width), -1, dtype=np.int64)
    pos = np.arange(len(tokens)) - np.repeat(_csr(lengths)[:-1], lengths)  # each token's place in its unit
    want[np.arange(width) < cut[:, None]] = tokens[pos < width]
    with ck.use_native("cpp"):
        got = ck.pad_units(tokens, _csr(lengths), width, -1, truncate=True)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=80, deadline=None)
@given(lengths_st, st.integers(1, 30), st.integers(0, 3))
def test_greedy_join_matches_reference(lengths, budget, join_cost):
    lengths = [min(x, budget) for x in lengths]
    a, b = _both(lambda: ck.greedy_join(lengths, budget, join_cost))
    _assert_same(a.offsets, b.offsets)
    for g in a.tolist():  # the rule itself
        assert sum(lengths[i] for i in g) + join_cost * (len(g) - 1) <= budget
    assert [i for g in a.tolist() for i in g] == list(range(len(lengths)))


@settings(max_examples=80, deadline=None)
@given(lengths_st, st.integers(1, 16), st.booleans())
def test_join_pad_matches_reference(lengths, budget, split_long):
    tokens = (np.arange(sum(lengths)) * 13 % 97 + 4).astype(np.int32)
    offs = _csr(lengths)
    if not split_long and lengths and max(lengths) > budget:
        for impl in ("cpp", "python"):
            with ck.use_native(impl), pytest.raises(ValueError, match="split_long=True"):
                ck.join_pad(tokens, offs, budget, 3, 1)
        return
    a, b = _both(lambda: ck.join_pad(tokens, offs, budget, 3, 1, split_long=split_long))
    _assert_same(a, b)
    # every token appears once, in order, with its unit and position
    keep = a.unit_index >= 0
    assert a.ids[keep].tolist() == tokens.tolist()
    units = np.repeat(np.arange(len(lengths)), lengths)
    assert a.unit_index[keep].tolist() == units.tolist()
    assert a.position[keep].tolist() == (np.arange(len(tokens)) - offs[units]).tolist()


nested_st = st.lists(st.lists(st.lists(st.integers(0, 3), max_size=3), max_size=3), max_size=4)


def _nested(doc):
    """[[[n_tokens per word] per sentence] per paragraph] -> tokens, [words, sentences, paragraphs]."""
    word_l = [w for p in doc for s in p for w in s]
    sent_l = [len(s) for p in doc for s in p]
    para_l = [len(p) for p in doc]
    return np.arange(sum(word_l)), [_csr(word_l), _csr(sent_l), _csr(para_l)]


@settings(max_examples=80, deadline=None)
@given(nested_st, st.integers(0, 2))
def test_flatten_and_build_dvt_match_reference(doc, level):
    tokens, levels = _nested(doc)
    _assert_same(*_both(lambda: ck.flatten_level(tokens, levels, level)[1:]))
    a, b = _both(lambda: ck.build_dvt(levels))
    _assert_same(a, b)
    # pre-order: ids consecutive per tree, parent before child, subtree contiguous
    n = len(a.parent)
    assert n == len(tokens) + sum(len(o) - 1 for o in levels)
    for i in range(n):
        assert a.parent[i] < i
        assert a.tree_offsets[a.tree[i]] <= i < a.tree_offsets[a.tree[i] + 1]
        kids = a.children[a.child_offsets[i]:a.child_offsets[i + 1]]
        assert all(a.parent[k] == i for k in kids)
        assert i + a.subtree_size[i] <= a.tree_offsets[a.tree[i] + 1]
    for lvl, ids in enumerate(a.level_nodes):
        assert np.all(np.diff(ids) > 0) and np.all(a.level[ids] == lvl)


def test_non_contiguous_and_any_int_dtype(native_impl):
    tokens = np.arange(40, dtype=np.uint16)[::2]  # strided view
    offs = np.array([0, 0, 5, 0, 9, 0, 20], dtype=np.int8)[::2]  # [0,5,9,20]
    out = ck.join_pad(tokens, offs, 12, 3, 1)
    assert out.ids[0].tolist() == list(range(0, 10, 2)) + [3] + list(range(10, 18, 2)) + [1] * 2


def test_empty_inputs(native_impl):
    assert ck.greedy_join([], 5).tolist() == []
    r = ck.join_pad(np.array([], dtype=np.int64), [0], 4, 3, 1)
    assert r.ids.shape == (0, 4) and r.cu_seqlens.tolist() == [0]
    assert ck.pad_units([], [0], 3, 1).shape == (0, 3)
    d = ck.build_dvt([[0]])
    assert len(d.parent) == 0


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("call, match", [
    (lambda: ck.pad_units([1, 2], [0, 3], 4, 0), "must end at 2"),
    (lambda: ck.pad_units([1, 2], [1, 2], 4, 0), "must start at 0"),
    (lambda: ck.pad_units([1, 2, 3], [0, 2, 1, 3], 4, 0), r"non-decreasing.*offsets\[2\]"),
    (lambda: ck.pad_units([1.5, 2.0], [0, 2], 4, 0), "tokens: expected an integer array"),
    (lambda: ck.pad_units([[1, 2]], [0, 2], 4, 0), "tokens: expected a 1-d array"),
    (lambda: ck.pad_units([1, 2, 3], [0, 3], 2, 0), "unit 0 has 3 ids, longer than width=2"),
    (lambda: ck.pad_units([1], [0, 1], 0, 0), "width: must be >= 1"),
    (lambda: ck.greedy_join([3, 11, 2], 10), "unit 1 has length 11"),
    (lambda: ck.greedy_join([3, -1], 10), "lengths: must be >= 0"),
    (lambda: ck.join_pad([1, 2, 3], [0, 3], 2, 3, 1), "unit 0 has length 3.*split_long=True"),
    (lambda: ck.flatten_level([1, 2], [[0, 2], [0, 1]], 2), r"level: must be an int in \[0, 1\] for 2 levels"),
    (lambda: ck.flatten_level([1, 2], [[0, 2], [0, 2]], 0), r"level_offsets\[1\].*must end at 1"),
    (lambda: ck.build_dvt(np.array([0, 1])), "level_offsets: expected a non-empty list"),
    (lambda: ck.pad_units([1], [0, 1], 2, 2**63), "pad_id: .* does not fit in int64"),
    (lambda: ck.pad_units([1], [0, 1], 2, 1.0), "pad_id: expected an int"),
    (lambda: ck.join_pad([1], [0, 1], 2, join_id=-2**63 - 1, pad_id=1), "join_id: .* does not fit in int64"),
    (lambda: ck.join_pad([1], [0, 1], 2**63, 3, 1), "budget: .* does not fit in int64"),
    (lambda: ck.join_pad(np.array([2**63], dtype=np.uint64), [0, 1], 2, 3, 1), "tokens: value .* does not fit"),
    (lambda: ck.build_dvt([[0, 2]], n_tokens=3), "n_tokens=3"),
])
def test_bad_inputs_name_the_argument(native_impl, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=8), st.integers(0, 2**63 - 1),
       st.integers(0, 2**63 - 1))
@example([2**62, 2**62], 2**63 - 1, 1)
@example([2**62, 1], 2**62 + 1, 2**63 - 1)
def test_greedy_join_huge_values_do_not_overflow(lengths, budget, join_cost):
    # sums of lengths near 2**63 must not wrap around in C++ (the reference uses Python ints)
    budget = max(budget, max(lengths), 1)
    a, b = _both(lambda: ck.greedy_join(lengths, budget, join_cost))
    _assert_same(a.offsets, b.offsets)


@pytest.mark.parametrize("budget", [2**62, 2**63 - 1])
def test_join_pad_split_long_huge_budget(native_impl, budget):
    # pieces are counted without computing offset + budget past the end (no int64 wrap-around);
    # the output rows would be too big to allocate, so only the split itself is checked
    from craft_kernels.native.dataprep import _split_reference
    offsets = np.array([0, 1, 3, 6], dtype=np.int64)
    want = _split_reference(offsets.tolist(), budget)
    if native_impl == "cpp":
        got = _dispatch.ext().split_units(offsets, budget)
        _assert_same(list(got), want)
    assert [x.tolist() for x in want] == [[0, 1, 3, 6], [0, 1, 2], [0, 0, 0]]


def test_negative_pad_id_is_allowed(native_impl):
    # e.g. -100, the ignore index of cross-entropy targets
    r = ck.join_pad([5, 6, 7], [0, 2, 3], 6, join_id=3, pad_id=-100)
    assert r.ids.tolist() == [[5, 6, 3, 7, -100, -100]]


def test_craft_native_python_runs_the_reference():
    code = ("import craft_kernels.native.dataprep as dp, craft_kernels as ck\n"
            "called = []\n"
            "orig = dp.greedy_join_reference\n"
            "dp.greedy_join_reference = lambda *a: called.append(1) or orig(*a)\n"
            "print(ck.greedy_join([3, 6, 4], 10).tolist(), len(called))\n")
    for env, want in (("python", "1"), ("cpp", "0")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(os.environ, CRAFT_NATIVE=env)).stdout.split()
        assert out[-1] == want


def test_greedy_join_result_is_the_sequence_of_groups(native_impl):
    g = ck.greedy_join([3, 6, 4, 7, 5, 4], 10)
    assert len(g) == 4 and [x.tolist() for x in g] == [[0, 1], [2], [3], [4, 5]]
    assert g[-1].tolist() == [4, 5] and [x.tolist() for x in g[1:3]] == [[2], [3]]
    assert g.offsets.tolist() == [0, 2, 3, 4, 6]  # the CSR form stays an attribute
    assert list(ck.greedy_join([], 5)) == []
    with pytest.raises(IndexError):
        g[4]


def test_flatten_level_one_call_path_checks_every_level(native_impl):
    """int64 arrays in a list or tuple take C++'s one-call path (checks and composition in one call,
    no NumPy calls): it must still check every entry of every level, including the ones the
    composition never reads, and raise the messages naming the argument."""
    tokens = np.arange(12, dtype=np.int64)
    words = np.array([0, 2, 4, 6, 8, 10, 12], dtype=np.int64)
    sents, paras = np.array([0, 2, 4, 6], dtype=np.int64), np.array([0, 1, 3], dtype=np.int64)
    f = ck.flatten_level(tokens, (words, sents, paras), np.int64(2))
    assert f.unit_token_offsets.tolist() == [0, 4, 12] and f.level_offsets[0].tolist() == words.tolist()
    if native_impl == "cpp":  # the caller's arrays, no copies
        assert f.level_offsets[0] is words
        assert ck.flatten_level(tokens, [words, sents, paras], 0).unit_token_offsets is words
    bad_words = words.copy()
    bad_words[3] = 1  # words[3] is never read when composing paragraphs
    with pytest.raises(ValueError, match=r"level_offsets\[0\]: offsets must be non-decreasing"):
        ck.flatten_level(tokens, [bad_words, sents, paras], 2)
    with pytest.raises(ValueError, match=r"level_offsets\[0\]: offsets must end at 11"):
        ck.flatten_level(tokens[:11], [words, sents, paras], 2)
    with pytest.raises(ValueError, match=r"level_offsets\[2\]: offsets must end at 3"):
        ck.flatten_level(tokens, [words, sents, np.array([0, 1, 4], dtype=np.int64)], 1)
    with pytest.raises(ValueError, match=r"level: must be an int in \[0, 2\]"):
        ck.flatten_level(tokens, [words, sents, paras], 3)
