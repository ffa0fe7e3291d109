"""``visionzip``: per frame, dominant tokens by attention plus contextual tokens merged on the key metric."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops
from .base import Method
from .errors import MethodError
from .types import Compressed, Grid


def visionzip_budget(keep: float, N: int, contextual: int | None = None) -> tuple[int, int]:
    """Per-frame ``(dominant, contextual)``: ``k = max(1, round(keep*N))`` split 6:1 (``contextual = k // 7``)."""
    k = max(1, round(keep * N))
    ctx = k // 7 if contextual is None else contextual
    if ctx > k:
        raise MethodError(f"visionzip.contextual={ctx} exceeds the {k} tokens per frame that keep={keep} leaves")
    return k - ctx, ctx


@dataclass(frozen=True)
class VisionZip(Method):
    """VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025).

    The SigLIP/video form (the DyToK port, yu-lin-li/DyToK): per frame keep the ``dominant`` tokens receiving the most attention, then
    split the rest into ``contextual`` evenly spaced targets and merge every other token into its most similar
    target by cosine of the key metric. A contextual token is ``target + mean(assigned)``, the official formula
    (not a mean); it takes the target's position and its sources are the target then the assigned tokens.
    Default order is by position; ``reference`` keeps the native per-frame [dominant ascending, contextual in
    target order] order.
    """

    name = "visionzip"
    stream_unit = "frame"
    needs = frozenset({"importance", "metric"})
    granularity = "a multiple of the frame count"
    option_notes = {"contextual": "per keep: k // 7 of the k = round(keep x N) tokens kept per frame"}

    contextual: int | None = None
    reference: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.contextual is not None and (isinstance(self.contextual, bool) or self.contextual < 0):
            raise MethodError(f"visionzip.contextual must be an integer >= 0 or None, got {self.contextual!r}")

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None) -> Compressed:
        assert importance is not None and metric is not None
        T, N, D = feats.shape
        dom, ctx = visionzip_budget(self.keep, N, self.contextual)
        dev = feats.device
        frame = torch.arange(T, device=dev)[:, None]

        dominant = torch.sort(ops.top_indices(importance, dom), dim=-1).values  # [T, dom]
        is_dom = torch.zeros(T, N, dtype=torch.bool, device=dev).scatter_(1, dominant, True)
        rest = torch.argsort(is_dom.to(torch.int8), dim=-1, stable=True)[:, : N - dom]  # [T, R] ascending
        R = N - dom
        step = max(1, R // ctx) if ctx else 1
        is_target = torch.zeros(R, dtype=torch.bool, device=dev)
        is_target[torch.arange(ctx, device=dev) * step] = True
        # With no contextual token (k < 7) the non-dominant tokens are simply dropped.
        targets, others = rest[:, is_target], rest[:, ~is_target] if ctx else rest[:, :0]  # [T, ctx], [T, O]

        keys = ops.normalize(metric)
        sim = keys[frame, others] @ keys[frame, targets].transpose(-1, -2)  # [T, O, ctx]
        assign = sim.argmax(-1) if ctx else others  # [T, O]
        spread = assign[..., None].expand(-1, -1, D)
        sums = torch.zeros(T, ctx, D, device=dev).scatter_add_(1, spread, feats[frame, others])
        counts = torch.zeros(T, ctx, device=dev).scatter_add_(1, assign, torch.ones_like(assign, dtype=feats.dtype))
        ctx_tokens = feats[frame, targets] + sums / counts.clamp_min(1)[..., None]

        # Source groups of contextual tokens: target first (listed before the others), members ascending.
        label = torch.cat([torch.arange(ctx, device=dev).expand(T, -1), assign], 1) + frame * ctx  # [T, R]
        members = torch.cat([targets, others], 1) + frame * N
        order = torch.argsort(label.flatten(), stable=True)
        ctx_sizes = torch.bincount(label.flatten(), minlength=T * ctx)

        tokens = torch.cat([feats[frame, dominant].reshape(-1, D), ctx_tokens.reshape(-1, D)])
        index = torch.cat([(dominant + frame * N).flatten(), (targets + frame * N).flatten()])
        sources = torch.cat([(dominant + frame * N).flatten(), members.flatten()[order]])
        sizes = torch.cat([torch.ones(T * dom, dtype=torch.long, device=dev), ctx_sizes])
        # Merge weights: a dominant token and a target count once, an assigned token 1 / its target's group size.
        share = (1.0 / counts.clamp_min(1)).gather(1, assign) if ctx else assign.new_zeros(assign.shape).float()
        member_w = torch.cat([torch.ones(T, ctx, device=dev), share], 1).flatten()[order]
        weights = torch.cat([torch.ones(T * dom, device=dev), member_w])
        # Native order: frame by frame, dominant block then contextual block (a stable sort by frame does it).
        native = torch.argsort(index // N, stable=True) if self.reference else None
        return ops.assemble(tokens, index, sources, sizes, grid, {"dominant": dom, "contextual": ctx}, native, weights)

    def tokens_for(self, grid: Grid) -> int:
        if self.keep >= 1.0 and not self.reference:
            return grid.T * grid.N
        return grid.T * sum(visionzip_budget(self.keep, grid.N, self.contextual))
