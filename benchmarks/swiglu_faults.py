"""SwiGLU fwd+bwd: ours (``swiglu``, the dispatch's path) vs the compiled one-liner vs a copy of one
tensor's bytes between preallocated buffers, interleaved round by round in one process: wall and CPU
time (``time.process_time``, all threads), minor page faults per step, and the share of the copy rate
(8 tensors per step vs 2 per copy). ``HEAP=retained`` runs everything under
``craft_kernels.retain_freed_memory()`` (both sides). ``ROUNDS`` (default 11).

    python benchmarks/swiglu_faults.py
    HEAP=retained python benchmarks/swiglu_faults.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 CRAFT_SPAN_ISA=avx2 \
        CRAFT_CACHE_DIR=$(mktemp -d) python benchmarks/swiglu_faults.py
"""
import os, resource, statistics, sys, time
from pathlib import Path
import torch
import craft_kernels as ck
from craft_kernels import _backend, swiglu
sys.path.insert(0, str(Path(__file__).parent))
from test_swiglu import CASES, _one_liner as one, fwd_bwd_case  # noqa: E402
if os.environ.get("HEAP") == "retained":
    assert ck.retain_freed_memory()
print(f"heap {os.environ.get('HEAP', 'default')}, torch ISA {torch.backends.cpu.get_cpu_capability()}, "
      f"CRAFT_SPAN_ISA {os.environ.get('CRAFT_SPAN_ISA')}, threads {torch.get_num_threads()}, load {os.getloadavg()}", flush=True)
R = int(os.environ.get("ROUNDS", 11))
for rows, cols, dt in CASES:
    g, u, step = fwd_bwd_case(rows, cols, dt)
    n = rows * cols * g.element_size() // 4
    src, dst = torch.ones(n), torch.empty(n)  # a copy of the same bytes as one tensor, buffers preallocated
    fns = {"ours": step(swiglu), "oneliner": step(one), "copy": lambda: dst.copy_(src)}
    for f in fns.values(): f(); f(); f()
    path = _backend.paths_run.get("swiglu")
    w = {k: [] for k in fns}; c = {k: [] for k in fns}; fl = {k: [] for k in fns}
    for r in range(R):
        items = list(fns.items())
        for k, f in (items if r % 2 == 0 else items[::-1]):
            m0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = time.perf_counter(); t2 = time.process_time(); f()
            w[k].append(time.perf_counter() - t); c[k].append(time.process_time() - t2)
            fl[k].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - m0)
    med = lambda d, k: statistics.median(d[k])
    rr = [b / a for a, b in zip(w["ours"], w["oneliner"])]; rc = [b / a for a, b in zip(c["ours"], c["oneliner"])]
    # share of the copy rate: 8 tensors moved per step vs 2 per copy
    sw = lambda k: 4 * med(w, "copy") / med(w, k); sc = lambda k: 4 * med(c, "copy") / med(c, k)
    print(f"{str(dt)[6:]} {rows}x{cols} path={path}: ours {1e3*med(w,'ours'):.1f} ms wall / {1e3*med(c,'ours'):.1f} cpu, "
          f"one-liner {1e3*med(w,'oneliner'):.1f} / {1e3*med(c,'oneliner'):.1f}, copy {1e3*med(w,'copy'):.2f} / {1e3*med(c,'copy'):.2f}; "
          f"ratio wall {med(w,'oneliner')/med(w,'ours'):.2f} ({min(rr):.2f}-{max(rr):.2f}), cpu {med(c,'oneliner')/med(c,'ours'):.2f} ({min(rc):.2f}-{max(rc):.2f}); "
          f"copy share wall ours {sw('ours'):.2f} one-liner {sw('oneliner'):.2f}, cpu ours {sc('ours'):.2f} one-liner {sc('oneliner'):.2f}; "
          f"faults/step ours {statistics.median(fl['ours']):.0f} one-liner {statistics.median(fl['oneliner']):.0f}", flush=True)
print("load after", os.getloadavg(), "rss MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
print(_backend.dispatch_report()["swiglu"])
