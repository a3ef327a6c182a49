import os
import subprocess
import sys
from pathlib import Path

import torch

from craft.data import pretokenize
from craft.training import latest_checkpoint, load_checkpoint
from tests._training_helpers import write_corpus

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_cpu_processes_agree(tmp_path):
    corpus = pretokenize(write_corpus(tmp_path / "src", repeat=6), tmp_path / "pre", "byte")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "ddp_worker.py"), str(corpus), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 3  # all-reduced loss is the same on both ranks
    for (name, a), b in zip(r0["state"].items(), r1["state"].values()):
        assert torch.equal(a, b), name  # gradients were averaged: identical parameters
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step_00000003.pt"
    state = load_checkpoint(ckpt)
    for name, a in r0["state"].items():
        assert torch.equal(state["model"][name], a), name
    assert state["data_position"]["index"] == 3 * 8  # 8 windows per step across both ranks
