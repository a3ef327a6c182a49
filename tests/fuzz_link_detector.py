"""Fuzzing the C++ link detector against its Python twin (run by test_link_detector_fuzz.py in a
subprocess, so a crash fails that test). Adversarial vocabularies (every token a few bytes drawn
mostly from the special ones), token streams, chunkings, limits from 0 to the ends of int64, batched
streams. CRAFT_FUZZ_EXAMPLES sets the number of examples per property (default 80)."""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from craft_kernels import BatchLinkDetector, LinkDetector
import craft_kernels as ck

EXAMPLES = int(os.environ.get("CRAFT_FUZZ_EXAMPLES", "80"))
I64_MAX = 2**63 - 1
BYTES = st.sampled_from(list(b"[]()!\\\n<>`~ \t\rab"))
VOCAB = st.lists(st.lists(BYTES, max_size=4).map(bytes), min_size=1, max_size=24)
LIMIT = st.one_of(st.integers(0, 16), st.sampled_from([1024, I64_MAX, I64_MAX - 8, 2**62]))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def stream(vocab_size):
    return st.lists(st.integers(0, vocab_size - 1), max_size=120)


@st.composite
def case(draw):
    vocab = draw(VOCAB)
    return vocab, draw(stream(len(vocab))), draw(LIMIT), draw(LIMIT), draw(st.booleans()), draw(
        st.lists(st.integers(1, 40), max_size=8))


@SETTINGS
@given(case())
def check_single_stream(c):
    vocab, ids, mt, mg, skip_code, cuts = c
    kw = dict(max_text_bytes=mt, max_target_bytes=mg, skip_code=skip_code)
    with ck.use_native("python"):
        twin = LinkDetector(vocab, **kw)
        want = twin.scan(ids)
        state = (twin.inside_target, twin.current_target_bytes)
    with ck.use_native("cpp"):
        det = LinkDetector(vocab, **kw)
        assert det.scan(np.array(ids, dtype=np.int32)) == want
        assert (det.inside_target, det.current_target_bytes) == state
        det.reset()
        got, i = [], 0
        for n in cuts:  # chunked, then one token at a time
            got += det.push_many(ids[i:i + n])
            i += n
        got += [l for l in (det.push(t) for t in ids[i:]) if l is not None]
        assert got == want
        arr = det.scan_arrays(np.array(ids, dtype=np.int64))
        assert arr.positions.tolist() == [list(l[:4]) for l in want]
        assert arr.targets() == [l.target for l in want]


@SETTINGS
@given(VOCAB.flatmap(lambda v: st.tuples(st.just(v), st.lists(stream(len(v)), min_size=1, max_size=5),
                                         LIMIT, LIMIT, st.booleans())))
def check_batch(c):
    vocab, rows, mt, mg, skip_code = c
    kw = dict(max_text_bytes=mt, max_target_bytes=mg, skip_code=skip_code)
    n = max(map(len, rows))
    rows = [r + [0] * (n - len(r)) for r in rows]
    with ck.use_native("python"):
        want = [LinkDetector(vocab, **kw).scan(r) for r in rows]
    with ck.use_native("cpp"):
        batch = BatchLinkDetector(vocab, len(rows), **kw)
        got = [[] for _ in rows]
        for step in range(n):
            for r, link in enumerate(batch.push(np.array([row[step] for row in rows]))):
                if link is not None:
                    got[r].append(link)
    assert got == want


if __name__ == "__main__":
    check_single_stream()
    check_batch()
    print("fuzz ok", EXAMPLES)
