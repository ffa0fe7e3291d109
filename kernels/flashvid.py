"""``flashvid``: DySeg -> ADTS -> TSTM -> DPC-kNN of tree roots -> tokens sorted by position."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from . import ops
from .base import Method, check_finished
from .errors import MethodError
from .stream import ChunkState, merge_chunks
from .traits import LLMPrune
from .types import Compressed, Grid


def flashvid_budget(N: int, keep: float, expansion: float, alpha: float) -> tuple[int, int, int]:
    """Per-frame ``(B, A, S)``: ``B = ceil(N*keep*e)``, ``A = ceil(B*alpha)`` ADTS tokens (at most N), ``S = B - A``.

    Evaluated in IEEE double, left to right, exactly as the reference (``N*keep*e`` can land a hair above an
    integer, and ceil then adds one: that is the reference's budget).
    """
    B = math.ceil(N * keep * expansion)
    A = min(math.ceil(B * alpha), N)
    return B, A, B - A


@dataclass(frozen=True)
class FlashVID(Method):
    """FlashVID (Fan et al., ICLR 2026, arXiv:2602.08024; code: Fanziyang-v/FlashVID), vision-side stage.

    DySeg splits the clip into segments; per frame ADTS keeps ``A`` tokens by attention-calibrated diversity;
    the other tokens form TSTM redundancy trees across consecutive frames of a segment (each tree becomes one
    token at its root's position); DPC-kNN then clusters each frame's tree tokens down to about ``S`` per frame.
    K is data dependent: ``A*T`` ADTS tokens plus, per segment of ``T_s`` frames, ``sum_f ceil(R_f * S*T_s / R)``
    merged ones (between ``S*T`` and ``(S+1)*T`` overall; fewer only when there are fewer trees than that).

    Default mode (vidq's decisions): ``e = 1.0``, each tree is its true mean, single-frame segments cluster their
    candidate tokens only (no duplicate positions). ``reference=True`` reproduces the official outputs: ``e = 1.25``,
    tree sum divided by 1 + direct children, ADTS tokens also clustered in single-frame segments (duplicates),
    and with ``S = 0`` every tree is emitted unmerged. Clustering is deterministic in both modes.

    The published pipeline also prunes inside the LLM (ALGORITHMS.md 2.9): before decoder layer ``pruning_layer``
    (default: 20 of 28 scaled to the model's depth, ``round(20/28 * depth)``) keep ``ceil(llm_retention_ratio * Lv)``
    visual tokens by the last query's attention. ``llm_stage`` turns it on (None: on exactly when ``reference``);
    with the stage on the vision side over-provisions by ``e = 1.25`` unless ``expansion`` is given, so that ``keep``
    is the average visual share over the layers of a 28-layer model. The default (vision side only, ``e = 1.0``)
    does not depend on the question.

    Streamed (``--stream``, :meth:`stream_chunk`): each window of ``stream_window`` frames is compressed as a clip of
    its own, with its share of ``min_segment_num``; a clip of at most ``stream_window`` frames gives the whole-clip
    output exactly (docs/STREAMING.md, "FlashVID streamed").
    """

    name = "flashvid"
    granularity = "data dependent, about ceil(keep*N) per frame (searched per clip)"
    needs = frozenset({"importance"})
    prunes_in_llm = True
    stream_unit = "segment window"  # streamed: DySeg per window of stream_window frames (docs/STREAMING.md)
    stream_note = "exact up to stream_window frames, then DySeg per window (approximate)"
    option_notes = {
        "expansion": "1.25 when llm_stage is on",
        "llm_stage": "on when reference=true",
        "pruning_layer": "per model: round(20/28 x its decoder layers), 20 on 28 layers",
        "stream_window": "--stream only: frames per DySeg window (a clip this long or shorter streams exactly)",
    }
    recipes = {
        "llava_onevision": {"token_selection_method": "attn_div_v2", "min_segment_num": 8},
        "qwen2_5_vl": {"token_selection_method": "attn_div", "min_segment_num": 4},
        "qwen3_vl": {"token_selection_method": "attn_div", "min_segment_num": 4},
        "qwen3_vl_moe": {"token_selection_method": "attn_div", "min_segment_num": 4},
    }

    token_selection_method: Literal["attn_div", "attn_div_v2"] = "attn_div_v2"
    alpha: float = 0.7
    expansion: float | None = None
    do_segment: bool = True
    segment_threshold: float = 0.9
    min_segment_num: int = 8
    complementary_segment: bool = True
    temporal_threshold: float = 0.8
    knn: int = 7
    reference: bool = False
    llm_stage: bool | None = None
    pruning_layer: int | None = None
    llm_retention_ratio: float = 0.3
    stream_window: int = 32

    def stream_frames_held(self, chunk: int) -> int:
        """Chunks are held until a window of ``stream_window`` frames is full: at most ``stream_window + chunk - 1``."""
        return self.stream_window + chunk - 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.llm_stage is None:
            object.__setattr__(self, "llm_stage", bool(self.reference))
        if self.token_selection_method not in ("attn_div", "attn_div_v2"):
            got = self.token_selection_method
            raise MethodError(f"flashvid.token_selection_method must be attn_div or attn_div_v2, got {got!r}")
        if self.expansion is None:
            object.__setattr__(self, "expansion", 1.25 if self.llm_stage else 1.0)
        _check_range("alpha", self.alpha, 0.0, 1.0, low_open=True)
        _check_range("expansion", self.expansion, 0.0, 2.0, low_open=True)
        _check_range("segment_threshold", self.segment_threshold, -1.0, 1.0)
        _check_range("temporal_threshold", self.temporal_threshold, -1.0, 1.0)
        _check_range("llm_retention_ratio", self.llm_retention_ratio, 0.0, 1.0, low_open=True)
        layer = self.pruning_layer
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 1):
            raise MethodError(f"flashvid.pruning_layer must be an integer >= 1 or none, got {layer!r}")
        for key in ("min_segment_num", "knn", "stream_window"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MethodError(f"flashvid.{key} must be an integer >= 1, got {value!r}")

    def compress(self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None) -> Compressed:
        assert importance is not None
        T, N, D = feats.shape
        dev = feats.device
        B, A, S = flashvid_budget(N, self.keep, self.expansion, self.alpha)
        if self.do_segment:
            lengths = ops.dyseg(feats.mean(1), self.segment_threshold, self.min_segment_num, self.complementary_segment)
        else:
            lengths = [T]
        starts = [sum(lengths[:i]) for i in range(len(lengths))]

        # ADTS runs on every frame at once: frames are independent, v2 only needs each frame's segment mean.
        event = None
        if self.token_selection_method == "attn_div_v2":
            means = torch.stack([feats[s : s + n].mean(dim=(0, 1)) for s, n in zip(starts, lengths)])
            segment_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(dev)  # [T]
            event = means[segment_of]
        # v2 in the reference never masks picked tokens; v1 masks them (with -1, equivalent to masking).
        exclude = not (self.reference and event is not None)
        picks = ops.adts_select(feats, importance, A, event, exclude)  # [T, A]
        cand = torch.ones(T, N, dtype=torch.bool, device=dev).scatter_(1, picks, False)
        adts_index = (picks + torch.arange(T, device=dev)[:, None] * N).flatten()

        # Parts: (tokens, index, sources, sizes, weights); weights state the merge (Compressed.weights).
        parts = [(feats.reshape(-1, D)[adts_index], adts_index, adts_index, torch.ones_like(adts_index),
                  torch.ones(adts_index.numel(), device=dev))]
        stats: dict[str, Any] = {"segments": lengths, "budget": {"B": B, "A": A, "S": S, "expansion": self.expansion}}
        trees = ties = 0
        for start, length in zip(starts, lengths):
            values, roots, sources, sizes = self._trees(feats[start : start + length], cand[start : start + length], B)
            offset = start * N
            merged = self._cluster(values, roots + offset, sources + offset, sizes, N, length, S)
            trees += int(roots.numel())
            ties += merged[5]
            parts.append(merged[:5])
        tokens, index, sources, sizes, weights = (torch.cat(p) for p in zip(*parts))
        stats.update(trees=trees, merged_tokens=int(index.numel() - adts_index.numel()), density_ties=ties)
        stats["duplicates"] = int(index.numel() - torch.unique(index).numel())
        # The reference gives a merged token its representative's side features (DeepStack): state no weights.
        return ops.assemble(tokens, index, sources, sizes, grid, stats, weights=None if self.reference else weights)

    def stream_start(self, grid_hw: tuple[int, int], total_frames: int | None = None) -> ChunkState:
        """As :meth:`Method.stream_start`; ``total_frames`` is required (MethodError without it): each window's
        share of ``min_segment_num`` is its share of the clip's frames."""
        state = super().stream_start(grid_hw, total_frames)
        if state.total is None or state.total < 1:
            raise MethodError("flashvid streams only when the clip's frame count is known before its first chunk "
                              "(min_segment_num is the whole clip's, shared over its windows)")
        state.carry.update(feats=[], importance=[], held=0)
        return state

    def stream_chunk(self, state: ChunkState, feats: Tensor, grid: Grid, importance: Tensor | None = None,
                     metric: Tensor | None = None, **extra: Tensor) -> None:
        """Hold the chunk ``feats [t, N, D]``, ``importance [t, N]`` until ``stream_window`` frames are held, then
        compress that window as a clip of its own (DySeg, ADTS, TSTM, DPC-kNN within it) with
        ``ceil(min_segment_num * w / total)`` segments at least for its ``w`` frames; a clip of at most
        ``stream_window`` frames is one window with ``min_segment_num`` itself, the whole clip's call. Holds at most
        ``stream_window + t - 1`` frames. MethodError for a chunk off the stream's grid or without importance."""
        if feats.ndim != 3 or feats.shape[:2] != (grid.T, grid.N) or (grid.H, grid.W) != (state.H, state.W):
            raise MethodError(f"a chunk's feats must be [t, N, D] with N = {state.N}, got {tuple(feats.shape)}")
        if importance is None or importance.shape != (grid.T, grid.N):
            raise MethodError(f"method {self.name!r} needs importance [T, N] = [{grid.T}, {grid.N}]")
        c = state.carry
        c["feats"].append(feats)
        c["importance"].append(importance)
        c["held"] += grid.T
        state.frames += grid.T
        state.chunks += 1
        while c["held"] >= self.stream_window:
            self._close_window(state, self.stream_window)

    def stream_finish(self, state: ChunkState) -> Compressed:
        """The last (partial) window compressed, then every window's output joined in frame order
        (:func:`~.stream.merge_chunks`); stats add ``segments`` (every window's) and ``windows``."""
        if state.carry.get("held"):
            self._close_window(state, state.carry["held"])
        check_finished(state)
        out = merge_chunks(state.parts, state.grid())
        out.stats["segments"] = [n for _, part in state.parts for n in part.stats.get("segments", [part.grid.T])]
        out.stats["windows"] = len(state.parts)
        return out

    def _close_window(self, state: ChunkState, w: int) -> None:
        """Compress the first ``w`` held frames as one clip and keep its output (state.parts)."""
        c = state.carry
        feats, importance = torch.cat(c["feats"]), torch.cat(c["importance"])
        first = state.frames - c["held"]
        assert state.total is not None
        segments = -(-self.min_segment_num * w // state.total)  # the window's share of the clip's minimum, rounded up
        method = self if segments == self.min_segment_num else dataclasses.replace(self, min_segment_num=segments)
        state.parts.append((first, method(feats[:w], Grid(w, state.H, state.W), importance[:w])))
        c["feats"] = [feats[w:].clone()] if feats.shape[0] > w else []  # a copy: the held window is freed
        c["importance"] = [importance[w:].clone()] if feats.shape[0] > w else []
        c["held"] -= w

    def llm_prune(self) -> LLMPrune | None:
        if not self.llm_stage:
            return None
        return LLMPrune(ratio=float(self.llm_retention_ratio), rounding="ceil", layer=self.pruning_layer)

    def _trees(self, feats: Tensor, cand: Tensor, B: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One segment ``[T, N, D]`` -> tree tokens ``values [R, D]``, flat ``roots [R]``, CSR ``sources, sizes``."""
        T, N, _ = feats.shape
        if T == 1:
            # No temporal merging; the reference clusters every token here, ADTS picks included (duplicates).
            pool = torch.ones_like(cand[0]) if self.reference else cand[0]
            roots = pool.nonzero()[:, 0]
            return feats[0, roots], roots, roots, torch.ones_like(roots)
        link, parent, _ = ops.tstm_links(feats, cand, self.temporal_threshold, lower=B * T)
        root = ops.tree_roots(link, parent)
        return ops.tree_merge(feats, root, cand & ~link, link, parent, true_mean=not self.reference)

    def _cluster(
        self, values: Tensor, roots: Tensor, sources: Tensor, sizes: Tensor, N: int, T: int, S: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
        """DPC-kNN per frame of a segment on its tree tokens (global ``roots``) -> merged parts + tie count.

        The parts are ``tokens, index, sources, sizes`` and each source's weight in its token: a tree is the mean
        of its members (1 / tree size; the default mode's true mean) and a cluster the mean of its trees.
        """
        dev = values.device
        frame = roots // N
        frame_ids, counts = torch.unique_consecutive(frame, return_counts=True)
        total = int(roots.numel())
        ratio = S * T / total if total else 0.0
        label = torch.full((total,), -1, dtype=torch.long, device=dev)  # cluster of each tree, -1 = dropped
        is_centre = torch.zeros(total, dtype=torch.bool, device=dev)
        centre_tree: list[Tensor] = []
        n_clusters = ties = 0
        start = 0
        for count in counts.tolist():
            span = slice(start, start + count)
            nc = math.ceil(count * ratio)
            if nc > 0 and ratio < 1:
                centres, assign, tied = ops.dpc_knn(values[span], nc, min(nc, self.knn))
                ties += int(tied)
            elif nc > 0 or self.reference:
                # Fewer trees than the budget (or, in the reference only, S == 0): every tree passes unmerged.
                centres = assign = torch.arange(count, device=dev)
                nc = count
            else:
                start += count
                continue
            label[span] = assign + n_clusters
            is_centre[start + centres] = True
            centre_tree.append(start + centres)
            n_clusters += nc
            start += count
        if not centre_tree:
            empty = roots.new_zeros(0)
            return values.new_zeros(0, values.shape[-1]), empty, empty, empty, values.new_zeros(0), ties
        kept = label >= 0
        tokens = ops.group_mean(values[kept], label[kept], n_clusters)
        index = roots[torch.cat(centre_tree)]
        # Trees of a cluster in one group: the centre's tree first, then the others by root position.
        order = torch.argsort(label * 2 + (~is_centre).long(), stable=True)[int((~kept).sum()) :]
        trees_in = torch.bincount(label[kept], minlength=n_clusters).clamp_min(1)  # trees per cluster
        tree_weight = 1.0 / (sizes.float() * trees_in[label.clamp_min(0)].float())  # [R]; dropped trees unused
        weights = ops.regroup(torch.repeat_interleave(tree_weight, sizes), sizes, order)[0]
        sources, tree_sizes = ops.regroup(sources, sizes, order)
        group_sizes = torch.zeros(n_clusters, dtype=torch.long, device=dev).index_add_(0, label[order], tree_sizes)
        return tokens, index, sources, group_sizes, weights, ties


def _check_range(key: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    """Raise :class:`MethodError` unless ``low <(=) value <= high``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value > low if low_open else value >= low)
    if not (ok and value <= high):
        bracket = "(" if low_open else "["
        raise MethodError(f"flashvid.{key} must be in {bracket}{low}, {high}], got {value!r}")
