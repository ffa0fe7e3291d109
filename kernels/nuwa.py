"""``nuwa``: spatial cohesion pruning per frame (regions, benchmark tokens, pillars and collectors, aggregation by
similarity x proximity), then text-modulated pruning inside the LLM.

Source: Nüwa, "Mending the Spatial Integrity Torn by VLM Token Pruning" (ICLR 2026, arXiv 2602.02951) and its
official code ``Man-PaperRejected/Nuwa`` @ ``175b7d5`` (``nuwa/clip_encoder.py::prune_vision_tokens``), as described
in shared/ALGORITHMS.md §12; written from that text. The reference has no video path: vidq runs stage 1 on every
frame with the same budget (§12.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops
from .base import Method
from .errors import MethodError
from .traits import LLMPrune
from .types import Compressed, Grid

# Stage 2 of the LLaVA-1.5 code: scored at layer 15, pruned from layer 16 of 32; 16 of the 112 stage-1 tokens kept.
NUWA_LAYER_FRACTION = 16 / 32
NUWA_LLM_KEEP = 16 / 112


def region_count(K: int, n: int, H: int, W: int) -> tuple[int, int]:
    """(tokens per region, budget) after §12.1 step 1: ``n`` is raised to ``ceil(4K / (H*W))`` when the 2x2 cells
    cannot hold ``K``; at 4 every token is kept (``K = H*W``). ``H, W`` even."""
    if K > n * H * W / 4:
        n = math.ceil(4 * K / (H * W))
    if n >= 4:
        return 4, H * W
    return n, K


def spatial_cohesion(
    feats: Tensor, sim: Tensor, score: Tensor, H: int, W: int, K: int, distance: float, per_region: int,
    quantile: float, reset: bool = True, valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Nüwa stage 1 on every frame at once (the reference's ``prune_vision_tokens``, ALGORITHMS.md §12.1).

    ``feats [T, N, D]`` float32 (what is aggregated), ``sim [T, N, Ds]`` float32 (whose cosine weighs it),
    ``score [T, N]`` float32 salience (>= 0), on an ``H x W`` grid (even; ``N = H*W``, raster order), ``K`` benchmark
    tokens per frame, ``distance`` in grid cells, ``per_region`` candidates per 2x2 cell, pillar ``quantile``.
    ``reset``: overwrite each benchmark's own weight with 1 after normalising (the LLaVA path). ``valid [N]`` bool:
    cells that may be chosen (padding is False and never a candidate nor a source).

    Returns ``keep [T, K']`` (benchmarks ascending per frame), ``tokens [T, K', D]``, ``pillar [T, K']`` bool and
    ``weights [T, K', N]`` (``tokens = weights @ feats``), with ``K'`` the budget after :func:`region_count`.
    Ties in every top-k go to the lower index.
    """
    T, N, _ = feats.shape
    dev = feats.device
    n, K = region_count(K, per_region, H, W)
    if valid is not None:
        K = min(K, int(valid.sum()))
        score = score.masked_fill(~valid, float("-inf"))
    # Regions: 2x2 cells; local index l -> (2cy + l // 2, 2cx + l % 2). cells [C, 4] global raster indices.
    cy, cx = torch.meshgrid(torch.arange(H // 2, device=dev), torch.arange(W // 2, device=dev), indexing="ij")
    local = torch.arange(4, device=dev)
    cells = ((2 * cy.reshape(-1, 1) + local // 2) * W + 2 * cx.reshape(-1, 1) + local % 2)  # [C, 4]
    pick = ops.top_indices(score[:, cells], n)  # [T, C, n] local indices
    cand = torch.zeros(T, N, dtype=torch.bool, device=dev)
    cand.scatter_(1, cells[None].expand(T, -1, -1).gather(2, pick).reshape(T, -1), True)
    # Benchmarks: the K candidates of highest score (raster order breaks ties), then ascending.
    keep = torch.sort(ops.top_indices(score.masked_fill(~cand, float("-inf")), K), dim=-1).values  # [T, K]
    frame = torch.arange(T, device=dev)[:, None]
    # Weights of the benchmark rows only: ReLU(cos) x (1 - min(1, dist / d)).
    yn = ops.normalize(sim)
    affinity = torch.relu(yn[frame, keep] @ yn.transpose(-1, -2))  # [T, K, N]
    rc = torch.stack([torch.arange(N, device=dev) // W, torch.arange(N, device=dev) % W], -1).float()  # [N, 2]
    proximity = 1.0 - torch.clamp(torch.cdist(rc, rc) / distance, max=1.0)  # [N, N]
    weights = affinity * proximity[keep]  # [T, K, N]
    if valid is not None:
        weights = weights * valid
    kept_score = score.gather(1, keep)  # [T, K]
    threshold = torch.quantile(kept_score, quantile, dim=-1, keepdim=True)
    pillar = kept_score >= threshold
    own = F.one_hot(keep, N).bool()  # [T, K, N]
    weights = torch.where(pillar[..., None] & ~own, torch.zeros_like(weights), weights)
    weights = weights / (weights.sum(-1, keepdim=True) + 1e-8)
    if reset:
        weights = torch.where(own, torch.ones_like(weights), weights)
    tokens = weights @ feats  # [T, K, D]
    return keep, tokens, pillar, weights


@dataclass(frozen=True)
class Nuwa(Method):
    """Nüwa (ICLR 2026, arXiv 2602.02951; code ``Man-PaperRejected/Nuwa`` @ ``175b7d5``; ALGORITHMS.md §12).

    Stage 1, per frame with ``K = max(1, round(keep * N))`` (vidq's video reading, the reference is image only): the
    grid is cut into 2x2 regions, the ``region_tokens`` most salient of each are candidates (raised when the regions
    cannot hold ``K``), the ``K`` most salient candidates are the benchmark tokens. Benchmarks scoring at least the
    ``quantile`` of the benchmark scores are pillars (passed through unchanged); the others, collectors, absorb every
    token within ``distance`` x the grid diagonal, weighted by ``ReLU(cos)`` of the similarity features times
    ``1 - min(1, dist / d)``, normalised, with their own weight then reset to 1 (``reset``; a collector's weights then
    sum to ``2 - w_kk``, the code's quirk). Each output token sits at its benchmark's position (the code's "PESP");
    ``positions=rpme`` is vidq's own reading of the paper's RPME (:func:`rpme`; it changes M-RoPE positions on the
    Qwen families; LLaVA-OneVision's 1-D positions are contiguous in vidq whatever the method).

    Inputs: ``feats [T, N, D]`` (post-projector, the tokens aggregated), ``importance [T, N]`` (salience: mean
    attention received, which selects as the column sum does) and ``similarity [T, N, Ds]`` (mean vision hidden state
    over the tower's last third of layers, pooled/merged as the features; float32). Odd grids are padded to even with
    cells that are never chosen and never absorbed. Output: ``K`` tokens per frame, raster order, model dtype.

    Stage 2 (``llm_stage``, default on as published): before decoder layer ``pruning_layer`` (default
    ``round(16/32 * depth)``) keep ``round(llm_keep * Lv)`` visual tokens (default 1/7, the code's 16 of 112) through
    the shared in-LLM stage, ranked by the paper's rule: the cosine of each visual token's input embedding (the
    stage-1 token, in LLM space) with the mean input embedding of the question's tokens. ``reference=true`` ranks as
    the code does: the last query's attention at the layer before, mean over heads (LLaVA-1.5 code), or the last 3
    query rows, max over heads (Qwen code).

    ``reference=true``: the code's rules for the family (recipes): LLaVA-OneVision the LLaVA-1.5 path (q 0.55, reset,
    d 0.493 x diagonal, one token per region); Qwen families the Qwen path (q 0.10, no reset, d 0.8 x diagonal, three
    per region, stage 2 from the last 3 query rows, max over heads).
    """

    name = "nuwa"
    stream_unit = "frame"
    needs = frozenset({"importance", "similarity"})
    prunes_in_llm = True
    granularity = "a multiple of the frame count, with llm_stage=false (not with its in-LLM stage on, the default)"
    option_notes = {
        "pruning_layer": "per model: round(16/32 x its decoder layers), 16 on 32 layers",
        "quantile": "0.10 on Qwen families with reference=true",
        "distance": "x the grid diagonal; 0.8 on Qwen families with reference=true",
    }
    recipes = {family: {"family": "qwen"} for family in ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")}

    region_tokens: int | None = None
    distance: float | None = None
    quantile: float | None = None
    reset: bool | None = None
    reference: bool = False
    family: Literal["llava", "qwen"] = "llava"
    llm_stage: bool = True
    pruning_layer: int | None = None
    llm_keep: float = NUWA_LLM_KEEP
    positions: Literal["pesp", "rpme"] = "pesp"

    def __post_init__(self) -> None:
        super().__post_init__()
        qwen_ref = self.reference and self.family == "qwen"
        defaults = {"region_tokens": 3 if qwen_ref else 1, "distance": 0.8 if qwen_ref else 0.493,
                    "quantile": 0.10 if qwen_ref else 0.55, "reset": not qwen_ref}
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if self.positions not in ("pesp", "rpme"):
            raise MethodError(f"nuwa.positions must be pesp or rpme, got {self.positions!r}")
        if self.family not in ("llava", "qwen"):
            raise MethodError(f"nuwa.family must be llava or qwen, got {self.family!r}")
        if isinstance(self.region_tokens, bool) or not isinstance(self.region_tokens, int) or \
                not 1 <= self.region_tokens <= 4:
            raise MethodError(f"nuwa.region_tokens must be an integer in [1, 4], got {self.region_tokens!r}")
        _check("distance", self.distance, 0.0, math.inf)
        _check("quantile", self.quantile, 0.0, 1.0, closed=True)
        _check("llm_keep", self.llm_keep, 0.0, 1.0)
        layer = self.pruning_layer
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 1):
            raise MethodError(f"nuwa.pruning_layer must be an integer >= 1 or none, got {layer!r}")

    def budget(self, N: int) -> int:
        """Benchmark tokens per frame of ``N``: ``max(1, round(keep * N))`` before :func:`region_count`."""
        return min(N, max(1, round(self.keep * N)))

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None,
                 similarity: Tensor | None = None) -> Compressed:
        assert importance is not None and similarity is not None
        T, N, D = feats.shape
        dev = feats.device
        H2, W2 = grid.H + grid.H % 2, grid.W + grid.W % 2
        diagonal = math.hypot(grid.H, grid.W)
        x, y, s, valid = feats, similarity.float(), importance, None
        if (H2, W2) != (grid.H, grid.W):
            x, y, s = (_pad(t.reshape(T, grid.H, grid.W, -1), H2, W2) for t in (feats, y, importance[..., None]))
            s = s[..., 0]
            valid = _pad(torch.ones(1, grid.H, grid.W, 1, device=dev), H2, W2)[0, :, 0] > 0
        keep, tokens, pillar, weights = spatial_cohesion(
            x, y, s, H2, W2, self.budget(N), self.distance * diagonal, self.region_tokens, self.quantile,
            bool(self.reset), valid)
        if valid is not None:  # padded raster -> the clip's raster
            real = valid.nonzero()[:, 0]  # [N] padded index of each real cell, ascending
            keep = torch.searchsorted(real, keep)
            weights = weights[..., real]
        K = keep.shape[1]
        frame = torch.arange(T, device=dev)[:, None]
        index = (keep + frame * N).flatten()
        # Sources: the benchmark first, then every other token with a nonzero weight, ascending.
        own = F.one_hot(keep, N).bool()
        rank = torch.where(own, 0, torch.where(weights != 0, 1, 2)).to(torch.int8)  # [T, K, N]
        order = torch.argsort(rank, dim=-1, stable=True)
        counts = (rank < 2).sum(-1)  # [T, K], >= 1
        take = torch.arange(N, device=dev) < counts[..., None]
        sources = (order + (frame * N)[..., None])[take]
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts.flatten(), 0)])
        merge = weights.gather(2, order)[take]
        stats = {"budget": K, "region_tokens": region_count(self.budget(N), self.region_tokens, H2, W2)[0],
                 "pillars": int(pillar.sum()), "collectors": int((~pillar).sum()),
                 "distance_cells": round(self.distance * diagonal, 4)}
        placed = rpme(keep, grid) + frame * N if self.positions == "rpme" else None
        return Compressed(tokens.reshape(-1, D), index, sources, offsets, grid, stats, merge, placed.flatten()
                          if placed is not None else None)

    def tokens_for(self, grid: Grid) -> int:
        if self.keep >= 1.0 and not self.reference:
            return grid.T * grid.N
        H2, W2 = grid.H + grid.H % 2, grid.W + grid.W % 2
        return grid.T * min(grid.N, region_count(self.budget(grid.N), self.region_tokens, H2, W2)[1])

    def llm_prune(self) -> LLMPrune | None:
        if not self.llm_stage:
            return None
        qwen_ref = self.reference and self.family == "qwen"
        return LLMPrune(ratio=float(self.llm_keep), rounding="round", layer=self.pruning_layer,
                        layer_fraction=NUWA_LAYER_FRACTION, queries=3 if qwen_ref else 1,
                        heads="max" if qwen_ref else "mean", score="attention" if self.reference else "question")


def rpme(keep: Tensor, grid: Grid) -> Tensor:
    """vidq's reading of the paper's RPME (relative position mapping extension; its formula is not published):
    per frame, the distinct rows the kept tokens occupy, in rank order, are spread linearly over ``0..H-1``
    (``round(rank * (H-1) / (rows-1))``, half to even), and the columns likewise over ``0..W-1``; a frame whose
    tokens share one row (column) keeps it. ``keep [T, K]`` ascending raster indices -> ``[T, K]`` raster indices
    of the cells whose positions the tokens take (still ascending, distinct)."""
    out = torch.empty_like(keep)
    for f in range(keep.shape[0]):
        row, col = keep[f] // grid.W, keep[f] % grid.W
        out[f] = _stretch(row, grid.H) * grid.W + _stretch(col, grid.W)
    return out


def _stretch(coord: Tensor, size: int) -> Tensor:
    values, rank = torch.unique(coord, sorted=True, return_inverse=True)
    if values.numel() < 2:
        return coord
    return torch.round(rank.double() * (size - 1) / (values.numel() - 1)).long()


def _pad(x: Tensor, H: int, W: int) -> Tensor:
    """``[T, h, w, C]`` zero-padded at the bottom/right to ``[T, H*W, C]``."""
    return F.pad(x, (0, 0, 0, W - x.shape[2], 0, H - x.shape[1])).reshape(x.shape[0], H * W, -1)


def _check(key: str, value: object, low: float, high: float, closed: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and (low <= value if closed else low < value) and value <= high):  # type: ignore[operator]
        raise MethodError(f"nuwa.{key} must be in {'[' if closed else '('}{low}, {high}], got {value!r}")
