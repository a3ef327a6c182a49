"""What this machine offers (extension, Triton, CUDA, interpreter, bf16-capable CPU) and which path each op takes.

Environment variables that force a path:
  CRAFT_NATIVE=python|cpp          native ops (pad_units, join_pad, build_dvt, LinkDetector, Trie,
                                   CPU span attention)
  CRAFT_KERNELS_IMPL=torch|triton  tensor kernels (swiglu, act_accumulate) regardless of device
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import platform

import torch

BUILD_HINT = (
    "craft_kernels._C (the C++ extension) is not built. Build it with `pip install -e .` "
    "from the repository root (needs a C++17 compiler), or set CRAFT_NATIVE=python to use "
    "the pure-Python references."
)


def native_mode() -> str:
    """'cpp' or 'python', from CRAFT_NATIVE (default 'cpp'); raises ValueError on any other value."""
    mode = os.environ.get("CRAFT_NATIVE", "cpp").strip().lower() or "cpp"
    if mode not in ("cpp", "python"):
        raise ValueError(f"CRAFT_NATIVE={mode!r}: expected 'cpp' or 'python'")
    return mode


@functools.lru_cache(maxsize=None)
def _load_extension():
    try:
        return importlib.import_module("craft_kernels._C"), None
    except ImportError as e:  # not built, or built for another Python
        return None, str(e)


def extension():
    """The compiled module craft_kernels._C, or an ImportError that says how to build it."""
    mod, err = _load_extension()
    if mod is None:
        raise ImportError(f"{BUILD_HINT} (import error: {err})")
    return mod


def kernels_impl(device: torch.device | str | None = None) -> str:
    """'triton' or 'torch' for tensor kernels on `device` (CRAFT_KERNELS_IMPL overrides)."""
    forced = os.environ.get("CRAFT_KERNELS_IMPL", "").strip().lower()
    if forced:
        if forced not in ("torch", "triton"):
            raise ValueError(f"CRAFT_KERNELS_IMPL={forced!r}: expected 'torch' or 'triton'")
        return forced
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and triton_version() is not None:
        return "triton"
    return "torch"


def use_triton(t: torch.Tensor) -> bool:
    """Whether a tensor kernel on ``t`` takes its Triton path; on CPU that needs the interpreter."""
    if kernels_impl(t.device) != "triton":
        return False
    if t.device.type == "cpu" and not interpreter_on():
        raise RuntimeError("CRAFT_KERNELS_IMPL=triton on CPU needs TRITON_INTERPRET=1 (set before importing "
                           "craft_kernels); unset CRAFT_KERNELS_IMPL to use the CPU path")
    return True


@functools.lru_cache(maxsize=None)
def triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        import triton
    except Exception:  # a broken install counts as absent
        return None
    return triton.__version__


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16() -> dict:
    """bf16 support of this CPU: AMX tiles or AVX512-BF16 make bf16 matmuls faster than fp32."""
    flags = cpu_flags()
    amx = "amx_bf16" in flags
    avx512_bf16 = "avx512_bf16" in flags
    return {"amx_bf16": amx, "avx512_bf16": avx512_bf16, "fast": amx or avx512_bf16}


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """True where bf16 autocast pays: a CUDA device with bf16 support, or a CPU with AMX/AVX512-BF16."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_bf16()["fast"]


def backend_info() -> dict:
    """A dict describing the extension, Triton, CUDA, the interpreter, CPU bf16, and the path of every op family."""
    mod, err = _load_extension()
    ext = {"loaded": mod is not None}
    if mod is not None:
        ext.update(mod.build_info())
        ext["path"] = mod.__file__
    else:
        ext["error"] = err
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    try:
        native = native_mode()
    except ValueError as e:
        native = f"invalid ({e})"
    return {
        "extension": ext,
        "triton": {"available": triton_version() is not None, "version": triton_version()},
        "cuda": {"available": cuda, "device": torch.cuda.get_device_name(0) if cuda else None},
        "interpreter": interpreter_on(),
        "cpu": {"machine": platform.machine(), "threads": torch.get_num_threads(),
                "capability": torch.backends.cpu.get_cpu_capability(), "bf16": cpu_bf16()},
        "torch": torch.__version__,
        "ops": {
            "native (pad_units, join_pad, build_dvt, LinkDetector, Trie)": native,
            "swiglu": kernels_impl(dev),
            "act_accumulate": kernels_impl(dev),
            "doc_attention": "flex_attention (compiled)" if cuda else (
                "C++ span kernel (causal, doc_causal; head_dim 16/32/64/128), else sdpa + dense span mask"
                if native == "cpp" else "sdpa + dense span mask"),
        },
    }


def format_backend_info(info: dict | None = None) -> str:
    info = backend_info() if info is None else info
    lines = []

    def walk(d, indent=0):
        for k, v in d.items():
            if isinstance(v, dict):
                lines.append("  " * indent + f"{k}:")
                walk(v, indent + 1)
            else:
                lines.append("  " * indent + f"{k}: {v}")

    walk(info)
    return "\n".join(lines)
