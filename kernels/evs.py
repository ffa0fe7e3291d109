"""``evs``: Efficient Video Sampling as vLLM ships it: drop the tokens that changed least since the previous frame."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Method
from .types import Compressed, Grid

FIRST_FRAME = 255.0  # vLLM's sentinel dissimilarity of frame 0: above any 1 - cos (at most 2), so it is always kept


def evs_budget(keep: float, T: int, N: int) -> int:
    """Tokens kept of a ``T x N`` clip: ``max(N, int(T*N*(1 - q)))`` with vLLM's pruning rate ``q = 1 - keep``.

    Python floats, left to right, truncated toward zero exactly as vLLM's ``compute_retained_tokens_count``: a
    count that is an integer in exact arithmetic can lose one (T*N = 600, keep 0.2 -> 119). Never fewer than one
    frame's N tokens.
    """
    q = 1.0 - keep
    return max(N, int(T * N * (1.0 - q)))


def dissimilarity(feats: Tensor) -> Tensor:
    """``feats [T, N, D]`` -> ``[T, N]``: row 0 the sentinel 255, row t >= 1 ``1 - cos(x[t, n], x[t-1, n])``.

    ``F.cosine_similarity`` normalises each vector on its own and multiplies elementwise, so it is symmetric to
    the bit: identical (or swapped) token pairs give identical values, which is what makes EVS's ties exact.
    """
    d = torch.full(feats.shape[:2], FIRST_FRAME, dtype=feats.dtype, device=feats.device)
    if feats.shape[0] > 1:
        d[1:] = 1.0 - F.cosine_similarity(feats[1:], feats[:-1], dim=-1)
    return d


def evs_order(feats: Tensor) -> Tensor:
    """Global indices ``t*N + n`` [T*N] by descending dissimilarity, equal values in ascending index (stable)."""
    return torch.sort(dissimilarity(feats).flatten(), descending=True, stable=True).indices


@dataclass(frozen=True)
class EVS(Method):
    """EVS (NVIDIA, "Efficient Video Sampling", arXiv:2510.14624) as shipped in vLLM (``video_prune/evs.py``).

    Each token is scored by ``1 - cos`` with the token at the same grid cell one frame earlier; frame 0 always
    wins. The ``evs_budget`` tokens with the highest scores over the whole clip are kept as they are (no merging,
    no per-frame quota: a static frame can lose every token), in position order. On Qwen2.5-VL a frame is a
    temporal group and every kept token keeps its unpruned M-RoPE ``(t, h, w)`` (the pipeline gathers the full
    sequence's positions), without vLLM's integer cast of seconds per group or its text restart (ALGORITHMS.md
    §10). K is exact and data independent.
    """

    name = "evs"
    granularity = "any count from one frame's tokens up (frame 0 is always kept)"

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None) -> Compressed:
        K = evs_budget(self.keep, grid.T, grid.N)
        index = torch.sort(evs_order(feats)[:K]).values
        return Compressed.kept(feats, index, grid, {"retained": K})

    def tokens_for(self, grid: Grid) -> int:
        return grid.T * grid.N if self.keep >= 1.0 else evs_budget(self.keep, grid.T, grid.N)
