"""Choose between the C++ extension and the pure-Python reference for native ops.

The default comes from CRAFT_NATIVE (``cpp`` unless set to ``python``). Tests switch it with
``use(impl)`` so every native-op test runs against both implementations.
"""
from __future__ import annotations

import contextlib

from craft_kernels._backend import extension, native_mode

_forced: str | None = None


def impl() -> str:
    """'cpp' or 'python': the implementation native ops use right now."""
    return _forced or native_mode()


def ext():
    """The extension module (raises ImportError with build instructions when it is missing)."""
    return extension()


def use_cpp() -> bool:
    return impl() == "cpp"


@contextlib.contextmanager
def use(which: str):
    """Force 'cpp' or 'python' inside the block."""
    global _forced
    if which not in ("cpp", "python"):
        raise ValueError(f"impl={which!r}: expected 'cpp' or 'python'")
    if which == "cpp":
        extension()
    prev, _forced = _forced, which
    try:
        yield
    finally:
        _forced = prev
