"""``none``: every token passes unchanged (the uncompressed baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Method
from .types import Compressed, Grid


@dataclass(frozen=True)
class NoCompression(Method):
    """Keeps all T*N tokens in order; ``keep`` is accepted and ignored (always 1.0 in effect)."""

    name = "none"
    stream_unit = "frame"
    ignores_keep = True
    baseline = True
    granularity = "every token, always"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "keep", 1.0)

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None) -> Compressed:
        return Compressed.kept(feats, torch.arange(grid.T * grid.N, device=feats.device), grid)

    def tokens_for(self, grid: Grid) -> int:
        return grid.T * grid.N
