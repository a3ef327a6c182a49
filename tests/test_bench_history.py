"""benchmarks/history.py and benchmarks/summarize.py on tiny synthetic pytest-benchmark runs."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import history  # noqa: E402
import summarize  # noqa: E402


def _run(date, tokens, ratio, isa="AVX2", share=0.9, extra=()):
    craft = {"cpu": "Test CPU 9000", "isa": isa, "threads": 2, "torch": "2.x", "copy_gbs": 10.0,
             "matmul_fp32_gflops": 100.0, "matmul_bf16_gflops": 200.0}
    benches = [{"name": "test_swiglu_fwd_bwd_vs_compiled_one_liner[a]", "fullname": "b/test_swiglu.py::a",
                "extra_info": {"tokens_per_s": tokens, "baseline_tokens_per_s": tokens / ratio,
                               "speedup_vs_baseline": ratio, "ratio_min": ratio - 0.1, "ratio_max": ratio + 0.1,
                               "peak_memory_ratio": 1.0, "copy_bw_share": share}},
               {"name": "test_other", "fullname": "b/test_x.py::other",
                "extra_info": {"items_per_s": 5.0, "speedup_vs_baseline": 3.0, "baseline_kind": "a loop"}},
               *extra]
    return {"machine_info": {"craft": craft}, "datetime": date, "benchmarks": benches}


def test_history_files_runs_per_machine_and_reports_change(tmp_path):
    h = tmp_path / "hist"
    for i, (date, tok, ratio) in enumerate([("2026-01-01T10:00:00", 1000.0, 1.1), ("2026-01-02T10:00:00", 1500.0, 0.9)]):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(_run(date, tok, ratio)))
        dest, lines, png = history.record(p, h, commit=f"abc{i}")
    assert dest.parent.name == "Test-CPU-9000_AVX2_2t" and dest.name == "20260102T100000_abc1.json"
    assert len(history.runs_for(dest.parent)) == 2
    assert "1,500 tokens/s (+50.0%)" in lines[0] and "ratio 0.90x (was 1.10x)" in lines[0]
    assert png is not None and png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    # another machine's run is not compared with these
    p = tmp_path / "r2.json"
    p.write_text(json.dumps(_run("2026-01-03T10:00:00", 10.0, 2.0, isa="AVX-512")))
    dest2, lines2, _ = history.record(p, h, commit="abc2", draw=False)
    assert dest2.parent != dest.parent and "was" not in lines2[0] and "%" not in lines2[0]


def test_summary_states_goals_isa_and_missed_figures(tmp_path):
    h = tmp_path / "hist"
    p = tmp_path / "r.json"
    p.write_text(json.dumps(_run("2026-01-01T10:00:00", 1000.0, 0.93, share=0.42)))
    history.record(p, h, commit="abc", draw=False)
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\nHand-written notes stay.\n")
    assert summarize.main(["--history", str(h), "--out", str(out)]) == 0
    text = out.read_text()
    assert "ISA **AVX2**" in text and "Hand-written notes stay." in text
    goal_row = next(line for line in text.splitlines() if "test_swiglu" in line)
    assert "**missed**" in goal_row and "speedup_vs_baseline 0.93 >= 1 MISSED (measured 0.93)" in goal_row
    assert "copy_bw_share 0.42 >= 0.8 MISSED (measured 0.42)" in goal_row and "0.93x (0.83-1.03)" in goal_row
    assert text.index("## Goals") < text.index("test_other")  # fair rows first
    # regenerating replaces the generated block, once
    summarize.main(["--history", str(h), "--out", str(out)])
    assert out.read_text().count("## Goals") == 1


def test_summary_keeps_the_newest_result_of_each_benchmark_with_its_run(tmp_path):
    """A partial run (one benchmark file) updates its rows; the other rows stay, each naming the run
    that measured it. Rendering only the latest run would drop ``test_other``."""
    h = tmp_path / "hist"
    p = tmp_path / "full.json"
    p.write_text(json.dumps(_run("2026-01-01T10:00:00", 1000.0, 0.93)))
    history.record(p, h, commit="full1", draw=False)
    partial = _run("2026-01-05T10:00:00", 2000.0, 1.2)
    partial["benchmarks"] = partial["benchmarks"][:1]
    p.write_text(json.dumps(partial))
    history.record(p, h, commit="part2", draw=False)
    out = tmp_path / "RESULTS.md"
    assert summarize.main(["--history", str(h), "--out", str(out)]) == 0
    rows = {line.split(" | ")[0]: line for line in out.read_text().splitlines() if line.startswith("| test_")}
    assert "1.20x" in rows["| test_swiglu_fwd_bwd_vs_compiled_one_liner[a]"]
    assert rows["| test_swiglu_fwd_bwd_vs_compiled_one_liner[a]"].endswith("| 2026-01-05 part2 |")
    assert rows["| test_other"].endswith("| 2026-01-01 full1 |")
    assert "2026-01-01 full1: copy 10.0 GB/s" in out.read_text()


def test_summary_without_runs_says_so(tmp_path):
    (tmp_path / "h").mkdir()
    with pytest.raises(FileNotFoundError, match="craft bench"):
        summarize.latest_run(tmp_path / "h")


def test_every_goal_of_the_issue_has_a_row_with_its_own_ratio():
    """Decoding, training (a parametrized name) and linked generation name their headline ratio
    differently; each must land in the goals table with that ratio, not in "Other benchmarks"."""
    benches = [
        {"name": "test_train_tiny[compiled_vs_compiled]", "fullname": "t",
         "extra_info": {"speedup_vs_baseline": 1.2, "matmul_share": 0.6}},
        {"name": "test_decode_batch1_vs_transformers", "fullname": "d",
         "extra_info": {"compiled_vs_hf_static_compiled": 1.93, "eager_vs_hf_eager": 1.26}},
        {"name": "test_linked_generation_tokens_per_second[tiny]", "fullname": "l",
         "extra_info": {"compiled_vs_per_document_compiled": 1.2}},
        {"name": "test_dataprep_cpp_vs_numpy[flatten_level_unchecked]", "fullname": "f",
         "extra_info": {"speedup_vs_baseline": 0.6}},
    ]
    run = {"machine_info": {"craft": {"isa": "AVX2"}}, "datetime": "2026-01-01T10:00:00", "benchmarks": benches}
    text, readme = summarize.render(run)
    goals = text[text.index("## Goals"):text.index("## Other benchmarks")]
    rows = {b["name"]: next(line for line in goals.splitlines() if b["name"] in line) for b in benches}
    assert "1.20x" in rows["test_train_tiny[compiled_vs_compiled]"]
    assert "1.93x" in rows["test_decode_batch1_vs_transformers"] and "met" in rows["test_decode_batch1_vs_transformers"]
    assert "compiled_vs_per_document_compiled 1.2 >= 5 MISSED" in rows["test_linked_generation_tokens_per_second[tiny]"]
    assert "bare NumPy gather" in rows["test_dataprep_cpp_vs_numpy[flatten_level_unchecked]"]


def test_a_missed_goal_names_the_measured_ceiling_of_its_workload():
    """Linked generation records the share of the baseline's time spent re-prefilling (all a shared
    cache can save); a missed goal prints the bound beside the ratio, a met one does not."""
    def row(ratio, bound):
        b = {"name": "test_linked_generation_tokens_per_second[tiny]", "fullname": "l",
             "extra_info": {"compiled_vs_per_document_compiled": ratio, "shared_cache_bound_vs_per_document": bound}}
        text, _ = summarize.render({"machine_info": {"craft": {"isa": "AVX2"}}, "datetime": "2026-01-01T10:00:00",
                                    "benchmarks": [b]})
        return next(line for line in text.splitlines() if b["name"] in line)
    missed = row(1.2, 1.31)
    assert "MISSED (measured 1.2)" in missed and "ceiling for any shared-cache generator on this workload: 1.31x" in missed
    assert "ceiling" not in row(6.0, 7.5)


def test_summary_keeps_a_benchmark_run_against_torch_held_to_another_isa(tmp_path):
    """The span benchmark's [avx2] case runs twice: against AVX-512 torch and, in a process with
    torch held to AVX2 (emulation), against AVX2 torch. Both rows stay, each labelled."""
    def run(date, torch_isa, ratio):
        b = {"name": "test_span_fwd_bwd_vs_sdpa[256-causal-avx2]", "fullname": "s",
             "extra_info": {"speedup_vs_baseline": ratio, "dispatch_speedup_vs_baseline": ratio,
                            "isa_variant": "avx2", "baseline_torch_isa": torch_isa}}
        return {"machine_info": {"craft": {"isa": "AVX-512"}}, "datetime": date, "benchmarks": [b]}
    paths = []
    for i, (date, isa, ratio) in enumerate([("2026-01-01T10:00:00", "AVX512", 5.0), ("2026-01-01T11:00:00", "AVX2", 8.0)]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(run(date, isa, ratio)))
    text, _ = summarize.render(summarize.merged_run(paths))
    assert "[avx2 kernel; torch AVX512]" in text and "5.00x" in text
    assert "[avx2 kernel; torch AVX2]" in text and "8.00x" in text
