"""Thread stress: another thread rewrites the caller's index arrays while a native op runs with the
GIL released. The ops must validate what C++ reads (private copies), so this can change results or
raise, but never crash. Runs in a child interpreter, so a segfault fails the test."""
import pytest

from tests._isolated import run_isolated

STRESS = r"""
import sys, threading, time
import numpy as np
import craft_kernels as ck
from craft_kernels.native import _dispatch

sys.setswitchinterval(1e-5)
SECONDS = {seconds}
BAD = 2**40 + 12345  # far outside any array (2**62 would wrap to offset 0 when scaled by 8)
rng = np.random.default_rng(0)


def stress(name, arr, call, bad=BAD):
    good = arr.copy()
    n = len(arr)
    block = max(1, n // 20)
    stop = []

    def writer():
        k = 0
        while not stop:
            lo = (k * 7919) % max(1, n - block)
            k += 1
            arr[lo:lo + block] = bad
            arr[lo:lo + block] = good[lo:lo + block]

    th = threading.Thread(target=writer)
    th.start()
    calls = 0
    t0 = time.time()
    try:
        while time.time() - t0 < SECONDS:
            calls += 1
            try:
                call()
            except ValueError:
                pass
    finally:
        stop.append(1)
        th.join()
    arr[:] = good
    print(name, calls, flush=True)


N = 400_000
trie = ck.Trie(rng.integers(0, 50, size=(20_000, 4)))
states = rng.integers(0, trie.n_nodes, size=N).astype(np.int64)
toks = rng.integers(0, 50, size=N).astype(np.int64)
mask = np.zeros((N // 100, 64), dtype=bool)
stress("trie.advance", states, lambda: trie.advance(states, toks))
stress("trie.allowed_mask", states, lambda: trie.allowed_mask(states[: N // 100], 64, out=mask))
flat = rng.integers(0, 50, size=4 * N).astype(np.int64)
seqs = flat.reshape(N, 4)
stress("trie.items_with_prefixes", flat, lambda: trie.items_with_prefixes(seqs, limit=3))
stress("trie.build", flat, lambda: ck.Trie(seqs[:20_000]), bad=2**31 - 1)

tokens = rng.integers(0, 1000, size=2 * N).astype(np.int64)
offsets = np.arange(N + 1, dtype=np.int64) * 2
stress("pad_units", offsets, lambda: ck.pad_units(tokens, offsets, 4, 0))
stress("join_pad", offsets, lambda: ck.join_pad(tokens, offsets, 16, -2, -1))
words = np.arange(N + 1, dtype=np.int64) * 2
sents = np.arange(N // 4 + 1, dtype=np.int64) * 4
stress("flatten_level", sents, lambda: ck.flatten_level(tokens, [words, sents], 1))
stress("build_dvt", sents, lambda: ck.build_dvt([words, sents]))
print("done")
"""


@pytest.mark.parametrize("impl", ["cpp"])
def test_native_ops_survive_concurrent_writes(impl):
    out = run_isolated(STRESS.format(seconds=0.6), timeout=300, env={"CRAFT_NATIVE": impl})
    assert out.strip().endswith("done")
