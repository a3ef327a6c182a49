"""The link detector under misuse: threads sharing one detector, ids rewritten by another thread
during a call, limits at the ends of int64, huge batch sizes and boolean masks. Anything that could
crash runs in a subprocess, so a segfault fails the test instead of killing pytest."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from craft.tokenizers import ByteTokenizer
from craft_kernels import BatchLinkDetector, LinkDetector
import craft_kernels as ck

TB = ByteTokenizer().token_bytes
I64_MAX = 2**63 - 1


# Each scenario prints one line "name ok ..." when it holds; all run in one interpreter (a crash fails them all).
SCENARIOS = r"""
import json, threading
import numpy as np
from craft_kernels import BatchLinkDetector, LinkDetector
TB = [bytes([i]) for i in range(256)]

def threads(det, work, n=4):
    errors = []
    def run(k):
        try:
            work(k)
        except Exception as e:
            errors.append(repr(e))
    ts = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    return errors

# Four threads push whole links (long calls release the GIL) and reset one detector: every call sees a
# consistent stream, so each finds exactly its own links.
det = LinkDetector(TB)
chunk = np.frombuffer(b"[ab](cd) text " * 800, dtype=np.uint8).astype(np.int64)   # 11200 tokens, 800 links
counts = []
def work(k):
    for i in range(12):
        counts.append(len(det.push_many(chunk)))
        if i % 3 == k % 3:
            det.reset()
        det.push(ord(" "))
        det.inside_target, det.current_target_bytes
errors = threads(det, work)
assert not errors and set(counts) == {800}, (errors, sorted(set(counts)))
print("shared_detector ok", flush=True)

# A BatchLinkDetector of 8192 streams (its steps release the GIL) pushed and reset from 4 threads.
B = 8192
batch = BatchLinkDetector(TB, B)
steps = []
def work(k):
    text = b"[ab](cd) "
    for step in range(40):
        links = batch.push(np.full(B, text[step % len(text)], dtype=np.int64))
        steps.append(len(links))
        if step % 10 == k:
            batch.reset(np.arange(k, B, 4))
        batch.inside_target
errors = threads(batch, work)
assert not errors and steps == [B] * 160, errors
print("shared_batch ok", flush=True)

# Another thread fills the ids with out-of-vocabulary values (and back) while long calls run: each
# call raises ValueError naming the ids or returns links; it never reads out of bounds.
good = np.frombuffer(b"[ab](cd) " * 20000, dtype=np.uint8).astype(np.int64)
ids = good.copy()
stop = []
def writer():
    while not stop:
        ids[:] = 10**12          # NumPy releases the GIL for large copies
        ids[:] = good
w = threading.Thread(target=writer)
w.start()
outcomes = set()
try:
    for _ in range(40):
        try:
            det.scan(ids)
            outcomes.add("links")
        except ValueError as e:
            assert "outside the vocabulary" in str(e), e
            outcomes.add("error")
finally:
    stop.append(1)
    w.join()
print("rewritten_ids ok", sorted(outcomes), flush=True)

# An ids object whose conversion calls back into the same detector gets an error, not a deadlock.
class Sneaky:
    def __array__(self, dtype=None, copy=None):
        det.push_many(np.array([1, 2], dtype=np.int64))
        return np.array([1, 2], dtype=np.int64)
try:
    det.push_many(Sneaky())
    raise AssertionError("no error")
except ValueError as e:
    assert "called again from the thread" in str(e), e
print("reentrant ok", flush=True)
"""


@pytest.fixture(scope="module")
def isolated_run():
    """The scenarios in a fresh interpreter: (exit code, stdout + stderr)."""
    r = subprocess.run([sys.executable, "-c", SCENARIOS], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CRAFT_NATIVE": "cpp"})
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("scenario", ["shared_detector", "shared_batch", "rewritten_ids", "reentrant"])
def test_isolated_scenario(isolated_run, scenario):
    rc, out = isolated_run
    assert f"{scenario} ok" in out, f"exit {rc} (negative: killed by signal {-rc})\n{out[-3000:]}"


def test_twin_threads_share_one_detector():
    """The Python twin serialises calls with a lock too: each call sees a consistent stream."""
    with ck.use_native("python"):
        det = LinkDetector(TB)
    chunk = list(b"[ab](cd) text " * 40)
    counts = []

    def work():
        for _ in range(5):
            counts.append(len(det.push_many(chunk)))

    ts = [threading.Thread(target=work) for _ in range(3)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert counts == [40] * 15


@pytest.mark.parametrize("limits", [(I64_MAX, I64_MAX), (I64_MAX, 0), (0, I64_MAX), (I64_MAX - 7, 1), (2**62, 2**62)])
def test_extreme_limits_match_the_twin(limits):
    """Limits whose span bound (max_text + max_target + 8) overflows int64: C++ agrees with the twin."""
    text = b"see [a](b), [![c](d)](e), [h](), [](i) and [long " + b"x" * 3000 + b"](f) [g](" + b"y" * 3000 + b")"
    ids = list(text)
    kw = dict(max_text_bytes=limits[0], max_target_bytes=limits[1])
    with ck.use_native("python"):
        want = LinkDetector(TB, **kw).scan(ids)
    with ck.use_native("cpp"):
        got = LinkDetector(TB, **kw).scan(ids)
    assert got == want and len(want) >= 1


def test_limits_beyond_int64_are_rejected(native_impl):
    with pytest.raises(ValueError, match="max_text_bytes: .* does not fit in int64"):
        LinkDetector(TB, max_text_bytes=2**63)
    with pytest.raises(ValueError, match="max_target_bytes: must be >= 0"):
        LinkDetector(TB, max_target_bytes=-1)


@pytest.mark.parametrize("batch_size", [2**62, 2**20 + 1])
def test_huge_batch_size_names_the_argument(native_impl, batch_size):
    with pytest.raises(ValueError, match="batch_size: .*MAX_BATCH"):
        BatchLinkDetector(TB, batch_size)


def test_reset_with_a_boolean_mask(native_impl):
    det = BatchLinkDetector(TB, 3)
    for b in b"[a](":
        det.push(np.full(3, b))
    det.reset(np.array([True, False, True]))
    assert det.inside_target.tolist() == [False, True, False]
    det.reset([False, True, False])
    assert det.inside_target.tolist() == [False, False, False]
    with pytest.raises(ValueError, match=r"rows: a boolean mask must have shape \(3,\)"):
        det.reset(np.array([True, False]))
