"""What this machine offers (extension, Triton, CUDA, interpreter, bf16-capable CPU) and which path each op takes.

Environment variables that force a path:
  CRAFT_NATIVE=python|cpp          native ops (pad_units, join_pad, build_dvt, LinkDetector, Trie,
                                   CPU span attention)
  CRAFT_KERNELS_IMPL=torch|triton  tensor kernels (swiglu, act_accumulate) regardless of device
  CRAFT_IMPL_<OP>=<path>           one per-machine choice (see :data:`OPS`), e.g.
                                   CRAFT_IMPL_DOC_ATTENTION=sdpa, CRAFT_IMPL_SWIGLU=eager,
                                   CRAFT_IMPL_AUTOCAST=fp32
  CRAFT_CACHE_DIR=<dir>            where calibrations are cached (default ~/.cache/craft)
  CRAFT_HUGE_PAGES=0               the C++ SwiGLU kernel's large outputs stop asking for huge pages

Per-machine dispatch: an op with more than one CPU path asks :func:`choose` which to take. The
answer comes from, in order: the ``CRAFT_IMPL_<OP>`` variable; detection (a path that cannot run
here, e.g. no C++ extension or no compiler, or no bf16 units); the calibration cache, keyed by
CPU model, ISA flags, thread count and torch version; else a short calibration on first use (both
paths timed interleaved, medians; the faster wins), written to the cache. Inside ``torch.compile``
tracing nothing can be timed: an uncached choice then takes the ISA default and says so.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from craft_kernels.heap import huge_pages_report

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


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_summary(flags: frozenset[str] | None = None) -> str:
    """The widest vector ISA and bf16 units, e.g. ``AVX-512+AVX512-BF16``, ``AVX2``, ``AVX-512+AMX``."""
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        parts = ["AVX-512"]
    elif "avx2" in flags:
        parts = ["AVX2"]
    elif platform.machine() in ("arm64", "aarch64"):
        parts = ["NEON"]
    else:
        parts = ["SSE/none"]
    if "avx512_bf16" in flags:
        parts.append("AVX512-BF16")
    if "amx_bf16" in flags:
        parts.append("AMX")
    return "+".join(parts)


def cpu_bf16() -> dict:
    """bf16 support of this CPU: AMX tiles or AVX512-BF16 make bf16 matmuls faster than fp32."""
    flags = cpu_flags()
    amx = "amx_bf16" in flags
    avx512_bf16 = "avx512_bf16" in flags
    return {"amx_bf16": amx, "avx512_bf16": avx512_bf16, "fast": amx or avx512_bf16}


# ---------------------------------------------------------------------------------------------
# Per-machine dispatch

#: op -> its paths; the first is the ISA default used when nothing else decides.
OPS = {
    "doc_attention": ("span", "sdpa"),   # CPU causal/doc-causal attention: C++ span kernel or SDPA
    "swiglu": ("compiled", "native", "eager"),  # CPU SwiGLU: Inductor-compiled pass, the C++ kernel, or eager ops
    "autocast": ("bf16", "fp32"),         # CPU model autocast dtype for training
}

_decisions: dict[tuple[str, str], dict] = {}
paths_run: dict[str, str] = {}  # op -> the path its last call in this process actually ran  # (op, key) -> {"path", "reason"} made in this process
_cache: dict | None = None


def machine_key() -> dict:
    """What a calibration depends on: CPU model, ISA flags, threads, torch version and the ISA its
    kernels run (ATEN_CPU_CAPABILITY can hold it below the CPU's), the span and SwiGLU kernels'
    revisions (a rebuilt, faster kernel is calibrated again) and their ISA variant if CRAFT_SPAN_ISA
    forces one."""
    isa = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    key = {"cpu": cpu_model(), "isa": isa, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "torch_isa": torch.backends.cpu.get_cpu_capability()}
    mod, _ = _load_extension()
    if mod is not None:
        key["span_kernel"] = getattr(mod, "span_attention_revision", 1)
        key["swiglu_kernel"] = getattr(mod, "swiglu_revision", 0)
    if os.environ.get("CRAFT_SPAN_ISA"):
        key["span_isa"] = os.environ["CRAFT_SPAN_ISA"]
    return key


def cache_path(key: dict | None = None) -> Path:
    """The calibration cache file for ``key`` (default: this machine now) under CRAFT_CACHE_DIR."""
    key = machine_key() if key is None else key
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(os.environ.get("CRAFT_CACHE_DIR") or Path.home() / ".cache" / "craft")
    return root / f"dispatch-{digest}.json"


def _load_cache() -> dict:
    global _cache
    if _cache is None:
        _cache = {}
        try:
            data = json.loads(cache_path().read_text())
            if data.get("machine") == json.loads(json.dumps(machine_key())):
                _cache = data.get("choices", {})
        except (OSError, ValueError):
            pass
    return _cache


def _save_cache() -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"machine": machine_key(), "choices": _cache}, f, indent=1)
        os.replace(tmp, path)
    except OSError:  # a read-only home: the choice still holds for this process
        pass


def reset_dispatch() -> None:
    """Forget this process's choices and reload the cache on next use (tests, a changed CRAFT_CACHE_DIR)."""
    global _cache, _overrides
    _decisions.clear()
    _cache = _overrides = None


def _read_overrides() -> dict[str, str]:
    out = {}
    for op in OPS:
        var = f"CRAFT_IMPL_{op.upper()}"
        v = os.environ.get(var, "").strip().lower()
        if v and v != "auto":
            if v not in OPS[op]:
                raise ValueError(f"{var}={v!r}: expected one of {', '.join(OPS[op])} or auto")
            out[op] = v
    return out


_overrides: dict[str, str] | None = None


def override(op: str) -> str | None:
    """The path forced by ``CRAFT_IMPL_<OP>`` (read once per process, again after
    :func:`reset_dispatch`), or None; ValueError names the variable and the choices."""
    global _overrides
    if _overrides is None:
        _overrides = _read_overrides()
    return _overrides.get(op)


def calibrate(candidates: dict, rounds: int = 5, warmup: int = 1) -> tuple[str, dict]:
    """Time each callable interleaved (``warmup`` untimed calls each, then ``rounds`` rounds, the
    order rotated every round) and return ``(fastest name, {name: fastest round, seconds})``.

    The fastest round, not the median: other processes only ever add time, and they add more to a
    multi-threaded candidate (each parallel region waits for its descheduled threads) than to a
    serial one, so on a busy machine the median ranks paths by the load, the minimum by their cost."""
    names = list(candidates)
    for _ in range(warmup):
        for n in names:
            candidates[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t = time.perf_counter()
            candidates[n]()
            times[n].append(time.perf_counter() - t)
    best = {n: min(ts) for n, ts in times.items()}
    return min(best, key=best.get), best


def choose(op: str, key: str = "", detect=None, candidates=None, default: str | None = None) -> str:
    """The path ``op`` takes for ``key`` (a string naming the case, e.g. a shape bucket) on this machine.

    ``detect()`` returns ``(path, reason)`` when detection alone decides (a path cannot run here),
    else None. ``candidates()`` returns ``{path: zero-argument callable}`` to calibrate with.
    ``default`` (else the first of ``OPS[op]``) is the ISA default, taken inside ``torch.compile``
    when no choice was made or cached before (tracing cannot time anything, read files or the
    environment, so this branch only reads dicts already in memory)."""
    if torch.compiler.is_compiling():
        forced = (_overrides or {}).get(op)
        if forced is not None:
            return forced
        hit = _decisions.get((op, key)) or (_cache or {}).get(op + "|" + key)
        return hit["path"] if hit is not None else (default or OPS[op][0])
    forced = override(op)
    if forced is not None:
        return _remember(op, key, forced, f"CRAFT_IMPL_{op.upper()}={forced}")
    hit = _decisions.get((op, key))
    if hit is not None:
        return hit["path"]
    if detect is not None:
        d = detect()
        if d is not None:
            return _remember(op, key, d[0], d[1])
    cached = _load_cache().get(f"{op}|{key}")
    if cached is not None and cached.get("path") in OPS[op]:
        return _remember(op, key, cached["path"], cached["reason"] + " (cached)")
    if candidates is None:
        return _remember(op, key, default or OPS[op][0], f"ISA default ({isa_summary()})")
    # calibration times forward and backward, whatever grad mode the first call came in under
    # (a decode loop runs under inference_mode)
    with torch.inference_mode(False), torch.enable_grad():
        best, fastest = calibrate(candidates())
    ms = ", ".join(f"{n} {t * 1e3:.3g} ms" for n, t in sorted(fastest.items(), key=lambda kv: kv[1]))
    reason = f"calibrated on {isa_summary()}: {ms}"
    load = machine_load()
    if load is not None and load > 1.0:  # a choice timed on a busy machine holds for this process only
        return _remember(op, key, best, reason + f" (not cached: load average {load:.1f}x the cores)")
    _load_cache()[f"{op}|{key}"] = {"path": best, "reason": reason, "fastest_s": fastest}
    _save_cache()
    return _remember(op, key, best, reason)


def machine_load() -> float | None:
    """The 1-minute load average over the CPU count (above 1: more runnable threads than cores), or
    None where the platform has no load average."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


def _remember(op: str, key: str, path: str, reason: str) -> str:
    _decisions[(op, key)] = {"path": path, "reason": reason}
    return path


def dispatch_report() -> dict:
    """Each op's choices: made in this process, else cached for this machine, with the reason."""
    out: dict = {}
    for op, paths in OPS.items():
        rows = {}
        forced = None
        try:
            forced = override(op)
        except ValueError as e:
            rows["error"] = str(e)
        if forced:
            rows["all"] = f"{forced} (CRAFT_IMPL_{op.upper()}={forced})"
        for (o, key), d in _decisions.items():
            if o == op:
                rows[key or "all"] = f"{d['path']} ({d['reason']})"
        cached = {}
        try:
            cached = _load_cache()
        except Exception:
            pass
        for ck, d in cached.items():
            o, key = ck.split("|", 1)
            if o == op and (key or "all") not in rows:
                rows[key or "all"] = f"{d['path']} ({d['reason']}; cached)"
        if not rows:
            rows["all"] = f"not chosen yet: calibrated on first use among {', '.join(paths)}"
        out[op] = rows
    return out


def calibrate_common(head_dim: int = 16, seq_len: int = 256) -> dict:
    """Make (or read from the cache) the choices a small model's training step asks for: autocast,
    SwiGLU in fp32 and bf16, doc attention with and without documents in fp32 and bf16 at
    ``head_dim``/``seq_len``. Returns :func:`dispatch_report`. Run it before ``torch.compile``
    (tracing cannot calibrate)."""
    attention = importlib.import_module("craft_kernels.attention")
    swiglu_mod = importlib.import_module("craft_kernels.swiglu")

    autocast_choice()
    for dtype in (torch.float32, torch.bfloat16):
        swiglu_mod._cpu_path(torch.empty(0, dtype=dtype))
        q = torch.empty(1, 1, seq_len, head_dim, dtype=dtype)
        if attention.span_supports(q):
            for docs in (True, False):
                attention._span_wins(q, docs)
    return dispatch_report()


def preload_dispatch() -> None:
    """Read the overrides and the cache now, so choices inside ``torch.compile`` tracing can see them."""
    try:
        override(next(iter(OPS)))
    except ValueError:  # reported when the op is used
        pass
    _load_cache()


def autocast_choice() -> str:
    """'bf16' or 'fp32': the faster CPU autocast dtype for matmul-bound training on this machine."""
    def detect():
        if not cpu_bf16()["fast"]:
            return "fp32", f"no AVX512-BF16/AMX on this CPU ({isa_summary()})"
        return None

    def candidates():
        w = torch.randn(512, 512)
        x = torch.randn(2048, 512)
        wb, xb = w.bfloat16(), x.bfloat16()
        return {"bf16": lambda: torch.mm(xb, wb), "fp32": lambda: torch.mm(x, w)}

    return choose("autocast", "", detect, candidates)


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """True where bf16 autocast pays: a CUDA device with bf16 support, or a CPU where bf16 matmuls
    were measured faster than fp32 (:func:`autocast_choice`)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return autocast_choice() == "bf16"


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
        "cpu": {"model": cpu_model(), "isa": isa_summary(), "machine": platform.machine(),
                "threads": torch.get_num_threads(),
                "capability": torch.backends.cpu.get_cpu_capability(), "bf16": cpu_bf16(),
                "huge_pages": huge_pages_report()},
        "torch": torch.__version__,
        "ops": {
            "native (pad_units, join_pad, build_dvt, LinkDetector, Trie)": native,
            "swiglu": "triton" if kernels_impl(dev) == "triton" else "cpu: see dispatch.swiglu",
            "act_accumulate": kernels_impl(dev),
            "doc_attention": "flex_attention (compiled)" if cuda else (
                "causal/doc_causal, cross_doc_link in windows: see dispatch.doc_attention; "
                "other kinds: sdpa + dense span mask"),
        },
        "dispatch": dispatch_report(),
        "paths_run": dict(paths_run),
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


preload_dispatch()
