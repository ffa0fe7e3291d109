"""``evs``: Efficient Video Sampling as vLLM ships it: drop the tokens that changed least since the previous frame."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Method, check_finished, cpu_threads, per_frame_counts
from .errors import MethodError
from .stream import ChunkState
from .types import Compressed, Grid

FIRST_FRAME = 255.0  # vLLM's sentinel dissimilarity of frame 0: above any 1 - cos (at most 2), so it is always kept


def evs_budget(keep: float, T: int, N: int) -> int:
    """Tokens kept of a ``T x N`` clip: ``max(N, int(T*N*(1 - q)))`` with vLLM's pruning rate ``q = 1 - keep``.

    Python floats, left to right, truncated toward zero exactly as vLLM's ``compute_retained_tokens_count``: a
    count that is an integer in exact arithmetic can lose one (T*N = 600, keep 0.2 -> 119). Never fewer than one
    frame's N tokens.
    """
    q = 1.0 - keep
    return max(N, int(T * N * (1.0 - q)))


def dissimilarity(feats: Tensor) -> Tensor:
    """``feats [T, N, D]`` -> ``[T, N]``: row 0 the sentinel 255, row t >= 1 ``1 - cos(x[t, n], x[t-1, n])``.

    ``F.cosine_similarity`` normalises each vector on its own and multiplies elementwise, so it is symmetric to
    the bit: identical (or swapped) token pairs give identical values, which is what makes EVS's ties exact.
    """
    d = torch.full(feats.shape[:2], FIRST_FRAME, dtype=feats.dtype, device=feats.device)
    if feats.shape[0] > 1:
        d[1:] = 1.0 - F.cosine_similarity(feats[1:], feats[:-1], dim=-1)
    return d


def evs_order(feats: Tensor) -> Tensor:
    """Global indices ``t*N + n`` [T*N] by descending dissimilarity, equal values in ascending index (stable)."""
    return torch.sort(dissimilarity(feats).flatten(), descending=True, stable=True).indices


@dataclass(frozen=True)
class EVS(Method):
    """EVS (NVIDIA, "Efficient Video Sampling", arXiv:2510.14624) as shipped in vLLM (``video_prune/evs.py``).

    Each token is scored by ``1 - cos`` with the token at the same grid cell one frame earlier; frame 0 always
    wins. The ``evs_budget`` tokens with the highest scores over the whole clip are kept as they are (no merging,
    no per-frame quota: a static frame can lose every token), in position order. On Qwen2.5-VL a frame is a
    temporal group and every kept token keeps its unpruned M-RoPE ``(t, h, w)`` (the pipeline gathers the full
    sequence's positions), without vLLM's integer cast of seconds per group or its text restart (ALGORITHMS.md
    §10). K is exact and data independent.
    """

    name = "evs"
    granularity = "any count from one frame's tokens up (frame 0 is always kept)"
    stream_unit = "frame pair"  # streams exactly: the previous frame and a running top-budget cross chunks

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None) -> Compressed:
        K = evs_budget(self.keep, grid.T, grid.N)
        index = torch.sort(evs_order(feats)[:K]).values
        return Compressed.kept(feats, index, grid, {"retained": K})

    def tokens_for(self, grid: Grid) -> int:
        return grid.T * grid.N if self.keep >= 1.0 else evs_budget(self.keep, grid.T, grid.N)

    def stream_start(self, grid_hw: tuple[int, int], total_frames: int | None = None) -> ChunkState:
        """As :meth:`Method.stream_start`; the budget is the whole clip's, so ``total_frames`` is required below
        keep 1 (MethodError without it)."""
        state = super().stream_start(grid_hw, total_frames)
        if self.keep < 1.0:
            if state.total is None or state.total < 1:
                raise MethodError("evs streams only when the clip's frame count is known before its first chunk "
                                  "(its budget is a share of the whole clip)")
            state.carry["budget"] = evs_budget(self.keep, state.total, state.N)
        return state

    def stream_chunk(self, state: ChunkState, feats: Tensor, grid: Grid, importance: Tensor | None = None,
                     metric: Tensor | None = None, **extra: Tensor) -> None:
        """Score the chunk ``feats [t, N, D]`` against the frame before it (carried from the last chunk) and keep
        the ``evs_budget`` best of everything seen so far: ``[K]`` scores, global indices and tokens in the input
        dtype, so memory is the budget plus one chunk. Equal scores rank by ascending index, as the whole clip's
        stable sort does (the kept set is in index order and every new index is above it)."""
        if self.keep >= 1.0:
            return super().stream_chunk(state, feats, grid, importance, metric, **extra)
        if feats.ndim != 3 or feats.shape[:2] != (grid.T, grid.N) or (grid.H, grid.W) != (state.H, state.W):
            raise MethodError(f"a chunk's feats must be [t, N, D] with N = {state.N}, got {tuple(feats.shape)}")
        c = state.carry
        with cpu_threads(1 if feats.device.type == "cpu" else None):
            x = feats.float()
            prev = c.get("prev")
            score = dissimilarity(x if prev is None else torch.cat([prev, x]))  # [(1 +) t, N]
            score = (score if prev is None else score[1:]).flatten()
            index = torch.arange(grid.T * grid.N, device=feats.device) + state.frames * state.N
            tokens = feats.reshape(-1, feats.shape[-1])
            if "score" in c:  # kept so far (ascending index) before this chunk (ascending index)
                score, index, tokens = (torch.cat([c[k], v]) for k, v in
                                        (("score", score), ("index", index), ("tokens", tokens)))
            best = torch.sort(score, descending=True, stable=True).indices[: c["budget"]]
            best = torch.sort(best).values  # back to index order
            c.update(score=score[best], index=index[best], tokens=tokens[best], prev=x[-1:].clone())
        state.frames += grid.T
        state.chunks += 1

    def stream_finish(self, state: ChunkState) -> Compressed:
        """The whole clip's EVS output, bit for bit: the kept tokens in position order (stats as ``__call__``'s)."""
        if self.keep >= 1.0:
            return super().stream_finish(state)
        check_finished(state)
        c, grid = state.carry, state.grid()
        index = c["index"]
        out = Compressed(c["tokens"], index, index.clone(), torch.arange(index.numel() + 1, device=index.device),
                         grid)
        out.stats = {"tokens_in": grid.T * grid.N, "tokens_out": int(index.numel()),
                     "per_frame": per_frame_counts(index, grid), "retained": c["budget"],
                     "streamed_chunks": state.chunks}
        return out
