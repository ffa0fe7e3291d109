"""``fastv``: prune visual tokens inside the LLM by the last query's attention (FastV; FlashVID's inner stage).

Pure torch (no transformers): the selection rule and the method. The in-LLM stage it returns is described by
:class:`~.traits.LLMPrune`; the stage itself runs on the stock transformers decoder in ``pipelines/llm_prune.py``,
which reads it from a method's :meth:`~.base.Method.llm_prune`.

Sources: FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024; ``pkunlp-icler/FastV``
``modeling_llama.py`` L717-800) and FlashVID's inner-LLM stage (``Fanziyang-v/FlashVID`` ``utils.py::fastv_prune``
L352-406); ALGORITHMS.md 2.9 and 6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops
from .base import Method
from .errors import MethodError
from .traits import LLMPrune
from .types import Compressed, Grid


def select_visual(score: Tensor, visual_start: int, visual_len: int, k: int) -> tuple[Tensor, Tensor]:
    """Top ``k`` visual tokens by ``score``; every other position kept.

    ``score [L]`` (or ``[heads, L]``, averaged over heads first) is the last query's attention over the whole
    sequence, float32; the visual tokens are ``[visual_start, visual_start + visual_len)``. Returns
    ``keep_visual [k]`` (relative to the span, ascending) and ``keep [L - visual_len + k]`` (positions in the
    sequence, ascending). Ties go to the lower index. Raises ValueError if the span or ``k`` is out of range.
    """
    if score.ndim == 2:
        score = score.float().mean(0)
    L = score.shape[-1]
    if not (0 <= visual_start and visual_start + visual_len <= L and 0 <= k <= visual_len):
        raise ValueError(f"visual span [{visual_start}, +{visual_len}) with k={k} does not fit a sequence of {L}")
    top = ops.top_indices(score[visual_start : visual_start + visual_len], k)
    keep_visual = torch.sort(top).values
    device = score.device
    keep = torch.cat([
        torch.arange(visual_start, device=device),
        visual_start + keep_visual,
        torch.arange(visual_start + visual_len, L, device=device),
    ])
    return keep_visual, keep


@dataclass(frozen=True)
class FastV(Method):
    """FastV: no vision-side compression; at decoder layer ``K`` (default 2, the paper's) keep
    ``round(keep * Lv)`` visual tokens (``keep`` = 1 - R; the paper's default R = 50 %) by the last query's
    attention at layer ``K - 1``, the "inplace" variant: layers >= K run on the survivors, which keep their
    positions. ``tokens.visual_after`` is every visual token; ``tokens.visual_by_layer`` shows the cut.
    """

    name = "fastv"
    stream_unit = "frame"  # the vision side keeps every token; the in-LLM stage runs after
    prunes_in_llm = True
    granularity = "not with --tokens: every visual token enters the LLM, which prunes them inside"

    pruning_layer: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.pruning_layer, bool) or not isinstance(self.pruning_layer, int) or self.pruning_layer < 1:
            raise MethodError(f"fastv.pruning_layer must be an integer >= 1, got {self.pruning_layer!r}")

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None) -> Compressed:
        return Compressed.kept(feats, torch.arange(grid.T * grid.N, device=feats.device), grid)

    def llm_prune(self) -> LLMPrune:
        return LLMPrune(ratio=float(self.keep), rounding="round", layer=self.pruning_layer)
