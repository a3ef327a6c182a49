"""``python -m craft.agents.plot RUN_DIR --out FILE.png``: validation bits/byte against training
time of the hierarchical LM (``lm.pt``) and the flat byte model (``lm_flat.pt``) of a run folder,
read from their checkpoints' ``evals``; one panel per clock (wall-clock seconds, and this process's
CPU seconds, which the load of a shared machine does not stretch). Needs matplotlib (the
``bench`` extra)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from craft.agents.train import LM_FILES

LABELS = {"hier": "hierarchical (byte enc -> word backbone -> byte dec)", "flat": "flat byte model"}


def plot(run_dir: str, out: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    runs = {k: torch.load(run / f, map_location="cpu", weights_only=True) for k, f in LM_FILES.items()
            if (run / f).is_file()}
    if not runs:
        raise FileNotFoundError(f"{run}: no {' or '.join(LM_FILES.values())}; train with `craft agents train --level lm`")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, clock in zip(axes, ("wall", "cpu")):
        for kind, ck in runs.items():
            ev = [e for e in ck["evals"] if f"{clock}_seconds" in e]
            params = ck["parameters"]
            ax.plot([e[f"{clock}_seconds"] / 60 for e in ev], [e["val_bits_per_byte"] for e in ev], marker="o", ms=3,
                    label=f"{LABELS[kind]}, {params / 1e6:.2f}M params: {ev[-1]['val_bits_per_byte']:.3f}")
        ax.set_xlabel(f"training time ({'wall-clock' if clock == 'wall' else 'process CPU'} minutes)")
        ax.set_ylabel("validation bits/byte")
        ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{run.name}: validation loss against training time", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m craft.agents.plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    print(f"wrote {plot(a.run_dir, a.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
