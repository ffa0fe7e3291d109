"""Triton max-min diversity greedy (ADTS and DivPrune): every batch row (frame) at once, calibration fused in.

The kernels read the cosine similarity ``sim = xn @ xn^T`` that torch computed on the same device, and form each
cost entry on the fly exactly as the reference does, ``((1 - s) * w_j) * r_j`` in float32, so no ``[B, N, N]`` cost
matrix is written and every value the greedy compares is bit-identical to the torch path. The greedy itself only
takes minima, maxima and argmaxes (exact operations), so the picks equal the reference's indices exactly.
Only the dispatcher in ``ops.py`` imports this module.
"""

from __future__ import annotations

import triton
import triton.language as tl
import torch
from torch import Tensor

from . import dispatch


@triton.jit
def _cost(s, w, r, HAS_W: tl.constexpr, HAS_R: tl.constexpr):
    """Cost from similarity, in the reference's order: ``1 - s``, times the column's weight, times its relevance."""
    c = 1.0 - s
    if HAS_W:
        c = c * w
    if HAS_R:
        c = c * r
    return c


@triton.jit
def _column(ptr, cols, cmask, PRESENT: tl.constexpr):
    """A per-column factor, or ones when the caller has none (``_cost`` then skips it)."""
    if PRESENT:
        v = tl.load(ptr + cols, mask=cmask, other=1.0)
    else:
        v = tl.full(cols.shape, 1.0, tl.float32)
    return v


@triton.jit
def _second_smallest_kernel(
    sim_ptr, w_ptr, r_ptr, out_ptr, N,
    HAS_W: tl.constexpr, HAS_R: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``out[b, j]`` = 2nd smallest cost of column ``j`` (the smallest when N == 1), like ``torch.kthvalue``."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < N
    w = _column(w_ptr + b * N, cols, cmask, HAS_W)
    r = _column(r_ptr + b * N, cols, cmask, HAS_R)
    inf = float("inf")
    m1 = tl.full([BLOCK_C], inf, tl.float32)
    m2 = tl.full([BLOCK_C], inf, tl.float32)
    base = sim_ptr + b * N * N
    for r0 in range(0, N, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < N)[:, None] & cmask[None, :]
        s = tl.load(base + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0)
        c = tl.where(mask, _cost(s, w[None, :], r[None, :], HAS_W, HAS_R), inf)
        # The tile's two smallest per column (equal to each other when the minimum occurs twice) ...
        t1 = tl.min(c, axis=0)
        twice = tl.sum((c == t1[None, :]).to(tl.int32), axis=0) >= 2
        t2 = tl.where(twice, t1, tl.min(tl.where(c > t1[None, :], c, inf), axis=0))
        # ... merged with the running pair: the 2nd smallest of {m1 <= m2} u {t1 <= t2}.
        m2 = tl.minimum(tl.maximum(m1, t1), tl.minimum(m2, t2))
        m1 = tl.minimum(m1, t1)
    second = tl.where(N > 1, m2, m1)
    tl.store(out_ptr + b * N + cols, second, mask=cmask)


@triton.jit
def _greedy_kernel(
    sim_ptr, w_ptr, r_ptr, second_ptr, picks_ptr, N, k,
    HAS_W: tl.constexpr, HAS_R: tl.constexpr, EXCLUDE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per row ``b``: first pick = argmax of the 2nd smallest, then ``k - 1`` max-min steps."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    w = _column(w_ptr + b * N, cols, cmask, HAS_W)
    r = _column(r_ptr + b * N, cols, cmask, HAS_R)
    neg = float("-inf")
    base = sim_ptr + b * N * N
    second = tl.load(second_ptr + b * N + cols, mask=cmask, other=neg)
    pick = tl.argmax(second, axis=0, tie_break_left=True)
    tl.store(picks_ptr + b * k, pick)
    s = tl.load(base + pick.to(tl.int64) * N + cols, mask=cmask, other=0.0)
    score = tl.where(cmask, _cost(s, w, r, HAS_W, HAS_R), neg)  # padding stays -inf under every minimum
    for step in range(1, k):
        if EXCLUDE:
            score = tl.where(cols == pick, neg, score)
        pick = tl.argmax(score, axis=0, tie_break_left=True)
        tl.store(picks_ptr + b * k + step, pick)
        s = tl.load(base + pick.to(tl.int64) * N + cols, mask=cmask, other=0.0)
        score = tl.minimum(score, _cost(s, w, r, HAS_W, HAS_R))


def maxmin_greedy(
    sim: Tensor, k: int, weight: Tensor | None = None, relevance: Tensor | None = None, exclude: bool = True
) -> Tensor:
    """Triton twin of ``ops.maxmin_select``: ``sim [B, N, N]``, ``weight, relevance [B, N]`` -> picks ``[B, k]``."""
    B, N, _ = sim.shape
    if not 0 < k <= N:
        raise ValueError(f"cannot pick {k} of {N} tokens")
    sim = sim.float().contiguous()
    w = weight.float().contiguous() if weight is not None else sim
    r = relevance.float().contiguous() if relevance is not None else sim
    second = torch.empty(B, N, dtype=torch.float32, device=sim.device)
    picks = torch.empty(B, k, dtype=torch.int32, device=sim.device)
    flags = dict(HAS_W=weight is not None, HAS_R=relevance is not None)
    # Small tiles keep a GPU program's registers in check; the CPU interpreter pays per operation, so it gets big ones.
    block_r, block_c = (256, 256) if dispatch.interpreter_tiles() else (32, 128)
    block_r, block_c = min(block_r, triton.next_power_of_2(N)), min(block_c, triton.next_power_of_2(N))
    _second_smallest_kernel[(B, triton.cdiv(N, block_c))](sim, w, r, second, N, **flags, BLOCK_R=block_r, BLOCK_C=block_c)
    block_n = triton.next_power_of_2(N)
    warps = 4 if block_n <= 1024 else 8 if block_n <= 4096 else 16
    _greedy_kernel[(B,)](sim, w, r, second, picks, N, k, **flags, EXCLUDE=exclude, BLOCK_N=block_n, num_warps=warps)
    return picks.long()
