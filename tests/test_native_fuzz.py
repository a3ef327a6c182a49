"""Runs the differential fuzz suite of the native ops (tests/fuzz/check_native_fuzz.py) in a child
interpreter, so a crash fails this test instead of killing the run. Longer runs:
CRAFT_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_native_fuzz.py"""
import os
import subprocess
import sys


def test_native_ops_fuzz_cpp_vs_python_twin():
    env = dict(os.environ)
    env.setdefault("CRAFT_FUZZ_EXAMPLES", "30")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "tests/fuzz/check_native_fuzz.py"], capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, f"exit status {r.returncode} (negative: killed by a signal)\n{r.stdout[-4000:]}{r.stderr[-3000:]}"
    assert " passed" in r.stdout
