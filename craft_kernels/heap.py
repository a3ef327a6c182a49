"""Fresh large tensors and their page faults: huge pages for a kernel's own outputs, and an opt-in
setting of the C heap (glibc) that keeps freed large blocks for reuse.

glibc serves each allocation of at least its mmap threshold (128 KiB, rising to at most 32 MiB) with
a fresh ``mmap`` and hands it back with ``munmap`` when freed. A training step that allocates the
same large tensors every step (activations, gradients of 16-64 MiB) therefore pays, every step, a
minor page fault per 4 KiB page and the kernel's zero-filling of every page, often more than the
ops' own work (benchmarks/RESULTS.md, SwiGLU notes). ``retain_freed_memory()`` turns that off for the
whole process: blocks come from the heap and stay there when freed (mmap off, trimming only above
1 GiB free at the top), so the next step reuses them without faults.

The cost: freed memory is not returned to the system, and a heap that serves large blocks
fragments (in a loop of 64 MiB allocations the resident size grew to several times the live data
before blocks were reused), so it is never applied at import: an application that wants it calls
it once, and benchmarks apply it to both sides of a comparison. ``retain_freed_memory(False)``
restores glibc's default thresholds (fixed, not the adaptive one) and returns the free memory.

``advise_huge_pages(t)`` is the narrow, always-safe half: a kernel that allocates a large output
with ``torch.empty`` asks for 2 MiB pages before writing it, so the first write faults 512x less
often; freed memory still goes back to the system.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_DEFAULT_MMAP_MAX, _DEFAULT_THRESHOLD = 65536, 128 * 1024
_KEEP_TRIM = 1 << 30

_retained = False


@functools.lru_cache(maxsize=None)
def _glibc():
    """glibc's handle, or None (musl, macOS, Windows: no mallopt with these meanings)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def retain_freed_memory(enable: bool = True) -> bool:
    """Keep freed large blocks in this process's heap for reuse (``enable=True``), or restore glibc's
    defaults and return free memory to the system (``False``). Process-wide, takes effect for later
    allocations. Returns True where applied, False where the C library is not glibc (nothing changed)."""
    global _retained
    if not isinstance(enable, bool):
        raise TypeError(f"enable: expected True or False, got {enable!r}")
    libc = _glibc()
    if libc is None:
        return False
    if enable:
        ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM)
    else:
        ok = (libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX) and libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
              and libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD))
        libc.malloc_trim(0)
    if not ok:
        raise RuntimeError("mallopt refused the setting (unexpected for glibc)")
    _retained = enable
    return True


_MADV_HUGEPAGE = 14  # linux/mman.h
_HUGE = 2 << 20
_HUGE_MIN_BYTES = 2 * _HUGE


@functools.lru_cache(maxsize=None)
def _thp_mode() -> str:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), or ``unavailable``."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unavailable"


def _thp_madvise_useful() -> bool:
    """Whether the kernel gives transparent huge pages to regions that ask (``madvise`` or ``always``
    mode; ``always`` does it already for aligned regions, asking costs nothing)."""
    return _thp_mode() in ("madvise", "always")


def _huge_pages_off() -> bool:
    return os.environ.get("CRAFT_HUGE_PAGES", "1").strip() == "0"


def huge_pages_report() -> str:
    """One line for ``craft info``: the kernel's transparent-huge-page mode and whether the C++
    kernels' large outputs ask for huge pages."""
    mode = _thp_mode()
    if _huge_pages_off():
        return f"kernel mode {mode}; large C++ kernel outputs do not ask (CRAFT_HUGE_PAGES=0)"
    asks = "ask for them" if _thp_madvise_useful() and _glibc() is not None else "cannot ask here"
    return f"kernel mode {mode}; large C++ kernel outputs {asks}"


def advise_huge_pages(t) -> bool:
    """Ask the kernel to back the 2 MiB-aligned interior of a fresh CPU tensor's memory with huge pages.

    Why: a large tensor from glibc is a fresh ``mmap``; its first write takes one page fault and one
    zero-fill per 4 KiB page (16,384 per 64 MiB). With huge pages it is one per 2 MiB. Only useful
    before the memory is first written (``torch.empty``); a no-op for small tensors, other systems or
    kernels without transparent huge pages. ``CRAFT_HUGE_PAGES=0`` turns it off. Returns whether the
    advice was given."""
    nbytes = t.numel() * t.element_size()
    if _huge_pages_off():
        return False
    libc = _glibc()
    if nbytes < _HUGE_MIN_BYTES or libc is None or t.device.type != "cpu" or not _thp_madvise_useful():
        return False
    start = t.data_ptr()
    lo = (start + _HUGE - 1) // _HUGE * _HUGE
    hi = (start + nbytes) // _HUGE * _HUGE
    if hi <= lo:
        return False
    return libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_HUGEPAGE) == 0


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` is in effect in this process."""
    return _retained
