"""Native ops against their fair baselines in CPU time: ``python benchmarks/native_cpu_time.py``.

The pytest benchmarks (test_trie.py, test_link_detector.py, test_dataprep.py) time wall clock,
which on a shared machine mostly measures how often the process was descheduled. This script times
the same work with ``time.thread_time`` (CPU time of this thread), both sides interleaved round by
round in one process, and prints medians with their min-max range, the ratio of the medians, the
range and median of the per-round ratios, the 1-minute load and the ISA. Rows:

- trie: 2,000 single prefix lookups (``items_with_prefix``) and one batched call
  (``items_with_prefixes``) over a 200k-item trie vs marisa-trie ``keys`` per prefix, each round
  right after ``gc.collect()`` (as the pytest harness does: the collector evicts the trie from the
  caches) and warm (no collection);
- link detection: ~900k GPT-2 tokens of the installed packages' READMEs pushed 64 tokens at a time
  (``push_many``) and in one call (``scan_arrays``) vs joining the tokens' bytes and running ``re``;
- ``flatten_level`` (1M tokens, 3 levels, level 2) vs NumPy indexing without checks, and the
  checks' floor: one NumPy pass over the offsets it must check.

Needs the ``bench`` extra (marisa-trie, tiktoken). ``--rounds`` sets the rounds (default 15).
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def interleaved_cpu(fns: dict, rounds: int, collect: bool) -> dict:
    """{name: [cpu seconds per round]}: every callable once per round, in turn; ``collect``: a
    ``gc.collect()`` right before each timed call."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            if collect:
                gc.collect()
            t = time.thread_time()
            f()
            times[k].append(time.thread_time() - t)
    return times


def report(title: str, times: dict, base: str, unit_count: int, unit: str) -> None:
    print(f"\n{title} (load {os.getloadavg()[0]:.1f})")
    b = statistics.median(times[base])
    for k, v in times.items():
        m = statistics.median(v)
        per_round = sorted(x / y for x, y in zip(times[base], v))
        ratio = "" if k == base else (f"  {b / m:6.2f}x {base} (per round {per_round[0]:.2f}-{per_round[-1]:.2f}, "
                                      f"median {statistics.median(per_round):.2f}x)")
        print(f"  {k:28s} {m * 1e3:9.3f} ms ({min(v) * 1e3:.3f}-{max(v) * 1e3:.3f})  "
              f"{unit_count / m / 1e6:8.2f}M {unit}/s{ratio}")


def trie_rows(rounds: int) -> None:
    import marisa_trie

    from craft_kernels import Trie

    codes = np.random.default_rng(0).integers(0, 256, size=(200_000, 4), dtype=np.int64)
    trie = Trie(codes)
    mt = marisa_trie.Trie(["".join(chr(0x100 + int(c)) for c in row) for row in codes])
    probes = codes[:2000, :2]
    rows = list(probes)
    pkeys = ["".join(chr(0x100 + int(c)) for c in row) for row in probes]

    def single():
        return sum(len(trie.items_with_prefix(p)) for p in rows)

    def batched():
        return len(trie.items_with_prefixes(probes)[1])

    def marisa():
        return sum(len(mt.keys(p)) for p in pkeys)

    assert single() == batched() == marisa()
    fns = {"trie single": single, "trie batched": batched, "marisa-trie keys": marisa}
    for collect in (True, False):
        report(f"trie, 2,000 prefixes of 2 tokens, 200k items, {'gc.collect() before each call' if collect else 'warm'}",
               interleaved_cpu(fns, rounds, collect), "marisa-trie keys", len(probes), "lookups")


def link_rows(rounds: int) -> None:
    from craft.tokenizers import GPT2Tokenizer
    from craft_kernels import LinkDetector
    from test_link_detector import RegexLinks

    tok = GPT2Tokenizer()
    texts = [d.read_text("METADATA") or "" for d in importlib.metadata.distributions()]
    ids = tok.encode("\n\n".join(t for t in texts if "](" in t))
    ids = np.array(ids * max(1, 1_000_000 // max(len(ids), 1)), dtype=np.int64)
    arrays = np.array_split(ids, max(1, len(ids) // 64))
    chunks = [c.tolist() for c in arrays]
    det, rx = LinkDetector.for_tokenizer(tok), RegexLinks(tok)
    id_list = ids.tolist()

    def pushes(d, cs):
        d.reset()
        return sum(len(d.push_many(c)) for c in cs)

    def read_all():  # every link read as a DetectedLink (what push_many's LinkList builds on demand)
        det.reset()
        return sum(sum(1 for _ in det.push_many(c)) for c in arrays)

    fns = {"push_many 64-token": lambda: pushes(det, arrays), "push_many + read links": read_all,
           "scan_arrays one call": lambda: det.scan_arrays(ids), "bytes + re, 64-token": lambda: pushes(rx, chunks),
           "bytes + re, one call": lambda: rx.scan(id_list)}
    assert pushes(det, arrays) == read_all() == len(det.scan_arrays(ids))
    print(f"\nlink detection: {len(ids):,} tokens, {len(arrays):,} pushes, {len(det.scan_arrays(ids)):,} links")
    report("link detection, garbage collector on", interleaved_cpu(fns, max(5, rounds // 2), False),
           "bytes + re, 64-token", len(ids), "tokens")


def flatten_rows(rounds: int) -> None:
    import craft_kernels as ck

    from _harness import nested_levels
    from test_dataprep import flatten_level_numpy_checked

    tokens, levels = nested_levels(1_000_000)
    words, sents, paras = levels

    def floor():  # one read of every offset the op must check (a NumPy reduction, no checks)
        return words.max() + sents.max() + paras.max()

    fns = {"flatten_level (checked)": lambda: ck.flatten_level(tokens, levels, 2),
           "NumPy words[sents][paras]": lambda: words[sents][paras],
           "NumPy, same checks": lambda: flatten_level_numpy_checked(tokens, levels, 2)[2],
           "read every offset once": floor}
    assert np.array_equal(fns["flatten_level (checked)"]().unit_token_offsets, words[sents][paras])
    print(f"\nflatten_level: {len(tokens):,} tokens, {len(words) - 1:,} words, {len(sents) - 1:,} sentences, "
          f"{len(paras) - 1:,} paragraphs ({(words.nbytes + sents.nbytes + paras.nbytes) / 1e6:.2f} MB of offsets)")
    report("flatten_level, level 2", interleaved_cpu(fns, rounds * 3, False), "NumPy, same checks",
           len(tokens), "tokens")


def main() -> None:
    from craft_kernels._backend import cpu_model, isa_summary

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--only", choices=["trie", "links", "flatten"], default=None)
    args = ap.parse_args()
    print(f"{cpu_model()}, ISA {isa_summary()}, numpy {np.__version__}, CPU time (time.thread_time), "
          f"{args.rounds} rounds, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for name, fn in (("trie", trie_rows), ("links", link_rows), ("flatten", flatten_rows)):
        if args.only in (None, name):
            fn(args.rounds)


if __name__ == "__main__":
    main()
