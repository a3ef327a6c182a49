"""The README's first two commands stay true: the second is what .ci/run executes, and the first
runs console scripts that pyproject.toml declares."""
import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _steps(command: str) -> list[str]:
    return [" ".join(shlex.split(part)) for part in command.strip().split("&&")]


def test_ci_runs_the_readme_test_command():
    test_cmd = _steps(_bash_blocks()[1])
    ci = [" ".join(shlex.split(line)) for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    ci_cmds = [c.removeprefix("python -m ") for c in ci]
    for step in test_cmd:
        assert step.removeprefix("python -m ") in ci_cmds, f"README step {step!r} is not run by .ci/run"


def test_main_job_uses_declared_console_scripts():
    main_job = _steps(_bash_blocks()[0])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert main_job[0].startswith("pip install torch==")
    used = {step.split()[0] for step in main_job[2:]}
    assert used and used <= set(scripts), f"README main job runs {used}, pyproject declares {set(scripts)}"
