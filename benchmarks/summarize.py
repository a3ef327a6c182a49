"""Regenerate benchmarks/RESULTS.md from the history (default: the newest result of every benchmark
run on the machine of the latest run, so a partial ``craft bench benchmarks/test_x.py`` updates its
rows and keeps the others) or from one run's JSON, and print the README's Results table.

    python benchmarks/summarize.py [run.json] [--history benchmarks/history] [--out benchmarks/RESULTS.md]

Rows with a goal come first (the fair comparisons the project is judged on), each saying whether
the goal was met, with the measured figure when it was not; every other benchmark follows. The
header names the CPU, its ISA and the limits measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from history import DEFAULT_HISTORY, headline, runs_for  # noqa: E402

RESULTS = Path(__file__).parent / "RESULTS.md"

# (test name pattern, description, [(extra_info key, ">=" or "<=", threshold)...]); the first
# matching pattern gives a benchmark's goals. CEILINGS: extra_info keys that bound what any
# implementation could reach on the benchmark's workload, printed beside a missed goal.
GOALS = [
    (r"test_train_tiny\[compiled_vs_compiled", "training step, tiny 64x256, vs the plain model compiled, same autocast",
     [("speedup_vs_baseline", ">=", 1.5), ("matmul_share", ">=", 0.5)]),
    (r"test_decode_batch1_vs_transformers", "decoding, batch 1, vs transformers static cache + torch.compile "
     "(and eager vs eager)", [("compiled_vs_hf_static_compiled", ">=", 1.5), ("eager_vs_hf_eager", ">=", 1.0)]),
    (r"test_span_fwd_bwd_vs_sdpa\[.*causal", "span attention fwd+bwd vs SDPA is_causal",
     [("speedup_vs_baseline", ">=", 1.2), ("dispatch_speedup_vs_baseline", ">=", 0.95)]),
    (r"test_span_fwd_bwd_vs_sdpa\[.*docs", "span attention fwd+bwd vs SDPA with the dense document mask",
     [("speedup_vs_baseline", ">=", 2.0), ("dispatch_speedup_vs_baseline", ">=", 0.95)]),
    (r"test_swiglu_fwd_bwd_vs_compiled_one_liner", "SwiGLU fwd+bwd vs the compiled one-liner",
     [("speedup_vs_baseline", ">=", 1.0), ("peak_memory_ratio", "<=", 1.0), ("copy_bw_share", ">=", 0.8)]),
    (r"test_decode_step_row_vs_row_from_ids", "DocMaskState step vs the row computed from the ids, T=4096",
     [("speedup_vs_baseline", ">=", 10.0)]),
    (r"test_block_mask_vs_create_block_mask_compiled", "doc_block_mask vs create_block_mask(_compile=True)",
     [("speedup_vs_baseline", ">=", 1.0)]),
    (r"test_act_fwd_bwd\[compiled_loop_over_n", "ACT clamp fwd+bwd vs a compiled batched loop over N",
     [("speedup_vs_baseline", ">=", 5.0)]),
    (r"test_act_fwd_bwd\[vectorised_cumsum_carry", "ACT carry fwd+bwd vs the vectorised cumsum formulation",
     [("speedup_vs_baseline", ">=", 1.5)]),
    (r"test_dataprep_cpp_vs_numpy\[flatten_level_unchecked", "flatten_level (checked) vs the bare NumPy gather "
     "(no checks: less work)", [("speedup_vs_baseline", ">=", 5.0)]),
    (r"test_dataprep_cpp_vs_numpy", "data prep, C++ vs NumPy-vectorised, 1M tokens", [("speedup_vs_baseline", ">=", 5.0)]),
    (r"test_link_detection_streaming_64_token_pushes", "link detection, 64-token pushes, vs token bytes + re",
     [("speedup_vs_baseline", ">=", 20.0)]),
    (r"test_trie_prefix_lookup_vs_marisa", "trie single prefix lookups vs marisa-trie", [("speedup_vs_baseline", ">=", 2.0)]),
    (r"test_trie_prefix_lookup_batched_vs_marisa", "trie batched prefix lookups vs marisa-trie",
     [("speedup_vs_baseline", ">=", 10.0)]),
    (r"test_linked_generation_tokens_per_second", "linked generation vs the per-document KV-cache generator, both compiled",
     [("compiled_vs_per_document_compiled", ">=", 5.0)]),
]
CEILINGS = {
    "compiled_vs_per_document_compiled": ("shared_cache_bound_vs_per_document",
                                          "ceiling for any shared-cache generator on this workload"),
}


def goals_for(name: str):
    for pat, desc, goals in GOALS:
        if re.search(pat, name):
            return desc, goals
    return None, []


def check(info: dict, goals) -> tuple[bool, list[str]]:
    """(all met, one phrase per goal: 'ratio 1.3x >= 1.2 met' / 'MISSED: ... measured 0.9')."""
    ok, words = True, []
    for key, op, thr in goals:
        v = info.get(key)
        if not isinstance(v, (int, float)):
            ok = False
            words.append(f"{key} not measured")
            continue
        met = v >= thr if op == ">=" else v <= thr
        ok &= met
        words.append(f"{key} {v:g} {op} {thr:g}" + ("" if met else f" MISSED (measured {v:g})"))
        bound_key, what = CEILINGS.get(key, (None, None))
        if not met and isinstance(info.get(bound_key), (int, float)):
            words.append(f"{what}: {info[bound_key]:g}x ({bound_key})")
    return ok, words


def _fmt_tp(h):
    if not h["throughput"]:
        return "-"
    v, unit = h["throughput"]
    return f"{v:,.0f} {unit}"


def _spread(info):
    lo, hi = info.get("ratio_min"), info.get("ratio_max")
    return f" ({lo:.2f}-{hi:.2f})" if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else ""


def _run_label(run: dict) -> str:
    return f"{run.get('datetime', '?')[:10]} {run.get('craft_commit', '?')}"


def merged_run(paths: list[Path]) -> dict:
    """One run made of the newest entry of every benchmark in ``paths`` (runs of one machine, oldest
    first); each entry keeps the date and commit of its run (``_run``), and ``runs`` lists the runs
    used with the limits each measured."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    newest: dict[str, tuple[int, dict]] = {}
    for i, run in enumerate(runs):
        for b in run.get("benchmarks", []):
            # one benchmark measured against torch held to another ISA (AVX2 emulated) is another row
            torch_isa = (b.get("extra_info", {}).get("baseline_torch_isa")
                         or run.get("machine_info", {}).get("craft", {}).get("torch_cpu_capability"))
            key = (b["name"], torch_isa)
            newest[key] = (i, {**b, "_run": _run_label(run)})
    used = sorted({i for i, _ in newest.values()})
    return {**runs[-1], "benchmarks": [b for _, b in sorted(newest.values(), key=lambda t: t[0])],
            "runs": [runs[i] for i in used]}


