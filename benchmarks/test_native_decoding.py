"""Link detection: C++ vs the pure-Python reference (and peers) in the same run. (The trie benchmarks
are in benchmarks/test_trie.py.)"""
import importlib.metadata

import numpy as np
import pytest

from craft.tokenizers import GPT2Tokenizer
from craft_kernels import BatchLinkDetector, LinkDetector
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


def test_link_detection_scan_whole_array(compare, markdown_ids):
    """The same stream in one push_many call (a prompt, or a corpus being indexed)."""
    tok, ids = markdown_ids
    with _dispatch.use("cpp"):
        fast = LinkDetector.for_tokenizer(tok)
    with _dispatch.use("python"):
        ref = LinkDetector.for_tokenizer(tok)
    compare(lambda: fast.scan(ids), lambda: ref.scan(ids), units=len(ids), unit_name="tokens", baseline_reps=1,
            rounds=3)


def test_link_detection_push_one_token(compare, markdown_ids):
    """One Python call per token (decoding one stream): dominated by the call itself."""
    tok, ids = markdown_ids
    ids = ids[:20000].tolist()
    with _dispatch.use("cpp"):
        fast = LinkDetector.for_tokenizer(tok)
    with _dispatch.use("python"):
        ref = LinkDetector.for_tokenizer(tok)

    def run(det):
        det.reset()
        for t in ids:
            det.push(t)

    compare(lambda: run(fast), lambda: run(ref), units=len(ids), unit_name="tokens", baseline_reps=1, rounds=3)


def test_link_detection_batch_64_streams(compare, markdown_ids):
    """BatchLinkDetector: 64 streams, one push of (64,) ids per decoding step."""
    tok, ids = markdown_ids
    steps = ids[:64 * 1000].reshape(1000, 64)
    with _dispatch.use("cpp"):
        fast = BatchLinkDetector.for_tokenizer(tok, 64)
    with _dispatch.use("python"):
        ref = BatchLinkDetector.for_tokenizer(tok, 64)

    def run(det):
        det.reset()
        return sum(sum(x is not None for x in det.push(row)) for row in steps)

    assert run(fast) == run(ref)
    compare(lambda: run(fast), lambda: run(ref), units=steps.size, unit_name="tokens", baseline_reps=1, rounds=3)
