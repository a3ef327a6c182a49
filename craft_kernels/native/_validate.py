"""Array checks shared by the native-op wrappers (integer scalars: craft_kernels._validate.check_int);
every message names the argument and the fix."""
from __future__ import annotations

import os

import numpy as np

from craft_kernels._validate import I64_MAX as _I64_MAX, check_int


def int_array(x, name: str, ndim: int = 1, copy: bool = False) -> np.ndarray:
    """`x` as an int64 NumPy array of `ndim` dimensions (any int dtype or int list; non-contiguous is fine).

    ``copy=True`` always returns a private array: use it for arrays whose values C++ indexes with
    after releasing the GIL, so what was validated is what is read even if another thread rewrites
    the caller's array meanwhile."""
    if not copy and type(x) is np.ndarray and x.dtype == np.int64 and x.ndim == ndim and x.flags.c_contiguous:
        return x  # already what the ops take: skip the general checks (they would return it unchanged)
    try:
        a = np.asarray(x)
    except (ValueError, OverflowError) as e:
        if isinstance(e, ValueError) and "with a sequence" not in str(e):
            raise  # an error of the caller's own __array__ (e.g. a re-entrant call), not a ragged nesting
        raise TypeError(f"{name}: expected a rectangular {ndim}-d integer array, got a ragged nesting ({e})") from None
    if a.dtype == object and a.size and all(type(v) is int for v in a.flat):
        v = max(a.flat, key=lambda v: abs(v))
        raise ValueError(f"{name}: value {v} does not fit in int64; ids and offsets must be in [-2**63, 2**63)")
    if a.dtype == object or not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_ or a.size == 0):
        raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}; convert with np.asarray(..., dtype=np.int64)")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {a.shape}")
    if a.dtype == np.uint64 and a.size and a.max() > _I64_MAX:
        raise ValueError(f"{name}: value {int(a.max())} does not fit in int64; ids and offsets must be < 2**63")
    return np.array(a, dtype=np.int64, order="C", copy=True) if copy else np.ascontiguousarray(a, dtype=np.int64)




def int64_scalar(x, name: str) -> int:
    """`x` as a Python int that fits in int64 (token ids such as `pad_id`, which may be negative, e.g. -100)."""
    return check_int(x, name)


def offsets_array(x, name: str, total: int | None = None) -> np.ndarray:
    """CSR offsets: 1-d, starting at 0, non-decreasing, ending at `total` when given; always a
    private copy (C++ indexes with it without the GIL)."""
    a = int_array(x, name, copy=True)
    if a.size == 0:
        raise ValueError(f"{name}: offsets need at least one entry (0 for an empty batch)")
    if a[0] != 0:
        raise ValueError(f"{name}: offsets must start at 0, got {a[0]}")
    d = np.diff(a)
    if d.size and d.min() < 0:
        i = int(np.argmin(d))
        raise ValueError(f"{name}: offsets must be non-decreasing, but {name}[{i + 1}]={a[i + 1]} < {name}[{i}]={a[i]}")
    if total is not None and a[-1] != total:
        raise ValueError(f"{name}: offsets must end at {total} (the number of items they index), got {a[-1]}")
    return a


def positive_int(x, name: str, minimum: int = 1) -> int:
    return check_int(x, name, minimum)


def ids_in_range(a: np.ndarray, name: str, vocab_size: int | None) -> None:
    if a.size and a.min() < 0:
        raise ValueError(f"{name}: ids must be >= 0, found {int(a.min())}")
    if vocab_size is not None and a.size and a.max() >= vocab_size:
        raise ValueError(f"{name}: id {int(a.max())} is outside the vocabulary [0, {vocab_size})")


def check_output_size(n_elements: int, itemsize: int, name: str) -> None:
    """Raises ValueError naming ``name`` when an output of ``n_elements`` items of ``itemsize`` bytes
    would take more than half this machine's physical memory or more than is available right now
    (instead of allocating until the OS kills the process)."""
    need = int(n_elements) * int(itemsize)
    if need <= 1 << 26:  # 64 MiB: never worth a look at the system
        return
    limit = min(_physical_memory() // 2, _available_memory())
    if need > limit:
        raise ValueError(f"{name}: the output would need {need / 2**30:.1f} GiB, more than the "
                         f"{limit / 2**30:.1f} GiB this machine can give it; lower {name} or process the input in parts")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _physical_memory()
