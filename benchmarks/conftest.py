"""Shared fixtures: every benchmark times its baseline interleaved with ours in the same run and
records the ratio, the spread, the machine and the achieved share of the machine's limit
(see benchmarks/_harness.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _harness import file_timing, interleaved, machine_info as craft_machine_info, machine_limits, record  # noqa: E402


def pytest_benchmark_update_machine_info(config, machine_info: dict):
    """The JSON's machine_info gets the ISA flags, versions and the limits measured in this run."""
    # threads read now, not from the cached machine_info(): a benchmark that holds torch to 1 thread
    # while it runs first would otherwise file the whole run under a 1-thread machine
    import torch
    machine_info["craft"] = dict(craft_machine_info(), threads=torch.get_num_threads(), **machine_limits())


@pytest.fixture(scope="session")
def limits():
    """Copy bandwidth and matmul GFLOP/s (fp32, bf16) of this machine, measured once in this run."""
    return machine_limits()


@pytest.fixture
def compare(benchmark):
    """compare(ours, baseline, units=None, unit_name='items', rounds=5, warmup=1, bytes_moved=None,
    flops=None, flops_dtype=None, baseline_flops=None, **extra) -> median ratio (baseline / ours)

    Times ``ours`` and ``baseline`` interleaved with the same warm-up and rounds
    (:func:`_harness.interleaved`), stores ours' times as the pytest-benchmark stats, and fills
    ``extra_info`` with medians, spread, throughput, the machine and the share of its limit
    (:func:`_harness.record`). ``baseline_reps`` is accepted from older callers and ignored: both
    sides always get the same rounds."""

    def run(ours, baseline, units=None, unit_name="items", rounds=5, warmup=1, bytes_moved=None, flops=None,
            flops_dtype=None, baseline_flops=None, baseline_reps=None, **extra):
        timing = interleaved(ours, baseline, rounds=rounds, warmup=warmup)
        file_timing(benchmark, timing)
        info = benchmark.extra_info
        record(info, timing, units=units, unit_name=unit_name, bytes_moved=bytes_moved, flops=flops,
               flops_dtype=flops_dtype, baseline_flops=baseline_flops)
        info.update(extra)
        return timing["ratio"]

    return run
