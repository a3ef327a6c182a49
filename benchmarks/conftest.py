"""Shared helpers: every benchmark times its baseline in the same run and records the ratio."""
import platform
import time

import pytest
import torch


def best_time(fn, reps: int = 3) -> float:
    """Best wall time of `reps` calls (seconds)."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@pytest.fixture
def compare(benchmark):
    """compare(fast, baseline, units=None, unit_name='items', baseline_reps=3, rounds=5)

    Benchmarks `fast` with pytest-benchmark, times `baseline` in the same run, and stores
    the speed-up (baseline time / fast time) and throughput in benchmark.extra_info."""

    def run(fast, baseline, units=None, unit_name="items", baseline_reps=3, rounds=5, **extra):
        benchmark.pedantic(fast, rounds=rounds, iterations=1, warmup_rounds=1)
        t_fast = benchmark.stats.stats.min
        t_base = best_time(baseline, baseline_reps)
        info = benchmark.extra_info
        info["speedup_vs_baseline"] = round(t_base / t_fast, 2)
        info["baseline_s"] = round(t_base, 6)
        info["fast_s"] = round(t_fast, 6)
        if units:
            info[f"{unit_name}_per_s"] = round(units / t_fast)
            info[f"baseline_{unit_name}_per_s"] = round(units / t_base)
        info["torch"] = torch.__version__
        info["machine"] = f"{platform.machine()} {torch.get_num_threads()} threads"
        info.update(extra)
        return t_base / t_fast

    return run
