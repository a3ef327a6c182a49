"""The one argument check (ints, numbers, choices) of craft and craft_kernels: every message names the argument and the fix."""
from __future__ import annotations

import math

import numpy as np

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def check_int(x, name: str, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> int:
    """``x`` as a Python int: an int (or NumPy integer, never a bool) that fits in int64 and lies in
    ``[minimum, maximum]`` (either bound optional). TypeError for a non-int, ValueError otherwise;
    ``hint`` is appended to range errors (what the bound means)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    v = int(x)
    if not I64_MIN <= v <= I64_MAX:
        raise ValueError(f"{name}: {v} does not fit in int64")
    low = minimum is not None and v < minimum
    high = maximum is not None and v > maximum
    if low or high:
        if minimum is not None and maximum is not None:
            raise ValueError(f"{name}: must be an int in [{minimum}, {maximum}]{hint}, got {v}")
        raise ValueError(f"{name}: must be {'>= ' + str(minimum) if low else '<= ' + str(maximum)}{hint}, got {v}")
    return v


def check_float(x, name: str, minimum: float | None = None, maximum: float | None = None, *,
                min_open: bool = False, max_open: bool = False, hint: str = "") -> float:
    """``x`` as a Python float: a finite real number (int, float or NumPy scalar, never a bool) in
    ``[minimum, maximum]``; ``min_open`` / ``max_open`` exclude the bound. TypeError for a non-number,
    ValueError for NaN, an infinity or a value out of range; ``hint`` is appended to range errors."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(x).__name__}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number{hint}, got {v}")
    low = minimum is not None and (v <= minimum if min_open else v < minimum)
    high = maximum is not None and (v >= maximum if max_open else v > maximum)
    if low or high:
        lo = "" if minimum is None else f"{'(' if min_open else '['}{minimum}"
        hi = "" if maximum is None else f"{maximum}{')' if max_open else ']'}"
        where = (f"in {lo}, {hi}" if minimum is not None and maximum is not None
                 else f"{'>' if min_open else '>='} {minimum}" if minimum is not None
                 else f"{'<' if max_open else '<='} {maximum}")
        raise ValueError(f"{name}: must be a number {where}{hint}, got {v}")
    return v


def check_choice(x, name: str, choices) -> str:
    """``x`` if it is one of ``choices`` (strings), else ValueError naming the argument and the choices."""
    if x not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {x!r}")
    return x
