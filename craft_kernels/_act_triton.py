"""Triton kernels of act_accumulate (CUDA, or CPU under TRITON_INTERPRET=1).

- ``act_fwd``: one program per (row, block of D). It scans the row's N steps with the scalar
  recurrence in registers, in float64 whatever the storage dtype, with the threshold ``1 - eps``
  computed in float64 (as the C++ scan does, so both paths close the same slots; recomputed by
  every D block: B x N scalars are cheap), pours
  ``p * results[n]`` into a register accumulator and stores it when the slot closes. Block 0 also
  writes the piece weights ``w (B, N, 2)``, slots ``idx (B, N, 2)`` and the decision tape (the bit
  layout of csrc/act_scan.cpp), so the backward pass is shared with the CPU path's format.
- ``act_pour_bwd``: one program per (row, step, block of D): ``d results`` and partial dot products
  ``<d slots[idx], results[n]>`` per D block (summed afterwards; deterministic, no atomics).
- ``act_scan_bwd``: one program per row: the reverse (adjoint) scan through the tape, in float64.
Offsets are int64 throughout; nothing syncs with the host.
"""
from __future__ import annotations

import triton
import triton.language as tl

from craft_kernels.act import TAPE_BITS

# the decision tape's bits, from their one Python definition (tests check them against csrc/act_scan.cpp)
_CLAMPED = tl.constexpr(TAPE_BITS["clamped"])
_CAPPED = tl.constexpr(TAPE_BITS["capped"])
_CLOSE = tl.constexpr(TAPE_BITS["close"])
_HSAT = tl.constexpr(TAPE_BITS["hsat"])
_OVERFLOW = tl.constexpr(TAPE_BITS["overflow"])
_ACTIVE = tl.constexpr(TAPE_BITS["active"])


