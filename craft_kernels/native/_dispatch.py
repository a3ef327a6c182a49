"""Choose between the C++ extension and the pure-Python reference for native ops.

The default comes from CRAFT_NATIVE (``cpp`` unless set to ``python``), read once per process, at
the first native call (reading ``os.environ`` costs about a microsecond, more than some ops: set
the variable before starting Python). Tests switch it with ``use(impl)`` so every native-op test
runs against both implementations.
"""
from __future__ import annotations

import contextlib

from craft_kernels._backend import extension, native_mode

_forced: str | None = None
_env: str | None = None  # CRAFT_NATIVE, read at the first call


def impl() -> str:
    """'cpp' or 'python': the implementation native ops use right now."""
    global _env
    if _forced is not None:
        return _forced
    if _env is None:
        _env = native_mode()  # raises ValueError on a bad value (and is read again next time)
    return _env


def ext():
    """The extension module (raises ImportError with build instructions when it is missing)."""
    return extension()


def use_cpp() -> bool:
    return (_forced or _env or impl()) == "cpp"


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