def render(run: dict) -> tuple[str, str]:
    """(RESULTS.md text, README Results table) of one run or of a :func:`merged_run`."""
    m = run.get("machine_info", {}).get("craft", {})
    isa = m.get("isa", "unknown ISA")
    parts = run.get("runs") or [run]

    def limits(r):
        c = r.get("machine_info", {}).get("craft", {})
        return (f"copy {c.get('copy_gbs', '?')} GB/s, matmul {c.get('matmul_fp32_gflops', '?')} GFLOP/s fp32, "
                f"{c.get('matmul_bf16_gflops', '?')} GFLOP/s bf16")

    lines = [
        "Regenerated by `python benchmarks/summarize.py` from the `craft bench` history (`benchmarks/history/`): "
        "the newest result of each benchmark on this machine, its run named in the `run` column. Ratios are "
        "baseline time / our time, medians of rounds timed interleaved with the baseline in one process "
        "(spread: per-round min-max).",
        "",
        f"- Machine: {m.get('cpu', '?')}, ISA **{isa}**, {m.get('threads', '?')} threads; "
        f"torch {m.get('torch', '?')}, numpy {m.get('numpy', '?')}, Python {m.get('python', '?')}; "
        f"GPU: {m.get('cuda') or 'none'}.",
        "- Runs (date, commit) and the limits measured in each: "
        + "; ".join(f"{_run_label(r)}: {limits(r)}" for r in parts) + ".",
        "",
        "## Goals (fair baselines)",
        "",
        "| benchmark | what | ours | ratio (spread) | goal | run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    readme = [f"| benchmark ({isa}) | ratio vs the fair baseline | goal |", "| --- | --- | --- |"]
    rest = []
    for b in run.get("benchmarks", []):
        info, h = b.get("extra_info", {}), headline(b)
        when = b.get("_run", _run_label(run))
        desc, goals = goals_for(b["name"])
        if h["ratio"] is None and goals and isinstance(info.get(goals[0][0]), (int, float)):
            h["ratio"] = float(info[goals[0][0]])  # benchmarks whose headline ratio has its own name
        ratio = f"{h['ratio']:.2f}x{_spread(info)}" if h["ratio"] is not None else "-"
        if goals:
            ok, words = check(info, goals)
            verdict = ("met: " if ok else "**missed**: ") + "; ".join(words)
            variant = f" [{info['isa_variant']}]" if "isa_variant" in info else ""
            if "isa_variant" in info and "baseline_torch_isa" in info:
                variant = f" [{info['isa_variant']} kernel; torch {info['baseline_torch_isa']}]"
            lines.append(f"| {b['name']}{variant} | {desc} | {_fmt_tp(h)} | {ratio} | {verdict} | {when} |")
            readme.append(f"| {b['name']}{variant} | {ratio} | {'met' if ok else 'missed'} |")
        else:
            base = info.get("baseline_kind", "")
            rest.append(f"| {b['name']} | {_fmt_tp(h)} | {ratio} | {base} | {when} |")
    lines += ["", "## Other benchmarks", "", "| benchmark | ours | ratio (spread) | baseline | run |",
              "| --- | --- | --- | --- | --- |", *rest]
    return "\n".join(lines), "\n".join(readme)


START, END = "<!-- summarize.py: generated from the latest run -->", "<!-- summarize.py: end -->"


def splice(old: str, block: str) -> str:
    """Put ``block`` between the generated-section markers of ``old`` (after the title when absent);
    hand-written text outside the markers is kept."""
    gen = f"{START}\n{block}\n{END}"
    if START in old and END in old:
        return old[: old.index(START)] + gen + old[old.index(END) + len(END):]
    if old.startswith("# "):
        title, _, rest = old.partition("\n")
        return f"{title}\n\n{gen}\n{rest}"
    return f"# Benchmark results\n\n{gen}\n\n{old}"


def latest_run(history: Path = DEFAULT_HISTORY) -> Path:
    runs = sorted((p for d in Path(history).iterdir() if d.is_dir() for p in runs_for(d)), key=lambda p: p.name)
    if not runs:
        raise FileNotFoundError(f"no runs under {history}; run `craft bench` first")
    return runs[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="?", type=Path)
    ap.add_argument("--history", type=Path, default=DEFAULT_HISTORY)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if a.json:
        run, source = json.loads(a.json.read_text()), str(a.json)
    else:
        latest = latest_run(a.history)
        paths = runs_for(latest.parent)
        run, source = merged_run(paths), f"{len(paths)} runs under {latest.parent}"
    results, readme = render(run)
    a.out.write_text(splice(a.out.read_text() if a.out.exists() else "", results))
    print(f"wrote {a.out} from {source}\n\nREADME Results table:\n\n{readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
