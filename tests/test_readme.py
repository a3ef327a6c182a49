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


def test_api_tour_calls_match_the_signatures():
    """Every call the API tour makes on ``ck.<name>`` or a name it imports binds to that callable's
    signature (same positional count, known keywords) and uses no deprecated name."""
    import ast
    import importlib
    import inspect

    import craft_kernels as ck

    tour = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[0]
    tree = ast.parse(tour)
    scope = {"ck": ck}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = importlib.import_module(node.module)
            scope.update({a.asname or a.name: getattr(mod, a.name) for a in node.names})
    deprecated = {"max_len", "max_context_length", "context_length", "ff_dim", "eos_token_id"}
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in scope:
            obj = scope[f.id]
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in scope:
            obj = getattr(scope[f.value.id], f.attr)
        elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute) and isinstance(f.value.value, ast.Name)
              and f.value.value.id in scope):
            obj = getattr(getattr(scope[f.value.value.id], f.value.attr), f.attr)
        else:
            continue
        if not callable(obj) or inspect.ismodule(obj):
            continue
        kws = [k.arg for k in node.keywords if k.arg is not None]
        assert not deprecated & set(kws), f"README line {node.lineno}: deprecated keyword in {kws}"
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        sig.bind_partial(*[None] * len(node.args), **dict.fromkeys(kws))  # raises TypeError on a mismatch
        checked += 1
    assert checked >= 20
