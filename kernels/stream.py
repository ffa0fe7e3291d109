"""Streaming state of a method: what it carries from one chunk of frames to the next (see ``Method.stream_start``).

A clip arrives ``[t, N, D]`` a chunk at a time, in frame order. The default protocol (per-frame methods) keeps each
chunk's own :class:`~.types.Compressed` and joins them with :func:`merge_chunks`; a method whose choice spans frames
keeps its own state in ``ChunkState.carry`` (EVS: the previous frame and a running top-budget). Pure data over
torch tensors: no method imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import MethodError
from .types import Compressed, Grid


@dataclass
class ChunkState:
    """What a streamed compression holds between chunks.

    ``H, W``: every chunk's frame grid; ``total``: the clip's frame count when known before the first chunk (None:
    unknown; a method that needs it refuses); ``frames``: frames seen so far; ``chunks``: chunks seen so far;
    ``parts``: ``[(first frame, Compressed on that chunk's grid)]`` of the default protocol; ``carry``: the
    method's own state.
    """

    H: int
    W: int
    total: int | None = None
    frames: int = 0
    chunks: int = 0
    parts: list[tuple[int, Compressed]] = field(default_factory=list)
    carry: dict[str, Any] = field(default_factory=dict)

    @property
    def N(self) -> int:
        return self.H * self.W

    def grid(self) -> Grid:
        """The grid of every frame seen so far: ``Grid(frames, H, W)``."""
        return Grid(self.frames, self.H, self.W)


def per_frame_counts(index: Tensor, grid: Grid) -> list[int]:
    """How many output tokens each frame holds (by representative): ``index [K]`` global -> ``grid.T`` counts."""
    return torch.bincount(index // grid.N, minlength=grid.T).tolist()


def merge_chunks(parts: list[tuple[int, Compressed]], grid: Grid) -> Compressed:
    """Per-chunk outputs ``[(first frame, Compressed on that chunk's grid)]`` -> one Compressed on ``grid``.

    Indices (``index``, ``sources``, ``placed``) move by the chunk's first frame times ``grid.N``; ``offsets``
    by the sources before it; ``tokens`` and ``weights`` concatenate. Stats are recomputed for the whole grid
    (``tokens_in``, ``tokens_out``, ``per_frame``, ``streamed_chunks``). Raises MethodError for no parts, or when
    some chunks state their merge weights and others do not.
    """
    if not parts:
        raise MethodError("no chunk was compressed: nothing to merge")
    N = grid.N
    tokens, index, sources, offsets, weights, placed = [], [], [], [], [], []
    shift = 0
    for first, out in parts:
        base = first * N
        tokens.append(out.tokens)
        index.append(out.index + base)
        sources.append(out.sources + base)
        offsets.append(out.offsets[:-1] + shift)
        shift += int(out.sources.numel())
        weights.append(out.weights)
        placed.append(None if out.placed is None else out.placed + base)
    last = torch.tensor([shift], dtype=parts[-1][1].offsets.dtype, device=parts[-1][1].offsets.device)
    has_w = [w is not None for w in weights]
    if any(has_w) and not all(has_w):
        raise MethodError("the chunks of this method stated their merges differently; it cannot stream")
    has_p = [p is not None for p in placed]
    merged = Compressed(
        torch.cat(tokens), torch.cat(index), torch.cat(sources), torch.cat([*offsets, last]), grid,
        weights=torch.cat(weights) if all(has_w) else None,
        placed=torch.cat([p if p is not None else i for p, i in zip(placed, index)]) if any(has_p) else None,
    )
    merged.stats = {"tokens_in": grid.T * N, "tokens_out": int(merged.tokens.shape[0]),
                    "per_frame": per_frame_counts(merged.index, grid), "streamed_chunks": len(parts)}
    return merged
