"""``vidcom2``: VidCom2, per-frame budgets by frame uniqueness, then each frame's most distinctive tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Method
from .types import Compressed, Grid

TEMPERATURE = 0.01  # softmax temperature of the frame budgets
ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)  # Gaussian scales: G(z) = sum_a exp(-z / (2a)), added in this order


def gaussian_similarity(sq_dist: Tensor) -> Tensor:
    """``G(z) = sum_a exp(-z / (2a))`` over ``ALPHAS``, elementwise on squared distances ``z``."""
    total = torch.exp(-sq_dist / (2 * ALPHAS[0]))
    for a in ALPHAS[1:]:
        total = total + torch.exp(-sq_dist / (2 * a))
    return total


def vidcom2_scores(feats: Tensor) -> dict[str, Tensor]:
    """Float32 ``feats [T, N, D]`` -> the scores of ALGORITHMS.md §11.2 (smaller ``token_score`` = kept first).

    ``channels [D//2]`` (lowest population variance first, ties to the lower channel), ``video_score``,
    ``frame_score``, ``token_score`` ``[T, N]`` (similarity to the clip centre, to the frame centre, their sum) and
    ``frame_uniqueness [T]`` (minus the frame's mean ``video_score``).
    """
    T, N, D = feats.shape
    flat = feats.reshape(T * N, D)
    variance = flat.var(dim=0, unbiased=False)  # [D]
    channels = torch.sort(variance, stable=True).indices[: max(1, int(D * 0.5))]
    y = F.normalize(flat[:, channels], dim=-1, eps=1e-12).view(T, N, -1)  # [T, N, C]
    video = gaussian_similarity((y - y.mean(dim=(0, 1))).pow(2).sum(-1))  # [T, N]
    frame = gaussian_similarity((y - y.mean(dim=1, keepdim=True)).pow(2).sum(-1))  # [T, N]
    return {
        "channels": channels, "channel_variance": variance, "video_score": video, "frame_score": frame,
        "token_score": video + frame, "frame_uniqueness": -video.mean(dim=1),
    }


def frame_budgets(uniqueness: Tensor, ratio: float, N: int) -> tuple[Tensor, Tensor, Tensor]:
    """``uniqueness [T]`` -> ``(probs, scales, budgets)`` [T]: ``k_f = max(1, round(min(1, r(1 + p_f - mean p)) * N))``.

    Float32 throughout, ``torch.round`` (half to even) of the float32 product, as the authors' ``compute_scales``.
    """
    probs = torch.softmax((uniqueness - uniqueness.max()) / TEMPERATURE, dim=0)
    scales = (ratio * (1 + probs - probs.mean())).clamp(max=1.0)
    budgets = torch.round(scales * N).long().clamp(min=1)
    return probs, scales, budgets


def select_per_frame(score: Tensor, budgets: Tensor) -> Tensor:
    """``score [T, N]``, ``budgets [T]`` -> keep mask ``[T, N]``: each frame's ``k_f`` smallest (ties: lower index)."""
    T, N = score.shape
    rank = torch.empty_like(score, dtype=torch.long)
    order = torch.sort(score, dim=1, stable=True).indices
    rank.scatter_(1, order, torch.arange(N, device=score.device).expand(T, -1))
    return rank < budgets[:, None]


def reconcile(mask: Tensor, score: Tensor, target: int) -> Tensor:
    """vLLM's exact count: drop the kept tokens with the largest score (ties: higher flat index first), or add the
    unkept ones with the smallest (ties: lower flat index first), anywhere in the clip, until ``target`` remain."""
    flat, s = mask.flatten().clone(), score.flatten()
    delta = int(flat.sum()) - target
    if delta > 0:
        kept = flat.nonzero()[:, 0].flip(0)  # descending index, so a stable sort leaves ties high-index first
        flat[kept[torch.sort(s[kept], descending=True, stable=True).indices[:delta]]] = False
    elif delta < 0:
        free = (~flat).nonzero()[:, 0]
        flat[free[torch.sort(s[free], stable=True).indices[:-delta]]] = True
    return flat.view_as(mask)


def vllm_target(keep: float, T: int, N: int) -> int:
    """vLLM's count ``max(T, min(int(T*N*(1 - q)), T*N))`` with ``q = 1 - keep`` (Python floats, truncated)."""
    q = 1.0 - keep
    return max(T, min(int(T * N * (1.0 - q)), T * N))


@dataclass(frozen=True)
class VidCom2(Method):
    """VidCom2 (Liu et al., "Video Compression Commander", EMNLP 2025; code: xuyang-liu16/VidCom2).

    On the clip's ``D/2`` lowest-variance channels, unit-normalised, each token gets a multi-scale Gaussian
    similarity to the clip centre and to its frame's centre; frames far from the clip centre get a larger share
    of the budget (softmax at temperature 0.01, scale ``keep * (1 + p_f - mean p)``), and each frame keeps its
    least typical tokens, unchanged, in position order. Default = the authors' algorithm with ``keep`` as
    ``R_RATIO``: K is data dependent (about ``keep*T*N``). ``exact_count`` = the vLLM port (PR #47750): the
    pruning rate is ``q = 1 - keep`` and a global reconcile step makes K exactly ``vllm_target``. Equal scores go
    to the lower index (the reference leaves them to ``torch.topk``). ``keep = 1`` keeps every token (vidq's
    contract; the authors' code at ``R_RATIO = 1`` still drops ~7% through the clamp of the frame scales).
    """

    name = "vidcom2"
    granularity = "data dependent, in steps of up to the frame count (searched per clip); exact_count=true: any count"

    exact_count: bool = False

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None) -> Compressed:
        T, N, _ = feats.shape
        s = vidcom2_scores(feats)
        ratio = 1.0 - (1.0 - self.keep) if self.exact_count else self.keep  # vLLM's base scale 1 - q
        _, scales, budgets = frame_budgets(s["frame_uniqueness"], ratio, N)
        mask = select_per_frame(s["token_score"], budgets)
        stats = {"frame_budgets": budgets.tolist()}
        if self.exact_count:
            target = vllm_target(self.keep, T, N)
            mask = reconcile(mask, s["token_score"], target)
            stats["reconcile_delta"] = int(budgets.sum()) - target
        return Compressed.kept(feats, mask.flatten().nonzero()[:, 0], grid, stats)

    def tokens_for(self, grid: Grid) -> int | None:
        if self.keep >= 1.0:
            return grid.T * grid.N
        return vllm_target(self.keep, grid.T, grid.N) if self.exact_count else None
