"""Per-machine dispatch (craft_kernels._backend.choose): overrides, the cache key, calibration, and
the SwiGLU CPU path (call-time fallback when compilation fails, no recompiles per shape)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from craft_kernels import _backend, doc_attention, swiglu


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("CRAFT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_backend, "machine_load", lambda: 0.1)  # a quiet machine, whatever this one is
    _backend.reset_dispatch()
    yield tmp_path
    monkeypatch.undo()
    _backend.reset_dispatch()


def _busy(n):
    def f():
        x = torch.ones(n)
        for _ in range(20):
            x = x * 1.0001
        return x
    return f


def test_calibration_picks_the_faster_of_two_real_callables(fresh):
    best, med = _backend.calibrate({"big": _busy(1 << 20), "small": _busy(1 << 10)}, rounds=3)
    assert best == "small" and med["small"] < med["big"]
    best, _ = _backend.calibrate({"small": _busy(1 << 10), "big": _busy(1 << 20)}, rounds=3)
    assert best == "small"


def test_choice_is_cached_per_machine_and_reused(fresh):
    calls = []

    def cands():
        calls.append(1)
        return {"eager": _busy(1 << 10), "compiled": _busy(1 << 20)}

    assert _backend.choose("swiglu", "probe", candidates=cands) == "eager"
    data = json.loads(_backend.cache_path().read_text())
    assert data["machine"]["torch"] == torch.__version__ and data["choices"]["swiglu|probe"]["path"] == "eager"
    _backend.reset_dispatch()  # a new process: the cache answers, nothing is timed again
    assert _backend.choose("swiglu", "probe", candidates=cands) == "eager" and len(calls) == 1
    assert "cached" in _backend.dispatch_report()["swiglu"]["probe"]


def test_a_choice_timed_on_a_busy_machine_is_not_cached(fresh, monkeypatch):
    """A calibration under load (more runnable threads than cores) decides for this process only: a
    busy machine once cached SDPA for good where the span kernel is several times faster."""
    monkeypatch.setattr(_backend, "machine_load", lambda: 3.5)
    assert _backend.choose("swiglu", "busy", candidates=lambda: {"eager": _busy(1 << 10),
                                                                  "compiled": _busy(1 << 20)}) == "eager"
    assert "not cached: load average 3.5x" in _backend.dispatch_report()["swiglu"]["busy"]
    assert not _backend.cache_path().exists()


def test_calibration_ranks_by_the_fastest_round():
    """One slow round (another process took the core) does not decide: the fastest round does."""
    import time
    delays = iter([0.0, 0.0, 0.05, 0.0, 0.0, 0.05, 0.0, 0.05, 0.0, 0.05])  # warm-up, then 4 rounds
    sleep = lambda: time.sleep(next(delays))  # noqa: E731
    _, fastest = _backend.calibrate({"a": sleep, "b": sleep}, rounds=4)  # "a" is slow in 3 of 4 rounds
    assert set(fastest) == {"a", "b"} and all(t < 0.04 for t in fastest.values())


def test_cache_key_names_machine_and_torch_version(fresh):
    key = _backend.machine_key()
    assert _backend.cache_path(key) == _backend.cache_path()
    for field, other in (("torch", "0.0.1"), ("cpu", "another CPU"), ("threads", key["threads"] + 7),
                         ("torch_isa", "DEFAULT"), ("span_kernel", -1)):
        assert _backend.cache_path(dict(key, **{field: other})) != _backend.cache_path(key)
    # a cache written for another torch version is not read
    alien = _backend.cache_path(dict(key, torch="0.0.1"))
    alien.write_text(json.dumps({"machine": dict(key, torch="0.0.1"),
                                 "choices": {"swiglu|probe": {"path": "compiled", "reason": "alien"}}}))
    os.replace(alien, _backend.cache_path())  # even under this machine's file name
    _backend.reset_dispatch()
    assert _backend.choose("swiglu", "probe", candidates=lambda: {"eager": _busy(8), "compiled": _busy(1 << 20)}) \
        == "eager"


def test_override_env_var_is_honoured(fresh, monkeypatch):
    monkeypatch.setenv("CRAFT_IMPL_SWIGLU", "eager")
    _backend.reset_dispatch()
    g, u = torch.randn(256, 256), torch.randn(256, 256)
    torch.testing.assert_close(swiglu(g, u), F.silu(g) * u)
    assert _backend.paths_run["swiglu"].startswith("eager")
    assert "CRAFT_IMPL_SWIGLU=eager" in _backend.dispatch_report()["swiglu"]["float32"]
    monkeypatch.setenv("CRAFT_IMPL_DOC_ATTENTION", "sdpa")
    _backend.reset_dispatch()
    q = torch.randn(1, 2, 64, 16)
    doc_attention(q, q, q, kind="causal")
    assert _backend.paths_run["doc_attention"].startswith("sdpa")
    monkeypatch.setenv("CRAFT_IMPL_DOC_ATTENTION", "span")
    _backend.reset_dispatch()
    doc_attention(q, q, q, kind="causal")
    assert _backend.paths_run["doc_attention"].startswith("span")
    monkeypatch.setenv("CRAFT_IMPL_DOC_ATTENTION", "flash")
    _backend.reset_dispatch()
    with pytest.raises(ValueError, match="CRAFT_IMPL_DOC_ATTENTION='flash'.*span, sdpa"):
        doc_attention(q, q, q, kind="causal")


def test_autocast_choice_follows_the_cpu():
    if not _backend.cpu_bf16()["fast"]:
        assert _backend.autocast_choice() == "fp32"
    else:
        assert _backend.autocast_choice() in ("bf16", "fp32")
    assert _backend.bf16_is_fast("cpu") == (_backend.autocast_choice() == "bf16")


def test_swiglu_compile_failure_falls_back_at_call_time(tmp_path):
    # a compiler that exists but fails: torch.compile only finds out on the first call
    code = ("import torch, torch.nn.functional as F, warnings\n"
            "from craft_kernels import swiglu, _backend\n"
            "g = torch.randn(300, 256, requires_grad=True); u = torch.randn(300, 256, requires_grad=True)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    out = swiglu(g, u)\n"
            "out.sum().backward()\n"
            "torch.testing.assert_close(out, F.silu(g) * u)\n"
            "assert any('torch.compile failed' in str(x.message) for x in w), [str(x.message) for x in w]\n"
            "print(_backend.paths_run['swiglu']); print(_backend.dispatch_report()['swiglu']['float32'])\n")
    env = dict(os.environ, CXX="/bin/false", CRAFT_CACHE_DIR=str(tmp_path),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), CRAFT_IMPL_SWIGLU="auto",
               TORCHINDUCTOR_COMPILE_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    # the C++ kernel takes over where it is built (fp32 here), else the eager math
    from craft_kernels.swiglu import _native_ok
    assert lines[0].startswith("native" if _native_ok(torch.float32) else "eager")
    assert "torch.compile failed here" in lines[1]


def test_compiled_swiglu_does_not_recompile_per_shape(fresh, monkeypatch):
    monkeypatch.setenv("CRAFT_IMPL_SWIGLU", "compiled")
    _backend.reset_dispatch()
    torch._dynamo.utils.counters.clear()
    for i in range(10):  # more shapes than Dynamo's recompile limit (8)
        g = torch.randn(200 + 13 * i, 256 + i, requires_grad=True)
        u = torch.randn_like(g, requires_grad=True)
        out = swiglu(g, u)
        out.sum().backward()
        assert _backend.paths_run["swiglu"].startswith("compiled")
        torch.testing.assert_close(out, F.silu(g) * u)
        torch.testing.assert_close(u.grad, F.silu(g))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 4  # fwd + bwd, first shape + dynamic


def test_craft_info_prints_each_ops_path_and_reason(tmp_path):
    env = dict(os.environ, CRAFT_CACHE_DIR=str(tmp_path), CRAFT_IMPL_DOC_ATTENTION="sdpa", CRAFT_IMPL_AUTOCAST="fp32")
    r = subprocess.run([sys.executable, "-m", "craft", "info", "--json"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)["dispatch"]
    assert set(d) == set(_backend.OPS)
    assert d["doc_attention"]["all"] == "sdpa (CRAFT_IMPL_DOC_ATTENTION=sdpa)"
    assert d["autocast"]["all"].startswith("fp32 (CRAFT_IMPL_AUTOCAST=fp32")
    assert "not chosen yet" in d["swiglu"]["all"]


@pytest.mark.parametrize("path", ["sdpa", "span"])
def test_doc_attention_compiles_fullgraph_on_either_path(fresh, monkeypatch, path):
    # a model compiled with fullgraph must trace whichever path this machine's dispatch picks
    monkeypatch.setenv("CRAFT_IMPL_DOC_ATTENTION", path)
    _backend.reset_dispatch()
    q = torch.randn(2, 2, 64, 16)
    ids = torch.zeros(2, 64, dtype=torch.long)
    ids[1, -5:] = -1
    f = torch.compile(lambda q, ids: doc_attention(q, q, q, ids, kind="doc_causal"), fullgraph=True)
    torch.testing.assert_close(f(q, ids), doc_attention(q, q, q, ids, kind="doc_causal"))


def test_calibration_runs_under_no_grad_and_inference_mode(fresh):
    # first use often happens while generating (no_grad / inference_mode); calibration times backward
    g = torch.randn(300, 256)
    with torch.no_grad():
        torch.testing.assert_close(swiglu(g, g), F.silu(g) * g)
    _backend.reset_dispatch()
    q = torch.randn(1, 2, 64, 16)
    with torch.inference_mode():
        doc_attention(q, q, q, torch.zeros(1, 64, dtype=torch.long), kind="doc_causal")
    assert "calibrated" in _backend.dispatch_report()["doc_attention"]["hd16|T128|docs|float32"]
