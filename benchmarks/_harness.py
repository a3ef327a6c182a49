"""The benchmark harness: what the machine is, what it can do at most, and fair interleaved timing.

Every benchmark result records
- the machine (:func:`machine_info`): CPU model, ISA flags (AVX2 / AVX-512 / AVX512-BF16 / AMX),
  threads, and the torch / numpy / python versions;
- the machine's limits measured in the same run (:func:`machine_limits`): copy bandwidth in GB/s
  (a large tensor copy, bytes read + bytes written) and matmul throughput in GFLOP/s in fp32 and bf16;
- ours and the baseline timed interleaved (:func:`interleaved`): the same warm-up, the same number
  of rounds, alternating which side goes first, reported as medians with their spread, so a burst
  of load from other processes hits both sides alike.

Plain functions (no pytest) so ``craft bench`` and the tests can use them too.
"""
from __future__ import annotations

import functools
import gc
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from craft_kernels._backend import cpu_flags, cpu_model, isa_summary


@functools.lru_cache(maxsize=None)
def machine_info() -> dict:
    """Static description of this machine and software (cheap; no timing)."""
    return {
        "cpu": cpu_model(),
        "isa": isa_summary(),
        "isa_flags": {f: f in cpu_flags() for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _median_time(fn, rounds: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def copy_bandwidth_gbs(nbytes: int = 1 << 27, rounds: int = 7) -> float:
    """Copy bandwidth now: a ``nbytes`` fp32 tensor copied into another (bytes read + written per second)."""
    n = nbytes // 4
    src, dst = torch.ones(n), torch.empty(n)
    t = _median_time(lambda: dst.copy_(src), rounds)
    return 2 * nbytes / t / 1e9


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 1024, rounds: int = 7) -> float:
    """Square matmul throughput now in ``dtype`` (2 n^3 FLOP per product)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    t = _median_time(lambda: torch.mm(a, b), rounds)
    return 2 * n ** 3 / t / 1e9


_LIMITS: dict | None = None


def machine_limits(refresh: bool = False) -> dict:
    """Copy bandwidth (GB/s) and matmul GFLOP/s in fp32 and bf16, measured once per process."""
    global _LIMITS
    if _LIMITS is None or refresh:
        _LIMITS = {
            "copy_gbs": round(copy_bandwidth_gbs(), 2),
            "matmul_fp32_gflops": round(matmul_gflops(torch.float32), 1),
            "matmul_bf16_gflops": round(matmul_gflops(torch.bfloat16), 1),
        }
    return _LIMITS


def spread(ts: list[float]) -> dict:
    """Median, min, max and the relative inter-quartile range of a list of times (seconds)."""
    if not ts:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "iqr_rel": float("nan")}
    med = statistics.median(ts)
    if len(ts) >= 4:
        q = statistics.quantiles(ts, n=4)
        iqr = (q[2] - q[0]) / med
    else:
        iqr = (max(ts) - min(ts)) / med
    return {"median": med, "min": min(ts), "max": max(ts), "iqr_rel": iqr}


def interleaved(ours, baseline, rounds: int = 5, warmup: int = 1) -> dict:
    """Time ``ours`` and ``baseline`` alternately (ABBA order), same warm-up and rounds.

    Returns ``{"ours": [s...], "baseline": [s...], "ratio": median(baseline)/median(ours),
    "ratio_rounds": [per-round baseline/ours ...]}``; ratio > 1 means ours is faster."""
    for _ in range(warmup):
        ours()
        baseline()
    t_ours, t_base = [], []

    def timed(fn, out):
        gc.collect()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)

    for i in range(rounds):
        if i % 2 == 0:
            timed(ours, t_ours)
            timed(baseline, t_base)
        else:
            timed(baseline, t_base)
            timed(ours, t_ours)
    return {"ours": t_ours, "baseline": t_base,
            "ratio": statistics.median(t_base) / statistics.median(t_ours),
            "ratio_rounds": [b / o for o, b in zip(t_ours, t_base)]}



def interleaved_many(fns: dict, rounds: int = 5, warmup: int = 0) -> dict:
    """Time several callables in turn each round (``warmup`` untimed calls each first), so a load
    change hits all of them alike. Returns ``{name: (median_s, min_s, max_s)}``."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), min(v), max(v)) for k, v in times.items()}


def run_info() -> dict:
    """:func:`machine_info` plus what changes between runs: the 1-minute load average and threads now."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return dict(machine_info(), threads=torch.get_num_threads(), load_avg_1min=load)

def peak_memory_bytes(fn, repeats: int = 3) -> int:
    """Peak bytes allocated by ``fn`` above what was live when it started, on CPU, at the granularity
    of one operator (from the profiler's allocation records; an op's allocations and frees count at
    its start, so temporaries freed inside one op are not seen). ``fn`` runs once before, to exclude
    compilation and caches; the smallest of ``repeats`` profiled calls is returned (the first
    profiled call sometimes carries one-off allocations)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    peaks = []
    for _ in range(repeats):
        gc.collect()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        # self memory (children excluded) of every event, in start order: allocations made directly
        # by a compiled graph's wrapper are attributed to the enclosing op, not to a leaf
        live = peak = 0
        for e in sorted(prof.events(), key=lambda e: e.time_range.start):
            live += e.self_cpu_memory_usage
            peak = max(peak, live)
        peaks.append(int(peak))
    return min(peaks)


def file_timing(benchmark, timing: dict) -> None:
    """Store ours' times of an :func:`interleaved` timing as a pytest-benchmark fixture's stats (so
    its table and JSON show them), unless benchmarking is disabled."""
    if benchmark.disabled:
        return
    stats = benchmark._make_stats(1)
    for t in timing["ours"]:
        stats.update(t)
    benchmark._mode = "craft compare (interleaved)"


def record(info: dict, timing: dict, *, units: float | None = None, unit_name: str = "items",
           bytes_moved: float | None = None, flops: float | None = None, flops_dtype: torch.dtype | None = None,
           baseline_flops: float | None = None, limits: dict | None = None) -> dict:
    """Fill ``info`` (a pytest-benchmark ``extra_info``) from an :func:`interleaved` timing: medians
    and spread of both sides, the ratio, throughput, the machine, and the achieved share of the
    machine's limit (copy bandwidth for ``bytes_moved``; matmul throughput in ``flops_dtype`` for
    ``flops``)."""
    o, b = spread(timing["ours"]), spread(timing["baseline"])
    r = spread(timing["ratio_rounds"])
    info["speedup_vs_baseline"] = round(timing["ratio"], 3)
    info["ratio_min"], info["ratio_max"] = round(r["min"], 3), round(r["max"], 3)
    info["ours_median_s"], info["baseline_median_s"] = round(o["median"], 6), round(b["median"], 6)
    info["ours_iqr_rel"], info["baseline_iqr_rel"] = round(o["iqr_rel"], 3), round(b["iqr_rel"], 3)
    info["rounds"] = len(timing["ours"])
    if units:
        info[f"{unit_name}_per_s"] = round(units / o["median"], 1)
        info[f"baseline_{unit_name}_per_s"] = round(units / b["median"], 1)
    m = machine_info()
    info.update({"cpu": m["cpu"], "isa": m["isa"], "threads": torch.get_num_threads(), "torch": m["torch"]})
    if bytes_moved or flops:
        lim = machine_limits() if limits is None else limits
        info.update(lim)
        if bytes_moved:
            info["copy_bw_share"] = round(bytes_moved / o["median"] / 1e9 / lim["copy_gbs"], 3)
            info["baseline_copy_bw_share"] = round(bytes_moved / b["median"] / 1e9 / lim["copy_gbs"], 3)
        if flops:
            key = "matmul_bf16_gflops" if flops_dtype == torch.bfloat16 else "matmul_fp32_gflops"
            info["matmul_dtype"] = "bf16" if flops_dtype == torch.bfloat16 else "fp32"
            info["matmul_share"] = round(flops / o["median"] / 1e9 / lim[key], 3)
            info["baseline_matmul_share"] = round((baseline_flops or flops) / b["median"] / 1e9 / lim[key], 3)
    return info


if __name__ == "__main__":  # python benchmarks/_harness.py: this machine and its limits
    import json

    json.dump({"machine": machine_info(), "limits": machine_limits()}, sys.stdout, indent=1)
    print()


def nested_levels(n_tokens: int = 1_000_000, seed: int = 0):
    """(tokens (n,) int64, [words, sentences, paragraphs] offsets, each (count + 1,) int64): random
    text structure for the data-prep benchmarks (words of 1-8 tokens, sentences of 1-14 words,
    paragraphs of 1-5 sentences)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    word_len = rng.integers(1, 9, size=n_tokens // 4)
    word_len = word_len[np.cumsum(word_len) <= n_tokens]
    tokens = rng.integers(4, 200, size=int(word_len.sum())).astype(np.int64)
    words = np.concatenate([[0], np.cumsum(word_len)])
    sent_len = rng.integers(1, 15, size=len(word_len))
    sent_len = sent_len[np.cumsum(sent_len) <= len(word_len)]
    sent_len[-1] += len(word_len) - sent_len.sum()
    sents = np.concatenate([[0], np.cumsum(sent_len)])
    para_len = rng.integers(1, 6, size=len(sent_len))
    para_len = para_len[np.cumsum(para_len) <= len(sent_len)]
    para_len[-1] += len(sent_len) - para_len.sum()
    paras = np.concatenate([[0], np.cumsum(para_len)])
    return tokens, [words, sents, paras]
