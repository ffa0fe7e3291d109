"""``fastv``: prune visual tokens inside the LLM by the last query's attention (FastV; FlashVID's inner stage).

Pure torch (no transformers): the selection rule and the description of an in-LLM stage. The stage itself runs on
the stock transformers decoder in ``pipelines/llm_prune.py``, which reads :class:`LLMPrune` from a method's
:meth:`~.base.Method.llm_prune`.

Sources: FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024; ``pkunlp-icler/FastV``
``modeling_llama.py`` L717-800) and FlashVID's inner-LLM stage (``Fanziyang-v/FlashVID`` ``utils.py::fastv_prune``
L352-406); ALGORITHMS.md 2.9 and 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from . import ops
from .base import Compressed, Grid, Method, MethodError

# FlashVID prunes before layer 20 of the 28 of Qwen2-7B; vidq scales that with depth (ALGORITHMS.md 2.9).
FLASHVID_LAYER_FRACTION = 20 / 28


def llm_budget(visual_len: int, ratio: float, rounding: Literal["ceil", "round"]) -> int:
    """Visual tokens kept out of ``visual_len``: FlashVID ``ceil(len*ratio)``, FastV ``round(len*ratio)`` (Python
    round, half to even; FastV writes ``ratio = 1 - R``), at least 1 when there is any visual token."""
    if visual_len <= 0:
        return 0
    count = math.ceil(visual_len * ratio) if rounding == "ceil" else round(visual_len * ratio)
    return min(visual_len, max(1, count))


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
class LLMPrune:
    """An in-LLM pruning stage: before decoder layer ``K`` keep the ``budget`` visual tokens the last query attends
    to most at layer ``K - 1`` (mean over heads), and all text. Survivors keep their positions.

    ``layer``: K as an absolute index; None scales ``layer_fraction * depth`` (rounded) to the model.
    ``ratio`` and ``rounding``: the share of the visual tokens kept (:func:`llm_budget`).
    """

    ratio: float
    rounding: Literal["ceil", "round"] = "ceil"
    layer: int | None = None
    layer_fraction: float = FLASHVID_LAYER_FRACTION

    def layer_for(self, depth: int) -> int:
        """K for a decoder of ``depth`` layers (1 <= K <= depth - 1); raises MethodError if it does not fit, naming
        the option that set K (the methods call it ``pruning_layer``) and the model's layer count."""
        if self.layer is not None:
            if not self.layer < depth:  # layer >= 1 is checked where the option is parsed
                raise MethodError(f"--opt pruning_layer={self.layer} needs a model with more than {self.layer} "
                                  f"decoder layers; this one has {depth}")
            return self.layer
        K = round(self.layer_fraction * depth)
        if not 1 <= K < depth:
            raise MethodError(f"the in-LLM pruning stage needs a model with at least 2 decoder layers; this one has "
                              f"{depth}")
        return K

    def budget(self, visual_len: int) -> int:
        return llm_budget(visual_len, self.ratio, self.rounding)


@dataclass(frozen=True)
class FastV(Method):
    """FastV: no vision-side compression; at decoder layer ``K`` (default 2, the paper's) keep
    ``round(keep * Lv)`` visual tokens (``keep`` = 1 - R; the paper's default R = 50 %) by the last query's
    attention at layer ``K - 1``, the "inplace" variant: layers >= K run on the survivors, which keep their
    positions. ``tokens.visual_after`` is every visual token; ``tokens.visual_by_layer`` shows the cut.
    """

    name = "fastv"
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
