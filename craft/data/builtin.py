"""The built-in corpus: markdown pages made from the documentation shipped with this Python.

Pages (one ``.md`` file each, first line ``# Title``, links ``[text](Target Title)``):
- ``Python language topics`` and one page per ``pydoc_data.topics`` entry (title ``<topic> (topic)``),
- ``Python standard library`` linking every module page,
- one page per importable stdlib module (its docstring, links to its functions and classes),
- one page per public function or class (signature, docstring, a link back to its module page).

Modules are imported in a child process (``python -P -m craft.data.builtin OUT``, started in the
empty build folder: ``-P`` keeps the current folder off ``sys.path``, so a ``calendar.py`` in the
folder craft was started from is never imported in place of the standard module), so their import
side effects never touch the caller; modules with side effects on import (``antigravity``, ``this``,
``idlelib``, ``tkinter``, ``turtle*``, …) are skipped. The folder is cached under
``$CRAFT_HOME`` (default ``~/.cache/craft``) per Python version and built atomically (temp dir +
rename), so a half-written build is never used.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from craft.data.titles import create_filename

SKIP_MODULES = frozenset({
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__hello__", "__phello__",
    "lib2to3", "pydoc_data", "ensurepip", "venv", "msilib", "winreg", "winsound", "_winapi", "msvcrt",
    "nt", "xxsubtype", "sre_compile", "sre_constants", "sre_parse",
})
FORMAT_VERSION = 1
_MAX_DOC_CHARS = 20000  # one very long docstring must not dominate the corpus


def craft_home() -> Path:
    """``$CRAFT_HOME`` or ``~/.cache/craft``."""
    env = os.environ.get("CRAFT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "craft"


def builtin_corpus_dir(rebuild: bool = False) -> Path:
    """Folder of markdown pages of the built-in corpus (built on first use, then cached)."""
    v = sys.version_info
    path = craft_home() / f"builtin-py{v.major}.{v.minor}.{v.micro}-v{FORMAT_VERSION}"
    if path.is_dir() and not rebuild:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".builtin-", dir=path.parent))
    try:
        proc = subprocess.run([sys.executable, *_SAFE_PATH, "-m", "craft.data.builtin", str(tmp.resolve())],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, env=_child_env(), cwd=tmp,
                              timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"building the built-in corpus failed: {proc.stderr.strip()[-2000:]}")
        if path.is_dir():  # rebuild, or another process finished first
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:  # a concurrent build won the race: use its result
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# -P (3.11+): no script folder / current folder at the front of sys.path; the child finds craft through
# PYTHONPATH (set below to this checkout's root) and the standard library through its own paths
_SAFE_PATH = ("-P",) if sys.version_info >= (3, 11) else ()


def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.pop("PYTHONSTARTUP", None)
    return env


# --------------------------------------------------------------------------- page writing (child process)
def _clean(doc: str | None) -> str:
    doc = inspect.cleandoc(doc or "").strip()
    return doc[:_MAX_DOC_CHARS]


def _signature(name: str, obj) -> str:
    try:
        return f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return name


def _first_line(doc: str) -> str:
    line = doc.split("\n", 1)[0].strip()
    return line.replace("[", "(").replace("]", ")")


def _page(title: str, body: str) -> str:
    return f"# {title}\n\n{body.strip()}\n"


def _module_members(mod) -> tuple[list[tuple[str, object]], list[tuple[str, object]]]:
    funcs, classes = [], []
    names = getattr(mod, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = [n for n in dir(mod) if not n.startswith("_")]
    for n in sorted(set(names)):
        if not isinstance(n, str) or n.startswith("_"):
            continue
        try:
            obj = getattr(mod, n)
        except Exception:
            continue
        if getattr(obj, "__module__", None) not in (mod.__name__, "_" + mod.__name__, "builtins"):
            continue
        if getattr(obj, "__module__", None) == "builtins" and mod.__name__ != "builtins":
            continue
        if not _clean(getattr(obj, "__doc__", None)):
            continue
        if inspect.isclass(obj):
            classes.append((n, obj))
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            funcs.append((n, obj))
    return funcs, classes


def _class_body(qual: str, cls, module: str) -> str:
    parts = [f"`class {_signature(qual, cls)}`", f"A class of the [{module}]({module}) module.", _clean(cls.__doc__)]
    methods = []
    for n, m in sorted(vars(cls).items()):
        if n.startswith("_") or not callable(m):
            continue
        d = _clean(getattr(m, "__doc__", None))
        if d:
            methods.append(f"### {qual}.{n}\n\n`{_signature(n, m)}`\n\n{d}")
    if methods:
        parts.append("## Methods\n\n" + "\n\n".join(methods[:40]))
    return "\n\n".join(parts)


def write_pages(out: Path) -> int:
    """Writes every page into ``out``; returns the number of pages."""
    out.mkdir(parents=True, exist_ok=True)
    pages: dict[str, str] = {}

    from pydoc_data.topics import topics

    topic_titles = []
    for key in sorted(topics):
        title = f"{key} (topic)"
        topic_titles.append(title)
        pages[title] = _page(title, f"A topic of the Python language reference; see [Python language topics]"
                                    f"(Python language topics).\n\n{topics[key].strip()}")
    pages["Python language topics"] = _page("Python language topics", "The topics of the Python language "
                                            "reference, as `help()` shows them.\n\n"
                                            + "\n".join(f"- [{t[:-8]}]({t})" for t in topic_titles))

    module_titles = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIP_MODULES or name.startswith("turtle"):
            continue
        sink = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except BaseException:  # missing optional module, platform-specific module, SystemExit, ...
            continue
        funcs, classes = _module_members(mod)
        doc = _clean(mod.__doc__)
        if not doc and not funcs and not classes:
            continue
        module_titles.append(name)
        body = [f"The `{name}` module of the [Python standard library](Python standard library).", doc]
        if funcs:
            body.append("## Functions\n\n" + "\n".join(
                f"- [{name}.{n}]({name}.{n}): {_first_line(_clean(f.__doc__))}" for n, f in funcs))
        if classes:
            body.append("## Classes\n\n" + "\n".join(
                f"- [{name}.{n}]({name}.{n}): {_first_line(_clean(c.__doc__))}" for n, c in classes))
        pages[name] = _page(name, "\n\n".join(b for b in body if b))
        for n, f in funcs:
            qual = f"{name}.{n}"
            pages[qual] = _page(qual, f"`{_signature(qual, f)}`\n\nA function of the [{name}]({name}) module."
                                      f"\n\n{_clean(f.__doc__)}")
        for n, c in classes:
            qual = f"{name}.{n}"
            try:
                pages[qual] = _page(qual, _class_body(qual, c, name))
            except Exception:
                continue
    pages["Python standard library"] = _page("Python standard library", "The modules of the Python standard "
                                             "library installed here. See also [Python language topics]"
                                             "(Python language topics).\n\n"
                                             + "\n".join(f"- [{m}]({m})" for m in module_titles))
    for title, text in pages.items():
        (out / f"{create_filename(title)}.md").write_text(text, encoding="utf-8")
    return len(pages)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m craft.data.builtin OUT_DIR")
    n = write_pages(Path(sys.argv[1]))
    sys.__stdout__.write(f"{n} pages\n")
    os._exit(0)  # skip interpreter teardown of everything imported (threads, atexit hooks of stdlib modules)
