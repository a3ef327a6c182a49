"""``python -m craft.directives.plot RUN_DIR [RUN_DIR ...] --out FILE.png``: instructions used against
task difficulty (parity: set elements; counts/addition: number of outputs) for every variant trained
in the given run folders, read from their ``metrics.json``. Needs matplotlib (the ``bench`` extra)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot(run_dirs: list[str], out: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [Path(d) for d in run_dirs]
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.6), squeeze=False)
    for ax, run in zip(axes[0], runs):
        task = run.name
        for m in sorted(run.glob("*/metrics.json")):
            data = json.loads(m.read_text())
            task = data.get("task", task)
            xs = sorted(data["instructions_by_difficulty"], key=int)
            ys = [data["instructions_by_difficulty"][x] for x in xs]
            rho = data.get("spearman_instructions_difficulty")
            ax.plot([int(x) for x in xs], ys, marker="o", ms=3,
                    label=f"{data['variant']} (rho {rho:.2f})" if rho == rho else data["variant"])
        ax.set_title(task)
        ax.set_xlabel("difficulty (set elements)" if task == "parity" else "difficulty (outputs)")
        ax.set_ylabel("instructions used (mean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    print(plot(a.runs, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
