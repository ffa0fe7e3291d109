"""The plain data a compression method takes and returns: the clip's token :class:`Grid` and the :class:`Compressed`
result (tokens, their representatives, the groups they were made from and the merge weights).

Pure data over torch tensors: no method, no registry, nothing of this package imported (every other module may
import this one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Grid:
    """Token grid of a clip: T frames (temporal groups for Qwen2.5-VL) of H x W tokens."""

    T: int
    H: int
    W: int

    @property
    def N(self) -> int:
        return self.H * self.W

    def positions(self, index: Tensor) -> Tensor:
        """Global indices ``t*N + h*W + w`` [K] -> positions (t, h, w) [K, 3]."""
        t, n = index // self.N, index % self.N
        return torch.stack([t, n // self.W, n % self.W], dim=-1)


@dataclass
class Compressed:
    """What a method returns.

    ``tokens [K, D]`` in the input dtype, ordered by ``index`` (temporal-then-raster) unless a reference mode
    says otherwise. ``index [K]`` is each token's representative global index ``t*N + n``; the token takes that
    token's position. Token k was made from ``sources[offsets[k]:offsets[k+1]]`` (representative first): one
    index for a kept token, a group for a merged one.

    ``weights [M]`` (float32, optional) state the merge: ``tokens[k] = sum_j weights[j] * feats[sources[j]]`` over
    token k's group, exactly the arithmetic the method did up to rounding. Methods that merge fill it; None means
    every token stands for its representative (kept tokens, or a method that does not state its merge).
    :meth:`carry` applies the same merge to other per-token features (Qwen3-VL's DeepStack features).

    ``placed [K]`` (optional) is the global index whose position each token takes when that is not its
    representative's (Nüwa's ``positions=rpme``); None: each token sits at ``index`` (see :attr:`placement`).
    """

    tokens: Tensor  # [K, D]
    index: Tensor  # [K] long
    sources: Tensor  # [M] long
    offsets: Tensor  # [K+1] long
    grid: Grid
    stats: dict[str, Any] = field(default_factory=dict)
    weights: Tensor | None = None  # [M] float32
    placed: Tensor | None = None  # [K] long

    @property
    def placement(self) -> Tensor:
        """Global index ``t*N + h*W + w`` [K] whose position (LLM position ids) each token takes, ascending."""
        return self.index if self.placed is None else self.placed

    def carry(self, x: Tensor) -> Tensor:
        """Per-token features ``x [T, N, D']`` (or ``[T*N, D']``) -> ``[K, D']`` that follow this compression.

        With ``weights``: each output row is the same weighted merge of its sources' rows as the method made of
        the main features (accumulated in float32, returned in ``x.dtype``; a kept token, weight 1 alone in its
        group, gets its own row exactly). Without: each output row is its representative's row.
        """
        flat = x.reshape(-1, x.shape[-1])
        if self.weights is None:
            return flat[self.index.to(flat.device)]
        sizes = torch.diff(self.offsets).to(flat.device)
        owner = torch.repeat_interleave(torch.arange(sizes.numel(), device=flat.device), sizes)  # [M]
        rows = flat[self.sources.to(flat.device)].float() * self.weights.to(flat.device)[:, None]
        out = torch.zeros(sizes.numel(), flat.shape[-1], dtype=torch.float32, device=flat.device)
        return out.index_add_(0, owner, rows).to(x.dtype)

    @property
    def positions(self) -> Tensor:
        """(t, h, w) of each output token's representative, [K, 3]."""
        return self.grid.positions(self.index)

    def groups(self) -> list[Tensor]:
        """Source indices of each output token (a Python list; for tests and reports, not hot paths)."""
        return list(torch.split(self.sources, torch.diff(self.offsets).tolist()))

    @staticmethod
    def kept(feats: Tensor, index: Tensor, grid: Grid, stats: dict[str, Any] | None = None) -> Compressed:
        """Output made of tokens kept as they are: ``feats [T, N, D]`` gathered at global ``index [K]``."""
        index = index.to(torch.long)
        tokens = feats.reshape(-1, feats.shape[-1])[index]
        offsets = torch.arange(index.numel() + 1, device=index.device)
        return Compressed(tokens, index, index.clone(), offsets, grid, dict(stats or {}))

