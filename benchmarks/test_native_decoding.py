"""Link detection and trie: C++ vs the pure-Python references (and peers) in the same run."""
import importlib.metadata

import numpy as np
import pytest

from craft.tokenizers import GPT2Tokenizer
from craft_kernels import LinkDetector
from craft_kernels.native import _dispatch


@pytest.fixture(scope="module")
def markdown_ids():
    tok = GPT2Tokenizer()
    texts = [d.read_text("METADATA") or "" for d in importlib.metadata.distributions()]
    ids = tok.encode("\n\n".join(t for t in texts if "](" in t))
    reps = max(1, 1_000_000 // max(len(ids), 1))
    return tok, np.array(ids * reps, dtype=np.int64)


def test_link_detection_streaming(compare, markdown_ids):
    """~1M GPT-2 tokens of real markdown pushed 64 tokens at a time; both on the same stream."""
    tok, ids = markdown_ids
    with _dispatch.use("cpp"):
        fast = LinkDetector.for_tokenizer(tok)
    with _dispatch.use("python"):
        ref = LinkDetector.for_tokenizer(tok)
    chunks = np.array_split(ids, max(1, len(ids) // 64))

    def run(det):
        det.reset()
        return sum(len(det.push_many(c)) for c in chunks)

    assert run(fast) == run(ref) > 0
    compare(lambda: run(fast), lambda: run(ref), units=len(ids), unit_name="tokens", baseline_reps=1, rounds=3,
            links_found=run(fast))


def test_link_detection_push_one_token(compare, markdown_ids):
    tok, ids = markdown_ids
    ids = ids[:20000]
    with _dispatch.use("cpp"):
        fast = LinkDetector.for_tokenizer(tok)
    with _dispatch.use("python"):
        ref = LinkDetector.for_tokenizer(tok)

    def run(det):
        det.reset()
        for t in ids.tolist():
            det.push(t)

    compare(lambda: run(fast), lambda: run(ref), units=len(ids), unit_name="tokens", baseline_reps=1, rounds=3)


class DictTrie:
    """The common baseline: one dict per node."""

    def __init__(self, codes):
        self.root = {}
        for i, seq in enumerate(codes.tolist()):
            node = self.root
            for t in seq:
                node = node.setdefault(t, {})
            node.setdefault(None, []).append(i)

    def allowed_mask(self, nodes, vocab):
        mask = np.zeros((len(nodes), vocab), dtype=bool)
        for r, n in enumerate(nodes):
            mask[r, [k for k in n if k is not None]] = True
        return mask

    def advance(self, nodes, tokens):
        return [n.get(int(t), {}) for n, t in zip(nodes, tokens)]


@pytest.fixture(scope="module")
def codes():
    return np.random.default_rng(0).integers(0, 256, size=(1_000_000, 4), dtype=np.int64)


def test_trie_build_1m_items(compare, codes):
    from craft_kernels import Trie
    compare(lambda: Trie(codes), lambda: DictTrie(codes), units=len(codes), unit_name="items", baseline_reps=1,
            rounds=3)


@pytest.mark.parametrize("vocab", [256, 50257])
def test_trie_allowed_mask_and_advance_batch_256(compare, codes, vocab):
    from craft_kernels import Trie
    trie, dtrie = Trie(codes), DictTrie(codes)
    tokens = codes[:256]

    def ours():
        s = trie.root_states(256)
        for d in range(4):
            trie.allowed_mask(s, vocab)
            s = trie.advance(s, tokens[:, d])
        return s

    def base():
        n = [dtrie.root] * 256
        for d in range(4):
            dtrie.allowed_mask(n, vocab)
            n = dtrie.advance(n, tokens[:, d])
        return n

    assert ours().min() >= 0
    compare(ours, base, units=256 * 4, unit_name="beam_steps", baseline_reps=3, rounds=5, vocab=vocab)


def test_trie_prefix_lookup_vs_marisa(compare, codes):
    marisa_trie = pytest.importorskip("marisa_trie", reason="marisa-trie is in the bench extra")
    from craft_kernels import Trie
    sub = codes[:200_000]
    trie = Trie(sub)
    keys = ["".join(chr(0x100 + int(c)) for c in row) for row in sub]
    mt = marisa_trie.Trie(keys)
    probes = sub[:2000, :2]
    pkeys = ["".join(chr(0x100 + int(c)) for c in row) for row in probes]

    def ours():
        return sum(len(trie.items_with_prefix(p)) for p in probes)

    def peer():
        return sum(len(mt.keys(p)) for p in pkeys)

    compare(ours, peer, units=len(probes), unit_name="lookups", baseline_reps=3, rounds=5, peer="marisa-trie")
