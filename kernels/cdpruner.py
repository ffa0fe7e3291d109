"""``cdpruner``: instruction-conditioned DPP selection per frame (CDPruner).

Source: Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in
MLLMs" (NeurIPS 2025); code ``Theia-4869/CDPruner`` @ ``9541616``, ``llava/model/llava_arch.py::encode_images``
L140-185; greedy MAP inference after Chen et al., "Fast Greedy MAP Inference for DPP" (NeurIPS 2018).
ALGORITHMS.md section 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops
from .base import Method
from .errors import MethodError
from .types import Compressed, Grid


def cdpruner_budget(keep: float, N: int) -> int:
    """Tokens kept per frame: ``round(keep * N)`` (Python round, half to even), at least 1."""
    return max(1, min(N, round(keep * N)))


def relevance(image_embeds: Tensor, text_embeds: Tensor, theta: float | None = None) -> Tensor:
    """Each visual token's relevance to the instruction: ``[B, N, De]``, ``[M, De]`` -> ``[B, N]`` float32.

    ``mean_m(-cos(image, text_m))`` (the official code's minus sign), then min-max normalised over the whole
    ``[B, N]`` tensor as ``(rel - min + 1e-6) / (max - min)``; with ``theta`` re-weighted by
    ``exp(theta / (2 (1 - theta)) * rel)`` (the form commented out in the official code).
    """
    img = ops.normalize(image_embeds.float())
    txt = ops.normalize(text_embeds.float())
    rel = -(img @ txt.T).mean(-1)  # [B, N]
    low, high = rel.min(), rel.max()
    rel = (rel - low + 1e-6) / (high - low)
    if theta is not None:
        rel = torch.exp(theta / (2 * (1 - theta)) * rel)
    return rel


def conditional_dpp(feats: Tensor, rel: Tensor, k: int) -> Tensor:
    """Greedy MAP of the DPP with kernel ``diag(rel) S diag(rel)``, ``S`` the tokens' cosine similarity.

    ``feats [B, N, D]``, ``rel [B, N]`` float32 -> picks ``[B, k]`` in greedy order (argmax ties to the lowest
    index), all distinct. Float32 throughout, the reference's arithmetic while the picked token's gain is positive.
    The reference has no epsilon: with ``k`` above the rank of ``S`` (at most ``D``; never with real model widths)
    its gains turn NaN and it repeats tokens. Here a pick whose gain is not positive adds nothing to the basis, and
    picks stay distinct: the rest follow the leftover gains (numerical noise, deterministic).
    """
    B, N, _ = feats.shape
    if not 0 < k <= N:
        raise ValueError(f"cannot pick {k} of {N} tokens")
    xn = ops.normalize(feats.float())
    kernel = rel[:, :, None] * (xn @ xn.transpose(1, 2)) * rel[:, None, :]  # [B, N, N]
    gain = torch.diagonal(kernel, dim1=1, dim2=2).clone()  # [B, N]
    basis = torch.zeros(B, k, N, dtype=kernel.dtype, device=kernel.device)
    rows = torch.arange(B, device=kernel.device)
    picks = torch.empty(B, k, dtype=torch.long, device=kernel.device)
    picked = torch.zeros(B, N, dtype=torch.bool, device=kernel.device)
    for i in range(k):
        score = torch.nan_to_num(gain, nan=0.0).masked_fill(picked, float("-inf"))
        j = score.argmax(-1)  # [B]
        picks[:, i] = j
        picked[rows, j] = True
        top = gain[rows, j]
        ok = top > 0  # [B]
        proj = torch.bmm(basis[rows, :i, j][:, None, :], basis[:, :i, :])[:, 0]  # [B, N]
        e = (kernel[rows, j] - proj) / torch.sqrt(torch.where(ok, top, 1.0))[:, None]
        e = torch.where(ok[:, None], e, 0.0)
        basis[:, i] = e
        gain = gain - e * e
    return picks


@dataclass(frozen=True)
class CDPruner(Method):
    """CDPruner: per frame keep ``round(keep * N)`` tokens by conditional-DPP greedy MAP.

    The kernel is the tokens' cosine similarity scaled by each token's relevance to the question. vidq's
    decision for video models (neither has a CLIP text tower wired to its tokens): the relevance compares the
    post-projector visual tokens with the LLM's own input embeddings of the question's tokens (the OpenVINO port's
    choice), normalised over the whole clip as the official code does. ``theta`` (None = official path) applies
    the ``exp(theta / (2 (1 - theta)) * rel)`` re-weighting. Kept tokens stay as they are, sorted by position.
    """

    name = "cdpruner"
    needs = frozenset({"question"})
    option_notes = {"theta": "None: no re-weighting (the official path)"}

    theta: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = self.theta is None or (isinstance(self.theta, (int, float)) and not isinstance(self.theta, bool)
                                    and 0.0 <= self.theta < 1.0)
        if not ok:
            raise MethodError(f"cdpruner.theta must be none or in [0, 1), got {self.theta!r}")

    def compress(
        self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None,
        question: Tensor | None = None,
    ) -> Compressed:
        assert question is not None
        if question.shape[-1] != feats.shape[-1]:
            raise MethodError(f"cdpruner: question embeddings have width {question.shape[-1]}, "
                              f"the visual tokens {feats.shape[-1]}")
        T, N, _ = feats.shape
        k = cdpruner_budget(self.keep, N)
        rel = relevance(feats, question, self.theta)  # [T, N]
        picks = conditional_dpp(feats, rel, k)  # [T, k]
        index = torch.sort((picks + torch.arange(T, device=feats.device)[:, None] * N).flatten()).values
        return Compressed.kept(feats, index, grid, {"selected_per_frame": k})
