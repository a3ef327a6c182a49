"""Differential fuzzing of every native entry point: the C++ path against its pure-Python twin on
adversarial arrays and limits (invalid offsets, huge and negative values, empty batches, limits up
to sys.maxsize). Both must give the same result or raise the same exception type; neither may crash.

Run only in a child interpreter (tests/test_native_fuzz.py), so a crash fails that test instead of
killing the run. ``CRAFT_FUZZ_EXAMPLES`` sets the examples per property (default 30, a few seconds
each; e.g. CRAFT_FUZZ_EXAMPLES=5000 for a long run)."""
import os
import sys

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import craft_kernels as ck

settings.register_profile("craft_fuzz", max_examples=int(os.environ.get("CRAFT_FUZZ_EXAMPLES", "30")),
                          deadline=None, derandomize=False, suppress_health_check=list(HealthCheck))
settings.load_profile("craft_fuzz")

EXTREMES = [0, 1, 2, 3, -1, -2, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)]
ints = st.one_of(st.integers(-3, 12), st.sampled_from(EXTREMES))
small = st.integers(0, 8)
limits = st.one_of(st.none(), st.integers(0, 5), st.sampled_from([2**31, 2**62, sys.maxsize, -1]))


def offsets_st(max_n=8):
    """Mostly valid CSR offsets ending at the token count, sometimes broken."""
    valid = st.lists(small, max_size=max_n).map(lambda ls: [0] + np.cumsum(ls).tolist())
    broken = st.lists(ints, max_size=max_n)
    return st.one_of(valid, valid, broken)


def outcome(fn):
    try:
        return "ok", _plain(fn())
    except (ValueError, TypeError, FileExistsError) as e:
        return "raises", type(e).__name__
    except MemoryError:
        return "raises", "MemoryError"


def _plain(x):
    if isinstance(x, np.ndarray):
        return (str(x.dtype) if x.dtype != np.int32 else "int64", x.shape, x.astype(np.int64).tolist()
                if x.dtype.kind in "iub" else x.tolist())
    if isinstance(x, torch.Tensor):
        return _plain(x.numpy())
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def both(fn):
    with ck.use_native("cpp"):
        a = outcome(fn)
    with ck.use_native("python"):
        b = outcome(fn)
    assert a == b, f"C++ {a!r}\nPython {b!r}"
    return a


def with_tokens(offs, data):
    n = offs[-1] if offs and 0 <= offs[-1] <= 64 else 0
    return data.draw(st.lists(ints, min_size=n, max_size=n))


# ------------------------------------------------------------------ data prep
@given(offsets_st(), st.data(), st.one_of(st.integers(1, 6), st.sampled_from([0, -1, 2**62, 2**40, 2**20])), ints,
       st.booleans())
def test_pad_units(offs, data, width, pad_id, truncate):
    toks = with_tokens(offs, data)
    both(lambda: ck.pad_units(toks, offs, width, pad_id, truncate=truncate))


@given(st.lists(ints, max_size=10), st.one_of(st.integers(1, 12), st.sampled_from([0, 2**62, 2**63 - 1])),
       st.one_of(st.integers(0, 3), st.sampled_from([-1, 2**62, 2**63 - 1])))
def test_greedy_join(lengths, budget, join_cost):
    both(lambda: ck.greedy_join(lengths, budget, join_cost).offsets)


@given(offsets_st(), st.data(), st.one_of(st.integers(1, 9), st.sampled_from([0, 2**40, 2**62, 2**16])), ints, ints,
       st.booleans())
def test_join_pad(offs, data, budget, join_id, pad_id, split_long):
    toks = with_tokens(offs, data)
    both(lambda: tuple(ck.join_pad(toks, offs, budget, join_id, pad_id, split_long=split_long)))


@given(offsets_st(), st.lists(offsets_st(5), max_size=3), st.data(), st.integers(-1, 4))
def test_flatten_level_and_build_dvt(words, upper, data, level):
    toks = with_tokens(words, data)
    levels = [words, *upper]
    both(lambda: tuple(ck.flatten_level(toks, levels, level)))
    both(lambda: tuple(ck.build_dvt(levels)))


# ------------------------------------------------------------------ trie
seqs_st = st.lists(st.lists(st.one_of(st.integers(0, 5), st.sampled_from([2**31 - 1, 2**31, -1, 2**63, 2**64])),
                            max_size=5), max_size=12)
clean_seqs = st.lists(st.lists(st.integers(0, 5), max_size=5), min_size=1, max_size=12)


@given(seqs_st)
def test_trie_build(seqs):
    both(lambda: ck.Trie(seqs).child_tokens)


@given(clean_seqs, st.lists(st.lists(ints, max_size=4), max_size=5), limits, st.data())
def test_trie_lookups(seqs, probes, limit, data):
    def run():
        t = ck.Trie(seqs)
        out = [t.walk(probes) if probes else None, t.items_with_prefixes(probes, limit=limit) if probes else None]
        for p in probes:
            out += [t.lookup(p), t.longest_prefix(p), t.items_with_prefix(p, limit=limit)]
        return out
    both(run)


@given(clean_seqs, st.lists(st.one_of(st.integers(-1, 40), st.sampled_from(EXTREMES)), max_size=6),
       st.integers(1, 8), st.sampled_from(["raise", "eos", "keep"]), st.booleans())
def test_trie_decoding(seqs, states, vocab, on_empty, neg_inf):
    toks = [s % 7 if -(2**63) < s < 2**63 else 0 for s in states]

    def run():
        t = ck.Trie(seqs)
        s = np.array(states, dtype=np.int64)
        logits = torch.randn(len(states), vocab, generator=torch.Generator().manual_seed(0))
        if neg_inf:
            logits[:, ::2] = float("-inf")
        empty = t.apply_to_logits(logits, s, on_empty=on_empty, eos_id=0)
        return [t.advance(s, toks), t.allowed_mask(s, vocab), t.is_terminal(s), t.allowed(s), empty, logits]
    both(run)


# ------------------------------------------------------------------ kernels with C++ paths
@given(st.lists(st.sampled_from([-1, 0, 1, 2**31 - 1, 2**31, 2**32, 2**40, -2]), min_size=1, max_size=12))
def test_span_attention_ids(row):
    T = len(row)
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(1, 2, T, 16, generator=g) for _ in range(3))
    ids = torch.tensor([row])

    def run():
        return ck.doc_attention(q, k, v, ids, kind="doc_causal")

    with ck.use_native("cpp"):
        a = outcome(run)
    with ck.use_native("python"):
        b = outcome(run)
    assert a[0] == b[0]
    if a[0] == "ok":
        np.testing.assert_allclose(np.array(a[1][2]), np.array(b[1][2]), rtol=1e-4, atol=2e-5)
    else:
        assert a == b


@given(st.integers(0, 3), st.integers(0, 6), st.integers(1, 4), st.sampled_from(["clamp", "carry"]),
       st.sampled_from([0.0, float("inf"), float("nan"), 3e38]), st.integers(0, 1000))
def test_act_accumulate(B, N, D, mode, bad, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    if x.numel():
        x.view(-1)[seed % x.numel()] = bad
    r = torch.rand(B, N, generator=g, dtype=torch.float64) * 0.98 + 0.01
    h = torch.rand(B, N, generator=g, dtype=torch.float64) * 0.6
    with ck.use_native("cpp"):
        a = ck.act_accumulate(x, r, h, mode=mode)
    with ck.use_native("python"):
        b = ck.act_accumulate(x, r, h, mode=mode)
    for f in a._fields:
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=1e-12, atol=1e-12, equal_nan=True, msg=f)
