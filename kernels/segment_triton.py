"""Triton segmented mean over CSR groups: TSTM tree tokens and DPC-kNN cluster means, for ``ops.tree_merge``/``group_mean``.

Each group's rows are summed in the order listed (deterministic, unlike ``index_add_`` on CUDA, which uses
atomics), then divided by the group's divisor. Summation order may differ from torch's, so values match the
reference within the float32 tolerance of ``tests/test_kernels_triton.py``, not bit for bit.
Only the dispatcher in ``ops.py`` imports this module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import dispatch


@triton.jit
def _segment_mean_kernel(
    x_ptr, members_ptr, starts_ptr, sizes_ptr, divisor_ptr, out_ptr, G, D,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """A block of groups x one slice of D: ``out[g] = sum of x[members[start_g : start_g + size_g]] / divisor[g]``."""
    groups = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gmask = groups < G
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    start = tl.load(starts_ptr + groups, mask=gmask, other=0)
    size = tl.load(sizes_ptr + groups, mask=gmask, other=0)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for i in range(0, tl.max(size, axis=0)):
        live = i < size  # each group adds its own members in listed order; finished groups add nothing
        row = tl.load(members_ptr + start + i, mask=live, other=0)
        acc += tl.load(x_ptr + row[:, None] * D + cols[None, :], mask=live[:, None] & cmask[None, :], other=0.0)
    divisor = tl.load(divisor_ptr + groups, mask=gmask, other=1.0)
    out = out_ptr + groups[:, None].to(tl.int64) * D + cols[None, :]
    tl.store(out, acc / divisor[:, None], mask=gmask[:, None] & cmask[None, :])


def segment_mean(x: Tensor, members: Tensor, sizes: Tensor, divisor: Tensor) -> Tensor:
    """``x [n, D]``, CSR ``members [M]`` / ``sizes [G]``, ``divisor [G]`` -> ``[G, D]`` float32 (empty group: 0)."""
    G, D = sizes.numel(), x.shape[-1]
    out = torch.empty(G, D, dtype=torch.float32, device=x.device)
    if G == 0:
        return out
    sizes = sizes.to(torch.int64).contiguous()
    starts = torch.cumsum(sizes, 0) - sizes
    # The CPU interpreter pays per operation, not per element: give it few, large programs.
    block_g, block_d = (128, 1024) if dispatch.interpreter_tiles() else (16, 256)
    block_d = min(block_d, triton.next_power_of_2(D))
    _segment_mean_kernel[(triton.cdiv(G, block_g), triton.cdiv(D, block_d))](
        x.float().contiguous(), members.to(torch.int64).contiguous(), starts, sizes,
        divisor.float().contiguous(), out, G, D, BLOCK_G=block_g, BLOCK_D=block_d,
    )
    return out
