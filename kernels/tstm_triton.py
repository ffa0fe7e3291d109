"""Triton TSTM: best parent in the previous frame (masked cosine argmax) and tree roots, for ``ops.tstm_links``/``tree_roots``.

The parent search reads the similarity that torch computed on the same device and fuses the candidate masking,
the max and the lowest-index argmax, so its values and indices are exactly the reference's. The roots follow
links frame by frame inside one program instead of one Python step (three launches) per frame.
Only the dispatcher in ``ops.py`` imports this module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import dispatch


@triton.jit
def _best_parent_kernel(
    sim_ptr, cand_ptr, best_ptr, parent_ptr, N, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr
):
    """Frame ``f + 1``, rows of one block: max and first argmax over ``m`` of ``sim[f, n, m]`` masked to -1."""
    f = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    row_cand = tl.load(cand_ptr + (f + 1) * N + rows, mask=rmask, other=0) != 0
    best = tl.full([BLOCK_R], float("-inf"), tl.float32)
    parent = tl.zeros([BLOCK_R], tl.int32)
    base = sim_ptr + f * N * N
    for m0 in range(0, N, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)
        cmask = cols < N
        col_cand = tl.load(cand_ptr + f * N + cols, mask=cmask, other=0) != 0
        s = tl.load(base + rows[:, None].to(tl.int64) * N + cols[None, :], mask=rmask[:, None] & cmask[None, :])
        s = tl.where(row_cand[:, None] & col_cand[None, :], s, -1.0)
        s = tl.where(cmask[None, :], s, float("-inf"))
        tile_best = tl.max(s, axis=1)
        tile_arg = tl.argmax(s, axis=1, tie_break_left=True) + m0
        # Strictly greater: on a tie across blocks the earlier (lower) index stays, as in torch.max.
        better = tile_best > best
        parent = tl.where(better, tile_arg, parent)
        best = tl.where(better, tile_best, best)
    tl.store(best_ptr + f * N + rows, best, mask=rmask)
    tl.store(parent_ptr + f * N + rows, parent, mask=rmask)


def best_parent(sim: Tensor, cand: Tensor) -> tuple[Tensor, Tensor]:
    """``sim [T-1, N, N]`` (frame f+1 vs f), ``cand [T, N]`` -> ``best, parent [T-1, N]`` as ``masked_fill(...).max(-1)``."""
    F, N, _ = sim.shape
    sim = sim.float().contiguous()
    cand8 = cand.to(torch.int8).contiguous()
    best = torch.empty(F, N, dtype=torch.float32, device=sim.device)
    parent = torch.empty(F, N, dtype=torch.int32, device=sim.device)
    if F:
        # The CPU interpreter pays per operation, not per element: one program per frame there.
        block_r, block_m = (1024, 256) if dispatch.interpreter_tiles() else (32, 256)
        block_r, block_m = min(block_r, triton.next_power_of_2(N)), min(block_m, triton.next_power_of_2(N))
        _best_parent_kernel[(F, triton.cdiv(N, block_r))](sim, cand8, best, parent, N, BLOCK_R=block_r, BLOCK_M=block_m)
    return best, parent.long()


@triton.jit
def _roots_kernel(link_ptr, parent_ptr, root_ptr, T, N, BLOCK_N: tl.constexpr):
    """One program: ``root[t] = link[t] ? root[t-1][parent[t]] : own index``, frame after frame."""
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    tl.store(root_ptr + cols, cols.to(tl.int64), mask=cmask)
    for t in range(1, T):
        tl.debug_barrier()  # frame t-1's roots, stored by other threads of this program, must be visible
        row = t * N + cols
        link = tl.load(link_ptr + row, mask=cmask, other=0) != 0
        parent = tl.load(parent_ptr + row, mask=cmask, other=0)
        inherited = tl.load(root_ptr + (t - 1) * N + parent, mask=cmask & link, other=0)
        tl.store(root_ptr + row, tl.where(link, inherited, row.to(tl.int64)), mask=cmask)


def tree_roots(link: Tensor, parent: Tensor) -> Tensor:
    """``link, parent [T, N]`` -> each token's root as a flat index ``t*N + n``, ``[T, N]`` int64."""
    T, N = link.shape
    root = torch.empty(T, N, dtype=torch.int64, device=link.device)
    block_n = triton.next_power_of_2(N)
    _roots_kernel[(1,)](
        link.to(torch.int8).contiguous(), parent.to(torch.int64).contiguous(), root, T, N,
        BLOCK_N=block_n, num_warps=4 if block_n <= 1024 else 8,
    )
    return root
