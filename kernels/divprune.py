"""``divprune``: keep the most diverse tokens (max-min diversity greedy on cosine distance)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops
from .base import Method
from .types import Compressed, Grid


def divprune_budget(keep: float, count: int) -> int:
    """Tokens kept out of ``count``: ``round(keep * count)`` (Python's half-to-even, as the reference), at least 1."""
    return max(1, round(keep * count))


@dataclass(frozen=True)
class DivPrune(Method):
    """DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025).

    Selects ``round(keep*T*N)`` tokens over the whole clip (the reference's video setting) or, with ``per_frame``,
    ``round(keep*N)`` in every frame; kept tokens stay as they are, sorted by position. Global selection builds a
    ``(T*N)^2`` distance matrix (157 MB in float32 for 32 x 196 tokens). ``reference`` skips the masking of
    picked tokens, like the official code (identical output unless the data has near-duplicate tokens).
    """

    name = "divprune"
    granularity = "any count (per_frame=true: a multiple of the frame count)"

    per_frame: bool = False
    reference: bool = False

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None) -> Compressed:
        T, N, D = feats.shape
        exclude = not self.reference
        if self.per_frame:
            k = divprune_budget(self.keep, N)
            picks = ops.maxmin_select(ops.cosine_similarity(feats), k, exclude=exclude)  # [T, k]
            picks = picks + torch.arange(T, device=feats.device)[:, None] * N
        else:
            k = divprune_budget(self.keep, T * N)
            picks = ops.maxmin_select(ops.cosine_similarity(feats.reshape(1, T * N, D)), k, exclude=exclude)  # [1, k]
        index = torch.sort(picks.flatten()).values
        return Compressed.kept(feats, index, grid, {"selected": k, "scope": "frame" if self.per_frame else "clip"})

    def tokens_for(self, grid: Grid) -> int:
        if self.keep >= 1.0 and not self.reference:
            return grid.T * grid.N
        if self.per_frame:
            return grid.T * divprune_budget(self.keep, grid.N)
        return divprune_budget(self.keep, grid.T * grid.N)
