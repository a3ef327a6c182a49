"""Runs tests/fuzz_link_detector.py (C++ vs the Python twin, Hypothesis) in a subprocess, so a crash of
the C++ core fails this test instead of killing the run. A few seconds by default; set
CRAFT_FUZZ_EXAMPLES (e.g. 20000) for a long run."""
import os
import subprocess
import sys
from pathlib import Path


def test_fuzz_cpp_against_twin_in_a_subprocess():
    script = Path(__file__).with_name("fuzz_link_detector.py")
    env = {**os.environ, "CRAFT_FUZZ_EXAMPLES": os.environ.get("CRAFT_FUZZ_EXAMPLES", "80")}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0 and "fuzz ok" in r.stdout, (
        f"exit {r.returncode} (negative: killed by signal {-r.returncode})\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