@triton.jit
def act_fwd(x_ptr, r_ptr, h_ptr, m_ptr, thr_ptr, slots_ptr, w_ptr, idx_ptr, tape_ptr, halt_ptr, closed_ptr,
            N, D, sxb, sxn, sxd, srb, srn, shb, shn, smb, smn, ssb, sss,
            CARRY: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    cols = blk.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    cm = cols < D
    lead = blk == 0  # block 0 writes the per-step scalars
    thr = tl.load(thr_ptr).to(tl.float64)  # 1 - eps, computed in float64
    zero = thr * 0
    cum = zero
    halt = zero
    s = b * 0  # int64 slot counter
    acc = tl.zeros((BLOCK_D,), dtype=ACC)  # fp32 (fp64 for fp64 results)
    for n in range(N):
        nn = b * 0 + n  # int64 step
        active = tl.load(m_ptr + b * smb + nn * smn) != 0
        r = tl.load(r_ptr + b * srb + nn * srn).to(tl.float64)
        h = tl.load(h_ptr + b * shb + nn * shn).to(tl.float64)
        x = tl.load(x_ptr + b * sxb + nn * sxn + cols * sxd, mask=cols < tl.where(active, D, 0), other=0.0).to(acc.dtype)
        p = r
        clamped = active & (cum + p > thr) & (CARRY == 0)
        p = tl.where(clamped, 1 - cum, p)
        capped = active & (p > 1 - halt)
        p = tl.where(capped, 1 - halt, p)
        over = active & (p > 1 - cum) & (CARRY != 0)
        a = tl.where(active, tl.where(over, 1 - cum, p), zero)
        rest = tl.where(over, p - (1 - cum), zero)
        cum1 = cum + a
        close = active & (over | (cum1 >= thr))
        hsum = halt + h
        hsat = close & (hsum >= 1)
        acc = acc + a.to(acc.dtype) * x
        s0 = s
        tl.store(slots_ptr + b * ssb + s0 * sss + cols, acc.to(slots_ptr.dtype.element_ty), mask=cols < tl.where(close, D, 0))
        acc = tl.where(close, rest.to(acc.dtype) * x, acc)
        halt = tl.where(close, tl.where(hsat, zero + 1, hsum), halt)
        s = s + close.to(tl.int64)
        cum = tl.where(over, rest, tl.where(close, zero, cum1))
        i = b * N + nn
        tl.store(w_ptr + 2 * i, a.to(w_ptr.dtype.element_ty), mask=lead)
        tl.store(w_ptr + 2 * i + 1, rest.to(w_ptr.dtype.element_ty), mask=lead)
        tl.store(idx_ptr + 2 * i, tl.where(active, s0, -1), mask=lead)
        tl.store(idx_ptr + 2 * i + 1, tl.where(over, s, -1), mask=lead)
        bits = (clamped.to(tl.int32) * _CLAMPED + capped.to(tl.int32) * _CAPPED + close.to(tl.int32) * _CLOSE
                + hsat.to(tl.int32) * _HSAT + over.to(tl.int32) * _OVERFLOW + active.to(tl.int32) * _ACTIVE)
        tl.store(tape_ptr + i, bits.to(tl.uint8), mask=lead)
    # the open slot (possibly empty: the buffer is zero there anyway)
    tl.store(slots_ptr + b * ssb + s * sss + cols, acc.to(slots_ptr.dtype.element_ty), mask=cm)
    tl.store(halt_ptr + b, halt.to(halt_ptr.dtype.element_ty), mask=lead)
    tl.store(closed_ptr + b, s, mask=lead)


@triton.jit
def act_pour_bwd(gs_ptr, x_ptr, w_ptr, idx_ptr, gx_ptr, part_ptr, N, D, n_blk,
                 sgb, sgs, sgd, sxb, sxn, sxd, sob, son,
                 ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)  # b * N + n
    blk = tl.program_id(1)
    b = i // N
    n = i % N
    cols = blk.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    cm = cols < D
    x = tl.load(x_ptr + b * sxb + n * sxn + cols * sxd, mask=cm, other=0.0).to(ACC)
    w0 = tl.load(w_ptr + 2 * i).to(ACC)
    w1 = tl.load(w_ptr + 2 * i + 1).to(ACC)
    k0 = tl.load(idx_ptr + 2 * i)
    k1 = tl.load(idx_ptr + 2 * i + 1)
    g0 = tl.load(gs_ptr + b * sgb + tl.maximum(k0, 0) * sgs + cols * sgd, mask=cols < tl.where(k0 >= 0, D, 0), other=0.0).to(ACC)
    g1 = tl.load(gs_ptr + b * sgb + tl.maximum(k1, 0) * sgs + cols * sgd, mask=cols < tl.where(k1 >= 0, D, 0), other=0.0).to(ACC)
    gx = w0 * g0 + w1 * g1
    tl.store(gx_ptr + b * sob + n * son + cols, gx.to(gx_ptr.dtype.element_ty), mask=cm)
    tl.store(part_ptr + (2 * i) * n_blk + blk, tl.sum(g0 * x, axis=0))
    tl.store(part_ptr + (2 * i + 1) * n_blk + blk, tl.sum(g1 * x, axis=0))


@triton.jit
def act_scan_bwd(tape_ptr, gw_ptr, ghalt_ptr, gr_ptr, gh_ptr, N, CARRY: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    a_halt = tl.load(ghalt_ptr + b).to(tl.float64)
    zero = a_halt * 0
    a_cum = zero
    for j in range(N):
        i = b * N + (N - 1 - j)
        t = tl.load(tape_ptr + i).to(tl.int32)
        active = (t & _ACTIVE) != 0
        close = (t & _CLOSE) != 0
        hsat = (t & _HSAT) != 0
        over = (t & _OVERFLOW) != 0
        capped = (t & _CAPPED) != 0
        clamped = (t & _CLAMPED) != 0
        g0 = tl.load(gw_ptr + 2 * i).to(tl.float64)
        g1 = tl.load(gw_ptr + 2 * i + 1).to(tl.float64)
        gh = tl.where(active & close & (hsat == 0), a_halt, zero)
        a_halt = tl.where(active & close & hsat, zero, a_halt)
        a_w1 = g1 + a_cum  # overflow: w0 = 1 - cum0, w1 = p - w0, cum after = w1
        a_c = tl.where(close, zero, a_cum)  # otherwise: w0 = p, cum after = close ? 0 : cum0 + p
        a_p = tl.where(over, a_w1, g0 + a_c)
        a_cum0 = tl.where(over, a_w1 - g0, a_c)
        a_halt = tl.where(active & capped, a_halt - a_p, a_halt)
        via_cum = active & (capped == 0) & clamped & (CARRY == 0)
        a_cum0 = tl.where(via_cum, a_cum0 - a_p, a_cum0)
        gr = tl.where(active & (capped == 0) & (via_cum == 0), a_p, zero)
        tl.store(gr_ptr + i, gr.to(gr_ptr.dtype.element_ty))
        tl.store(gh_ptr + i, gh.to(gh_ptr.dtype.element_ty))
        a_cum = tl.where(active, a_cum0, a_cum)
