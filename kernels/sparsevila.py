"""``sparsevila``: SparseVILA's prefill sparsity, the top ``keep`` share of each frame's tokens by vision salience.

Source: SparseVILA, "Decoupling Visual Sparsity for Efficient VLM Inference" (ICCV 2025, arXiv 2510.17777), as
described in shared/ALGORITHMS.md §13; the method's code is not public. This file is the prefill side and the
options of the decoding side, which :meth:`SparseVILA.decode_sparsity` hands to ``pipelines/sparse_decode.py``
(per-layer query-aware selection over the cached visual keys, a compact KV cache per answer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops
from .base import Method
from .errors import MethodError
from .traits import DecodeSparsity
from .types import Compressed, Grid

# The paper's video setting drops 94% of the visual tokens at decoding (ALGORITHMS.md §13.2).
SPARSEVILA_DECODE_KEEP = 0.06
SPARSEVILA_SINKS = 4


@dataclass(frozen=True)
class SparseVILA(Method):
    """SparseVILA (ICCV 2025, arXiv 2510.17777; ALGORITHMS.md §13), prefill side.

    Prefill (query-agnostic, permanent): per frame of ``N`` tokens keep the ``max(1, round(keep * N))`` tokens of
    highest ``importance [T, N]`` (the vision encoder's column-mean attention, §13.1), ties to the lower index, in
    raster order, unchanged (no merging). Output ``[T*K, D]`` in the model dtype; K exact and data independent.

    Decoding (§13.2-3, vidq's decisions): per question, each LLM layer decodes over the ``sinks`` (>= 0, default
    4) visual attention sinks, shared by the layers, plus its own top ``round(decode_keep * Lv)`` other visual
    tokens by the question's attention (``decode_keep`` in (0, 1], default 0.06), and every text token; the first
    answer token comes from the full prefill. ``decode_keep=1`` decodes over every cached token (the same answer
    as prefill pruning alone, bit for bit). MethodError for an option out of range.
    """

    name = "sparsevila"
    stream_unit = "frame"
    needs = frozenset({"importance"})
    granularity = "a multiple of the frame count"
    option_notes = {"decode_keep": "share of the visual KV entries each layer decodes over, per question",
                    "sinks": "visual attention sinks every layer keeps"}

    decode_keep: float = SPARSEVILA_DECODE_KEEP
    sinks: int = SPARSEVILA_SINKS

    def __post_init__(self) -> None:
        super().__post_init__()
        d = self.decode_keep
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < d <= 1.0:
            raise MethodError(f"sparsevila.decode_keep must be in (0, 1], got {d!r}")
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int) or self.sinks < 0:
            raise MethodError(f"sparsevila.sinks must be an integer >= 0, got {self.sinks!r}")

    def decode_sparsity(self) -> DecodeSparsity:
        return DecodeSparsity(float(self.decode_keep), self.sinks)

    def budget(self, N: int) -> int:
        """Tokens kept per frame of ``N``: ``max(1, round(keep * N))``, at most ``N``."""
        return min(N, max(1, round(self.keep * N)))

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None) -> Compressed:
        assert importance is not None
        K = self.budget(grid.N)
        keep = torch.sort(ops.top_indices(importance, K), dim=-1).values  # [T, K] ascending per frame
        frame = torch.arange(grid.T, device=feats.device)[:, None]
        index = (keep + frame * grid.N).flatten()
        return Compressed.kept(feats, index, grid, {"budget": K})

    def tokens_for(self, grid: Grid) -> int:
        return grid.T * (grid.N if self.keep >= 1.0 else self.budget(grid.N))
