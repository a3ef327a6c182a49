"""Runs test code in a fresh interpreter, so a crash (segfault, abort) fails the test instead of
killing the whole pytest run."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def run_isolated(code: str, timeout: float = 120, env: dict | None = None) -> str:
    """Runs ``code`` with ``python -c``; asserts it exits 0 and returns its stdout. A negative exit
    status is a signal (-11 = SIGSEGV, -6 = SIGABRT)."""
    full_env = dict(os.environ, **(env or {}))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=timeout, env=full_env)
    assert r.returncode == 0, f"exit status {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r.stdout
