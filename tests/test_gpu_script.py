import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu" / "run.sh"


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("bash") is None, reason="checks the no-GPU branch")
def test_gpu_script_says_no_gpu_in_one_line_and_exits_0():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]
