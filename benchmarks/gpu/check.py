"""The GPU check run by benchmarks/gpu/run.sh (see there). Correctness first, then benchmarks.

1. Triton SwiGLU and ACT (clamp and carry) forward + backward in fp32/fp16/bf16 against float64
   references computed on the CPU, odd shapes, strided inputs.
2. doc_attention (compiled flex with a BlockMask built by doc_block_mask) forward + backward against
   float64 attention with the dense document mask.
3. Benchmarks (medians of triton.testing.do_bench): SwiGLU fwd+bwd ours vs Liger-Kernel's
   LigerSiLUMulFunction (when installed) and vs torch.compile(lambda g, u: F.silu(g) * u);
   doc_block_mask vs create_block_mask(..., _compile=True); flex attention fwd+bwd with each mask.

``--smoke`` runs tiny shapes on whatever device torch has (CPU: the Triton interpreter), to check
this script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from craft_kernels import act_accumulate, doc_attention, doc_block_mask, doc_dense_mask, doc_mask_mod, swiglu
from craft_kernels.act import act_accumulate_reference

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
results: dict = {"checks": [], "benchmarks": []}


def close(name, got, ref, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    got64 = got.detach().double().cpu()
    err = (got64 - ref).abs().max().item() if ref.numel() else 0.0
    ok = torch.allclose(got64, ref, rtol=rtol * scale, atol=atol * scale)
    results["checks"].append({"name": name, "dtype": str(dtype)[6:], "max_abs_err": err, "ok": bool(ok)})
    print(f"{'ok ' if ok else 'BAD'} {name:<44} {str(dtype)[6:]:<9} max|err| {err:.3g}")
    return ok


def check_swiglu(dev, smoke):
    shapes = [(3, 5, 7), (37, 1000)] if smoke else [(3, 5, 7), (37, 1000), (4096, 2752), (2, 257, 4099)]
    for dtype in DTYPES:
        for shape in shapes:
            gu = torch.randn(*shape[:-1], 2 * shape[-1], device=dev, dtype=dtype).requires_grad_()
            f = shape[-1]
            out = swiglu(gu[..., :f], gu[..., f:])  # strided halves
            go = torch.randn_like(out)
            out.backward(go)
            x = gu.detach().double().cpu().requires_grad_()
            ref = F.silu(x[..., :f]) * x[..., f:]
            ref.backward(go.double().cpu())
            close(f"swiglu fwd {shape}", out, ref.detach(), dtype)
            close(f"swiglu bwd {shape}", gu.grad, x.grad, dtype, scale=2.0)


def check_act(dev, smoke):
    shapes = [(2, 9, 5)] if smoke else [(2, 9, 5), (8, 257, 96), (64, 128, 256)]
    for mode in ("clamp", "carry"):
        for dtype in DTYPES:
            for B, N, D in shapes:
                g = torch.Generator().manual_seed(B * N + D)
                x = torch.randn(B, N, D, generator=g)
                r = torch.rand(B, N, generator=g) * 0.9 + 0.05
                h = torch.rand(B, N, generator=g) * 0.2
                xs = [t.to(dev, dtype).clone().requires_grad_() for t in (x, r, h)]
                o = act_accumulate(*xs, mode=mode)
                gs = torch.randn(o.slots.shape, generator=g)
                gh = torch.randn(o.halting.shape, generator=g)
                (o.slots.float() * gs.to(dev)).sum().add((o.halting.float() * gh.to(dev)).sum()).backward()
                ref_in = [t.double().clone().requires_grad_() for t in (x, r, h)]
                ro = act_accumulate_reference(*ref_in, mode=mode) if mode == "carry" else \
                    act_accumulate_reference(*ref_in)
                S = min(o.slots.shape[1], ro.slots.shape[1])
                ((ro.slots[:, :S] * gs[:, :S].double()).sum() + (ro.halting * gh.double()).sum()).backward()
                scale = 4.0 * max(1.0, N / 64)
                close(f"act {mode} slots ({B},{N},{D})", o.slots[:, :S], ro.slots[:, :S].detach(), dtype, scale)
                for name, a, b in zip("xrh", xs, ref_in):
                    close(f"act {mode} d{name} ({B},{N},{D})", a.grad, b.grad, dtype, scale)


def check_doc_attention(dev, smoke):
    B, H, hd = 2, 4, 64
    for T in ([64] if smoke else [256, 1000]):
        for dtype in (torch.float32, torch.bfloat16):
            ids = (torch.arange(T) * 5 // T).expand(B, T).contiguous()
            ids[1, -7:] = -1  # padding rows
            q, k, v = (torch.randn(B, H, T, hd, device=dev, dtype=dtype).requires_grad_() for _ in range(3))
            bm = doc_block_mask(ids.to(dev), "doc_causal")
            out = doc_attention(q, k, v, ids.to(dev), kind="doc_causal", block_mask=bm)
            go = torch.randn_like(out)
            out.backward(go)
            q64, k64, v64 = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
            mask = doc_dense_mask(ids, "doc_causal")
            s = (q64 @ k64.transpose(-1, -2)) * hd ** -0.5
            p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
            ref = p @ v64
            ref.backward(go.double().cpu())
            scale = 4.0 if dtype == torch.float32 else 2.0
            close(f"doc_attention flex fwd T={T}", out, ref.detach(), dtype, scale)
            for name, a, b in zip("qkv", (q, k, v), (q64, k64, v64)):
                close(f"doc_attention flex d{name} T={T}", a.grad, b.grad, dtype, scale * 4)


def bench(fn):
    if torch.cuda.is_available():
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[1]


def row(name, ours_s, base_s, base_kind, **extra):
    r = {"name": name, "ours_ms": ours_s * 1e3, "baseline_ms": base_s * 1e3, "speedup_vs_baseline": base_s / ours_s,
         "baseline_kind": base_kind, **extra}
    results["benchmarks"].append(r)
    print(f"{name:<48} ours {ours_s * 1e3:8.3f} ms  {base_kind:<40} {base_s * 1e3:8.3f} ms  "
          f"{base_s / ours_s:5.2f}x")


def bench_swiglu(dev, smoke):
    try:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except ImportError:
        LigerSiLUMulFunction = None
    one_liner = torch.compile(lambda g, u: F.silu(g) * u)
    for dtype in (torch.bfloat16, torch.float32):
        rows, cols = (256, 512) if smoke else (16384, 4096)
        g, u = (torch.randn(rows, cols, device=dev, dtype=dtype).requires_grad_() for _ in range(2))
        do = torch.randn(rows, cols, device=dev, dtype=dtype)

        def step(fn):
            return lambda: fn(g, u).backward(do)

        ours = bench(step(swiglu))
        moved = 8 * rows * cols * g.element_size()
        row(f"swiglu fwd+bwd {rows}x{cols} {str(dtype)[6:]}", ours, bench(step(one_liner)),
            "torch.compile one-liner", gbs=moved / ours / 1e9)
        if LigerSiLUMulFunction is not None:
            row(f"swiglu fwd+bwd {rows}x{cols} {str(dtype)[6:]}", ours, bench(step(LigerSiLUMulFunction.apply)),
                "Liger-Kernel LigerSiLUMulFunction", gbs=moved / ours / 1e9)


def bench_masks_and_flex(dev, smoke):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    B, H, hd = (1, 2, 64) if smoke else (4, 16, 64)
    for T in ([256] if smoke else [2048, 8192, 32768]):
        ids = (torch.arange(T, device=dev) * 16 // T).expand(B, T).contiguous()
        mm = doc_mask_mod("doc_causal", ids)
        cbm = lambda: create_block_mask(mm, B, None, T, T, device=dev, _compile=True)  # noqa: E731
        ours_bm = lambda: doc_block_mask(ids, "doc_causal")  # noqa: E731
        bm_a, bm_b = ours_bm(), cbm()
        same = torch.equal(bm_a.to_dense(), bm_b.to_dense())
        row(f"BlockMask T={T}", bench(ours_bm), bench(cbm), "create_block_mask(_compile=True)", identical=same)
        if T > 8192 and not smoke:
            continue
        q, k, v = (torch.randn(B, H, T, hd, device=dev, dtype=torch.bfloat16).requires_grad_() for _ in range(3))

        def attn(bm):
            if dev == "cpu":  # smoke only: flex has no CPU backward
                return lambda: flex(q.detach(), k.detach(), v.detach(), block_mask=bm)
            return lambda: flex(q, k, v, block_mask=bm).sum().backward()

        row(f"flex fwd+bwd T={T} bf16", bench(attn(bm_a)), bench(attn(bm_b)), "flex with create_block_mask's mask")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device (checks this script)")
    a = ap.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (smoke)"
    results["device"] = name
    results["torch"] = torch.__version__
    print(f"GPU check on {name}, torch {torch.__version__}")
    t0 = time.time()
    steps = [("swiglu", check_swiglu), ("act", check_act), ("doc_attention", check_doc_attention),
             ("bench swiglu", bench_swiglu), ("bench masks + flex", bench_masks_and_flex)]
    for label, fn in steps:
        try:
            fn(dev, a.smoke)
        except Exception as e:  # report and go on: one failing part must not hide the others
            results["checks"].append({"name": label, "ok": False, "error": f"{type(e).__name__}: {e}"})
            print(f"BAD {label}: {type(e).__name__}: {e}")
        print(f"-- {label} done at {time.time() - t0:.0f} s")
    out_dir = Path(os.environ.get("OUT") or Path(__file__).parent)
    out = out_dir / ("gpu_results.json" if os.environ.get("OUT") else "results.json")
    out.write_text(json.dumps(results, indent=1, default=str))
    bad = [c for c in results["checks"] if not c["ok"]]
    print(f"{len(results['checks']) - len(bad)}/{len(results['checks'])} checks ok; results in {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
