"""Link detection: the C++ LinkDetector against what a competent user would run instead -- join the
tokens' bytes (tiktoken's ``decode_bytes``, Rust) and run a compiled ``re`` pattern -- on ~1M GPT-2
tokens of real markdown (the installed packages' READMEs), with Python's garbage collector on.

Timing: both sides in the same process, interleaved round by round, medians with min-max spread
(``_harness.interleaved_many``). The Python twin stays as an extra column. Every record names the CPU and its ISA.
The regex finds less than the detector (no nesting, badges, code, escapes); it is the speed bar."""
import importlib.metadata
import re

import numpy as np
import pytest

from craft.tokenizers import GPT2Tokenizer
from craft_kernels import BatchLinkDetector, LinkDetector
import craft_kernels as ck
from _harness import interleaved_many, run_info

LINK = re.compile(rb"(!?)\[([^\[\]\n]*)\]\(([^()\n]*)\)")


def record(benchmark, timings: dict, units: int, ours: str, baseline: str, **extra):
    """Stores every side's median, spread and tokens/s, and ours / baseline as the headline ratio."""
    info = benchmark.extra_info
    for k, (med, lo, hi) in timings.items():
        info[f"{k}_s"] = f"{med:.6f} ({lo:.6f}-{hi:.6f})"
        info[f"{k}_tokens_per_s"] = round(units / med)
    info["speedup_vs_baseline"] = round(timings[baseline][0] / timings[ours][0], 2)
    info["baseline"] = baseline
    info.update(run_info(), gc="enabled", **extra)


@pytest.fixture(scope="module")
def corpus():
    tok = GPT2Tokenizer()
    texts = [d.read_text("METADATA") or "" for d in importlib.metadata.distributions()]
    ids = tok.encode("\n\n".join(t for t in texts if "](" in t))
    reps = max(1, 1_000_000 // max(len(ids), 1))
    return tok, np.array(ids * reps, dtype=np.int64)


class RegexLinks:
    """The competent alternative for a stream: append each push's bytes, run the compiled pattern over
    the text not yet settled, and keep the tail from the last "[" after the last match (so a link split
    across pushes is found); links as (is_image, text, target) tuples."""

    def __init__(self, tok):
        self.decode_bytes = tok.encoding.decode_bytes
        self.tail = b""

    def reset(self):
        self.tail = b""

    def push_many(self, ids) -> list:
        text = self.tail + self.decode_bytes(ids)
        out, end = [], 0
        for m in LINK.finditer(text):
            out.append(m.groups())
            end = m.end()
        cut = text.rfind(b"[", end)
        self.tail = text[cut:][-4096:] if cut >= 0 else b""
        return out

    def scan(self, ids) -> list:
        return LINK.findall(self.decode_bytes(ids))


def test_link_detection_streaming_64_token_pushes(benchmark, corpus):
    """Generation-like: the stream pushed 64 tokens at a time."""
    tok, ids = corpus
    chunks = [c.tolist() for c in np.array_split(ids, max(1, len(ids) // 64))]
    arrays = np.array_split(ids, max(1, len(ids) // 64))
    det, rx = LinkDetector.for_tokenizer(tok), RegexLinks(tok)
    with ck.use_native("python"):
        twin = LinkDetector.for_tokenizer(tok)

    def run(d, cs=arrays):
        d.reset()
        return sum(len(d.push_many(c)) for c in cs)

    def run_arrays():
        det.reset()
        return sum(len(det.push_many_arrays(c)) for c in arrays)

    n_ours, n_re = run(det), run(rx, chunks)
    assert run_arrays() == n_ours == run(twin) and n_re > 0.9 * n_ours
    t = interleaved_many({"cpp": lambda: run(det), "cpp_arrays": run_arrays, "bytes_re": lambda: run(rx, chunks)}, rounds=7, warmup=1)
    t["python_twin"] = interleaved_many({"python_twin": lambda: run(twin)}, rounds=1)["python_twin"]
    benchmark.pedantic(lambda: run(det), rounds=3, iterations=1)
    record(benchmark, t, len(ids), "cpp", "bytes_re", links=n_ours, links_re=n_re, push_tokens=64)


def test_link_detection_scan_whole_array(benchmark, corpus):
    """One call over the whole stream (indexing a corpus): DetectedLink objects, arrays, or bytes + re."""
    tok, ids = corpus
    det, rx = LinkDetector.for_tokenizer(tok), RegexLinks(tok)
    id_list = ids.tolist()
    assert len(det.scan_arrays(ids)) == len(det.scan(ids))
    t = interleaved_many({"cpp_arrays": lambda: det.scan_arrays(ids), "cpp_links": lambda: det.scan(ids),
                     "bytes_re": lambda: rx.scan(id_list)}, rounds=7, warmup=1)
    benchmark.pedantic(lambda: det.scan_arrays(ids), rounds=3, iterations=1)
    record(benchmark, t, len(ids), "cpp_arrays", "bytes_re", links=len(det.scan_arrays(ids)))


def test_link_detection_push_one_token(benchmark, corpus):
    """Decoding one stream: one call per token. The regex side appends the token's bytes and searches
    only when the token holds a ")" (what a careful streaming user does)."""
    tok, ids = corpus
    ids = ids[:50_000].tolist()
    tb = tok.token_bytes
    det = LinkDetector.for_tokenizer(tok)

    def ours():
        det.reset()
        push = det.push
        return sum(push(t) is not None for t in ids)

    def regex():
        tail, n = b"", 0
        for t in ids:
            b = tb[t]
            tail += b
            if b")" in b:
                m = None
                for m in LINK.finditer(tail):
                    n += 1
                if m is not None:
                    tail = tail[m.end():]
            if len(tail) > 4096:
                tail = tail[-2048:]
        return n

    t = interleaved_many({"cpp": ours, "bytes_re": regex}, rounds=5, warmup=1)
    benchmark.pedantic(ours, rounds=3, iterations=1)
    record(benchmark, t, len(ids), "cpp", "bytes_re", links=ours(), links_re=regex())


def test_link_detection_batch_64_streams(benchmark, corpus):
    """BatchLinkDetector: 64 streams, one push of (64,) ids per decoding step; the regex side keeps one
    RegexLinks per stream and pushes each stream's token."""
    tok, ids = corpus
    steps = ids[:64 * 2000].reshape(2000, 64)
    step_lists = steps.tolist()
    batch = BatchLinkDetector.for_tokenizer(tok, 64)
    tb = tok.token_bytes

    def ours():
        batch.reset()
        return sum(sum(x is not None for x in batch.push(row)) for row in steps)

    def regex():
        tails, n = [b""] * 64, 0
        for row in step_lists:
            for r, t in enumerate(row):
                b = tb[t]
                tails[r] += b
                if b")" in b:
                    m = None
                    for m in LINK.finditer(tails[r]):
                        n += 1
                    if m is not None:
                        tails[r] = tails[r][m.end():]
                if len(tails[r]) > 4096:
                    tails[r] = tails[r][-2048:]
        return n

    t = interleaved_many({"cpp": ours, "bytes_re": regex}, rounds=5, warmup=1)
    benchmark.pedantic(ours, rounds=3, iterations=1)
    record(benchmark, t, steps.size, "cpp", "bytes_re", links=ours(), links_re=regex())
