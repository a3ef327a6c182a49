"""Benchmark history: every ``craft bench`` run's pytest-benchmark JSON, kept per machine.

Layout: ``<history>/<machine>/<date>_<commit>.json`` where ``<machine>`` names the CPU, its ISA and
the thread count (runs are only compared on the same machine). :func:`save_run` files a run,
:func:`changes` lists each benchmark's throughput and ratio against the previous run on the same
machine, :func:`plot` draws throughput and ratio per benchmark over commits (matplotlib, the
``bench`` extra).

    python benchmarks/history.py out.json [--history benchmarks/history] [--commit SHA]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
from pathlib import Path

DEFAULT_HISTORY = Path(__file__).parent / "history"


def machine_slug(run: dict) -> str:
    """A folder name for the run's machine: CPU model, ISA and threads, e.g. ``AMD-EPYC_AVX-512+AVX512-BF16_2t``."""
    m = run.get("machine_info", {}).get("craft", {})
    cpu = m.get("cpu") or run.get("machine_info", {}).get("cpu", {}).get("brand_raw", "unknown-cpu")
    slug = f"{cpu}_{m.get('isa', 'unknown-isa')}_{m.get('threads', '?')}t"
    return re.sub(r"[^A-Za-z0-9+._-]+", "-", slug).strip("-")


def git_commit(root: Path | None = None) -> str:
    """Short SHA of HEAD (``+dirty`` when the tree has changes), or ``unknown`` outside git."""
    root = root or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_run(json_path: Path, history: Path = DEFAULT_HISTORY, commit: str | None = None) -> Path:
    """Copy a run's JSON to ``<history>/<machine>/<date>_<commit>.json`` (the commit is also written
    into the file as ``craft_commit``); returns the new path."""
    run = json.loads(Path(json_path).read_text())
    commit = commit or git_commit()
    run["craft_commit"] = commit
    date = run.get("datetime") or dt.datetime.now(dt.timezone.utc).isoformat()
    stamp = re.sub(r"[^0-9T]", "", date[:19])
    dest = Path(history) / machine_slug(run) / f"{stamp}_{re.sub(r'[^A-Za-z0-9+]', '', commit)}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(run, indent=1))
    return dest


def runs_for(machine_dir: Path) -> list[Path]:
    """The runs of one machine folder, oldest first (file names start with the date)."""
    return sorted(Path(machine_dir).glob("*.json"))


def headline(bench: dict) -> dict:
    """``{"throughput": (value, unit) or None, "ratio": speedup or None}`` of one benchmark entry."""
    info = bench.get("extra_info", {})
    tp = None
    for k, v in info.items():
        if k.endswith("_per_s") and not k.startswith("baseline_") and isinstance(v, (int, float)):
            tp = (float(v), k[: -len("_per_s")] + "/s")
            break
    ratio = info.get("speedup_vs_baseline")
    return {"throughput": tp, "ratio": float(ratio) if isinstance(ratio, (int, float)) else None}


def changes(current: dict, previous: dict | None) -> list[str]:
    """One line per benchmark of ``current``: throughput and ratio, and their change against ``previous``."""
    prev = {b["fullname"]: headline(b) for b in (previous or {}).get("benchmarks", [])}
    lines = []
    for b in current.get("benchmarks", []):
        h, p = headline(b), prev.get(b["fullname"])
        parts = [b["name"]]
        if h["throughput"]:
            v, unit = h["throughput"]
            s = f"{v:,.0f} {unit}"
            if p and p["throughput"]:
                s += f" ({(v / p['throughput'][0] - 1) * 100:+.1f}%)"
            parts.append(s)
        if h["ratio"] is not None:
            s = f"ratio {h['ratio']:.2f}x"
            if p and p["ratio"] is not None:
                s += f" (was {p['ratio']:.2f}x)"
            parts.append(s)
        if p is None and previous is not None:
            parts.append("new")
        lines.append(": ".join(parts[:1]) + (": " + ", ".join(parts[1:]) if len(parts) > 1 else ""))
    return lines


def plot(machine_dir: Path, png: Path | None = None) -> Path:
    """Draw throughput and ratio per benchmark over the machine's runs (x: date and commit) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = runs_for(machine_dir)
    runs = [json.loads(p.read_text()) for p in paths]
    labels = [f"{p.stem.split('_')[0][:8]}\n{r.get('craft_commit', '?')[:9]}" for p, r in zip(paths, runs)]
    series: dict[str, dict[str, list]] = {}
    for i, r in enumerate(runs):
        for b in r.get("benchmarks", []):
            h = headline(b)
            s = series.setdefault(b["name"], {"tp": [], "ratio": []})
            if h["throughput"]:
                s["tp"].append((i, h["throughput"][0]))
            if h["ratio"] is not None:
                s["ratio"].append((i, h["ratio"]))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 9), sharex=True)
    for name, s in sorted(series.items()):
        if s["tp"]:
            ax1.plot(*zip(*s["tp"]), marker="o", label=name)
        if s["ratio"]:
            ax2.plot(*zip(*s["ratio"]), marker="o", label=name)
    ax1.set_yscale("log")
    ax1.set_ylabel("throughput (tokens/s, items/s; log)")
    ax2.set_ylabel("ratio vs baseline (x)")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set_xticks(range(len(labels)), labels, fontsize=7)
    ax1.set_title(f"craft benchmarks on {Path(machine_dir).name}")
    if len(series) <= 30:
        ax2.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    png = Path(png) if png else Path(machine_dir) / "history.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def record(json_path: Path, history: Path = DEFAULT_HISTORY, commit: str | None = None,
           draw: bool = True) -> tuple[Path, list[str], Path | None]:
    """File a run, compare it with the previous run on the same machine and redraw the PNG.
    Returns (saved path, change lines, PNG path or None when matplotlib is missing)."""
    dest = save_run(json_path, history, commit)
    older = [p for p in runs_for(dest.parent) if p != dest]
    prev = json.loads(older[-1].read_text()) if older else None
    lines = changes(json.loads(dest.read_text()), prev)
    png = None
    if draw:
        try:
            png = plot(dest.parent)
        except ImportError:
            png = None
    return dest, lines, png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--history", type=Path, default=DEFAULT_HISTORY)
    ap.add_argument("--commit")
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args(argv)
    dest, lines, png = record(Path(a.json), a.history, a.commit, draw=not a.no_plot)
    print(f"saved {dest}")
    print("\n".join(lines))
    if png:
        print(f"plot {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
