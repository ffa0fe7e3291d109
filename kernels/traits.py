"""What a compression method may hand on beyond its tokens: :class:`LLMPrune`, the description of an in-LLM pruning
stage (FastV; FlashVID's inner stage) and its budget rule, and :class:`DecodeSparsity`, a per-question selection of
the cached visual keys that decoding reads (SparseVILA).

Plain data and arithmetic, no torch: a method returns one from :meth:`~.base.Method.llm_prune`, and the stage itself
runs on the stock transformers decoder in ``pipelines/llm_prune.py``. Sources: FastV (Chen et al., ECCV 2024) and
FlashVID's ``utils.py::fastv_prune``; ALGORITHMS.md 2.9 and 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .errors import MethodError

# FlashVID prunes before layer 20 of the 28 of Qwen2-7B; vidq scales that with depth (ALGORITHMS.md 2.9).
FLASHVID_LAYER_FRACTION = 20 / 28


def llm_budget(visual_len: int, ratio: float, rounding: Literal["ceil", "round"]) -> int:
    """Visual tokens kept out of ``visual_len``: FlashVID ``ceil(len*ratio)``, FastV ``round(len*ratio)`` (Python
    round, half to even; FastV writes ``ratio = 1 - R``), at least 1 when there is any visual token."""
    if visual_len <= 0:
        return 0
    count = math.ceil(visual_len * ratio) if rounding == "ceil" else round(visual_len * ratio)
    return min(visual_len, max(1, count))


@dataclass(frozen=True)
class LLMPrune:
    """An in-LLM pruning stage: before decoder layer ``K`` keep the ``budget`` visual tokens the last query attends
    to most at layer ``K - 1`` (mean over heads), and all text. Survivors keep their positions.

    ``layer``: K as an absolute index; None scales ``layer_fraction * depth`` (rounded) to the model.
    ``ratio`` and ``rounding``: the share of the visual tokens kept (:func:`llm_budget`).
    ``queries`` and ``heads``: the score is the attention of the last ``queries`` prompt positions (each row causal),
    averaged over those rows, then reduced over heads by ``heads`` (FastV/FlashVID: 1 and "mean"; Nüwa's Qwen code:
    3 and "max", ALGORITHMS.md §12.3). ``score="question"`` ranks the visual tokens instead by the cosine of their
    input embeddings with the mean input embedding of the question's tokens (Nüwa's paper rule, §12.3); the
    survivors still leave before layer ``K``.
    """

    ratio: float
    rounding: Literal["ceil", "round"] = "ceil"
    layer: int | None = None
    layer_fraction: float = FLASHVID_LAYER_FRACTION
    queries: int = 1
    heads: Literal["mean", "max"] = "mean"
    score: Literal["attention", "question"] = "attention"

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
class DecodeSparsity:
    """Decoding over a compact KV cache (SparseVILA, ALGORITHMS.md §13.2-3): after the question's prefill, each LLM
    layer keeps ``sinks`` visual attention sinks (the same for every layer) and the ``budget`` other visual tokens
    the question's tokens attend to most in that layer; every non-visual token stays. The answer's later tokens
    decode over those entries only; the full cache is left as it was for the next question.

    ``keep``: the share of the visual tokens, in (0, 1]; ``sinks`` >= 0. Run by ``pipelines/sparse_decode.py``.
    """

    keep: float
    sinks: int = 4

    def budget(self, visual_len: int) -> tuple[int, int]:
        """(sinks, other visual tokens) each layer keeps of ``visual_len``: ``min(sinks, visual_len)`` sinks and
        ``round(keep * visual_len)`` others (at least 1 when any is left), never more than ``visual_len`` in all."""
        sinks = min(self.sinks, visual_len)
        rest = visual_len - sinks
        return sinks, min(rest, max(1 if rest else 0, round(self.keep * visual_len)))
