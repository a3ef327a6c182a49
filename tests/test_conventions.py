"""House rules that code review keeps missing: no measured figures in code (they drift; they live in
benchmarks/RESULTS.md), no references to an internal tracker, no declared-but-unused pytest markers."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"\b\d+(\.\d+)?\s?(ms|µs|us)\b|\b\d+(\.\d+)?(-\d+(\.\d+)?)?x (faster|slower)|~\d+(\.\d+)?x"
                    r"|tok/s", re.I)
TRACKER = re.compile(r"\bissues? #?\d+", re.I)
# files whose owners still have a figure to move to benchmarks/RESULTS.md; empty this set as they do
PENDING_FIGURES: set[str] = set()


def _code_files():
    for base in ("craft", "craft_kernels", "csrc"):
        for p in sorted((ROOT / base).rglob("*")):
            if p.suffix in (".py", ".cpp", ".h"):
                yield p.relative_to(ROOT).as_posix(), p.read_text()


def test_no_measured_figures_in_code():
    hits = [f"{rel}:{i}: {line.strip()}" for rel, text in _code_files() if rel not in PENDING_FIGURES
            for i, line in enumerate(text.splitlines(), 1) if FIGURE.search(line)]
    assert not hits, "move these figures to benchmarks/RESULTS.md:\n" + "\n".join(hits)


def test_no_tracker_references():
    files = [*_code_files(), ("README.md", (ROOT / "README.md").read_text())]
    hits = [f"{rel}:{i}: {line.strip()}" for rel, text in files
            for i, line in enumerate(text.splitlines(), 1) if TRACKER.search(line)]
    assert not hits, "\n".join(hits)


def test_declared_markers_are_used():
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"].get("markers", [])
    sources = "".join(p.read_text() for d in ("tests", "benchmarks") for p in (ROOT / d).rglob("*.py"))
    unused = [m for m in markers if f"mark.{m.split(':')[0]}" not in sources]
    assert not unused, f"pyproject declares markers no test uses: {unused}"
