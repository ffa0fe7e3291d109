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


@triton.jit
def _segment_mean_kernel(
    x_ptr, members_ptr, starts_ptr, sizes_ptr, divisor_ptr, out_ptr, D, BLOCK_D: tl.constexpr
):
    """Group ``g``, one slice of D: ``out[g] = sum of x[members[start : start + size]] / divisor[g]``."""
    g = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    start = tl.load(starts_ptr + g)
    size = tl.load(sizes_ptr + g)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for i in range(0, size):
        row = tl.load(members_ptr + start + i)
        acc += tl.load(x_ptr + row * D + cols, mask=cmask, other=0.0)
    tl.store(out_ptr + g * D + cols, acc / tl.load(divisor_ptr + g), mask=cmask)


def segment_mean(x: Tensor, members: Tensor, sizes: Tensor, divisor: Tensor) -> Tensor:
    """``x [n, D]``, CSR ``members [M]`` / ``sizes [G]``, ``divisor [G]`` -> ``[G, D]`` float32 (empty group: 0)."""
    G, D = sizes.numel(), x.shape[-1]
    out = torch.empty(G, D, dtype=torch.float32, device=x.device)
    if G == 0:
        return out
    sizes = sizes.to(torch.int64).contiguous()
    starts = torch.cumsum(sizes, 0) - sizes
    block_d = min(1024, triton.next_power_of_2(D))
    _segment_mean_kernel[(G, triton.cdiv(D, block_d))](
        x.float().contiguous(), members.to(torch.int64).contiguous(), starts, sizes,
        divisor.float().contiguous(), out, D, BLOCK_D=block_d,
    )
    return out
