"""Trie: C++ vs marisa-trie, the compact trie a user would pick instead (goals: >= 2x single
lookups, >= 10x batched), and vs a dict-per-node trie (the common hand-written baseline), in the
same run, timed by the same harness."""
import numpy as np
import pytest
import torch

from craft_kernels import Trie


class DictTrie:
    """The common baseline: one dict per node."""

    def __init__(self, codes):
        self.root = {}
        for i, seq in enumerate(codes.tolist()):
            node = self.root
            for t in seq:
                node = node.setdefault(t, {})
            node.setdefault(None, []).append(i)

    def allowed_mask(self, nodes, vocab, out=None, prev=None):
        """A fresh mask, or ``out`` refilled after clearing what ``prev`` (its nodes) set."""
        mask = np.zeros((len(nodes), vocab), dtype=bool) if out is None else out
        for r, n in enumerate(prev or ()):
            mask[r, [k for k in n if k is not None]] = False
        for r, n in enumerate(nodes):
            mask[r, [k for k in n if k is not None]] = True
        return mask

    def advance(self, nodes, tokens):
        return [n.get(int(t), {}) for n, t in zip(nodes, tokens)]


@pytest.fixture(scope="module")
def codes():
    return np.random.default_rng(0).integers(0, 256, size=(1_000_000, 4), dtype=np.int64)


def test_trie_build_1m_items(compare, codes):
    compare(lambda: Trie(codes), lambda: DictTrie(codes), units=len(codes), unit_name="items", baseline_reps=1,
            rounds=3)


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh_mask", "reused_mask"])
@pytest.mark.parametrize("vocab", [256, 50257])
def test_trie_allowed_mask_and_advance_batch_256(compare, codes, vocab, reuse):
    """4 decoding steps of 256 beams: allowed_mask then advance. ``reused_mask``: both sides refill
    one (256, V) array, clearing only the previous step's entries (``allowed_mask(out=)``), so a
    step costs O(allowed) instead of allocating and zeroing 256 x V bytes."""
    trie, dtrie = Trie(codes), DictTrie(codes)
    tokens = codes[:256]
    buf, dbuf = np.zeros((256, vocab), dtype=bool), np.zeros((256, vocab), dtype=bool)

    def ours():
        s = trie.root_states(256)
        mask = buf
        for d in range(4):
            mask = trie.allowed_mask(s, vocab, out=mask) if reuse else trie.allowed_mask(s, vocab)
            s = trie.advance(s, tokens[:, d])
        return s

    def base():
        n, prev = [dtrie.root] * 256, None
        for d in range(4):
            if reuse:
                dtrie.allowed_mask(n, vocab, out=dbuf, prev=prev)
                prev = n
            else:
                dtrie.allowed_mask(n, vocab)
            n = dtrie.advance(n, tokens[:, d])
        if reuse:
            dtrie.allowed_mask([{}] * 256, vocab, out=dbuf, prev=prev)  # leave it clear for the next call
        return n

    assert ours().min() >= 0
    compare(ours, base, units=256 * 4, unit_name="beam_steps", baseline_reps=3, rounds=5, vocab=vocab,
            mask="reused (out=)" if reuse else "fresh")


def test_trie_apply_to_logits_batch_256_vocab_50257(compare, codes):
    """What constrained decoding does each step: mask (256, 50257) float32 logits in place.
    Baseline: the dict trie's mask applied with masked_fill_."""
    trie, dtrie = Trie(codes), DictTrie(codes)
    tokens = codes[:256]
    states = trie.advance(trie.root_states(256), tokens[:, 0])
    nodes = dtrie.advance([dtrie.root] * 256, tokens[:, 0])
    logits = torch.randn(256, 50257)
    work, check = logits.clone(), logits.clone()

    def ours():  # masking is idempotent: every call does the full work on the same tensor
        trie.apply_to_logits(work, states)

    def base():
        check.masked_fill_(~torch.from_numpy(dtrie.allowed_mask(nodes, 50257)), float("-inf"))

    ours()
    base()
    assert torch.equal(work, check)
    compare(ours, base, units=256, unit_name="rows", baseline_reps=3, rounds=5)


def test_trie_build_titles_gpt2(compare):
    """Ragged sequences over a 50257 vocab (document titles): the comparison-sort path."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 12, size=100_000)
    seqs = [rng.integers(0, 50257, size=n).tolist() for n in lengths]

    class Seqs:  # the dict trie over ragged sequences
        def __init__(self):
            self.root = {}
            for i, seq in enumerate(seqs):
                node = self.root
                for t in seq:
                    node = node.setdefault(t, {})
                node.setdefault(None, []).append(i)

    compare(lambda: Trie(seqs), Seqs, units=len(seqs), unit_name="items", baseline_reps=1, rounds=3)


def _marisa_setup(codes):
    marisa_trie = pytest.importorskip("marisa_trie", reason="marisa-trie is in the bench extra")
    sub = codes[:200_000]
    trie = Trie(sub)
    mt = marisa_trie.Trie(["".join(chr(0x100 + int(c)) for c in row) for row in sub])
    probes = sub[:2000, :2]
    pkeys = ["".join(chr(0x100 + int(c)) for c in row) for row in probes]
    return trie, mt, probes, pkeys


def test_trie_prefix_lookup_vs_marisa(compare, codes):
    """One call per prefix on both sides (items_with_prefix on int64 rows vs marisa keys on str);
    each side's keys are built outside the timing in its own natural form. 15 rounds: a round
    is ~10 ms, so a burst of load from other processes moves a 5-round median."""
    trie, mt, probes, pkeys = _marisa_setup(codes)
    rows = list(probes)

    def ours():
        return sum(len(trie.items_with_prefix(p)) for p in rows)

    def peer():
        return sum(len(mt.keys(p)) for p in pkeys)

    assert ours() == peer()
    compare(ours, peer, units=len(probes), unit_name="lookups", rounds=15, peer="marisa-trie")


def test_trie_prefix_lookup_batched_vs_marisa(compare, codes):
    """All 2000 prefixes in one items_with_prefixes call vs marisa keys per prefix."""
    trie, mt, probes, pkeys = _marisa_setup(codes)

    def ours():
        return len(trie.items_with_prefixes(probes)[1])

    def peer():
        return sum(len(mt.keys(p)) for p in pkeys)

    assert ours() == peer()
    compare(ours, peer, units=len(probes), unit_name="lookups", rounds=15, peer="marisa-trie")
