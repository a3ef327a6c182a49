"""The clocks a training budget (``--max-minutes``) can count.

``"wall"``: wall-clock seconds (``time.perf_counter``). ``"cpu"``: this process's CPU seconds
(``time.process_time``, all its threads): on a machine shared with other jobs a wall-clock budget
buys fewer steps the higher the load, while a CPU budget buys about what the same minutes of a quiet
core would (with one torch thread).
"""
from __future__ import annotations

import time
from typing import Callable

from craft_kernels import check_choice

CLOCKS = ("wall", "cpu")


def clock_fn(clock: str) -> Callable[[], float]:
    """The time function (seconds, float) of ``clock``, one of :data:`CLOCKS`; ValueError naming
    the argument otherwise."""
    check_choice(clock, "clock", CLOCKS)
    return time.process_time if clock == "cpu" else time.perf_counter
