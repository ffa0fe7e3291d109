"""The compression contract every method implements (see DESIGN.md, "Contracts").

A method is a frozen dataclass: its fields are its options, validated once on construction. It takes the
visual tokens of a clip ``feats [T, N, D]`` on a ``(T, H, W)`` grid (N = H * W, raster order), optional
``importance [T, N]`` (attention each token receives in one vision layer) and optional ``metric [T, N, Dk]``
(that layer's keys averaged over heads, for VisionZip) and optional ``similarity [T, N, Ds]`` (mean vision hidden
state over a band of layers, for Nüwa), and returns a :class:`~.types.Compressed`. The plain data
(:mod:`.types`), the user error (:mod:`.errors`) and the in-LLM stage a method may hand on (:mod:`.traits`) live
below this module; it imports no method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from .errors import MethodError
from .stream import ChunkState, merge_chunks, per_frame_counts  # per_frame_counts: re-exported
from .types import Compressed, Grid

if TYPE_CHECKING:
    from .traits import DecodeSparsity, LLMPrune


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op CPU threads (None: leave as is), restoring the setting afterwards.

    Compression is ~1000 small ops (a few hundred KB each). With OpenMP threads every op pays a team wake-up, and
    ``index_add_``'s parallel path is far slower still: on a 2-core machine the first FlashVID call at 32x196x896
    took 0.6-2.6 s with 2 threads and 0.14-0.25 s with one (later calls 0.6-3.8 s vs 0.11-0.18 s when the
    cores are shared). ``vidq ask`` makes one call per process, so that first call is what users wait for.
    """
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Method:
    """Base of every compression method: validates the ratio and the inputs once, runs ``compress`` in float32.

    Subclasses set ``name`` (the registry key), ``needs`` (which optional inputs they read: "importance", "metric",
    "similarity", "question"), ``recipes`` (per-``model_type`` option defaults) and implement :meth:`compress`.
    What a method is, callers read from these class attributes and never from its name: ``ignores_keep`` (its output does not depend
    on ``keep``, so bench and eval run it once, at keep 1), ``baseline`` (it sends every token unchanged: the
    reference that answers are compared with), ``granularity`` (which visual-token counts it can hit, for
    ``--tokens``) and :meth:`tokens_for` (its count when that does not depend on the data). A method with
    "question" in ``needs`` depends on the question (its tokens cannot be shared between questions). A method
    that can prune inside the LLM sets ``prunes_in_llm`` and returns its stage from :meth:`llm_prune`.
    ``option_notes`` says, per option, how its default is resolved when that is not plain (``vidq methods`` shows
    it next to the default: what it follows, or for a None resolved only at run time, what it becomes).
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    recipes: ClassVar[dict[str, dict[str, Any]]] = {}
    ignores_keep: ClassVar[bool] = False
    baseline: ClassVar[bool] = False
    granularity: ClassVar[str] = "data dependent (searched per clip)"
    prunes_in_llm: ClassVar[bool] = False  # True: may have an in-LLM stage (see llm_prune); the stage needs the question
    option_notes: ClassVar[dict[str, str]] = {}
    # What a chunk of frames must hold for the method to stream (flashvid_cli/streaming.py): "frame": the output on a
    # frame depends on that frame alone (the default stream_* protocol, exact); another unit names what the method's
    # own stream_* carry across chunks (EVS: "frame pair"); None: it reads the whole clip and cannot stream.
    stream_unit: ClassVar[str | None] = None
    # How a streamed run compares with the whole clip (``vidq methods`` shows it beside stream_unit).
    stream_note: ClassVar[str] = "exact"

    keep: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.keep, (int, float)) or not (0.0 < float(self.keep) <= 1.0):
            raise MethodError(f"keep must be in (0, 1], got {self.keep!r}")

    def __call__(
        self,
        feats: Tensor,
        grid: Grid,
        importance: Tensor | None = None,
        metric: Tensor | None = None,
        question: Tensor | None = None,
        similarity: Tensor | None = None,
    ) -> Compressed:
        """Compress ``feats [T, N, D]``; see the module docstring for the optional inputs.

        ``question [M, D]``: the question's token embeddings (the LLM's own input embeddings, any float dtype), read
        only by methods with "question" in ``needs`` (passed to :meth:`compress` as the ``question`` keyword).
        ``similarity [T, N, Ds]``: features whose cosine similarity a method weighs merges by (Nüwa: the mean vision
        hidden state over a band of layers, pooled/merged as ``feats``), read only by methods with "similarity" in
        ``needs`` (passed as the ``similarity`` keyword, float32).
        """
        if feats.ndim != 3 or feats.shape[:2] != (grid.T, grid.N):
            raise MethodError(f"feats must be [T, N, D] = [{grid.T}, {grid.N}, D], got {tuple(feats.shape)}")
        if "importance" in self.needs:
            if importance is None or importance.shape != (grid.T, grid.N):
                raise MethodError(f"method {self.name!r} needs importance [T, N] = [{grid.T}, {grid.N}]")
            importance = importance.float()
        if "metric" in self.needs:
            if metric is None or metric.shape[:2] != (grid.T, grid.N):
                raise MethodError(f"method {self.name!r} needs a key metric [T, N, Dk]")
            metric = metric.float()
        extra: dict[str, Tensor] = {}
        if "question" in self.needs:
            if question is None or question.ndim != 2 or question.shape[0] < 1:
                raise MethodError(f"method {self.name!r} needs the question's token embeddings [M, D]")
            extra["question"] = question.float()
        if "similarity" in self.needs:
            if similarity is None or similarity.ndim != 3 or similarity.shape[:2] != (grid.T, grid.N):
                raise MethodError(f"method {self.name!r} needs similarity features [T, N, Ds] = "
                                  f"[{grid.T}, {grid.N}, Ds]")
            extra["similarity"] = similarity.float()
        if self.keep >= 1.0 and not getattr(self, "reference", False):
            index = torch.arange(grid.T * grid.N, device=feats.device)
            out = Compressed.kept(feats, index, grid)
        else:
            with cpu_threads(1 if feats.device.type == "cpu" else None):
                out = self.compress(feats.float(), grid, importance, metric, **extra)
            out.tokens = out.tokens.to(feats.dtype)
            if out.weights is not None:
                out.weights = out.weights.float()
        out.stats = {
            "tokens_in": grid.T * grid.N,
            "tokens_out": int(out.tokens.shape[0]),
            "per_frame": per_frame_counts(out.index, grid),
            **out.stats,
        }
        return out

    def compress(
        self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None
    ) -> Compressed:  # pragma: no cover - abstract
        """Float32 ``feats [T, N, D]`` -> :class:`Compressed`; called only when there is something to drop."""
        raise NotImplementedError

    def stream_frames_held(self, chunk: int) -> int:
        """The most frames of uncompressed features (and what the method reads of them) a streamed run holds at once
        with chunks of ``chunk`` frames: one chunk, unless the method keeps chunks until it can compress (the
        memory plan reads it, flashvid_cli/plan.py)."""
        return chunk

    def stream_start(self, grid_hw: tuple[int, int], total_frames: int | None = None) -> ChunkState:
        """A streamed compression of a clip whose frames are ``H x W`` tokens (``grid_hw``), ``total_frames`` long
        when known before the first chunk. Raises MethodError when the method cannot stream (``stream_unit`` None)."""
        if self.stream_unit is None:
            raise MethodError(f"method {self.name!r} selects over the whole clip: it cannot stream")
        H, W = grid_hw
        return ChunkState(int(H), int(W), None if total_frames is None else int(total_frames))

    def stream_chunk(
        self,
        state: ChunkState,
        feats: Tensor,
        grid: Grid,
        importance: Tensor | None = None,
        metric: Tensor | None = None,
        **extra: Tensor,
    ) -> None:
        """Compress the next chunk ``feats [t, N, D]`` on ``grid = Grid(t, H, W)`` (inputs as :meth:`__call__`'s)
        into ``state``. Default, for per-frame methods: the chunk is compressed on its own and kept for
        :meth:`stream_finish`. Raises MethodError for a chunk whose frames are not ``state``'s ``H x W``."""
        if (grid.H, grid.W) != (state.H, state.W):
            raise MethodError(f"a chunk's frames are {grid.H}x{grid.W} tokens, the stream's {state.H}x{state.W}")
        state.parts.append((state.frames, self(feats, grid, importance, metric, **extra)))
        state.frames += grid.T
        state.chunks += 1

    def stream_finish(self, state: ChunkState) -> Compressed:
        """The compressed clip once every chunk went through :meth:`stream_chunk` (default: the chunks' outputs
        joined by :func:`~.stream.merge_chunks`, equal to the whole-clip call for a per-frame method). Raises
        MethodError when no chunk came, or when fewer frames came than ``total_frames`` said."""
        check_finished(state)
        return merge_chunks(state.parts, state.grid())

    def tokens_for(self, grid: Grid) -> int | None:
        """Tokens this method emits on ``grid`` at its ``keep`` when that count does not depend on the data, else
        None (``--tokens`` then searches the keep on the clip itself, see :mod:`.tokens`)."""
        return grid.T * grid.N if self.keep >= 1.0 and not getattr(self, "reference", False) else None

    def llm_prune(self) -> LLMPrune | None:
        """The in-LLM pruning stage this method runs after the vision side, or None (the default)."""
        return None

    def decode_sparsity(self) -> DecodeSparsity | None:
        """The per-question selection of cached visual keys this method's decoding reads, or None (the default:
        every cached token)."""
        return None

    @property
    def query_aware(self) -> bool:
        """Whether the output depends on the question: it reads it, or prunes inside the LLM by the last query."""
        return "question" in self.needs or self.llm_prune() is not None

    def options(self) -> dict[str, Any]:
        """The method's options as a plain dict (for reports)."""
        return dataclasses.asdict(self)


def check_finished(state: ChunkState) -> None:
    """MethodError unless a chunk came and the frames seen are ``state.total`` (when that was given)."""
    if state.chunks == 0:
        raise MethodError("no chunk was compressed: nothing to finish")
    if state.total is not None and state.frames != state.total:
        raise MethodError(f"the stream was started for {state.total} frames and {state.frames} came")
