"""``pool``: spatial average pooling of each frame's token grid down to the budget (a simple, strong baseline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Method
from .types import Compressed, Grid


def pooled_shape(H: int, W: int, keep: float) -> tuple[int, int]:
    """Output grid of one frame: each side scaled by sqrt(keep), rounded half-up, at least 1 (aspect kept)."""
    s = math.sqrt(keep)
    return max(1, min(H, math.floor(H * s + 0.5))), max(1, min(W, math.floor(W * s + 0.5)))


def _bins(size: int, out: int) -> Tensor:
    """[out, size] membership of adaptive pooling bins: bin i covers [floor(i*size/out), ceil((i+1)*size/out))."""
    i = torch.arange(out)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)
    cells = torch.arange(size)
    return (cells[None, :] >= start[:, None]) & (cells[None, :] < end[:, None])


@dataclass(frozen=True)
class Pool(Method):
    """Average-pools each frame's H x W grid to h' x w' (``pooled_shape``), the bins of ``adaptive_avg_pool2d``.

    K = T * h' * w'. Each pooled token takes the position of its bin's centre cell.
    """

    name = "pool"
    stream_unit = "frame"
    granularity = "the frame count times h' x w' (each side of the grid scaled by sqrt(keep))"

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None) -> Compressed:
        T, H, W, N = grid.T, grid.H, grid.W, grid.N
        h, w = pooled_shape(H, W, self.keep)
        rows, cols = _bins(H, h), _bins(W, w)
        member = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(h * w, N).to(feats.device)  # [P, N]
        weights = member.float() / member.sum(1, keepdim=True)
        tokens = torch.einsum("pn,tnd->tpd", weights, feats).reshape(T * h * w, -1)  # [K, D]

        # Representative: the centre cell of each bin (lower-middle when a bin has an even size).
        centre_h = (rows.float() * torch.arange(H)).sum(1).div(rows.sum(1)).floor().long()
        centre_w = (cols.float() * torch.arange(W)).sum(1).div(cols.sum(1)).floor().long()
        centre = (centre_h[:, None] * W + centre_w[None, :]).reshape(-1).to(feats.device)  # [P]
        frame_base = torch.arange(T, device=feats.device)[:, None] * N
        index = (frame_base + centre[None, :]).reshape(-1)

        # Source groups, representative first: put the centre cell ahead of the rest of its bin.
        group, cell = member.nonzero(as_tuple=True)  # sorted by group
        order = torch.argsort(group * (N + 1) + torch.where(cell == centre[group], -1, cell), stable=True)
        group, cell = group[order], cell[order]
        sources = (frame_base + cell[None, :]).reshape(-1)
        sizes = member.sum(1).repeat(T)
        offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
        weights = torch.repeat_interleave(1.0 / sizes.to(feats.device).float(), sizes.to(feats.device))  # [M]
        return Compressed(tokens, index, sources, offsets, grid, {"pooled_grid": [h, w]}, weights)

    def tokens_for(self, grid: Grid) -> int:
        if self.keep >= 1.0:
            return grid.T * grid.N
        h, w = pooled_shape(grid.H, grid.W, self.keep)
        return grid.T * h * w
